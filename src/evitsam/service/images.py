"""Images the service has embedded: a content-addressed LRU cache bounded in bytes, with single-flight embedding.

An image's id is the SHA-256 of its bytes, so uploading the same file twice finds the first embedding. Each
cached image has its own :class:`SamPredictor` (sharing the model and engine of the service's predictor) and a
lock, so decoder requests on different images run side by side and requests on one image never interleave.
Concurrent uploads of the same bytes wait for one encoder pass. The cache and the pending table are only
touched from the event loop; the model runs in the service's worker threads.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import SamPredictor


@dataclass
class CachedImage:
    image_id: str
    width: int
    height: int
    data: bytes  # the encoded upload, kept (in memory only) for segment-everything
    predictor: SamPredictor  # holds this image's embedding and the decoder's image side
    nbytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def image_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(value) -> int:
    """Bytes of every tensor in a (nested) tuple/list/NamedTuple: what the cache accounts for."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def image_predictor(base: SamPredictor) -> SamPredictor:
    """A predictor of its own for one image: shares ``base``'s model, transform and engine (no per-image
    state), holds its own embedding. ``reset_image`` clears every per-image attribute the copy inherited."""
    predictor = copy.copy(base)
    predictor.reset_image()
    return predictor


class ImageStore:
    """LRU of :class:`CachedImage` bounded by ``capacity`` bytes (the newest image always stays)."""

    def __init__(self, capacity: int, on_change: Callable[[ImageStore], None] | None = None) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._pending: dict[str, asyncio.Task] = {}
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._entries

    def get(self, image_id: str) -> CachedImage | None:
        entry = self._entries.get(image_id)
        if entry is not None:
            self._entries.move_to_end(image_id)
        return entry

    async def add(self, data: bytes, embed: Callable[[bytes, str], Awaitable[CachedImage]]) -> tuple[CachedImage, bool]:
        """The cached image for ``data`` and whether it was cached (or being computed) already.

        The embedding runs as a task of its own that every request for these bytes awaits, so a client that
        goes away neither cancels the computation for the others nor leaves them waiting.
        """
        image_id = image_id_of(data)
        entry = self.get(image_id)
        if entry is not None:
            self.hits += 1
            self._changed()
            return entry, True
        task = self._pending.get(image_id)
        cached = task is not None
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(self._compute(data, image_id, embed))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # failures are not "unhandled"
            self._pending[image_id] = task
        else:
            self.hits += 1
        return await asyncio.shield(task), cached

    async def _compute(self, data: bytes, image_id: str, embed) -> CachedImage:
        try:
            entry = await embed(data, image_id)
        finally:
            self._pending.pop(image_id, None)
        self._insert(entry)
        return entry

    def _insert(self, entry: CachedImage) -> None:
        self._entries[entry.image_id] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.capacity and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
            self.evictions += 1
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)


class LowResStore:
    """Low-res logits of earlier answers, by random handle, for refinement (``mask_input``); LRU bounded in bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self.nbytes = 0

    def put(self, handle: str, image_id: str, logits: np.ndarray) -> None:
        self._entries[handle] = (image_id, logits)
        self.nbytes += logits.nbytes
        while self.nbytes > self.capacity and len(self._entries) > 1:
            _, (_, old) = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def get(self, handle: str) -> tuple[str, np.ndarray] | None:
        item = self._entries.get(handle)
        if item is not None:
            self._entries.move_to_end(handle)
        return item
