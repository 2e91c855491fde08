"""Import a real client package without its GUI toolkit: permissive stand-ins for Qt and GUI-only modules.

Annotation apps import PyQt (and their own widget packages) from the modules that hold their model code;
the stand-ins accept every attribute and call and do nothing, except ``QPointF`` (the one Qt value their
shapes keep) and ``QCoreApplication.translate`` (returns the text). Everything else a client imports is
its real code.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import types

from clients import install_client


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _Anything(metaclass=_StubMeta):
    """Any Qt class, instance, enum or signal: accepts every call and attribute and does nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __or__(self, other):
        return self

    __ror__ = __and__ = __rand__ = __or__


class QPointF:
    """The one Qt value the clients' shapes keep: a point."""

    def __init__(self, x: float = 0.0, y: float = 0.0) -> None:
        self._x, self._y = float(x), float(y)

    def x(self) -> float:
        return self._x

    def y(self) -> float:
        return self._y


class QCoreApplication(_Anything):
    @staticmethod
    def translate(context: str, text: str, *args) -> str:
        return text


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name.startswith("Qt") and "." not in self.__name__:  # from PyQt6 import QtCore: the submodule
            return importlib.import_module(f"{self.__name__}.{name}")
        value = _StubMeta(name, (_Anything,), {})
        setattr(self, name, value)
        return value


class _GuiStubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves a stub module for every module under one of ``roots``."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots

    def find_spec(self, name, path=None, target=None):
        if any(name == root or name.startswith(root + ".") for root in self.roots):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.QPointF, module.QCoreApplication = QPointF, QCoreApplication
        module.pyqtSignal = lambda *args, **kwargs: _Anything()
        module.pyqtSlot = lambda *args, **kwargs: lambda function: function
        return module

    def exec_module(self, module) -> None:
        pass


@contextlib.contextmanager
def client_package(requirement: str, deps: tuple[str, ...], package: str, gui_modules: tuple[str, ...]):
    """Import ``package`` from ``requirement`` (first on sys.path) with GUI stubs; undo everything after."""
    folders = [install_client(dep) for dep in deps] + [install_client(requirement)]
    for folder in folders:  # the client's own copy first (AnyLabeling and X-AnyLabeling share a name)
        sys.path.remove(str(folder))
        sys.path.insert(0, str(folder))
    stubs = _GuiStubs(gui_modules)
    sys.meta_path.insert(0, stubs)
    owned = (package, *gui_modules)

    def purge() -> None:
        for name in [n for n in sys.modules if any(n == r or n.startswith(r + ".") for r in owned)]:
            del sys.modules[name]

    purge()
    try:
        yield
    finally:
        purge()
        sys.meta_path.remove(stubs)
