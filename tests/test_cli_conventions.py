"""Conventions every ``evitsam`` command follows (run as a subprocess), the one overlay renderer, and the
Python example of docs/cli.md run exactly as written."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from cli_run import evitsam, imports
from support import REPO

import evitsam as package
from evitsam.data.synthetic import SynthSettings, render
from evitsam.visualize import mask_colours, render_overlay

COMMANDS = {  # command -> does it write an output (-o/--output)?
    ("segment",): True,
    ("everything",): True,
    ("convert",): False,  # IN OUT arguments
    ("train",): True,
    ("eval",): True,
    ("export", "onnx"): True,
    ("distill", "run"): True,
    ("distill", "precompute"): True,
    ("data", "synth"): True,
    ("label",): True,
    ("serve",): False,  # writes nothing
}


def test_help_short_and_long_and_version():
    long, short = evitsam("--help"), evitsam("-h")
    assert long.returncode == short.returncode == 0 and long.stdout == short.stdout
    for command in COMMANDS:
        assert command[0] in long.stdout
    done = evitsam("--version")
    assert (done.returncode, done.stdout) == (0, f"evitsam {package.__version__}\n")


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_short_help_plain_usage_and_one_output_spelling(command):
    done = evitsam(*command, "-h")
    assert done.returncode == 0, done.stderr
    usage = done.stdout.splitlines()[0]
    assert usage.startswith(f"Usage: evitsam {' '.join(command)} ") and "{" not in usage, usage
    assert ("-o, --output" in done.stdout) == COMMANDS[command], done.stdout
    assert "--out " not in done.stdout


def _option_help(command: str, option: str) -> str:
    text = evitsam(command, "-h").stdout
    block = text[text.index(option) :].split("\n  -")[0]
    return " ".join(block.split())


@pytest.mark.slow
def test_overlay_and_max_pixels_mean_the_same_on_every_command():
    for option in ("--overlay", "--max-pixels"):
        assert _option_help("segment", option) == _option_help("everything", option)
    done = evitsam("segment", "photo.jpg", "-p", "1,1", "-o", "mask.png", "--overlay", "overlay.png")
    assert done.returncode == 2 and "--overlay takes no file name" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args",
    [["--help"], ["segment", "-h"], ["segment", "missing.jpg", "--point", "1,1", "-o", "out.png"]],
    ids=["help", "segment help", "missing image"],
)
def test_help_and_input_errors_do_not_import_torch(args, tmp_path):
    modules, done = imports(*[tmp_path / a if a.endswith((".jpg", ".png")) else a for a in args])
    assert done.returncode in (0, 2), done.stderr
    assert "typer" in modules and "evitsam" in modules  # the check sees imports at all
    assert "torch" not in modules


def test_overlay_outline_shows_a_blue_mask_on_a_blue_object():
    """The first mask colour is blue: on a blue object its fill barely shows, its outline must."""
    blue = tuple(int(c) for c in mask_colours(1)[0])
    assert blue[2] > 200 and blue[0] < 100, blue
    image = np.full((120, 160, 3), 235, np.uint8)
    image[30:90, 40:120] = blue  # a blue object on white
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:120] = True
    drawn = np.asarray(render_overlay(image, [mask])).astype(int)
    assert np.abs(drawn[50:70, 60:100] - image[50:70, 60:100]).max() <= 1, "the fill changed a same-colour object"
    edge = drawn[30:90, 40]  # the object's left edge column
    assert (edge.min(axis=1) > 200).mean() > 0.8, "no white outline along the edge"
    outside = drawn[30:90, 38]
    assert (outside.max(axis=1) < 60).mean() > 0.8, "no dark line edging the outline"
    # Distinct colours: many masks, no two alike.
    colours = mask_colours(12).astype(int)
    distances = np.abs(colours[:, None] - colours[None]).sum(-1)[~np.eye(12, dtype=bool)]
    assert distances.min() > 40


def python_example() -> str:
    text = (REPO / "docs" / "cli.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_the_python_example_runs_as_written(tmp_path):
    """The example (also the README's) uses only the package: run it from an empty folder."""
    done = subprocess.run(
        [sys.executable, "-c", python_example()], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"mask of (\d+) pixels, score ([\d.]+)\n", done.stdout)
    assert found, done.stdout
    truth = next(m for m, _ in render(SynthSettings(seed=21, size=800), 0)[2] if m[127, 586])
    assert 0.5 < int(found.group(1)) / truth.sum() < 1.5, "the example's mask is not the clicked object"
