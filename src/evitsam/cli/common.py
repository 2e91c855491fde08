"""What every command shares: the typer wiring, the one-line error rule, options, output checks, model loading.

Nothing here imports torch: ``evitsam --help`` and input errors must answer before the model stack is loaded,
so modules that need it are imported inside the functions that load a model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    import numpy as np

# Errors a user can cause (CheckpointError and ImageReadError are ValueErrors, FileNotFoundError an OSError).
USER_ERRORS = (ValueError, OSError)
EXIT_USER_ERROR = 2
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
DEFAULT_MODEL = "nano"  # evitsam.variants.DEFAULT_VARIANT, spelled here so help needs no torch


def one_line(error: BaseException) -> str:
    """The error's message on one line (OSErrors as 'path: reason')."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


class Command(TyperCommand):
    """A command whose usage line reads ``IMAGE``, not typer's ``{IMAGE}``, for required arguments."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes ``args``
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter:
            raise
        except Exception as error:  # click's UsageError: say why an old '--overlay FILE' no longer parses
            if "--overlay" in given and "extra argument" in str(getattr(error, "message", "")):
                error.message += "; --overlay takes no file name: it writes NAME_overlay.jpg beside --output"
            raise


class Group(TyperGroup):
    """Every command runs through ``invoke``: the one place that maps user errors to one line and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            typer.echo(f"error: {one_line(error)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


class DefaultCommandGroup(Group):
    """A group whose first command is the default: ``distill CONFIG ...`` means ``distill run CONFIG ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in HELP_OPTIONS["help_option_names"]:
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


def command_group(help: str, cls: type[TyperGroup] = Group, **options: Any) -> typer.Typer:
    """A command group with the shared conventions: -h/--help, plain help text, errors in one line."""
    return typer.Typer(
        cls=cls,
        help=help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings=HELP_OPTIONS,
        add_completion=False,
        **options,
    )


def add_command(app: typer.Typer, function: Any, name: str | None = None) -> None:
    """Register ``function`` as a command of ``app`` (usage lines without braces)."""
    app.command(name, cls=Command)(function)


# ---------------------------------------------------------------------------------------- options
def output_option(metavar: str, help: str) -> Any:
    """``-o/--output``: the one spelling of the output option on every command."""
    return typer.Option("--output", "-o", metavar=metavar, help=help, show_default=False)


ModelOption = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Variant name (l0 ... xl1: official weights, cached) [default: bundled nano]."),
]
CheckpointOption = Annotated[Path | None, typer.Option(metavar="PATH", help="Checkpoint file (.pt or .safetensors).")]
VariantOption = Annotated[
    str | None, typer.Option(metavar="NAME", help="Variant of --checkpoint (inferred if omitted).")
]
DeviceOption = Annotated[str, typer.Option(metavar="DEVICE", help="Torch device, e.g. cpu or cuda.")]
RuntimeOption = Annotated[
    str, typer.Option(metavar="NAME", help="Engine: torch, onnxruntime or openvino (CPU, fastest).")
]
PrecisionOption = Annotated[
    str,
    typer.Option(metavar="NAME", help="fp32, bf16 (CPUs with AVX512-BF16/AMX), fp16 (CUDA GPUs) or int8 (openvino)."),
]
CalibrationOption = Annotated[
    Path | None, typer.Option(metavar="DIR", help="Photos to calibrate int8 on (once per set of weights).")
]
OverlayOption = Annotated[
    bool,
    typer.Option(
        "--overlay", help="Also write NAME_overlay.jpg beside the masks: the image with every mask outlined in colour."
    ),
]
MAX_PIXELS_DEFAULT = 100_000_000  # above Pillow's own warning size: the CLI raises Pillow's ceiling to it
MaxPixelsOption = Annotated[
    int,
    typer.Option(
        metavar="N", min=1, help="Refuse images with more pixels (decompression bombs); raise it for huge scans."
    ),
]


# ----------------------------------------------------------------------------------------- images
def read_cli_image(path: Path, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """``evitsam.io.read_image`` with its errors worded for the command line (one line, options named)."""
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder, not an image: give one image file, or for every image in a folder use "
            f"'evitsam everything {path} -o DIR' ('evitsam --help' lists the commands)"
        )
    if not path.exists():  # answered before numpy and Pillow are imported
        raise FileNotFoundError(f"image not found: {path}")
    from ..io import ImageTooLargeError, raise_pillow_limit, read_image

    raise_pillow_limit(max_pixels)  # our limit, with our message, replaces Pillow's warning
    try:
        return read_image(path, max_pixels=max_pixels)
    except ImageTooLargeError as error:
        reason = one_line(error).split("; ")[0]
        raise ValueError(
            f"{reason} (--max-pixels {max_pixels}); if you trust the file, raise the limit, e.g. "
            f"--max-pixels {max(2 * max_pixels, 10**9)}"
        ) from None


# ---------------------------------------------------------------------------------------- outputs
def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def _check_can_create_in(folder: Path, option: str, path: Path) -> None:
    """Probe by creating (and removing) a file: permission bits, read-only mounts and /proc all tell the truth."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".evitsam-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"{option} '{path}': cannot write in folder '{folder}' ({error.strerror})") from None


