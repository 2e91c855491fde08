"""``evitsam eval``: zero-shot COCO/LVIS evaluation with the paper's protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    CheckpointOption,
    ModelOption,
    VariantOption,
    add_command,
    check_output_file,
    load_cli_model,
    model_source,
    output_option,
)


def eval_command(
    images: Annotated[Path, typer.Option(metavar="DIR", help="Image folder (COCO: val2017/; LVIS: the COCO root).")],
    annotations: Annotated[Path, typer.Option(metavar="JSON", help="COCO or LVIS instances annotation file.")],
    output: Annotated[Path, output_option("RESULTS.json", "Results to write (+ a .md table beside).")],
    dataset: Annotated[str, typer.Option(metavar="coco|lvis", help="Annotation format and AP tool.")] = "coco",
    prompt: Annotated[
        str, typer.Option(metavar="box|point|detector", help="GT boxes, simulated clicks, or detector boxes.")
    ] = "box",
    clicks: Annotated[int, typer.Option(metavar="K", help="Clicks per object with --prompt point.")] = 1,
    detections: Annotated[
        Path | None, typer.Option(metavar="JSON", help="Detector boxes (COCO results format) for --prompt detector.")
    ] = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    variant: VariantOption = None,
    device: Annotated[
        str | None, typer.Option(metavar="DEVICE", help="Torch device [default: cuda if available, else cpu].")
    ] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", help="Evaluate only the first N images.")] = None,
    batch_size: Annotated[int, typer.Option(metavar="B", help="Prompts per decoder call.")] = 64,
    predictions: Annotated[
        Path | None, typer.Option(metavar="JSON", help="Also write per-object IoUs / detections with masks.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Zero-shot COCO/LVIS evaluation with the paper's protocol; shard it with torchrun."""
    name_or_path = model_source(model, checkpoint)
    if output.suffix.lower() != ".json":
        raise ValueError(f"--output '{output}': results are written as JSON, use a .json name")
    check_output_file(output)
    if predictions is not None:
        check_output_file(predictions, "--predictions")
    from ..distributed import init_distributed, shutdown_distributed
    from ..evaluation import EvalDataset, load_detections, run_evaluation
    from ..evaluation.report import summary_line, write_predictions, write_results
    from ..evaluation.runner import check_settings

    check_settings(dataset, prompt, clicks, detections is not None, limit, batch_size)
    data = EvalDataset(images, annotations, dataset)
    grouped = load_detections(detections) if detections is not None else None
    rank, _, torch_device = init_distributed(device)
    sam = load_cli_model(name_or_path, variant, torch_device)
    keep = predictions is not None
    results = run_evaluation(sam, data, prompt, clicks, grouped, limit, batch_size, progress, keep)
    if rank == 0:
        results.update(model=name_or_path, variant=sam.variant)
        if keep:
            write_predictions(predictions, results.pop("predictions"))
        json_path, table_path = write_results(output, results)
        typer.echo(summary_line(results))
        typer.echo(f"wrote {json_path} and {table_path}" + (f" and {predictions}" if keep else ""))
    shutdown_distributed()


def register(app: typer.Typer) -> None:
    add_command(app, eval_command, "eval")
