"""The import graph points one way: the network, then the engines, then the APIs, then workflows, then the CLI.

Every ``import`` and ``from ... import`` of the package (module level or inside functions, where lazy imports
hide) is read with ``ast``; a module may import its own part of the package and parts of lower layers only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "evitsam"

# part of the package (first component below evitsam) -> layer; a part imports only lower layers (or itself)
LAYERS = {
    "_version": 0,
    "atomic_files": 0,
    "io": 0,
    "visualize": 0,
    "distributed": 0,
    "prompt_workers": 0,  # single-threaded worker threads for many small per-prompt operations
    "transforms": 1,  # resizing and frames, shared by the model's own pre-processing and the predictor
    "models": 2,
    "variants": 3,
    "weights": 4,
    "export": 5,
    "runtime": 6,
    "predictor": 7,
    "prompting": 8,
    "everything": 8,
    "data": 9,
    "training": 10,
    "evaluation": 10,
    "labelling": 11,
    "service": 11,
    "cli": 12,
    "__main__": 13,
}
# parts whose every import must stay below the facade of the package root (``from .. import X`` goes
# through evitsam/__init__.py, which imports the APIs: a cycle waiting to happen)
NO_ROOT_IMPORTS = {part for part, layer in LAYERS.items() if layer <= LAYERS["everything"]}


def _module_name(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> list[tuple[str, ...]]:
    """Every module of the package that ``path`` imports, as name parts (``("evitsam",)`` is the root)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [tuple(alias.name.split(".")) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = base + (tuple(node.module.split(".")) if node.module else ())
            else:
                module = tuple((node.module or "").split("."))
            if node.module is None:  # ``from . import a, b``: submodules, or names of the package itself
                found += [module + (alias.name,) if (PACKAGE.parent.joinpath(*module, alias.name)).exists()
                          or PACKAGE.parent.joinpath(*module, f"{alias.name}.py").exists() else module
                          for alias in node.names]  # fmt: skip
            else:
                found.append(module)
    return [module for module in found if module[0] == "evitsam"]


def _part(module: tuple[str, ...]) -> str | None:
    return module[1] if len(module) > 1 else None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {_part(_module_name(path)) for path in MODULES} - {None}
    assert parts <= set(LAYERS), f"give these parts a layer: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    part = _part(_module_name(path))
    if part is None:  # the package root: the public facade, importing the APIs lazily
        return
    for module in _imports(path):
        target = _part(module)
        if target is None:
            assert part not in NO_ROOT_IMPORTS, f"{path.name} imports the package root ({'.'.join(module)})"
            continue
        assert target == part or LAYERS[target] < LAYERS[part], (
            f"{'.'.join(_module_name(path))} imports {'.'.join(module)}: {part} (layer {LAYERS[part]}) may "
            f"import only lower layers, {target} is layer {LAYERS[target]}"
        )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_of_ours_names_a_module_that_exists(path):
    """Lazy imports inside functions run only when their branch does: a moved module must not leave one behind."""
    for module in _imports(path):
        location = PACKAGE.parent.joinpath(*module)
        assert location.with_suffix(".py").is_file() or (location / "__init__.py").is_file(), (
            f"{'.'.join(_module_name(path))} imports {'.'.join(module)}, which does not exist"
        )


def test_the_network_and_the_engines_stand_alone():
    """``models`` imports nothing of ours but transforms; ``runtime`` nothing above it; ``export`` no engine."""
    for path in MODULES:
        part = _part(_module_name(path))
        targets = {_part(module) for module in _imports(path)}
        if part == "models":
            assert targets <= {"models", "transforms"}, f"{path.name}: {targets}"
        if part == "export":
            assert "runtime" not in targets, f"{path.name} imports the runtime (graphs are built, engines run them)"


def test_the_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The parser resolves relative imports: an upward one in models is found."""
    module = tmp_path / "evitsam" / "models" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ..predictor import SamPredictor\n    from . import sam\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "evitsam")
    assert _imports(module) == [("evitsam", "predictor"), ("evitsam", "models")]
