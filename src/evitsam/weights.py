"""Checkpoints: read official ``.pt`` and ``.safetensors`` files, infer their variant, download, convert.

Loading is strict (every key, every shape) and safe (``weights_only=True``). A file that does not
fit gets a message saying what it looks like, never a wall of missing keys.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import pickle
import re
import socket
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from .atomic_files import atomic_write
from .models import EfficientViTSam
from .variants import DEFAULT_VARIANT, HF_REPO, VARIANTS, Variant, get_variant

CACHE_ENV = "EVITSAM_HOME"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
_WRAPPER_KEYS = ("state_dict", "model")
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save: zip archive (default) or legacy pickle


class CheckpointError(ValueError):
    """A file that is not a usable EfficientViT-SAM checkpoint (corrupt, truncated, wrong variant)."""


def cache_dir() -> Path:
    """Where named weights live: ``$EVITSAM_HOME`` or ``~/.cache/evitsam``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "evitsam").expanduser()


def weights_url(variant: Variant) -> str:
    return f"https://huggingface.co/{HF_REPO}/resolve/main/{variant.weights_file}"


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint; ``{"state_dict": ...}`` wrappers and DDP prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                obj = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
            ) from None
    else:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if not (magic.startswith(_ZIP_MAGIC) or magic.startswith(_PICKLE_MAGIC)):  # torch.save's two formats
            raise CheckpointError(f"{path} is not a PyTorch checkpoint")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (zipfile.BadZipFile, EOFError) as error:
            raise CheckpointError(f"{path} is truncated or corrupt: {error}") from None
        except pickle.UnpicklingError as error:
            # torch's text advises weights_only=False (runs arbitrary code): never passed on.
            found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(error))
            if found is None:
                raise CheckpointError(f"{path} is not a PyTorch checkpoint") from None
            raise CheckpointError(
                f"{path} holds Python objects besides tensors ({found.group(1)}), which safe loading "
                f"(weights_only) refuses: it is not a checkpoint evitsam loads"
            ) from None
        except RuntimeError as error:
            raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
        except Exception as error:  # the unpickler fails in many ways on files that are not checkpoints
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {error})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(f"{path} does not contain a state dict of tensors (got {type(obj).__name__})")
    if all(key.startswith("module.") for key in obj):
        obj = {key.removeprefix("module."): value for key, value in obj.items()}
    return obj, metadata


@functools.cache
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's state dict, computed on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = EfficientViTSam(get_variant(name).config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _signature(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape, ignoring BN batch counters (some exports drop them; inference never reads them)."""
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def _expected_signature(name: str) -> dict[str, tuple[int, ...]]:
    return {k: s for k, s in expected_shapes(name).items() if not k.endswith("num_batches_tracked")}


def _match_score(state_dict: dict[str, torch.Tensor], name: str) -> tuple[int, int]:
    """(tensors matching in key and shape, tensors expected) for a variant."""
    expected = _expected_signature(name)
    got = _signature(state_dict)
    return sum(got.get(k) == shape for k, shape in expected.items()), len(expected)


def _match_fraction(state_dict: dict[str, torch.Tensor], name: str) -> float:
    hits, total = _match_score(state_dict, name)
    return hits / total


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The variant whose keys and shapes the state dict matches exactly, else None."""
    got = _signature(state_dict)
    for name in VARIANTS:
        if _expected_signature(name) == got:
            return name
    return None


def _describe(state_dict: dict[str, torch.Tensor]) -> str:
    name = infer_variant(state_dict)
    if name is not None:
        return f"it is a '{name}' checkpoint"
    best = max(VARIANTS, key=lambda n: _match_fraction(state_dict, n))
    hits, total = _match_score(state_dict, best)
    return (
        f"it matches no known variant (closest: '{best}', {hits} of {total} tensors match; "
        f"the file has {len(state_dict)} tensors) - truncated, or not an EfficientViT-SAM checkpoint"
    )


def _check_fits(state_dict: dict[str, torch.Tensor], name: str, source: str) -> None:
    if _signature(state_dict) != _expected_signature(name):
        raise CheckpointError(f"{source} does not fit variant '{name}': {_describe(state_dict)}")


def load_weights(model: EfficientViTSam, state_dict: dict[str, torch.Tensor], variant: str, source: str) -> None:
    """Strictly load ``state_dict`` into ``model`` of ``variant``, explaining any mismatch."""
    _check_fits(state_dict, get_variant(variant).name, source)
    model.load_state_dict(_with_bn_counters(state_dict, variant), strict=True)


def _with_bn_counters(state_dict: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` buffers some exports drop (they do not affect inference)."""
    full = dict(state_dict)
    for key in expected_shapes(get_variant(variant).name):
        if key.endswith("num_batches_tracked") and key not in full:
            full[key] = torch.zeros((), dtype=torch.long)
    return full


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, variant: str | None) -> None:
    """Write weights as safetensors with ``variant`` metadata (None: a part, not a model), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {"format": "pt"}
    if variant is not None:
        metadata["evitsam_variant"] = get_variant(variant).name
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def convert_checkpoint(
    source: str | os.PathLike, target: str | os.PathLike, variant: str | None = None, half: bool = False
) -> str:
    """Official ``.pt`` -> ``.safetensors`` with variant metadata; returns the variant name.

    ``half`` stores floating-point tensors as float16 (half the file; models load them back as fp32).
    """
    if not str(target).endswith(".safetensors"):
        raise ValueError(f"target must be a .safetensors path, got {str(target)!r}")
    state_dict, metadata = read_state_dict(source)
    name = _resolve_variant(state_dict, metadata, variant, str(source))
    state_dict = _with_bn_counters(state_dict, name)
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_safetensors(state_dict, target, name)
    return name


def _resolve_variant(state_dict, metadata: dict[str, str], variant: str | None, source: str) -> str:
    if variant is not None:
        name = get_variant(variant).name
        _check_fits(state_dict, name, source)
        return name
    if "evitsam_variant" in metadata:
        return get_variant(metadata["evitsam_variant"]).name
    name = infer_variant(state_dict)
    if name is None:
        raise CheckpointError(f"cannot load {source}: {_describe(state_dict)}")
    return name


def bundled_weights(variant: Variant) -> Path:
    """Path of weights shipped inside the package (``evitsam/assets/``), checked against their sha256."""
    path = Path(str(importlib.resources.files("evitsam") / "assets" / variant.bundled_file))
    if not path.is_file():
        raise FileNotFoundError(f"the bundled weights of '{variant.name}' are missing from the package: {path}")
    if variant.sha256 is not None and file_sha256(path) != variant.sha256:
        raise CheckpointError(f"{path} does not match the sha256 recorded for '{variant.name}': reinstall evitsam")
    return path


@functools.cache
def _sha256_of(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (remembered per path, size and modification time)."""
    stat = os.stat(path)
    return _sha256_of(str(path), stat.st_size, stat.st_mtime)


