"""The decoder's inference fast path: prompt encoder + mask decoder for many prompts on one image.

``FastDecoder(model)`` (or ``model.fast_decoder()``) runs the weights of ``model.prompt_encoder`` and
``model.mask_decoder`` like ``EfficientViTSam.decode`` does (the reference modules; equal to float rounding,
tested), but arranged for inference, where the decoder is memory-bound:

* ``prepare`` does the prompt-independent work on one image once (``ImageSide``: the first layer's image
  projections, the PE projections kept while the weights stay the same), reused by every later prompt;
* the cross-attentions fold their projections into the few prompt tokens (``fast_attention.py``);
* the up-scaling's transposed convolutions run as products on the token layout, the first one low-rank on
  a prepared image (each layer changed the image tokens by a rank heads x tokens term and a norm);
* the last up-scaling and hypernetwork products may run in bf16 (``products``), GELUs run in place;
* ``attend`` then ``predict_iou`` / ``mask_logits`` split the work, so callers that filter by predicted IoU
  ("everything", labelling) compute masks only for the prompts and tokens they keep, and only the low-res
  ``extent`` the resize to the image reads.

Everything here runs under ``torch.inference_mode`` with autocast off: training uses the reference modules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from . import fast_attention
from .fast_attention import ImageSide, ImageUpdate

if TYPE_CHECKING:
    from .mask_decoder import MaskDecoder
    from .sam import EfficientViTSam


class DecoderState(NamedTuple):
    """What the transformer leaves for the output heads: tokens (B, T, C), image tokens (B, h*w, C);
    with a prepared shared image, also how each layer changed the image tokens (``updates``) and the
    image's up-scaling product (``upscaled``), which make the masks' first product low-rank; ``products``:
    the dtype of the per-pixel products (``ImageSide.products``)."""

    tokens: torch.Tensor
    image_tokens: torch.Tensor
    size: tuple[int, int]
    updates: tuple[ImageUpdate, ...] = ()
    upscaled: torch.Tensor | None = None
    products: torch.dtype = torch.float32

    def select(self, prompts: torch.Tensor) -> DecoderState:
        """The state of these prompts only (an index or mask over the batch)."""
        updates = tuple(ImageUpdate(*(t[prompts] for t in update)) for update in self.updates)
        return self._replace(tokens=self.tokens[prompts], image_tokens=self.image_tokens[prompts], updates=updates)


def _inference(method: Callable) -> Callable:
    """Run ``method`` in inference mode with autocast off (the decoder is cheap; fp32 keeps masks stable)."""

    @functools.wraps(method)
    def wrapper(self: FastDecoder, *args, **kwargs):
        with torch.inference_mode(), torch.autocast(self.model.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


class FastDecoder:
    """The inference decoder of one :class:`EfficientViTSam` (its weights, read at every call)."""

    def __init__(self, model: EfficientViTSam) -> None:
        self.model = model
        self._pe_cache: tuple[tuple, tuple] | None = None  # see _projected_pe

    @_inference
    def prepare(self, image_embeddings: torch.Tensor, products: torch.dtype = torch.float32) -> ImageSide:
        """The prompt-independent work on one image embedding (1, 256, G, G), for ``image_side=`` of later
        calls on the same embedding. ``products`` torch.bfloat16 runs the masks' last up-scaling and
        hypernetwork products in bf16 (the rest stays fp32): faster on CPUs with AMX, masks within the
        accuracy gate of ``benchmarks/runtimes.py``; what ``SamPredictor(..., precision="bf16")`` uses."""
        _, dense = self.model.prompt_encoder(points=None, boxes=None, masks=None)
        side = self._prepare(image_embeddings.float() + dense)._replace(products=products)
        if side.keys.shape[0] == 1:  # a shared image: its first up-scaling product, for the low-rank masks
            side = side._replace(upscaled=side.keys[0] @ self._folded_upscaling()[0])
        return side

    @_inference
    def attend(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        image_side: ImageSide | None = None,
    ) -> DecoderState:
        """Prompt encoding and the decoder's transformer: the expensive half, shared by IoU and mask outputs
        (finish with ``predict_iou`` and ``mask_logits``). ``image_side`` (``prepare`` on the same embedding)
        is ignored with a mask prompt, which changes the image side per prompt."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        side = image_side if mask_input is None else None
        return self._attend(image_embeddings.float(), sparse, dense, side)

    def predict_masks(
        self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.predict_masks`` (all four logits (B, 4, 4G, 4G), IoU predictions (B, 4)) arranged for
        inference, for graphs traced under ``torch.no_grad`` (the PE projections are computed in the graph)."""
        pe = fast_attention.transformer_pe(
            self.model.mask_decoder.transformer, self.model.prompt_encoder.get_dense_pe()
        )
        state = self._attend(image_embeddings, sparse, dense, None, pe)
        decoder = self.model.mask_decoder
        return mask_logits(decoder, state), predict_iou(decoder, state)

    def _attend(self, image_embeddings, sparse, dense, side: ImageSide | None, projected_pe=None) -> DecoderState:
        decoder = self.model.mask_decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, *output_tokens.shape), sparse], dim=1)
        images = max(image_embeddings.shape[0], dense.shape[0])
        if images not in (1, batch):
            raise ValueError(f"image embeddings must have batch 1 or {batch} (one per prompt), got {images}")
        factored = side is not None and side.upscaled is not None
        if side is None:
            side = self._prepare(image_embeddings + dense, projected_pe)
        updates = [] if factored else None
        hs, image_tokens = fast_attention.run(decoder.transformer, tokens, side, updates)
        image_tokens = image_tokens.expand(batch, *image_tokens.shape[1:])
        size = tuple(image_embeddings.shape[-2:])
        if not factored:
            return DecoderState(hs, image_tokens, size, products=side.products)
        return DecoderState(hs, image_tokens, size, tuple(updates), side.upscaled, side.products)

    @_inference
    def predict_iou(self, state: DecoderState) -> torch.Tensor:
        """IoU predictions (B, 4) for the four mask tokens; cheap once ``attend`` has run."""
        return predict_iou(self.model.mask_decoder, state)

    @_inference
    def mask_logits(
        self, state: DecoderState, selected: slice | torch.Tensor = slice(None), extent: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Low-res logits (B, K, 4h, 4w) of the ``selected`` mask tokens (default all four); ``extent``
        (rows, columns, multiples of 4) computes only that top-left part (see ``mask_logits``)."""
        return mask_logits(self.model.mask_decoder, state, selected, extent)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``EfficientViTSam.decode``: low-res logits (B, C, 4G, 4G) and IoU predictions (B, C)."""
        state = self.attend(image_embeddings, point_coords, point_labels, boxes, mask_input, image_side)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return self.mask_logits(state, selected), self.predict_iou(state)[:, selected]

    def _prepare(self, image: torch.Tensor, projected_pe: tuple | None = None) -> ImageSide:
        projected_pe = self._projected_pe() if projected_pe is None else projected_pe
        return fast_attention.prepare(self.model.mask_decoder.transformer, image, projected_pe)

    def _projected_pe(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The decoder's positional encodings, projected, kept while the weights stay the same (they do
        not depend on the image; two thirds of ``prepare``'s work)."""
        transformer = self.model.mask_decoder.transformer
        tensors = [self.model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix]
        tensors += list(transformer.parameters())
        key = tuple((t.device, t.data_ptr(), t._version) for t in tensors)
        if self._pe_cache is None or self._pe_cache[0] != key:
            pe = self.model.prompt_encoder.get_dense_pe()
            self._pe_cache = (key, fast_attention.transformer_pe(transformer, pe))
        return self._pe_cache[1]

    def _folded_upscaling(self) -> list[torch.Tensor]:
        return folded_upscaling(self.model.mask_decoder)


def predict_iou(decoder: MaskDecoder, state: DecoderState) -> torch.Tensor:
    """IoU predictions (B, 4) of ``decoder`` (a :class:`MaskDecoder`) for the four mask tokens."""
    return decoder.iou_prediction_head(state.tokens[:, 0, :])


def folded_upscaling(decoder: MaskDecoder) -> list[torch.Tensor]:
    """The first up-scaling product's (C, 4C') matrix with the scales of the norms after layers
    l+1.. folded in, for l = 0 (the image as prepared) .. depth (the final image tokens)."""
    matrices = [_pixel_linear(decoder.output_upscaling[0].weight)]
    for layer in reversed(decoder.transformer.layers):
        matrices.insert(0, layer.norm4.weight[:, None] * matrices[0])
    return matrices


def mask_logits(
    decoder: MaskDecoder,
    state: DecoderState,
    selected: slice | torch.Tensor = slice(None),
    extent: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Low-res logits (B, K, 4h, 4w) of the ``selected`` mask tokens (a slice, default all four, or a (K,) tensor
    of token indices), inference only.

    ``extent`` (rows, columns of low-res pixels, multiples of 4) computes only that top-left part:
    each 4x4 block of logits depends on one image token alone, so the rest (padding of a
    non-square image) can be skipped when only the resized masks are wanted.

    The two stride-2 transposed convolutions are per-pixel linear maps, so they run as
    matrix products on the (B, h*w, C) token layout the transformer already produced, with
    one fused layer norm: no NCHW copies, no per-pixel reductions over strided memory.

    With a prepared shared image (``state.upscaled``) the first product is not taken on the final
    image tokens: each layer changed them by a rank-(heads x tokens) term and a per-token norm, so
    the product is the prepared image's, rescaled per token, plus a low-rank product (less than
    half the work; the same values to float rounding).
    """
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    mask_tokens = state.tokens[:, 1 : 1 + decoder.num_mask_tokens, :]
    mlps = decoder.output_hypernetworks_mlps
    if isinstance(selected, slice):
        hyper_in = torch.stack([mlps[i](mask_tokens[:, i, :]) for i in range(len(mlps))[selected]], dim=1)
    else:  # token indices as a tensor, e.g. chosen from the scores inside a traced graph: all, then those
        hyper_in = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(mlps)], dim=1)
        hyper_in = hyper_in.index_select(1, selected)
    grid = state.size
    h, w = grid
    b = state.image_tokens.shape[0]
    if extent is not None and (extent[0] // 4, extent[1] // 4) != (h, w):
        if extent[0] % 4 or extent[1] % 4 or not (0 < extent[0] <= 4 * h and 0 < extent[1] <= 4 * w):
            raise ValueError(f"extent must be multiples of 4 within (1..{4 * h}, 1..{4 * w}), got {extent}")
        h, w = extent[0] // 4, extent[1] // 4
    n = h * w
    if state.upscaled is not None and state.updates:
        x = _factored_upscaling(decoder, state, grid, (h, w)).view(b * n, -1)
    else:
        image_tokens = _crop(state.image_tokens, grid, (h, w)).reshape(b * n, -1)
        x = torch.addmm(conv1.bias.repeat(4), image_tokens, _pixel_linear(conv1.weight))
    # in place: the activations' fresh outputs cost more than their arithmetic
    act1, act2 = _inplace(act1), _inplace(act2)
    x = act1(F.layer_norm(x.view(b, n, 4, -1), (norm.weight.shape[0],), norm.weight, norm.bias, norm.eps))
    dtype = state.products  # the second up-scaling product and the hypernetwork's in this dtype
    weight, bias = _pixel_linear(conv2.weight).to(dtype), conv2.bias.repeat(4).to(dtype)
    x = act2(torch.addmm(bias, x.view(b * n * 4, -1).to(dtype), weight))
    k = hyper_in.shape[1]
    # (B, K, pixels): (y, x, dy1, dx1, dy2, dx2)
    masks = _product(hyper_in, x.view(b, n * 16, -1).transpose(1, 2), dtype).to(hyper_in.dtype)
    # to (y, dy1, dy2) x (x, dx1, dx2) in two 4-d permutes (one 8-d permute copies 2x slower)
    masks = masks.view(b * k * h, w, 2, 2, 4).transpose(1, 2).reshape(b * k * h * 2, w * 2, 2, 2)
    return masks.transpose(1, 2).reshape(b, k, 4 * h, 4 * w)


def _factored_upscaling(decoder: MaskDecoder, state: DecoderState, grid, part) -> torch.Tensor:
    """The first up-scaling product (B, n, 4C') of the final image tokens, from the prepared image's.

    Layer j turned keys x into ``x' = norm(x + A V)`` = ``r * (x + A V - mu) * g + beta`` per token
    (r = 1 / std). For a matrix M, ``x' M = r * (x (g M) + A (V g M) - mu * sum(g M)) + beta M``, so
    unrolled from the prepared image's ``x0 (g_1 .. g_L M)`` every term but the first is a product
    with (heads x tokens) or fewer columns: one rescale of the prepared product and one thin GEMM.
    """
    matrices = folded_upscaling(decoder)  # matrices[j]: M with the scales of norms j+1.. folded in
    layers = decoder.transformer.layers
    updates = state.updates
    bias = decoder.output_upscaling[0].bias.repeat(4)
    scales: list[torch.Tensor] = [torch.empty(0)] * len(updates)  # s_j: product of r_j .. r_last
    for j in reversed(range(len(updates))):
        r = _crop(updates[j].rstd, grid, part)
        scales[j] = r if j == len(updates) - 1 else r * scales[j + 1]
    b, n = scales[0].shape[:2]
    ranks = [update.weights.shape[-1] for update in updates]
    # the thin product's left side, transposed (rows read the attention weights in their own
    # layout), written in place: per layer s_j * A_j, -s_j * mu_j, then s_j for j > 0
    left = scales[0].new_empty(b, sum(ranks) + 2 * len(updates) - 1, n)
    right = []
    row = 0
    for j, update in enumerate(updates):
        scale = scales[j].transpose(1, 2)
        torch.mul(_crop(update.weights, grid, part).transpose(1, 2), scale, out=left[:, row : row + ranks[j]])
        row += ranks[j]
        torch.mul(_crop(update.mean, grid, part).transpose(1, 2), scale, out=left[:, row : row + 1]).neg_()
        right += [update.values @ matrices[j], matrices[j].sum(dim=0).expand(b, 1, -1)]
        row += 1
        if j > 0:  # the previous norm's shift through this layer's rescaling
            left[:, row : row + 1] = scale
            right.append((layers[j - 1].norm4.bias @ matrices[j]).expand(b, 1, -1))
            row += 1
    constant = layers[-1].norm4.bias @ matrices[-1] + bias
    x = torch.addcmul(constant, _crop(state.upscaled[None], grid, part), scales[0])
    return x.baddbmm_(left.transpose(1, 2), torch.cat(right, dim=1))


def _product(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` of (B, m, k) and (B, k, n) operands in ``dtype``; one prompt's as a 2-D product (the CPU's
    bf16 ``bmm`` copies transposed operands first, which costs more than the product)."""
    a, b = a.to(dtype), b.to(dtype)
    return (a[0] @ b[0])[None] if a.shape[0] == b.shape[0] == 1 else a @ b


def _inplace(gelu: nn.GELU) -> Callable[[torch.Tensor], torch.Tensor]:
    """``gelu`` applied in place (GELU has no ``inplace`` flag)."""
    return lambda x: torch.ops.aten.gelu_(x, approximate=gelu.approximate)


def _crop(tokens: torch.Tensor, grid: tuple[int, int], part: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, X) tokens of an (h, w) grid -> (B, h'*w', X), the top-left (h', w') part."""
    if part == grid:
        return tokens
    b = tokens.shape[0]
    return tokens.reshape(b, *grid, -1)[:, : part[0], : part[1]].reshape(b, part[0] * part[1], -1)


def _pixel_linear(weight: torch.Tensor) -> torch.Tensor:
    """A kernel-2 stride-2 ConvTranspose2d weight (Cin, Cout, 2, 2) as a (Cin, 4 * Cout) matrix, (dy, dx, c) order."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