def check_output_file(path: Path, option: str = "--output") -> None:
    """Fail now, before any model is loaded, if ``path`` cannot be written (folder in the way, no permission)."""
    if path.is_dir():
        raise ValueError(f"{option} '{path}' is a folder; give a file name, e.g. {path / 'mask.png'}")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise ValueError(f"{option} '{path}': '{existing}' is a file, not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} '{path}' exists and is not writable")
    _check_can_create_in(existing, option, path)


def check_output_folder(path: Path, option: str = "--output") -> None:
    """Fail now if folder ``path`` cannot be created or written in."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} '{path}' is a file; expected a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ValueError(f"{option} '{path}': '{existing}' is a file, not a folder")
    _check_can_create_in(existing, option, path)


def image_format(path: Path, option: str) -> str:
    """Pillow's format name for ``path``'s extension, or an error naming the option."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{option} '{path}': cannot tell the image format from the extension; use e.g. .png or .jpg")
    return fmt


# ------------------------------------------------------------------------------------------ model
def model_source(model: str | None, checkpoint: Path | None) -> str:
    """What to pass to ``load_model``: the --checkpoint path or the --model name (never both)."""
    if model is not None and checkpoint is not None:
        raise ValueError("--model and --checkpoint are mutually exclusive: give one")
    if model is None and checkpoint is None:
        return DEFAULT_MODEL
    return str(checkpoint) if checkpoint is not None else str(model)


def load_cli_model(name_or_path: str, variant: str | None, device: Any = "cpu"):
    """``load_model``, plus a one-line notice on stderr when that is the small bundled model."""
    from ..variants import DEFAULT_VARIANT, HF_REPO
    from ..weights import cache_dir, load_model

    sam = load_model(name_or_path, variant=variant, device=device)
    if name_or_path == DEFAULT_VARIANT:
        typer.echo(
            f"notice: using the small bundled '{DEFAULT_VARIANT}' model; for full quality use the official weights, "
            f"e.g. --model l0 (downloaded from huggingface.co/{HF_REPO} into {cache_dir()})",
            err=True,
        )
    return sam


def make_predictor(sam: Any, runtime: str, precision: str, calibration: Path | None):
    """A ``SamPredictor`` whose precision fallback (if any) is reported as one ``notice:`` line on stderr."""
    import warnings

    from ..predictor import SamPredictor
    from ..runtime import PrecisionFallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrecisionFallback)
        predictor = SamPredictor(sam, runtime=runtime, precision=precision, calibration=calibration)
    for warning in caught:
        if issubclass(warning.category, PrecisionFallback):
            typer.echo(f"notice: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return predictor


def check_engine(runtime: str, precision: str) -> None:
    """Runtime/precision names, checked before a model is loaded (imports the engines, hence torch)."""
    from ..runtime import check_options

    check_options(runtime, precision)