def download_weights(variant: Variant) -> Path:
    """Path of a variant's official weights in the cache, downloading them when online."""
    if variant.weights_file is None:
        raise ValueError(f"no published weights exist for variant '{variant.name}': pass a checkpoint path")
    target = cache_dir() / variant.weights_file
    if target.is_file():
        return target
    hint = (
        f"official weights for '{variant.name}' are not in the cache: expected {target}. "
        f"Download {weights_url(variant)} and put the file there (or set ${CACHE_ENV}), "
        "or pass the checkpoint's path"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FileNotFoundError(hint + " (offline: HF_HUB_OFFLINE is set)")
    if not _hub_resolvable():
        raise FileNotFoundError(hint + " (offline: the Hugging Face host does not resolve)")
    import huggingface_hub

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury our one-line explanation
    try:
        downloaded = huggingface_hub.hf_hub_download(HF_REPO, variant.weights_file, local_dir=cache_dir())
    except Exception as error:  # network, auth, missing file: all mean "not available here"
        raise FileNotFoundError(f"{hint} (download failed: {type(error).__name__})") from None
    finally:
        hub_logger.setLevel(level)
    return Path(downloaded)


def _hub_resolvable() -> bool:
    return _host_resolvable(urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname)


def _host_resolvable(host: str | None) -> bool:
    """A DNS look-up answers "offline?" in milliseconds; download clients would retry for ~30 s."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy the host need not resolve locally
    try:
        socket.getaddrinfo(host or "localhost", 443)
    except OSError:
        return False
    return True


def download_file(url: str, name: str) -> Path:
    """``cache_dir()/name``, downloaded from ``url`` first when missing (atomically, with progress)."""
    target = cache_dir() / name
    if target.is_file():
        return target
    hint = f"{name} is not in the cache: expected {target}. Download {url} and put the file there (or set ${CACHE_ENV})"
    if not _host_resolvable(urlparse(url).hostname):
        raise FileNotFoundError(hint + f" (offline: {urlparse(url).hostname} does not resolve)")
    try:
        atomic_write(target, lambda tmp: torch.hub.download_url_to_file(url, str(tmp), progress=True))
    except Exception as error:  # network errors of every kind mean "not available here"
        raise FileNotFoundError(f"{hint} (download failed: {type(error).__name__})") from None
    return target


def is_checkpoint_path(name_or_path: str | os.PathLike) -> bool:
    text = str(name_or_path)
    return Path(text).exists() or text.endswith(CHECKPOINT_SUFFIXES) or os.sep in text


def load_model(
    name_or_path: str | os.PathLike | None = None, variant: str | None = None, device: str | torch.device = "cpu"
) -> EfficientViTSam:
    """A ready-to-use model (eval mode) from a variant name or a checkpoint path.

    Names (``l0`` ... ``xl1``, or ``efficientvit-sam-l0``) resolve to the official weights in
    :func:`cache_dir`, downloaded from Hugging Face when missing and online. Paths may be official
    ``.pt`` files (bare or ``{"state_dict": ...}``) or ``.safetensors``; the variant is inferred
    from the tensors unless given.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
    if name_or_path is None:
        name_or_path = DEFAULT_VARIANT
    if is_checkpoint_path(name_or_path):
        path = Path(name_or_path)
    else:
        named = get_variant(str(name_or_path))
        if variant is not None and get_variant(variant).name != named.name:
            raise ValueError(f"variant {variant!r} contradicts the model name {str(name_or_path)!r}")
        path = bundled_weights(named) if named.bundled_file else download_weights(named)
        variant = named.name
    state_dict, metadata = read_state_dict(path)
    name = _resolve_variant(state_dict, metadata, variant, str(path))
    model = EfficientViTSam(get_variant(name).config)
    load_weights(model, state_dict, name, str(path))
    return model.eval().to(device)
