"""SAM's mask decoder: output tokens + prompt tokens -> mask logits and IoU predictions."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import LayerNorm2d
from .transformer import ImageSide, ImageUpdate, TwoWayTransformer


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


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Token 0 is the single-mask output, tokens 1..3 the multimask outputs."""

    def __init__(
        self,
        transformer_dim: int = 256,
        transformer: TwoWayTransformer | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_embeddings`` is (1, C, h, w) shared by all prompts, or one per prompt."""
        state = self.attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        return self.outputs(state, multimask_output)

    def outputs(self, state: DecoderState, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's selection: the three multimask tokens, or the single-mask token 0."""
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return self.mask_logits(state, selected), self.predict_iou(state)[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four mask-token outputs: logits (B, 4, 4h, 4w) and IoU predictions (B, 4)."""
        state = self.attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        return self.mask_logits(state), self.predict_iou(state)

    def prepare_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        projected_pe: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None,
        products: torch.dtype = torch.float32,
    ) -> ImageSide:
        """The transformer's prompt-independent work on one image, for ``attend(..., image_side=...)``
        (``projected_pe``: ``transformer.project_pe(image_pe)``, if kept from an earlier image; ``products``:
        see ``ImageSide.products``).

        At inference a shared image (batch 1) also gets its tokens through the first up-scaling product,
        every layer's norm scale folded in: with it, each prompt's product is low-rank (``mask_logits``).
        """
        side = self.transformer.prepare(image_embeddings + dense_prompt_embeddings, image_pe, projected_pe)
        side = side._replace(products=products)
        if side.keys.shape[0] == 1 and not torch.is_grad_enabled():
            side = side._replace(upscaled=side.keys[0] @ self._folded_upscaling()[0])
        return side

    def _folded_upscaling(self) -> list[torch.Tensor]:
        """The first up-scaling product's (C, 4C') matrix with the scales of the norms after layers
        l+1.. folded in, for l = 0 (the image as prepared) .. depth (the final image tokens)."""
        matrices = [_pixel_linear(self.output_upscaling[0].weight)]
        for layer in reversed(self.transformer.layers):
            matrices.insert(0, layer.norm4.weight[:, None] * matrices[0])
        return matrices

    def attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_side: ImageSide | None = None,
    ) -> DecoderState:
        """The two-way transformer: the expensive half, shared by IoU and mask outputs.

        The image side is never repeated per prompt: with one embedding and no mask prompt
        (dense embeddings of batch 1), the first layer's image projections run once for all
        prompts and broadcast, instead of once per prompt; ``image_side`` (from ``prepare_image``
        on the same embedding and dense embeddings) reuses them across calls.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(batch, *output_tokens.shape), sparse_prompt_embeddings], dim=1
        )
        images = max(image_embeddings.shape[0], dense_prompt_embeddings.shape[0])
        if images not in (1, batch):
            raise ValueError(f"image embeddings must have batch 1 or {batch} (one per prompt), got {images}")
        factored = image_side is not None and image_side.upscaled is not None and not torch.is_grad_enabled()
        if image_side is None:
            image_side = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)
        h, w = image_embeddings.shape[-2:]
        updates = [] if factored else None
        hs, image_tokens = self.transformer(image_embeddings, image_pe, tokens, image_side, updates)
        image_tokens = image_tokens.expand(batch, *image_tokens.shape[1:])
        if not factored:
            return DecoderState(hs, image_tokens, (h, w), products=image_side.products)
        return DecoderState(hs, image_tokens, (h, w), tuple(updates), image_side.upscaled, image_side.products)

    def predict_iou(self, state: DecoderState) -> torch.Tensor:
        """IoU predictions (B, 4) for the four mask tokens; cheap once ``attend`` has run."""
        return self.iou_prediction_head(state.tokens[:, 0, :])

    def mask_logits(
        self,
        state: DecoderState,
        selected: slice | torch.Tensor = slice(None),
        extent: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Low-res logits (B, K, 4h, 4w) of the ``selected`` mask tokens (default all four).

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
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        mask_tokens = state.tokens[:, 1 : 1 + self.num_mask_tokens, :]
        indices = range(self.num_mask_tokens)[selected] if isinstance(selected, slice) else selected.tolist()
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens[:, i, :]) for i in indices], dim=1)
        grid = state.size
        h, w = grid
        b = state.image_tokens.shape[0]
        if extent is not None and (extent[0] // 4, extent[1] // 4) != (h, w):
            if extent[0] % 4 or extent[1] % 4 or not (0 < extent[0] <= 4 * h and 0 < extent[1] <= 4 * w):
                raise ValueError(f"extent must be multiples of 4 within (1..{4 * h}, 1..{4 * w}), got {extent}")
            h, w = extent[0] // 4, extent[1] // 4
        n = h * w
        if state.upscaled is not None and state.updates:
            x = self._factored_upscaling(state, grid, (h, w)).view(b * n, -1)
        else:
            image_tokens = _crop(state.image_tokens, grid, (h, w)).reshape(b * n, -1)
            x = torch.addmm(conv1.bias.repeat(4), image_tokens, _pixel_linear(conv1.weight))
        # in place at inference: the activations' fresh outputs cost more than their arithmetic
        act1, act2 = (act1, act2) if torch.is_grad_enabled() else (_inplace(act1), _inplace(act2))
        x = act1(F.layer_norm(x.view(b, n, 4, -1), (norm.weight.shape[0],), norm.weight, norm.bias, norm.eps))
        dtype = state.products  # the second up-scaling product and the hypernetwork's in this dtype
        weight, bias = _pixel_linear(conv2.weight).to(dtype), conv2.bias.repeat(4).to(dtype)
        x = act2(torch.addmm(bias, x.view(b * n * 4, -1).to(dtype), weight))
        k = len(indices)
        # (B, K, pixels): (y, x, dy1, dx1, dy2, dx2)
        masks = _product(hyper_in, x.view(b, n * 16, -1).transpose(1, 2), dtype).to(hyper_in.dtype)
        # to (y, dy1, dy2) x (x, dx1, dx2) in two 4-d permutes (one 8-d permute copies 2x slower)
        masks = masks.view(b * k * h, w, 2, 2, 4).transpose(1, 2).reshape(b * k * h * 2, w * 2, 2, 2)
        return masks.transpose(1, 2).reshape(b, k, 4 * h, 4 * w)

    def _factored_upscaling(self, state: DecoderState, grid: tuple[int, int], part: tuple[int, int]) -> torch.Tensor:
        """The first up-scaling product (B, n, 4C') of the final image tokens, from the prepared image's.

        Layer j turned keys x into ``x' = norm(x + A V)`` = ``r * (x + A V - mu) * g + beta`` per token
        (r = 1 / std). For a matrix M, ``x' M = r * (x (g M) + A (V g M) - mu * sum(g M)) + beta M``, so
        unrolled from the prepared image's ``x0 (g_1 .. g_L M)`` every term but the first is a product
        with (heads x tokens) or fewer columns: one rescale of the prepared product and one thin GEMM.
        """
        matrices = self._folded_upscaling()  # matrices[j]: M with the scales of norms j+1.. folded in
        updates = state.updates
        bias = self.output_upscaling[0].bias.repeat(4)
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
                right.append((self.transformer.layers[j - 1].norm4.bias @ matrices[j]).expand(b, 1, -1))
                row += 1
        constant = self.transformer.layers[-1].norm4.bias @ matrices[-1] + bias
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
