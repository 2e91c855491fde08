"""The job's folder of finished work (``OUT.parts/``) and the merge into one COCO file.

The sorted images are cut into chunks of ``chunk_size`` consecutive images. A chunk is the unit of
work and of resumption: a process labels a whole chunk, then writes ``chunk-NNNNNNNN.json``
atomically (``-failed`` before ``.json`` when some image could not be read). A rerun skips the
chunks that have a clean file and redoes the others whole, so a chunk's images are always batched
the same way and a killed and resumed job gives the same bytes as an uninterrupted one, whatever
the number of processes. ``job.json`` records what the job is (images, model, settings); parts of
another job are never mixed in.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write

MANIFEST = "job.json"
CHUNK_FILE = re.compile(r"^chunk-(\d{8})(-failed)?\.json$")
FORMAT_VERSION = 1


def parts_dir_for(output: Path) -> Path:
    """``labels.json`` -> ``labels.parts/``: the per-chunk results beside the output."""
    return output.with_suffix(".parts")


def failures_path_for(output: Path) -> Path:
    """``labels.json`` -> ``labels.failures.json``."""
    return output.with_suffix(".failures.json")


def chunk_path(parts: Path, index: int, failed: bool) -> Path:
    return parts / f"chunk-{index:08d}{'-failed' if failed else ''}.json"


def _write_json(path: Path, value: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            json.dump(value, file, separators=(",", ":"))

    atomic_write(path, write)


def read_manifest(parts: Path) -> dict:
    path = parts / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a labelling parts folder (made by 'evitsam label')")
    return json.loads(path.read_text())


def open_job(parts: Path, manifest: dict) -> None:
    """Start the job's parts folder, or check that the one there belongs to the same job."""
    path = parts / MANIFEST
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing.get("job") != manifest["job"]:
            changed = sorted(k for k in manifest["job"] if existing.get("job", {}).get(k) != manifest["job"][k])
            raise ValueError(
                f"{parts} holds the results of a different labelling job (differs in: {', '.join(changed)}); "
                "delete it or choose another --output"
            )
        if existing.get("output") == manifest["output"]:
            return
    _write_json(path, manifest)


def finished_chunks(parts: Path) -> dict[int, Path]:
    """Chunk index -> its file; a clean file wins over a ``-failed`` one of the same chunk."""
    found: dict[int, Path] = {}
    if not parts.is_dir():
        return found
    with os.scandir(parts) as entries:
        for entry in entries:
            match = CHUNK_FILE.match(entry.name)
            if match:
                index, failed = int(match.group(1)), match.group(2) is not None
                if not failed or index not in found:
                    found[index] = Path(entry.path)
    return found


def clean_chunks(parts: Path) -> set[int]:
    """Chunks done without failures: a rerun skips these and redoes every other chunk whole."""
    return {i for i, path in finished_chunks(parts).items() if not path.name.endswith("-failed.json")}


def write_chunk(parts: Path, index: int, images: list[dict], failures: list[dict]) -> None:
    """Record a finished chunk; a stale file of the other kind (clean / failed) is removed after."""
    failed = bool(failures)
    _write_json(chunk_path(parts, index, failed), {"chunk": index, "images": images, "failures": failures})
    chunk_path(parts, index, not failed).unlink(missing_ok=True)


def _chunks(files: dict[int, Path]) -> Iterator[dict]:
    for index in sorted(files):
        yield json.loads(files[index].read_text())


def merge(parts: str | os.PathLike, output: str | os.PathLike | None = None) -> dict:
    """Write the job's COCO instances JSON and its failures list from a complete parts folder.

    ``output`` defaults to the path the job was started with. Annotation ids are numbered in image
    order, so merging the same parts again writes the same bytes. Returns a summary.
    """
    parts = Path(parts)
    manifest = read_manifest(parts)
    output = Path(output) if output is not None else Path(manifest["output"])
    files = finished_chunks(parts)
    missing = [i for i in range(manifest["num_chunks"]) if i not in files]
    if missing:
        first = missing[0] * manifest["chunk_size"]
        raise ValueError(
            f"{parts}: {len(missing)} of {manifest['num_chunks']} chunks are not labelled yet (the first holds images "
            f"from #{first} in sorted order); run the same 'evitsam label' command again to finish them"
        )
    counts = {"images": 0, "annotations": 0}
    failures: list[dict] = []

    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            file.write('{"info":' + json.dumps(manifest["info"], separators=(",", ":")) + ',"images":[')
            first = True
            for chunk in _chunks(files):
                failures.extend(chunk["failures"])
                for image in chunk["images"]:
                    record = {k: image[k] for k in ("id", "file_name", "width", "height")}
                    file.write(("" if first else ",") + json.dumps(record, separators=(",", ":")))
                    first = False
                    counts["images"] += 1
            file.write('],"annotations":[')
            next_id = 1
            for chunk in _chunks(files):
                for image in chunk["images"]:
                    for annotation in image["annotations"]:
                        record = {"id": next_id, "image_id": image["id"], **annotation, "iscrowd": 0}
                        file.write(("" if next_id == 1 else ",") + json.dumps(record, separators=(",", ":")))
                        next_id += 1
            counts["annotations"] = next_id - 1
            file.write('],"categories":' + json.dumps(manifest["categories"], separators=(",", ":")) + "}")

    atomic_write(output, write)
    failures_file = failures_path_for(output)
    _write_json(failures_file, failures)
    return {
        "output": str(output),
        "failures_file": str(failures_file),
        "images": manifest["num_images"],
        "labelled": counts["images"],
        "failed": len(failures),
        "annotations": counts["annotations"],
    }
