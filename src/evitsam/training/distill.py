"""Stage 1: distil a teacher's image embeddings into an EfficientViT student (the paper's first stage).

The student sees each image at its own resolution (512 for L, 1024 for XL), the teacher at its
own (1024 for SAM's ViT-H); the loss is the MSE between the two 256xGxG embeddings. Teacher
embeddings are either computed on the fly or read from a cache made once by :func:`precompute`
(float16 ``.npy`` files, resumable, sharded under torchrun), so long runs need no teacher in memory.
The run folder and loop are those of stage 2 (:func:`evitsam.training.loop.fit`); the final
``model.safetensors`` is a whole model (student encoder + the teacher's prompt encoder and mask
decoder), which ``evitsam train --init`` continues with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic_files import atomic_write
from ..data import SkippingDataset, open_dataset
from ..data.sample import first_readable
from ..models import EfficientViTSam
from ..weights import read_state_dict, save_safetensors
from .config import DistillConfig
from .loop import Process, batch_indices, build_model_for, check_run_folder, fit, split_indices, start_processes
from .teacher import Teacher, load_teacher, match_grid

MANIFEST = "manifest.json"
DECODER_FILE = "decoder.safetensors"
FLIP_SUFFIX = ".flip"


# ---------------------------------------------------------------------------------------- cache
def entry_path(root: Path, key: str, flipped: bool) -> Path:
    return root / f"{key}{FLIP_SUFFIX if flipped else ''}.npy"


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append .npy to a name
        np.save(handle, array)


class EmbeddingCache:
    """A folder of teacher embeddings: ``<image key>[.flip].npy`` (float16) + manifest + decoder weights."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"no embedding cache at {self.root}: no {MANIFEST} (make one with precompute)")
        self.manifest = json.loads(manifest.read_text())

    def get(self, key: str, flipped: bool = False) -> torch.Tensor:
        path = entry_path(self.root, key, flipped)
        if not path.is_file():
            raise FileNotFoundError(
                f"embedding cache {self.root} has no entry for image '{key}'{' (flipped)' if flipped else ''}; "
                "run precompute again (it resumes), with --hflip for flipped entries"
            )
        return torch.from_numpy(np.load(path).astype(np.float32))

    def decoder_state(self) -> dict[str, torch.Tensor]:
        return read_state_dict(self.root / DECODER_FILE)[0]


def precompute(teacher: Teacher, data: str | Path, out: str | Path, hflip: bool = False, progress: bool = True) -> int:
    """Write the teacher's embedding of every image (and its mirror image with ``hflip``) to ``out``.

    Finished files are kept, so an interrupted run continues where it stopped; under torchrun the
    images are split across processes. Returns how many embeddings this process wrote.
    """
    process = start_processes()
    out = Path(out)
    dataset = open_dataset(data, images_only=True)
    manifest = {"teacher": teacher.name, "teacher_size": teacher.encoder_size, "dtype": "float16", "hflip": hflip}
    if (out / MANIFEST).is_file():
        old = json.loads((out / MANIFEST).read_text())
        if old["teacher"] != teacher.name:
            raise ValueError(f"{out} caches embeddings of teacher '{old['teacher']}', not '{teacher.name}'")
        manifest["hflip"] = hflip or old.get("hflip", False)
    if process.rank == 0:
        atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
        save_safetensors(teacher.decoder_state, out / DECODER_FILE, None)
    mine = range(process.rank, len(dataset), process.world)
    written = 0
    from tqdm import tqdm

    for index in tqdm(mine, desc="precompute", unit="image", disable=not progress or process.rank != 0):
        key = dataset.image_key(index)
        todo = [flip for flip in ((False, True) if hflip else (False,)) if not entry_path(out, key, flip).exists()]
        image = dataset.read_image(index) if todo else None
        if image is None:  # done already, or unreadable (skipped with a warning)
            continue
        images = [image[:, ::-1].copy() if flip else image for flip in todo]
        for flip, embedding in zip(todo, teacher.embed(images).half().cpu().numpy(), strict=True):
            atomic_write(entry_path(out, key, flip), lambda tmp, e=embedding: _save_npy(tmp, e))
            written += 1
    return written


