"""How results are shown and kept: the paper-style line, a Markdown table, RESULTS.json.

The line reads like the official script's output (``all=79.927, large=83.748, ...`` for mIoU;
AP with one decimal as in the paper's tables), so numbers can be compared at a glance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic_files import atomic_write

MIOU_KEYS = ("all", "large", "medium", "small")


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _setting(results: dict) -> str:
    if results["prompt"] == "point":
        clicks = results["clicks"]
        return f"{clicks} click" + ("s" if clicks != 1 else "")
    return {"box": "GT box", "detector": "detector box"}[results["prompt"]]


def summary_line(results: dict) -> str:
    """One line: dataset, setting, the metrics, and how much was evaluated."""
    head = f"{results['dataset'].upper()} {_setting(results)}"
    if "miou" in results:
        metrics = ", ".join(f"{key}={_number(results['miou'][key], 3)}" for key in MIOU_KEYS)
        return f"{head} mIoU: {metrics} ({results['num_objects']} objects, {results['num_images']} images)"
    metrics = ", ".join(f"{key}={_number(value, 1)}" for key, value in results["ap"].items())
    return f"{head} mask AP: {metrics} ({results['num_detections']} detections, {results['num_images']} images)"


def markdown_table(results: dict) -> str:
    """A Markdown table of the run, ready to paste into a README or a report."""
    model = f"{results['model']} | " if "model" in results else ""
    model_head = "model | " if model else ""
    if "miou" in results:
        keys, values, digits = MIOU_KEYS, results["miou"], 3
        count = f"{results['num_objects']} objects"
        names = [f"mIoU {key}" for key in keys]
    else:
        keys, values, digits = tuple(results["ap"]), results["ap"], 1
        count = f"{results['num_detections']} detections"
        names = [f"mask {key}" for key in keys]
    header = f"| {model_head}dataset | prompt | images | evaluated | " + " | ".join(names) + " |"
    rule = "|" + "---|" * (4 + bool(model)) + "---:|" * len(keys)
    row = (
        f"| {model}{results['dataset']} | {_setting(results)} | {results['num_images']} | {count} | "
        + " | ".join(_number(values[k], digits) for k in keys)
        + " |"
    )
    return "\n".join([header, rule, row]) + "\n"


def write_results(path: str | os.PathLike, results: dict) -> tuple[Path, Path]:
    """RESULTS.json (without predictions) and the Markdown table beside it (same name, ``.md``)."""
    path = Path(path)
    summary = {key: value for key, value in results.items() if key != "predictions"}
    table = path.with_suffix(".md")
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    atomic_write(table, lambda tmp: Path(tmp).write_text(markdown_table(summary)))
    return path, table


def write_predictions(path: str | os.PathLike, predictions: list[dict]) -> Path:
    """Per-object IoU records, or detections with RLE masks (COCO results format) as JSON."""
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(predictions)))
    return path
