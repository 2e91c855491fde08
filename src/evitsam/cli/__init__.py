"""The ``evitsam`` command: segment, segment everything, export and convert weights, train, evaluate.

A thin layer over the public API. The library raises ``ValueError``/``FileNotFoundError`` with messages
written for people; the CLI prints them as one line on stderr with exit code 2, in one place
(:class:`.common.Group`), never a traceback. Cheap checks (prompts, images, output paths) run before
torch is imported, so ``evitsam --help`` and mistakes answer at once.

Each command group is one module with a ``register(app)`` function; adding a group is one new module
and its name in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from .common import Group, command_group

COMMAND_MODULES = ("segment", "everything", "weights", "training", "evaluate", "label", "serve")


class RootGroup(Group):
    """The top-level group; ``--out`` stays accepted as the old spelling of ``--output``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = ["--output" if a == "--out" else "--output=" + a[6:] if a.startswith("--out=") else a for a in args]
        return super().parse_args(ctx, args)


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"evitsam {__version__}")
        raise typer.Exit()


app = command_group("EfficientViT-SAM: fast promptable segmentation.", RootGroup)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """EfficientViT-SAM: fast promptable segmentation. 'evitsam COMMAND -h' explains a command."""


for _name in COMMAND_MODULES:
    importlib.import_module(f".{_name}", __name__).register(app)


def main() -> None:
    """Console entry point (``evitsam``) and ``python -m evitsam``."""
    app()
