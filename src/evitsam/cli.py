"""The ``evitsam`` command: segment, convert and export checkpoints, make data, distil, train, evaluate.

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
from .variants import DEFAULT_VARIANT, HF_REPO, get_variant
from .weights import cache_dir, convert_checkpoint, load_model

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


def _command_group(help: str, **options: Any) -> typer.Typer:
    """A command group whose errors go through :class:`_Group` (one line, exit code 2)."""
    return typer.Typer(
        cls=_Group, help=help, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None, **options
    )


app = _command_group("EfficientViT-SAM: fast promptable segmentation.", add_completion=False)

# Options shared by the commands that load a model.
ModelOption = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Variant name (l0 ... xl1: official weights, cached) [default: bundled nano]."),
]
CheckpointOption = Annotated[Path | None, typer.Option(metavar="PATH", help="Checkpoint file (.pt or .safetensors).")]
VariantOption = Annotated[
    str | None, typer.Option(metavar="NAME", help="Variant of --checkpoint (inferred if omitted).")
]


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
# The model options every model-running command shares.
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


def model_source(model: str | None, checkpoint: Path | None) -> str | None:
    """What to pass to ``load_model``: the --checkpoint path or the --model name (never both)."""
    if model is not None and checkpoint is not None:
        raise ValueError("--model and --checkpoint are mutually exclusive: give one")
    if model is None and checkpoint is None:
        return DEFAULT_VARIANT
    return str(checkpoint) if checkpoint is not None else model


def load_cli_model(name_or_path: str, variant: str | None, device: str | torch.device = "cpu"):
    """``load_model``, plus a one-line notice on stderr when that is the small bundled model."""
    sam = load_model(name_or_path, variant=variant, device=device)
    if name_or_path == DEFAULT_VARIANT:
        typer.echo(
            f"notice: using the small bundled '{DEFAULT_VARIANT}' model; for full quality use the official weights, "
            f"e.g. --model l0 (downloaded from huggingface.co/{HF_REPO} into {cache_dir()})",
            err=True,
        )
    return sam


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
    runtime: RuntimeOption = "torch",
    precision: PrecisionOption = "fp32",
    calibration: CalibrationOption = None,
) -> None:
    """Segment IMAGE from point and/or box prompts and write the mask(s) as PNG."""
    from .export.engines import check_options

    points = [parse_point(text) for text in point or []]
    boxes = [parse_box(text) for text in box or []]
    if not points and not boxes:
        raise ValueError("no prompt: give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output '{output}': masks are written as PNG, use a .png name")
    check_options(runtime, precision)
    overlay_format = _image_format(overlay) if overlay is not None else None
    picture = open_image(image)
    name_or_path, sam = _load(model, checkpoint, variant, device)

    predictor = _predictor(sam, runtime, precision, calibration)
    predictor.set_image(picture)
    results = predict_masks(predictor, points, boxes, multimask)

    summary: dict[str, Any] = {"image": str(image), "model": name_or_path, "variant": sam.variant}
    summary.update(runtime=predictor.runtime, precision=predictor.precision, masks=[])
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


def _load(model: str | None, checkpoint: Path | None, variant: str | None, device: str = "cpu"):
    """(name or path, model) from the --model / --checkpoint / --variant options."""
    name_or_path = model_source(model, checkpoint)
    return name_or_path, load_cli_model(name_or_path, variant, device)


def _predictor(sam, runtime: str, precision: str, calibration: Path | None) -> SamPredictor:
    """A predictor whose precision fallback (if any) is reported as one ``notice:`` line on stderr."""
    import warnings

    from .export.engines import PrecisionFallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrecisionFallback)
        predictor = SamPredictor(sam, runtime=runtime, precision=precision, calibration=calibration)
    for warning in caught:
        if issubclass(warning.category, PrecisionFallback):
            typer.echo(f"notice: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return predictor


export_app = _command_group("Write the model for other runtimes and tools.")
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx_command(
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder to write.", show_default=False)],
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    variant: VariantOption = None,
    single_mask: Annotated[
        bool, typer.Option("--single-mask", help="Decoder returns SAM's best single mask instead of all four.")
    ] = False,
) -> None:
    """Write encoder.onnx, decoder.onnx (SAM's signature), decoder_boxes.onnx and config.yaml into DIR."""
    from .export import export_onnx

    if output.exists() and not output.is_dir():
        raise ValueError(f"--output '{output}': expected a folder, found a file")
    name_or_path, sam = _load(model, checkpoint, variant)
    paths = export_onnx(sam, output, single_mask=single_mask)
    summary = {"model": name_or_path, "variant": sam.variant, "single_mask": single_mask}
    summary["files"] = {key: str(path) for key, path in paths.items()}
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
) -> None:
    """Segment everything in IMAGE_OR_FOLDER: SAM's mask records per image, resumable for folders."""
    from .everything import MaskGenerator
    from .everything_io import FORMATS, image_files, segment_everything
    from .export.engines import check_options

    if fmt not in FORMATS:
        raise ValueError(f"--format '{fmt}': expected one of {', '.join(FORMATS)}")
    check_options(runtime, precision)
    for option, value in [("--pred-iou-thresh", pred_iou_thresh), ("--stability-score-thresh", stability_score_thresh)]:
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{option} {value}: expected a number in [0, 1]")
    name_or_path = model_source(model, checkpoint)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output '{output}' exists and is not a folder")
    files = image_files(source)
    if source.is_file():
        open_image(source)  # a single unreadable image is an error, not a warning
    sam = load_cli_model(name_or_path, variant, device)
    predictor = _predictor(sam, runtime, precision, calibration)
    iou_default, stability_default = get_variant(sam.variant).everything_thresholds  # SAM's 0.88/0.95 for l0..xl1
    filters = {
        "pred_iou_thresh": iou_default if pred_iou_thresh is None else pred_iou_thresh,
        "stability_score_thresh": stability_default if stability_score_thresh is None else stability_score_thresh,
    }
    generator = MaskGenerator(predictor, points_per_side=points_per_side, sampling=sampling, **filters)
    summary = segment_everything(generator, files, output, fmt, overlay, open_image=open_image)
    runtime_summary = {"runtime": predictor.runtime, "precision": predictor.precision} | filters
    typer.echo(json.dumps({"model": name_or_path, "variant": sam.variant} | runtime_summary | summary, indent=2))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(metavar="IN.pt", help="Official .pt checkpoint.", show_default=False)],
    target: Annotated[
        Path, typer.Argument(metavar="OUT.safetensors", help="The .safetensors file to write.", show_default=False)
    ],
    variant: Annotated[
        str | None, typer.Option(metavar="NAME", help="Variant (inferred from the tensors if omitted).")
    ] = None,
    half: Annotated[bool, typer.Option("--half", help="Store float tensors as float16 (half the size).")] = False,
) -> None:
    """Convert a checkpoint to .safetensors with its variant recorded (safe, fast to load)."""
    name = convert_checkpoint(source, target, variant, half=half)
    typer.echo(f"wrote {target} (variant {name}{', float16' if half else ''})")


