"""``evitsam everything``: every object in an image or a folder of images, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    CalibrationOption,
    CheckpointOption,
    DeviceOption,
    MaxPixelsOption,
    ModelOption,
    OverlayOption,
    PrecisionOption,
    RuntimeOption,
    VariantOption,
    add_command,
    check_engine,
    check_output_folder,
    load_cli_model,
    make_predictor,
    model_source,
    output_option,
    read_cli_image,
)

FORMATS = ("coco", "json", "png")  # evitsam.everything.folders.FORMATS


def everything(
    source: Annotated[Path, typer.Argument(metavar="IMAGE_OR_FOLDER", help="An image, or a folder of images.")],
    output: Annotated[Path, output_option("DIR", "Folder for the masks files.")],
    fmt: Annotated[
        str, typer.Option("--format", metavar="coco|json|png", help="COCO RLE JSON, uncompressed-RLE JSON, or PNGs.")
    ] = "coco",
    overlay: OverlayOption = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images already finished in DIR (else they are skipped).")
    ] = False,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    variant: VariantOption = None,
    points_per_side: Annotated[int, typer.Option(metavar="N", help="Grid of N x N point prompts.")] = 32,
    sampling: Annotated[
        str, typer.Option(metavar="grid|coverage", help="coverage: skip points inside kept masks (faster).")
    ] = "grid",
    pred_iou_thresh: Annotated[
        float | None, typer.Option(metavar="X", help="Keep masks with predicted IoU above X [default: the model's].")
    ] = None,
    stability_score_thresh: Annotated[
        float | None, typer.Option(metavar="X", help="Keep masks this stable [default: the model's].")
    ] = None,
    device: DeviceOption = "cpu",
    runtime: RuntimeOption = "torch",
    precision: PrecisionOption = "fp32",
    calibration: CalibrationOption = None,
    max_pixels: MaxPixelsOption = 100_000_000,
) -> None:
    """Segment everything in IMAGE_OR_FOLDER: SAM's mask records per image, resumable for folders.

    The settings are recorded with each image's masks; a rerun skips finished images and refuses to mix
    in results made with other settings (--overwrite redoes them).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format '{fmt}': expected one of {', '.join(FORMATS)}")
    for option, value in [("--pred-iou-thresh", pred_iou_thresh), ("--stability-score-thresh", stability_score_thresh)]:
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{option} {value}: expected a number in [0, 1]")
    name_or_path = model_source(model, checkpoint)
    check_output_folder(output)
    from ..everything.folders import image_files

    files = image_files(source)
    if source.is_file():
        read_cli_image(source, max_pixels)  # a single unreadable image is an error, not a warning
    requested = {"model": name_or_path, "points_per_side": points_per_side, "sampling": sampling}
    requested |= {k: v for k, v in [("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh",
                  stability_score_thresh)] if v is not None}  # fmt: skip
    _check_settings(output, files, fmt, requested, overwrite)  # what is known before the model loads
    check_engine(runtime, precision)

    from ..everything import MaskGenerator
    from ..everything.folders import segment_everything
    from ..variants import get_variant

    sam = load_cli_model(name_or_path, variant, device)
    predictor = make_predictor(sam, runtime, precision, calibration)
    iou_default, stability_default = get_variant(sam.variant).everything_thresholds  # SAM's 0.88/0.95 for l0..xl1
    filters = {
        "pred_iou_thresh": iou_default if pred_iou_thresh is None else pred_iou_thresh,
        "stability_score_thresh": stability_default if stability_score_thresh is None else stability_score_thresh,
    }
    settings = {"model": name_or_path, "variant": sam.variant, "points_per_side": points_per_side}
    settings |= {"sampling": sampling} | filters
    _check_settings(output, files, fmt, settings, overwrite)  # and the model's default thresholds
    generator = MaskGenerator(predictor, points_per_side=points_per_side, sampling=sampling, **filters)
    summary = segment_everything(
        generator,
        files,
        output,
        fmt,
        overlay,
        open_image=lambda path: read_cli_image(path, max_pixels),
        settings=settings,
        overwrite=overwrite,
    )
    runtime_summary = {"runtime": predictor.runtime, "precision": predictor.precision} | filters
    typer.echo(json.dumps({"model": name_or_path, "variant": sam.variant} | runtime_summary | summary, indent=2))


def _check_settings(output: Path, files: list[Path], fmt: str, settings: dict, overwrite: bool) -> None:
    """Finished images made with other settings: an error (one folder, one set of settings) unless --overwrite."""
    from ..everything.folders import settings_conflict

    conflict = None if overwrite or not output.is_dir() else settings_conflict(output, files, fmt, settings)
    if conflict:
        raise ValueError(f"{conflict}; use --overwrite to redo them, or another --output folder")


def register(app: typer.Typer) -> None:
    add_command(app, everything)
