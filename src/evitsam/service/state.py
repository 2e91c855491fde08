"""The service's state: the model, its worker threads, the image cache and the refinement handles."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from .. import SamPredictor, __version__, load_model
from ..io import ImageReadError, ImageTooLargeError, ImageTooSmallError, read_image
from ..variants import get_variant
from .config import ServiceConfig
from .errors import ApiError
from .images import CachedImage, ImageStore, LowResStore, image_predictor, tensor_bytes
from .metrics import Metrics


class Service:
    """Everything the routes share. Build it with :meth:`load` (reads the model) or from a ready predictor."""

    def __init__(self, predictor: SamPredictor, config: ServiceConfig, model_name: str | None = None) -> None:
        self.config = config
        self.predictor = predictor
        self.model_name = model_name or predictor.model.config.name
        self.metrics = Metrics()
        self.images = ImageStore(config.cache_bytes, self.metrics.observe_store)
        self.low_res = LowResStore(max(config.cache_bytes // 8, 8 * 2**20))
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="evitsam-worker")
        # ONNX Runtime sessions are thread-safe, OpenVINO infer requests are not: graph engines run one call
        # at a time; torch modules in inference mode can run on several threads at once.
        self.engine_lock = threading.Lock() if predictor.runtime != "torch" else contextlib.nullcontext()
        self.ready = False

    @classmethod
    def load(cls, config: ServiceConfig) -> Service:
        model = load_model(config.model, variant=config.variant, device=config.device)
        predictor = SamPredictor(model, runtime=config.runtime, precision=config.precision)
        return cls(predictor, config, model_name=str(config.model) if config.model else None)

    @property
    def model(self):
        return self.predictor.model

    def info(self) -> dict:
        model = self.model
        return {
            "model": self.model_name,
            "variant": model.config.name,
            "encoder_size": model.encoder_size,
            "runtime": self.predictor.runtime,
            "precision": self.predictor.precision,
            "device": str(model.device),
            "low_res_size": model.low_res_size,
            "version": __version__,
            "torch": torch.__version__,
        }

    def everything_defaults(self) -> tuple[float, float]:
        return get_variant(self.model.config.name).everything_thresholds

    async def run(self, function, *args):
        """Run model work in the worker threads, so the event loop keeps serving other clients."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(function, *args))

    def warm_up(self) -> None:
        """An encoder pass and clicks on a blank image, so the first clients do not pay for lazy setup: each kind of
        click of one or two points is decoded twice, which traces it where the engine traces its decoder."""
        predictor = image_predictor(self.predictor)
        with self.engine_lock:
            predictor.set_image(np.zeros((64, 64, 3), np.uint8))
            for points, multimask in itertools.product((1, 2), (False, True)):
                for _ in range(2):
                    predictor.predict(np.full((points, 2), 32.0), np.ones(points), multimask_output=multimask)
        self.ready = True

    # ------------------------------------------------------------------------------------- images
    def decode_image(self, data: bytes, field: str = "file"):
        try:
            return read_image(data, max_pixels=self.config.max_pixels, name=field)
        except ImageTooLargeError as error:
            raise ApiError(413, field, str(error)) from None
        except ImageTooSmallError as error:  # readable, but too small (or too thin) to segment
            raise ApiError(422, field, str(error)) from None
        except ImageReadError as error:
            raise ApiError(415, field, f"{error}; expected a JPEG, PNG, WebP, TIFF or BMP image") from None

    def _embed(self, data: bytes, image_id: str, field: str) -> CachedImage:
        image = self.decode_image(data, field)
        predictor = image_predictor(self.predictor)
        start = time.perf_counter()
        with self.engine_lock:
            predictor.set_image(image)
        nbytes = len(data) + tensor_bytes(predictor.get_image_embedding())
        if predictor.runtime == "torch":  # computed now, so the first click is as fast as the next ones
            nbytes += tensor_bytes(tuple(predictor.decoder_image_side()))
        self.metrics.encoder_seconds.observe(time.perf_counter() - start)
        height, width = image.shape[:2]
        return CachedImage(image_id, width, height, data, predictor, nbytes)

    async def add_image(self, data: bytes, field: str = "file") -> tuple[CachedImage, bool]:
        if not data:
            raise ApiError(422, field, "the upload is empty; expected an image file")

        async def embed(payload: bytes, image_id: str) -> CachedImage:
            return await self.run(self._embed, payload, image_id, field)

        return await self.images.add(data, embed)

    def image(self, image_id: str, field: str = "image_id") -> CachedImage:
        entry = self.images.get(image_id)
        if entry is None:
            raise ApiError(
                404, field, f"no image with id {image_id!r} (unknown, or evicted from the cache): upload it again"
            )
        return entry
