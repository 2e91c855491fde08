"""The ``evitsam`` command: segment an image from prompts or everything in it, convert checkpoints.

The CLI is a thin layer over the public API (``load_model``, ``SamPredictor``,
``convert_checkpoint``). The library already raises ``ValueError``/``FileNotFoundError`` with
messages written for people, so the CLI turns those into one line on stderr and exit code 2
in a single place (:class:`_Group`), never a traceback. Cheap checks (prompt syntax, image,
output names) run before the model is loaded, so mistakes fail in milliseconds, not seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from PIL import Image, ImageDraw
from typer.core import TyperGroup

from .files import atomic_write
from .predictor import SamPredictor
from .weights import convert_checkpoint, load_model

# Errors a user can cause (CheckpointError is a ValueError, FileNotFoundError an OSError).
USER_ERRORS = (ValueError, OSError)
EXIT_USER_ERROR = 2
# Mask colours for the overlay (RGB), one per mask; points are green (foreground) / red (background).
PALETTE = ((30, 144, 255), (255, 160, 0), (186, 85, 211), (0, 206, 209), (255, 105, 180), (154, 205, 50))
FOREGROUND, BACKGROUND = (0, 220, 0), (230, 0, 0)
OVERLAY_ALPHA = 0.5


class _Group(TyperGroup):
    """Every command runs through ``invoke``: the one place that maps user errors to exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            typer.echo(f"error: {_one_line(error)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


def _one_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


app = typer.Typer(
    cls=_Group,
    help="EfficientViT-SAM: fast promptable segmentation.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# ---------------------------------------------------------------------------------------- prompts
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


# ------------------------------------------------------------------------------------- prediction
def predict_masks(
    predictor: SamPredictor, points: list[tuple[float, float, int]], boxes: list[tuple], multimask: bool
) -> list[tuple[np.ndarray, float]]:
    """(mask, score) per object: one for all points (+ one box), or one per box sharing the points.

    With ``multimask`` the decoder proposes 3 masks per object and the best-scoring one is kept.
    """
    coords = np.array([p[:2] for p in points], dtype=np.float64).reshape(-1, 2) if points else None
    labels = np.array([p[2] for p in points], dtype=np.float64) if points else None
    if len(boxes) <= 1:
        box = np.array(boxes[0], dtype=np.float64) if boxes else None
        masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=multimask)
        best = int(np.argmax(scores))
        return [(masks[best], float(scores[best]))]
    # Several boxes: one batched decoder call, the points repeated for every box.
    size, device = predictor.original_size, predictor.device
    box_tensor = predictor.transform.apply_boxes_torch(torch.tensor(boxes, dtype=torch.float, device=device), size)
    coord_tensor = label_tensor = None
    if points:
        coord_tensor = predictor.transform.apply_coords_torch(torch.tensor(coords, device=device)[None], size)
        coord_tensor = coord_tensor.repeat(len(boxes), 1, 1)
        label_tensor = torch.tensor(labels, dtype=torch.float, device=device)[None].repeat(len(boxes), 1)
    masks, scores, _ = predictor.predict_torch(coord_tensor, label_tensor, box_tensor, multimask_output=multimask)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(boxes), device=best.device)
    return list(zip(masks[rows, best].cpu().numpy(), scores[rows, best].float().cpu().tolist(), strict=True))


def mask_box(mask: np.ndarray) -> list[int] | None:
    """Inclusive pixel bounding box [x0, y0, x1, y1] of a mask, None when it is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


# ----------------------------------------------------------------------------------------- output
def _image_format(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of '{path}' from its extension; use e.g. .png or .jpg")
    return fmt


def save_image(image: Image.Image, path: Path, fmt: str) -> None:
    """Write atomically (temp file + rename): an interrupted run never leaves a half-written file."""
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def mask_paths(output: Path, count: int) -> list[Path]:
    """``mask.png`` for one mask; ``mask_0.png``, ``mask_1.png``... for one mask per box."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def render_overlay(image: Image.Image, masks: list[np.ndarray], points: list, boxes: list) -> Image.Image:
    """The image with masks alpha-blended in distinct colours and the prompts drawn on top."""
    out = image.copy()
    for i, mask in enumerate(masks):
        colour = Image.new("RGB", image.size, PALETTE[i % len(PALETTE)])
        out = Image.composite(
            Image.blend(out, colour, OVERLAY_ALPHA), out, Image.fromarray(mask.astype(np.uint8) * 255)
        )
    draw = ImageDraw.Draw(out)
    scale = max(image.size) / 500
    for i, box in enumerate(boxes):
        draw.rectangle(box, outline=PALETTE[i % len(PALETTE)], width=max(2, round(2 * scale)))
    radius = max(3, round(5 * scale))
    for x, y, label in points:
        fill = FOREGROUND if label == 1 else BACKGROUND
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=(255, 255, 255))
    return out