# ------------------------------------------------------------------------------------------- step
class DistillStep(nn.Module):
    """Student forward + MSE to the teacher's embeddings (resized to the student's grid if needed)."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> dict:
        embeddings = self.model.encode(images)
        targets = match_grid(targets.to(embeddings.device), embeddings.shape[-1])
        return {"loss": F.mse_loss(embeddings.float(), targets)}


def student_images(model: EfficientViTSam, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Resize (as inference does) and normalise images for the student encoder."""
    from ..transforms import SamTransform

    transform = SamTransform(model.encoder_size)
    tensors = [torch.from_numpy(transform.apply_image(image)).permute(2, 0, 1)[None].float() for image in images]
    return torch.cat([model.preprocess(t.to(device)) for t in tensors])


class TargetSource:
    """Teacher embeddings for a batch: from the cache when there is one, else from the live teacher."""

    def __init__(self, dataset: SkippingDataset, teacher: Teacher | None, cache: EmbeddingCache | None) -> None:
        if teacher is None and cache is None:
            raise ValueError("distillation needs a teacher (--teacher) or an embedding cache (--cache)")
        self.dataset, self.teacher, self.cache = dataset, teacher, cache

    def batch(self, indices: list[int], pool: list[int], flips: list[bool]) -> tuple[list[np.ndarray], torch.Tensor]:
        """(images as the student sees them, teacher embeddings) for dataset ``indices``."""
        images, targets = [], []
        for index, flip in zip(indices, flips, strict=True):
            index, image = first_readable(self.dataset.read_image, index, pool)
            images.append(image[:, ::-1].copy() if flip else image)
            if self.cache is not None:
                targets.append(self.cache.get(self.dataset.image_key(index), flip))
        if self.cache is None:
            return images, self.teacher.embed(images).cpu()
        return images, torch.stack(targets)


@torch.no_grad()
def validate(model: EfficientViTSam, source: TargetSource, indices: list[int], device: torch.device) -> float | None:
    """Mean squared error to the teacher on held-out images (no flips)."""
    if not indices:
        return None
    was_training = model.training
    model.eval()
    errors = []
    for index in indices:
        images, targets = source.batch([index], indices, [False])
        embedding = model.encode(student_images(model, images, device))
        errors.append(F.mse_loss(embedding, match_grid(targets.to(device), embedding.shape[-1])).item())
    model.train(was_training)
    return float(np.mean(errors))


# ------------------------------------------------------------------------------------------- loop
def distill(
    config: DistillConfig,
    data: str | Path,
    out: str | Path,
    teacher: str | Teacher | None = None,
    cache: str | Path | None = None,
    init: str | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> EfficientViTSam:
    """Train the student's image encoder on ``data``'s images; writes ``out/model.safetensors``."""
    process: Process = start_processes()
    out = Path(out)
    check_run_folder(out, resume)
    dataset = open_dataset(data, images_only=True)
    store = EmbeddingCache(cache) if cache is not None else None
    if isinstance(teacher, str):
        teacher = load_teacher(teacher, process.device)
    if store is not None and config.hflip > 0 and not store.manifest.get("hflip"):
        raise ValueError(f"cache {store.root} holds no flipped embeddings: precompute with --hflip or set hflip: 0")
    source = TargetSource(dataset, teacher, store)
    train_indices, val_indices = split_indices(len(dataset), config.val_fraction)
    config.max_steps = config.steps_for(len(train_indices), process.world)

    torch.manual_seed(config.seed)
    model = build_model_for(config, init, process.device)
    if config.copy_decoder and init is None:
        decoder_state = teacher.decoder_state if teacher is not None else store.decoder_state()
        try:
            unexpected = model.load_state_dict(decoder_state, strict=False).unexpected_keys
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"the teacher's decoder does not fit the student: {str(error).splitlines()[-1]}") from None
        if unexpected:
            raise ValueError(f"the teacher's decoder does not fit the student: unexpected keys {unexpected[:3]}")
    model.prompt_encoder.requires_grad_(False)  # stage 1 trains the image encoder only
    model.mask_decoder.requires_grad_(False)
    model.train()

    def make_batch(step: int, generator: torch.Generator) -> tuple:
        indices = batch_indices(train_indices, step, process.rank, process.world, config.batch_size, config.seed)
        flips = [bool(torch.rand((), generator=generator) < config.hflip) for _ in indices]
        images, targets = source.batch(indices, train_indices, flips)
        return student_images(model, images, process.device), targets

    def validation() -> dict[str, float]:
        error = validate(model, source, val_indices, process.device)
        return {} if error is None else {"val_mse": error}

    fit(config, process, model, DistillStep(model), make_batch, out, resume=resume, stop_at=stop_at,
        progress=progress, validate=validation, desc="distill")  # fmt: skip
    return model
