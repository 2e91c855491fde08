"""``evitsam export`` and ``evitsam convert``: the model's weights written for other runtimes and tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    CheckpointOption,
    ModelOption,
    VariantOption,
    add_command,
    check_output_file,
    check_output_folder,
    command_group,
    load_cli_model,
    model_source,
    output_option,
)

export_app = command_group("Write the model for other runtimes and tools.")


def export_onnx_command(
    output: Annotated[Path, output_option("DIR", "Folder to write.")],
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    variant: VariantOption = None,
    single_mask: Annotated[
        bool, typer.Option("--single-mask", help="Decoder returns SAM's best single mask instead of all four.")
    ] = False,
) -> None:
    """Write encoder.onnx, decoder.onnx (SAM's signature), decoder_boxes.onnx and config.yaml into DIR."""
    name_or_path = model_source(model, checkpoint)
    check_output_folder(output)
    from ..export import export_onnx

    sam = load_cli_model(name_or_path, variant)
    paths = export_onnx(sam, output, single_mask=single_mask)
    summary = {"model": name_or_path, "variant": sam.variant, "single_mask": single_mask}
    summary["files"] = {key: str(path) for key, path in paths.items()}
    typer.echo(json.dumps(summary, indent=2))


def convert(
    source: Annotated[Path, typer.Argument(metavar="IN.pt", help="Official .pt checkpoint.")],
    target: Annotated[Path, typer.Argument(metavar="OUT.safetensors", help="The .safetensors file to write.")],
    variant: Annotated[
        str | None, typer.Option(metavar="NAME", help="Variant (inferred from the tensors if omitted).")
    ] = None,
    half: Annotated[bool, typer.Option("--half", help="Store float tensors as float16 (half the size).")] = False,
) -> None:
    """Convert a checkpoint to .safetensors with its variant recorded (safe, fast to load)."""
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {source}")
    if target.suffix == ".safetensors":
        check_output_file(target, "OUT.safetensors")
    from ..weights import convert_checkpoint

    name = convert_checkpoint(source, target, variant, half=half)
    typer.echo(f"wrote {target} (variant {name}{', float16' if half else ''})")


def register(app: typer.Typer) -> None:
    add_command(export_app, export_onnx_command, "onnx")
    app.add_typer(export_app, name="export")
    add_command(app, convert)