def open_image(path: Path) -> Image.Image:
    """The image as RGB, or a ValueError/FileNotFoundError saying why it cannot be read."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {_one_line(error)}") from None


# --------------------------------------------------------------------------------------- commands
# The model options every command that runs the model takes.
ModelOption = Annotated[
    str | None, typer.Option(metavar="NAME", help="Variant name (l0 ... xl1), weights from the cache.")
]
CheckpointOption = Annotated[Path | None, typer.Option(metavar="PATH", help="Checkpoint file (.pt or .safetensors).")]
VariantOption = Annotated[
    str | None, typer.Option(metavar="NAME", help="Variant of --checkpoint (inferred if omitted).")
]
DeviceOption = Annotated[str, typer.Option(metavar="DEVICE", help="Torch device, e.g. cpu or cuda.")]


def check_model_options(model: str | None, checkpoint: Path | None) -> str | None:
    """The name or path to load (cheap check, before anything is read)."""
    if model is not None and checkpoint is not None:
        raise ValueError("--model and --checkpoint are mutually exclusive: give one")
    return str(checkpoint) if checkpoint is not None else model


@app.command()
def segment(
    image: Annotated[
        Path, typer.Argument(metavar="IMAGE", help="Image file (anything Pillow reads).", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="MASK.png", help="Mask PNG to write (0/255).", show_default=False)
    ],
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
    overlay: Annotated[
        Path | None, typer.Option(metavar="PATH", help="Also write the image with masks and prompts drawn.")
    ] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Segment IMAGE from point and/or box prompts and write the mask(s) as PNG."""
    points = [parse_point(text) for text in point or []]
    boxes = [parse_box(text) for text in box or []]
    if not points and not boxes:
        raise ValueError("no prompt: give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    name_or_path = check_model_options(model, checkpoint)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output '{output}': masks are written as PNG, use a .png name")
    overlay_format = _image_format(overlay) if overlay is not None else None
    picture = open_image(image)
    sam = load_model(name_or_path, variant=variant, device=device)

    predictor = SamPredictor(sam)
    predictor.set_image(picture)
    results = predict_masks(predictor, points, boxes, multimask)

    summary: dict[str, Any] = {"image": str(image), "model": name_or_path, "variant": sam.variant, "masks": []}
    for path, (mask, score) in zip(mask_paths(output, len(results)), results, strict=True):
        save_image(Image.fromarray(mask.astype(np.uint8) * 255), path, "PNG")
        summary["masks"].append(
            {"file": str(path), "score": round(score, 4), "area": int(mask.sum()), "box": mask_box(mask)}
        )
    if overlay is not None:
        drawn = render_overlay(picture, [mask for mask, _ in results], points, boxes)
        save_image(drawn, overlay, overlay_format)
    summary["overlay"] = str(overlay) if overlay is not None else None
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def everything(
    source: Annotated[
        Path, typer.Argument(metavar="IMAGE_OR_FOLDER", help="An image, or a folder of images.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for the masks files.", show_default=False)
    ],
    fmt: Annotated[
        str, typer.Option("--format", metavar="coco|json|png", help="COCO RLE JSON, uncompressed-RLE JSON, or PNGs.")
    ] = "coco",
    overlay: Annotated[bool, typer.Option(help="Also write NAME_overlay.jpg with the masks in colour.")] = False,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    variant: VariantOption = None,
    points_per_side: Annotated[int, typer.Option(metavar="N", help="Grid of N x N point prompts.")] = 32,
    sampling: Annotated[
        str, typer.Option(metavar="grid|coverage", help="coverage: skip points inside kept masks (faster).")
    ] = "grid",
    device: DeviceOption = "cpu",
) -> None:
    """Segment everything in IMAGE_OR_FOLDER: SAM's mask records per image, resumable for folders."""
    from .everything import MaskGenerator
    from .everything_io import FORMATS, image_files, segment_everything

    if fmt not in FORMATS:
        raise ValueError(f"--format '{fmt}': expected one of {', '.join(FORMATS)}")
    name_or_path = check_model_options(model, checkpoint)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output '{output}' exists and is not a folder")
    files = image_files(source)
    if source.is_file():
        open_image(source)  # a single unreadable image is an error, not a warning
    sam = load_model(name_or_path, variant=variant, device=device)
    generator = MaskGenerator(sam, points_per_side=points_per_side, sampling=sampling)
    summary = segment_everything(generator, files, output, fmt, overlay, open_image=open_image)
    typer.echo(json.dumps({"model": name_or_path, "variant": sam.variant} | summary, indent=2))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(metavar="IN.pt", help="Official .pt checkpoint.", show_default=False)],
    target: Annotated[
        Path, typer.Argument(metavar="OUT.safetensors", help="The .safetensors file to write.", show_default=False)
    ],
    variant: Annotated[
        str | None, typer.Option(metavar="NAME", help="Variant (inferred from the tensors if omitted).")
    ] = None,
) -> None:
    """Convert a checkpoint to .safetensors with its variant recorded (safe, fast to load)."""
    name = convert_checkpoint(source, target, variant)
    typer.echo(f"wrote {target} (variant {name})")


@app.command("train")
def train_command(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML recipe (see configs/).", show_default=False)],
    data: Annotated[Path, typer.Option(metavar="PATH", help="SA-1B or COCO folder (layout detected).")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Run folder: config, metrics, checkpoints, weights.")],
    init: Annotated[
        str | None, typer.Option(metavar="NAME|PATH", help="Start from these weights (fine-tuning).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(metavar="N", help="Override max_steps.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
    stop_at: Annotated[
        int | None, typer.Option(metavar="N", help="Stop after step N with a checkpoint (resume later).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config key.")] = None,
) -> None:
    """End-to-end training / fine-tuning; under torchrun it runs DDP."""
    from .training.config import TrainConfig
    from .training.train import train

    overrides = list(set_ or []) + ([f"max_steps={max_steps}"] if max_steps is not None else [])
    train(TrainConfig.from_yaml(config, overrides), data, out, init=init, resume=resume, stop_at=stop_at)
    typer.echo(f"run folder {out}")


def main() -> None:
    """Console entry point (``evitsam``) and ``python -m evitsam``."""
    app()
