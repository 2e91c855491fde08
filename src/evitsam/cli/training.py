"""``evitsam train``, ``evitsam distill`` (run, precompute) and ``evitsam data synth``: making models and data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import DefaultCommandGroup, add_command, check_output_folder, command_group, output_option

ConfigArgument = Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML recipe (see configs/).")]
DataOption = Annotated[Path, typer.Option(metavar="PATH", help="SA-1B or COCO folder (layout detected).")]
RunOption = Annotated[Path, output_option("DIR", "Run folder: config, metrics, checkpoints, weights.")]
InitOption = Annotated[str | None, typer.Option(metavar="NAME|PATH", help="Start from these weights.")]
MaxStepsOption = Annotated[int | None, typer.Option(metavar="N", help="Override max_steps (and epochs).")]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --output exactly where it stopped.")]
StopAtOption = Annotated[int | None, typer.Option(metavar="N", help="Stop after step N with a checkpoint.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config key.")]
TeacherOption = Annotated[
    str | None, typer.Option(metavar="NAME|PATH", help="vit_h/vit_l/vit_b, a SAM .pth, or an evitsam model.")
]


def _overrides(set_: list[str] | None, max_steps: int | None) -> list[str]:
    steps = [f"max_steps={max_steps}", "epochs=0"] if max_steps is not None else []
    return list(set_ or []) + steps


def train_command(
    config: ConfigArgument,
    data: DataOption,
    output: RunOption,
    init: InitOption = None,
    max_steps: MaxStepsOption = None,
    resume: ResumeOption = False,
    stop_at: StopAtOption = None,
    set_: SetOption = None,
) -> None:
    """Stage 2: end-to-end training / fine-tuning; under torchrun it runs DDP."""
    check_output_folder(output)
    from ..training.config import TrainConfig
    from ..training.train import train

    train(TrainConfig.from_yaml(config, _overrides(set_, max_steps)), data, output, init, resume, stop_at=stop_at)
    typer.echo(f"run folder {output}")


distill_app = command_group("Stage 1: distil a teacher's image embeddings into a student encoder.", DefaultCommandGroup)


def distill_command(
    config: ConfigArgument,
    data: DataOption,
    output: RunOption,
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
    check_output_folder(output)
    from ..training.config import DistillConfig
    from ..training.distill import distill

    settings = DistillConfig.from_yaml(config, _overrides(set_, max_steps))
    distill(settings, data, output, teacher, cache, init, resume, stop_at=stop_at)
    typer.echo(f"run folder {output}; continue with: evitsam train CONFIG --init {output / 'model.safetensors'} ...")


def precompute_command(
    teacher: Annotated[str, typer.Option(metavar="NAME|PATH", help="vit_h/vit_l/vit_b, a SAM .pth, or a model.")],
    data: DataOption,
    output: Annotated[Path, output_option("DIR", "Cache folder (resumed if it exists).")],
    hflip: Annotated[bool, typer.Option(help="Also cache mirrored images (for hflip).")] = False,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="Torch device, e.g. cpu or cuda.")] = "cpu",
) -> None:
    """Cache the teacher's embeddings of every image once (float16, resumable, sharded under torchrun)."""
    check_output_folder(output)
    from ..training.distill import precompute
    from ..training.teacher import load_teacher

    written = precompute(load_teacher(teacher, device), data, output, hflip)
    typer.echo(f"cache {output}: {written} embeddings written")


data_app = command_group("Training data.")


def synth_command(
    output: Annotated[Path, output_option("DIR", "Dataset folder to write or complete (COCO layout).")],
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
    check_output_folder(output)
    from ..data.synthetic import generate

    summary = generate(output, images, seed=seed, size=size, coco=coco, real=real, min_area=min_area, workers=workers)
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    add_command(app, train_command, "train")
    add_command(distill_app, distill_command, "run")
    add_command(distill_app, precompute_command, "precompute")
    app.add_typer(distill_app, name="distill")
    add_command(data_app, synth_command, "synth")
    app.add_typer(data_app, name="data")
