"""What every training run shares: processes, seeding, optimiser, schedule, run folder, checkpoints.

Stage 1 (``distill.py``) and stage 2 (``train.py``) differ only in what one step computes; both hand
a step module and a batch function to :func:`fit`, which owns the loop. Every random choice of a
step derives from (seed, step, rank), so ``--resume`` continues exactly where a run stopped: no step
repeated or skipped, bit-identical parameters.

Run folder: ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one JSON object per logged step),
``tensorboard/``, ``checkpoint.pt`` (model, optimiser, scheduler, scaler, step, RNG; written
atomically) and, at the end, ``model.safetensors`` that ``evitsam.load_model`` loads by itself.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..atomic_files import atomic_write
from ..distributed import broadcast, init_distributed
from ..models import EfficientViTSam
from ..variants import get_variant
from ..weights import load_model, save_safetensors
from .config import RunConfig

CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"


# -------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    device: torch.device


def start_processes() -> Process:
    """This process's rank, the world size and device (one GPU per process under torchrun)."""
    return Process(*init_distributed())


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, rank, stream)) & 0x7FFFFFFF)


def split_indices(count: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Train and held-out validation indices (the last images, at least one when asked for)."""
    n_val = min(count - 1, max(1, round(count * val_fraction))) if val_fraction > 0 else 0
    return list(range(count - n_val)), list(range(count - n_val, count))


def batch_indices(train: list[int], step: int, rank: int, world: int, batch: int, seed: int) -> list[int]:
    """The dataset indices of one rank's batch at ``step``: epochs are seeded permutations."""
    per_step = batch * world
    out = []
    for position in range(step * per_step + rank * batch, step * per_step + (rank + 1) * batch):
        epoch, offset = divmod(position, len(train))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.append(train[order[offset].item()])
    return out


# ----------------------------------------------------------------------------------- optimisation
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (tokens, point embeddings)."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.BatchNorm2d)) or "LayerNorm" in type(module).__name__:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (plain if id(param) in no_decay or param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_lambda(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine to zero at ``max_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def clip_gradients(model: nn.Module, config: RunConfig) -> None:
    if config.grad_clip <= 0:
        return
    if config.grad_clip_mode == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), config.grad_clip)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)


def build_model_for(config: RunConfig, init: str | None, device: torch.device) -> EfficientViTSam:
    """The model a run trains: fresh weights of ``config.variant`` or the weights of ``init``."""
    if init is None:
        if config.variant == "auto":
            raise ValueError("config variant 'auto' takes the variant of --init, but no --init was given")
        model = EfficientViTSam(get_variant(config.variant).config).to(device)
    else:
        model = load_model(init, device=device)
        if config.variant != "auto" and model.variant != get_variant(config.variant).name:
            raise ValueError(
                f"--init is a '{model.variant}' model but the config trains '{config.variant}' "
                "(set variant: auto to train whatever --init is)"
            )
    model.image_encoder.backbone.gradient_checkpointing = config.grad_checkpointing
    return model


# ------------------------------------------------------------------------------------- run folder
def check_run_folder(out: Path, resume: bool) -> None:
    """Fail before any work: resuming needs a checkpoint, a fresh run must not overwrite one."""
    checkpoint = out / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    if not resume and checkpoint.is_file():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint so every step appears exactly once."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))


class MetricsLog:
    """``metrics.jsonl`` + TensorBoard + a tqdm bar, on rank 0 only."""

    def __init__(self, out: Path, step: int, max_steps: int, resume: bool, progress: bool, desc: str) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.path = out / METRICS
        _trim_metrics(self.path, step)
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if resume else None)
        self.bar = tqdm(total=max_steps, initial=step, desc=desc, unit="step") if progress else None

    def tick(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}")

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()


