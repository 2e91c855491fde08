"""``evitsam segment``: masks from point and box prompts on one image.

Everything a person can get wrong (prompt syntax, prompts off the image, the image, the output path)
is checked before the model is loaded, so mistakes answer at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

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
    check_output_file,
    load_cli_model,
    make_predictor,
    model_source,
    output_option,
    read_cli_image,
)


def _numbers(option: str, text: str, form: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} '{text}': expected {form} with numbers")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` (foreground) or ``X,Y,LABEL`` with LABEL 1 foreground / 0 background."""
    values = _numbers("--point", text, "X,Y or X,Y,LABEL", (2, 3))
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise ValueError(f"--point '{text}': LABEL must be 1 (foreground) or 0 (background)")
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` in pixels, top-left and bottom-right corners."""
    x0, y0, x1, y1 = _numbers("--box", text, "X0,Y0,X1,Y1", (4,))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"--box '{text}': expected X0 < X1 and Y0 < Y1 (top-left, then bottom-right corner)")
    return x0, y0, x1, y1


def prompts_on_image(
    point_texts: list[str], box_texts: list[str], points: list, boxes: list, size: tuple[int, int], image: Path
) -> list:
    """Refuse points off the image; clip boxes that reach past its edges (notice on stderr). Returns the boxes."""
    from ..prompting import clip_box, outside_image

    height, width = size
    frame = f"the image {image} is {width}x{height} pixels (as displayed), X in 0..{width}, Y in 0..{height}"
    for text, point in zip(point_texts, points):
        if outside_image(point[:2], size):
            raise ValueError(f"--point '{text}' is outside the image: {frame}")
    clipped = []
    for text, box in zip(box_texts, boxes):
        inside = clip_box(box, size)
        if inside is None:
            raise ValueError(f"--box '{text}' is outside the image: {frame}")
        if inside != tuple(box):
            typer.echo(
                f"notice: --box '{text}' reaches past the {width}x{height} image; "
                f"clipped to {','.join(f'{v:g}' for v in inside)}",
                err=True,
            )
        clipped.append(inside)
    return clipped


def mask_paths(output: Path, count: int) -> list[Path]:
    """``mask.png`` for one mask; ``mask_0.png``, ``mask_1.png``... for one mask per box."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def overlay_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_overlay.jpg")


def mask_box(mask: Any) -> list[int] | None:
    """Inclusive pixel bounding box [x0, y0, x1, y1] of a mask, None when it is empty."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def segment(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file (anything Pillow reads).")],
    output: Annotated[Path, output_option("MASK.png", "Mask PNG to write (0/255).")],
    point: Annotated[
        list[str] | None,
        typer.Option("--point", "-p", metavar="X,Y[,LABEL]", help="Point prompt; LABEL 1 object (default), 0 not."),
    ] = None,
    box: Annotated[
        list[str] | None, typer.Option("--box", "-b", metavar="X0,Y0,X1,Y1", help="Box prompt; several: one mask each.")
    ] = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    variant: VariantOption = None,
    multimask: Annotated[bool, typer.Option(help="Ask for 3 masks per object and keep the best.")] = False,
    overlay: OverlayOption = False,
    device: DeviceOption = "cpu",
    runtime: RuntimeOption = "torch",
    precision: PrecisionOption = "fp32",
    calibration: CalibrationOption = None,
    max_pixels: MaxPixelsOption = 100_000_000,
) -> None:
    """Segment IMAGE from point and/or box prompts (pixels of the image as displayed) and write the mask(s) as PNG."""
    from ..atomic_files import atomic_write

    point_texts, box_texts = point or [], box or []
    points = [parse_point(text) for text in point_texts]
    boxes = [parse_box(text) for text in box_texts]
    if not points and not boxes:
        raise ValueError("no prompt: give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output '{output}': masks are written as PNG, use a .png name")
    name_or_path = model_source(model, checkpoint)
    for path in mask_paths(output, max(len(boxes), 1)) + ([overlay_path(output)] if overlay else []):
        check_output_file(path)
    picture = read_cli_image(image, max_pixels)
    boxes = prompts_on_image(point_texts, box_texts, points, boxes, picture.shape[:2], image)
    check_engine(runtime, precision)

    import numpy as np
    from PIL import Image

    from ..prompting import predict_objects

    sam = load_cli_model(name_or_path, variant, device)
    predictor = make_predictor(sam, runtime, precision, calibration)
    predictor.set_image(picture)
    results = predict_objects(predictor, points, boxes, multimask)

    summary: dict[str, Any] = {"image": str(image), "model": name_or_path, "variant": sam.variant}
    summary.update(runtime=predictor.runtime, precision=predictor.precision, masks=[])
    for path, (mask, score) in zip(mask_paths(output, len(results)), results, strict=True):
        png = Image.fromarray(mask.astype(np.uint8) * 255)
        atomic_write(path, lambda tmp, png=png: png.save(tmp, format="PNG"))
        summary["masks"].append(
            {"file": str(path), "score": round(score, 4), "area": int(mask.sum()), "box": mask_box(mask)}
        )
    summary["overlay"] = None
    if overlay:
        from ..visualize import render_overlay

        drawn = render_overlay(picture, [mask for mask, _ in results], points, boxes)
        atomic_write(overlay_path(output), lambda tmp: drawn.save(tmp, format="JPEG", quality=90))
        summary["overlay"] = str(overlay_path(output))
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    add_command(app, segment)
