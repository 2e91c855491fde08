"""The prompt decoder on a prepared image, run as TorchScript traces: the same operations, without Python.

A click's decode is a few hundred small tensor operations. Run from Python, each one holds the interpreter
lock, so two requests decoding at once (the service's worker pool) take turns on one core; a trace runs
the same graph in TorchScript's executor, which releases the lock, so they use both cores.

A trace records one path through ``FastDecoder.decode``: the Python there branches on shapes (one prompt or
many, the grid) and on which inputs are None. So a trace serves only calls with the same input shapes,
dtypes, device and options, and with the same weight tensors (it reads the model's parameters, so
in-place updates are seen; tensors replaced by new ones give a new trace). A combination is decoded in
Python the first time it is seen and traced the second time (~0.3 s once), so one-off shapes (a labelling
batch of 37 boxes) never pay for a trace; a bounded number of traces is kept, least recently used dropped
first. Traces run unoptimized: the recorded operations as recorded, so the values are those of Python.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import torch
from torch import nn

from ..models.fast_attention import ImageProjection, ImageSide
from ..models.fast_decoder import FastDecoder

Outputs = tuple[torch.Tensor, torch.Tensor]


def tracing_available() -> bool:
    return all(hasattr(torch.jit, name) for name in ("trace", "optimized_execution"))


class _Decode(nn.Module):
    """``FastDecoder.decode`` as a module whose submodule is the model, so the trace reads the weights as
    the model's attributes (not constants); its inputs are the present ones of the call's optional tensors."""

    def __init__(self, decoder: FastDecoder, layout: tuple[bool, ...], multimask_output: bool, products) -> None:
        super().__init__()
        self.model = decoder.model
        self.decoder = decoder
        self.layout = layout  # which of ``_optional_tensors`` are present: a trace takes tensors, never None
        self.multimask_output = multimask_output
        self.products = products

    def forward(self, embeddings: torch.Tensor, *tensors: torch.Tensor) -> Outputs:
        present = iter(tensors)
        values = [next(present) if here else None for here in self.layout]
        point_coords, point_labels, boxes, keys, key_pe, upscaled, *fields = values
        width = len(ImageProjection._fields)
        projections = tuple(ImageProjection(*fields[i : i + width]) for i in range(0, len(fields), width))
        side = ImageSide(keys, key_pe, projections, upscaled, self.products)
        return self.decoder.decode(embeddings, point_coords, point_labels, boxes, None, self.multimask_output, side)


def _optional_tensors(point_coords, point_labels, boxes, side: ImageSide) -> list[torch.Tensor | None]:
    """The prompts and the image side's tensors in the order ``_Decode.forward`` reads them."""
    fields = [t for projection in side.projections for t in projection]
    return [point_coords, point_labels, boxes, side.keys, side.key_pe, side.upscaled, *fields]


def _signature(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.dtype, tensor.device


class TracedDecoder:
    """Decodes prompts without a mask prompt on a prepared image (``FastDecoder.prepare``) through traces;
    equal to ``FastDecoder.decode`` (tested). Safe to call from several threads at once."""

    def __init__(self, decoder: FastDecoder, capacity: int = 32) -> None:
        self.decoder = decoder
        self.capacity = capacity
        self._traces: OrderedDict[tuple, torch.jit.ScriptModule] = OrderedDict()
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()

    def decode(
        self,
        embeddings: torch.Tensor,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        multimask_output: bool,
        image_side: ImageSide,
    ) -> Outputs:
        optional = _optional_tensors(point_coords, point_labels, boxes, image_side)
        layout = tuple(t is not None for t in optional)
        inputs = (embeddings, *(t for t in optional if t is not None))
        key = (multimask_output, image_side.products, layout, tuple(map(_signature, inputs)), self._weights())
        with self._lock:
            trace = self._traces.get(key)
            if trace is not None:
                self._traces.move_to_end(key)
            first_sight = trace is None and key not in self._seen
            if first_sight:
                self._remember(self._seen, key, None)
        if first_sight:
            return self.decoder.decode(
                embeddings, point_coords, point_labels, boxes, None, multimask_output, image_side
            )
        if trace is None:
            trace = self._trace(inputs, layout, multimask_output, image_side.products)
            with self._lock:
                self._remember(self._traces, key, trace)
        device = embeddings.device.type
        # unoptimized: the recorded operations as they are, no profiling runs, no fusion (as fast here)
        with torch.inference_mode(), torch.autocast(device, enabled=False), torch.jit.optimized_execution(False):
            low_res, iou_predictions = trace(*inputs)
        return low_res, iou_predictions

    def _trace(self, inputs: tuple, layout: tuple[bool, ...], multimask_output: bool, products: torch.dtype):
        module = _Decode(self.decoder, layout, multimask_output, products)
        with torch.no_grad(), torch.autocast(inputs[0].device.type, enabled=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            return torch.jit.trace(module, inputs, check_trace=False)

    def _weights(self) -> tuple:
        """The identity of every tensor the decoder reads: a replaced tensor needs a new trace."""
        model = self.decoder.model
        modules, addresses = [model.prompt_encoder, model.mask_decoder], []
        while modules:  # by hand: ``state_dict()`` would cost 3x more, on every click
            module = modules.pop()
            tensors = [*module._parameters.values(), *module._buffers.values()]
            addresses += [t.data_ptr() for t in tensors if t is not None]
            modules += module._modules.values()
        return tuple(addresses)

    def _remember(self, table: OrderedDict, key: tuple, value) -> None:
        table[key] = value
        while len(table) > self.capacity:
            table.popitem(last=False)