# --------------------------------------------------------------------------------------- time box
class TimeBox:
    """Fits a run into ``config.max_minutes``: after a few timed steps the schedule (cosine to zero) is
    shortened to the steps that fit, so a time-boxed run still ends with a decayed learning rate and its
    final weights; a run that still overruns (validation, slower steps) stops at the next log step.
    Every rank takes rank 0's decision."""

    WARMUP_STEPS = 2  # not timed: first-step allocations and kernel selection
    TIMED_STEPS = 20

    def __init__(self, config: RunConfig, started: float, first_step: int) -> None:
        self.config, self.started = config, started
        self.budget = config.max_minutes * 60
        self.timed_from = first_step + self.WARMUP_STEPS
        self.timed_start = None

    def after_step(self, step: int, last: int, scheduler, log: MetricsLog | None) -> int:
        """The new last step of this invocation (``last`` or fewer). Every rank decides at the same steps."""
        now = time.perf_counter()
        if step == self.timed_from:
            self.timed_start = now
        timed = step == self.timed_from + self.TIMED_STEPS
        if not timed and step % self.config.log_every != 0:
            return last
        elapsed = now - self.started
        fits = self.config.max_steps
        if timed:
            fits = step + int((self.budget - elapsed) * self.TIMED_STEPS / (now - self.timed_start))
        if elapsed > self.budget:
            fits = step
        fits = broadcast(fits)  # rank 0's clock decides for all
        if fits >= self.config.max_steps:
            return last
        self.config.max_steps = max(step, fits)
        schedule = lr_lambda(self.config.warmup_steps, self.config.max_steps)
        scheduler.lr_lambdas = [schedule] * len(scheduler.lr_lambdas)  # one per parameter group
        rates = [base * schedule(scheduler.last_epoch) for base in scheduler.base_lrs]  # this step's, re-planned
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates
        if log is not None and log.bar is not None:
            log.bar.total = self.config.max_steps
            log.bar.refresh()
        return min(last, self.config.max_steps)


# ------------------------------------------------------------------------------------------- loop
def fit(
    config: RunConfig,
    process: Process,
    model: EfficientViTSam,
    step_module: nn.Module,
    make_batch: Callable[[int, torch.Generator], tuple],
    out: Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    validate: Callable[[], dict[str, float]] | None = None,
    counters: Callable[[], dict[str, int]] | None = None,
    desc: str = "train",
) -> int:
    """Run steps until ``config.max_steps`` (or ``stop_at``); returns the last step done.

    ``step_module(*make_batch(step, generator), generator)`` returns a dict of losses whose ``loss``
    is back-propagated; under torchrun it runs inside DistributedDataParallel. ``counters`` adds
    running counts (e.g. unreadable files skipped) to every logged record.
    """
    rank, world, device = process.rank, process.world, process.device
    # Denormal floats (tiny gradients, early random weights) make x86 float maths ~10x slower; flushing
    # them to zero changes nothing a model can learn from.
    torch.set_flush_denormal(True)
    # fused: one kernel for all tensors (on CPU ~10x faster than the per-tensor loop for our ~200 tensors)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr * world, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, config.max_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    step = 0
    if resume:
        state = torch.load(out / CHECKPOINT, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)

    log = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(config.to_yaml()))
        log = MetricsLog(out, step, config.max_steps, resume, progress, desc)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    started, first_step = time.perf_counter(), step
    time_box = TimeBox(config, started, first_step)
    last = config.max_steps if stop_at is None else min(stop_at, config.max_steps)
    while step < last:
        generator = step_generator(config.seed, step, rank)
        torch.manual_seed(generator.initial_seed())  # global-RNG users (loss point sampling) too
        batch = make_batch(step, generator)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = step_module(*batch, generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        clip_gradients(model, config)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        if config.max_minutes > 0:
            last = time_box.after_step(step, last, scheduler, log)
        if log is None:
            continue
        log.tick(losses["loss"].item())
        if step % config.log_every == 0 or step == config.max_steps:
            record = {"step": step, "lr": scheduler.get_last_lr()[0]}
            record.update({key: round(value.item(), 6) for key, value in losses.items()})
            elapsed = time.perf_counter() - started
            record["images_per_s"] = round(config.batch_size * world * (step - first_step) / elapsed, 3)
            if counters is not None:
                record.update(counters())
            if validate is not None and (step % config.val_every == 0 or step == config.max_steps):
                record.update({key: round(value, 6) for key, value in validate().items()})
            log.write(record)
        if step % config.ckpt_every == 0 or step in (last, config.max_steps):
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "rng": torch.get_rng_state(),
                "config": asdict(config),
            }
            atomic_write(out / CHECKPOINT, lambda tmp, state=state: torch.save(state, tmp))
    if log is not None:
        log.close()
        if config.max_minutes > 0:  # the time box may have shortened max_steps: the folder says what ran
            atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(config.to_yaml()))
        if step == config.max_steps:
            save_safetensors(model.state_dict(), out / FINAL_WEIGHTS, model.variant)
    if dist.is_initialized():
        dist.barrier()
    return step