ConfigArgument = Annotated[
    Path, typer.Argument(metavar="CONFIG", help="YAML recipe (see configs/).", show_default=False)
]
DataOption = Annotated[Path, typer.Option(metavar="PATH", help="SA-1B or COCO folder (layout detected).")]
OutOption = Annotated[Path, typer.Option(metavar="DIR", help="Run folder: config, metrics, checkpoints, weights.")]
InitOption = Annotated[str | None, typer.Option(metavar="NAME|PATH", help="Start from these weights.")]
MaxStepsOption = Annotated[int | None, typer.Option(metavar="N", help="Override max_steps (and epochs).")]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")]
StopAtOption = Annotated[int | None, typer.Option(metavar="N", help="Stop after step N with a checkpoint.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config key.")]
TeacherOption = Annotated[
    str | None, typer.Option(metavar="NAME|PATH", help="vit_h/vit_l/vit_b, a SAM .pth, or an evitsam model.")
]


def _overrides(set_: list[str] | None, max_steps: int | None) -> list[str]:
    steps = [f"max_steps={max_steps}", "epochs=0"] if max_steps is not None else []
    return list(set_ or []) + steps


@app.command("train")
def train_command(
    config: ConfigArgument,
    data: DataOption,
    out: OutOption,
    init: InitOption = None,
    max_steps: MaxStepsOption = None,
    resume: ResumeOption = False,
    stop_at: StopAtOption = None,
    set_: SetOption = None,
) -> None:
    """Stage 2: end-to-end training / fine-tuning; under torchrun it runs DDP."""
    from .training.config import TrainConfig
    from .training.train import train

    train(TrainConfig.from_yaml(config, _overrides(set_, max_steps)), data, out, init, resume, stop_at=stop_at)
    typer.echo(f"run folder {out}")


