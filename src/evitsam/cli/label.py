"""``evitsam label``: instance masks for a whole image collection into one COCO file (see docs/labelling.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer

from .common import add_command, check_output_file, load_cli_model, make_predictor, model_source


def label(
    images: Annotated[
        Path | None,
        typer.Argument(
            metavar="IMAGES", help="Folder (recursive), text file of paths, or COCO JSON.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="OUT.json", help="COCO instances JSON to write.")
    ] = None,
    boxes: Annotated[
        Path | None, typer.Option(metavar="DETECTIONS.json", help="COCO results: one mask per box.")
    ] = None,
    everything: Annotated[bool, typer.Option("--everything", help="Segment everything in every image.")] = False,
    min_score: Annotated[
        float, typer.Option(metavar="S", help="Skip boxes scoring under S (--everything: masks with IoU under S).")
    ] = 0.0,
    merge: Annotated[
        Path | None, typer.Option(metavar="PARTS_DIR", help="Only merge a finished job's OUT.parts folder.")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Where a COCO JSON's file names are [default: beside it].")
    ] = None,
    model: Annotated[
        str | None, typer.Option(metavar="NAME", help="Variant name (l0 ... xl1) [default: bundled nano].")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(metavar="PATH", help="Checkpoint file.")] = None,
    variant: Annotated[str | None, typer.Option(metavar="NAME", help="Variant of --checkpoint.")] = None,
    device: Annotated[
        str | None, typer.Option(metavar="DEVICE", help="cpu or cuda (one GPU per process) [default: cuda if any].")
    ] = None,
    runtime: Annotated[str, typer.Option(metavar="NAME", help="torch, onnxruntime or openvino.")] = "torch",
    precision: Annotated[
        str, typer.Option(metavar="NAME", help="fp32, bf16, fp16 (CUDA) or int8 (openvino).")
    ] = "fp32",
    batch_size: Annotated[
        int | None, typer.Option(metavar="N", help="Images per encoder call [default: 1 on CPU, 8 on CUDA].")
    ] = None,
    box_batch: Annotated[int, typer.Option(metavar="N", help="Boxes per decoder call.")] = 64,
    chunk_size: Annotated[int, typer.Option(metavar="N", help="Images per unit of work and of resumption.")] = 32,
    workers: Annotated[int, typer.Option(metavar="N", help="Image-reading processes per labelling process.")] = 2,
    points_per_side: Annotated[int, typer.Option(metavar="N", help="--everything: grid of N x N points.")] = 32,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (rank 0).")] = True,
) -> None:
    """Label IMAGES with instance masks from detector boxes or "everything"; resumable, shard with torchrun."""
    from ..distributed import init_distributed, shutdown_distributed
    from ..labelling import LabelSettings, label_images, load_collection, load_detections
    from ..labelling import merge as merge_parts
    from ..runtime import check_options

    if merge is not None:
        if images is not None or boxes is not None or everything:
            raise ValueError("--merge PARTS_DIR takes no IMAGES, --boxes or --everything (only --output to redirect)")
        typer.echo(json.dumps(merge_parts(merge, output), indent=2))
        return
    if images is None:
        raise ValueError("missing IMAGES: a folder, a text file of image paths, or a COCO JSON")
    if output is None:
        raise ValueError("missing --output OUT.json")
    if (boxes is not None) == everything:
        raise ValueError("give exactly one of --boxes DETECTIONS.json and --everything")
    check_options(runtime, precision)
    settings = LabelSettings(
        mode="everything" if everything else "boxes", min_score=min_score, batch_size=batch_size, box_batch=box_batch,
        chunk_size=chunk_size, workers=workers, points_per_side=points_per_side, progress=progress,
    )  # fmt: skip
    settings.check()
    if output.suffix.lower() != ".json":
        raise ValueError(f"--output '{output}': the labels are written as COCO JSON, use a .json name")
    check_output_file(output)
    collection = load_collection(images, image_root)
    detections, counts = (None, None)
    if boxes is not None:
        detections, counts = load_detections(boxes, collection, min_score)

    name_or_path = model_source(model, checkpoint)
    rank, world, torch_device = init_distributed(device)
    chunks = -(-len(collection.images) // chunk_size)
    if rank == 0 and chunks < world:
        share = max(1, -(-len(collection.images) // world))
        typer.echo(
            f"notice: {len(collection.images)} images make {chunks} chunk(s) of --chunk-size {chunk_size} for {world} "
            f"processes, so {world - chunks} of them will have nothing to do; --chunk-size {share} gives each a share",
            err=True,
        )
    try:
        sam = load_cli_model(name_or_path, variant, torch_device).eval()
        predictor = make_predictor(sam, runtime, precision, None)
        identity = str(checkpoint.resolve()) if checkpoint is not None else name_or_path
        job = {
            "model": identity,
            "variant": sam.variant,
            "runtime": predictor.runtime,
            "precision": predictor.precision,
        }
        if boxes is not None:
            job["detections"] = hashlib.sha1(boxes.read_bytes()).hexdigest()
        info = {"model": name_or_path, "variant": sam.variant, "mode": settings.mode}
        info["score"] = "box score x predicted IoU" if boxes is not None else "predicted IoU"
        summary = label_images(predictor, collection, output, detections, settings, job=job, info=info)
        if rank == 0:
            summary = {"model": name_or_path, "variant": sam.variant, "runtime": predictor.runtime,
                       "precision": predictor.precision, "device": str(torch_device), **summary}  # fmt: skip
            if counts is not None:
                summary["detections"] = counts
            typer.echo(json.dumps(summary, indent=2))
    finally:
        shutdown_distributed()


def register(app: typer.Typer) -> None:
    add_command(app, label)