class _DefaultCommandGroup(_Group):
    """A group whose first command is the default: ``distill CONFIG ...`` means ``distill run CONFIG ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


distill_app = typer.Typer(
    cls=_DefaultCommandGroup,
    help="Stage 1: distil a teacher's image embeddings into a student encoder.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(distill_app, name="distill")


@distill_app.command("run")
def distill_command(
    config: ConfigArgument,
    data: DataOption,
    out: OutOption,
    teacher: TeacherOption = None,
    cache: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Teacher embeddings made by 'distill precompute'.")
    ] = None,
    init: InitOption = None,
    max_steps: MaxStepsOption = None,
    resume: ResumeOption = False,
    stop_at: StopAtOption = None,
    set_: SetOption = None,
) -> None:
    """Distil (the default command: 'evitsam distill CONFIG ...'); --teacher, --cache, or both."""
    from .training.config import DistillConfig
    from .training.distill import distill

    settings = DistillConfig.from_yaml(config, _overrides(set_, max_steps))
    distill(settings, data, out, teacher, cache, init, resume, stop_at=stop_at)
    typer.echo(f"run folder {out}; continue with: evitsam train CONFIG --init {out / 'model.safetensors'} ...")


@distill_app.command("precompute")
def precompute_command(
    teacher: Annotated[str, typer.Option(metavar="NAME|PATH", help="vit_h/vit_l/vit_b, a SAM .pth, or a model.")],
    data: DataOption,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Cache folder (resumed if it exists).")],
    hflip: Annotated[bool, typer.Option(help="Also cache mirrored images (for hflip).")] = False,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="Torch device, e.g. cpu or cuda.")] = "cpu",
) -> None:
    """Cache the teacher's embeddings of every image once (float16, resumable, sharded under torchrun)."""
    from .training.distill import precompute
    from .training.teacher import load_teacher

    written = precompute(load_teacher(teacher, device), data, out, hflip)
    typer.echo(f"cache {out}: {written} embeddings written")


@app.command("eval")
def eval_command(
    images: Annotated[Path, typer.Option(metavar="DIR", help="Image folder (COCO: val2017/; LVIS: the COCO root).")],
    annotations: Annotated[Path, typer.Option(metavar="JSON", help="COCO or LVIS instances annotation file.")],
    output: Annotated[Path, typer.Option(metavar="RESULTS.json", help="Results to write (+ a .md table beside).")],
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
    from .distributed import init_distributed, shutdown_distributed
    from .evaluation import EvalDataset, load_detections, run_evaluation
    from .evaluation.report import summary_line, write_predictions, write_results
    from .evaluation.runner import check_settings

    name_or_path = model_source(model, checkpoint)
    if output.suffix.lower() != ".json":
        raise ValueError(f"--output '{output}': results are written as JSON, use a .json name")
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


data_app = typer.Typer(cls=_Group, help="Training data.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Dataset folder to write or complete (COCO layout).")],
    images: Annotated[int, typer.Option(metavar="N", help="Number of generated scenes.")],
    seed: Annotated[
        int, typer.Option(metavar="S", help="Scene i depends only on (S, i); another S, other scenes.")
    ] = 0,
    size: Annotated[int, typer.Option(metavar="PIXELS", help="Long side of every image.")] = 512,
    coco: Annotated[
        Path | None, typer.Option(metavar="PATH", help="COCO train folder: photos for backgrounds and cut-outs.")
    ] = None,
    real: Annotated[bool, typer.Option(help="Also list the --coco photos themselves, as they are.")] = False,
    min_area: Annotated[int, typer.Option(metavar="PIXELS", help="Drop objects less visible than this.")] = 64,
    workers: Annotated[int, typer.Option(metavar="N", help="Processes drawing in parallel.")] = 1,
) -> None:
    """Generate synthetic training scenes with exact masks (resumable; never from val2017)."""
    from .data.synthetic import generate

    summary = generate(out, images, seed=seed, size=size, coco=coco, real=real, min_area=min_area, workers=workers)
    typer.echo(json.dumps(summary, indent=2))


def main() -> None:
    """Console entry point (``evitsam``) and ``python -m evitsam``."""
    app()


from .labelling_command import label as label_command  # noqa: E402  (last: it reuses the helpers above)

app.command("label")(label_command)
