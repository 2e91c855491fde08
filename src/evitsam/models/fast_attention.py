"""The two-way transformer arranged for many prompts on one image: the inference half of ``fast_decoder.py``.

The same weights and the same mathematics as ``transformer.py`` (equal to float rounding, tested), arranged
for prompts on one image, where the decoder is memory-bound:

* an image side that every prompt shares (the first layer's) is projected once per image (``prepare``,
  kept by the predictor) and broadcast over the prompts;
* otherwise the q/k/v/out projections of a cross-attention are folded into the token side (W^T q is only
  T vectors), so no per-prompt (B, N, C) projection is ever materialised;
* ``image + image_pe`` is never materialised either: the PE term uses the PE projected once per set of
  weights, scores are laid out (B, heads * T, N) so softmax and products need no copies, and the
  image->token output lands on its residual inside one batched GEMM, whose low-rank factors are kept
  (``ImageUpdate``) for the mask decoder's first up-scaling product.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer


class ImageProjection(NamedTuple):
    """One cross-attention's image side, computed once per image and reused by every prompt.

    ``pe``: the positional encoding through the projection that meets image tokens (keys of
    token->image, queries of image->token), (heads, d, N), no bias. ``keys`` (heads, d, N, bias
    included) and, for token->image, ``values`` (heads, N, d): the image tokens themselves projected,
    only where they are the same for every prompt (the first layer); None elsewhere.
    """

    pe: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None


class ImageSide(NamedTuple):
    """The decoder's prompt-independent work on one image (``FastDecoder.prepare``)."""

    keys: torch.Tensor  # (1 or B, N, C) image tokens, token-major
    key_pe: torch.Tensor  # (1, N, C)
    projections: tuple[ImageProjection, ...]  # per cross-attention, in the order the transformer calls them
    # (N, K) a shared image's tokens through the mask decoder's first up-scaling product, every norm's
    # scale folded in; None where not prepared
    upscaled: torch.Tensor | None = None
    # the dtype of each prompt's last up-scaling and hypernetwork products (the decoder's largest per-pixel
    # products): bfloat16 runs them on AMX / tensor cores; everything else stays float32
    products: torch.dtype = torch.float32


class ImageUpdate(NamedTuple):
    """One layer's change to the image tokens: ``keys = norm(keys + weights @ values)``.

    The attention output has rank H*T (heads x prompt tokens, ~56) against the width C (256), so a
    linear map of the new keys can be computed from the old keys' map and this low-rank term (see
    ``fast_decoder.mask_logits``). ``mean``/``rstd``: the norm's statistics per image token.
    """

    weights: torch.Tensor  # (B, N, H*T) attention weights
    values: torch.Tensor  # (B, H*T, C) values with the output projection folded in
    mean: torch.Tensor  # (B, N, 1)
    rstd: torch.Tensor  # (B, N, 1)


def _image_linear(attention: Attention, queries_from_image: bool) -> nn.Linear:
    """The projection that meets image tokens: queries of image->token, keys of token->image."""
    return attention.q_proj if queries_from_image else attention.k_proj


def project_pe(attention: Attention, image_pe: torch.Tensor, queries_from_image: bool) -> torch.Tensor:
    """The PE (1, N, C) through the projection that meets image tokens, (heads, d, N), no bias."""
    n, h = image_pe.shape[1], attention.num_heads
    return (_image_linear(attention, queries_from_image).weight @ image_pe[0].T).view(h, -1, n)


def project_image(
    attention: Attention, image: torch.Tensor, image_pe: torch.Tensor, queries_from_image: bool, shared: bool, pe=None
) -> ImageProjection:
    """This attention's prompt-independent image side (see :class:`ImageProjection`).

    ``shared``: the image tokens are the same for every prompt (the first layer), so their projection
    itself is computed here; otherwise only the PE's. ``pe``: ``project_pe``'s result, if already known.
    """
    linear = _image_linear(attention, queries_from_image)
    pe = project_pe(attention, image_pe, queries_from_image) if pe is None else pe
    if not shared:
        return ImageProjection(pe, None, None)
    h, d, n = pe.shape
    x = image[0].T  # (C, N): products land in the (heads, d, N) layout the attention reads, no copies
    keys = torch.addmm(pe.reshape(h * d, n), linear.weight, x).add_(linear.bias[:, None]).view(h, d, n)
    if queries_from_image:
        return ImageProjection(pe, keys, None)
    v_proj = attention.v_proj
    values = torch.addmm(v_proj.bias[:, None], v_proj.weight, x).view(h, d, n).transpose(1, 2)
    return ImageProjection(pe, keys, values)


def _heads(attention: Attention, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as (heads, head_dim, C) and bias as (heads, head_dim)."""
    h = attention.num_heads
    d = attention.internal_dim // h
    return linear.weight.view(h, d, -1), linear.bias.view(h, d)


def _image_scores(attention, x, linear, image, image_pe, pe) -> torch.Tensor:
    """(B, heads*T, N) scaled scores of per-head token vectors x (B, T, heads, d) against
    ``linear(image + image_pe)``, with ``linear`` folded into x: ``x . (W y + b) = (W^T x) . y + x . b``."""
    b, t, h, d = x.shape
    weight, bias = _heads(attention, linear)
    x = x / math.sqrt(d)
    folded = torch.einsum("bthd,hdc->bhtc", x, weight).reshape(b, h * t, -1)
    offset = torch.einsum("bthd,hd->bht", x, bias).reshape(b, h * t, 1)
    if pe is not None:  # the PE projected once per set of weights: (h, d, N), one product per head
        offset = offset + (x.permute(0, 2, 1, 3) @ pe).reshape(b, h * t, -1)
    else:
        offset = offset + (folded.reshape(b * h * t, -1) @ image_pe[0].T).view(b, h * t, -1)
    return _add_product(offset, folded, image.transpose(1, 2))


def _add_product(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``base + a @ b`` for (B, m, k) ``a``, with ``base`` and ``b`` of batch 1 or B: one ``baddbmm`` in PyTorch.
    An exported graph gets a broadcast MatMul and an Add instead: ONNX has no ``baddbmm``, whose export copies
    the expanded operands and scales by beta and alpha, each a pass over (B, N, C) values."""
    if torch.onnx.is_in_onnx_export():
        return base + a @ b
    batch = a.shape[0]
    return torch.baddbmm(base.expand(batch, -1, -1), a, b.expand(batch, -1, -1))


def _softmax_over_tokens(scores: torch.Tensor) -> torch.Tensor:
    """Softmax of (B, heads, T, N) scores over each head's T tokens. An exported graph spells it out (max, exp,
    sum, divide): ONNX Runtime's Softmax over an axis other than the last transposes its input there and back,
    which costs more than the arithmetic (WebAssembly: ~1.8 against ~1.1 ms for L0's 8 x 7 x 4096 scores)."""
    if not torch.onnx.is_in_onnx_export():
        return scores.softmax(dim=2)
    exp = (scores - scores.amax(dim=2, keepdim=True)).exp()
    return exp / exp.sum(dim=2, keepdim=True)


def _projected_image(attention, image, image_pe, b: int, projection, queries: bool) -> ImageProjection | None:
    """The image side as projected tensors when that is cheaper than folding, else None.

    Projecting costs one (N, C) x (C, C') product for all prompts; folding costs about half of
    that per prompt, so a shared image is projected for three prompts or more.
    """
    if projection is not None and projection.keys is not None:
        return projection
    if image.shape[0] == 1 and b > 2:
        return project_image(attention, image, image_pe, queries, shared=True)
    return None


def tokens_to_image(attention: Attention, tokens, image, image_pe, projection=None) -> torch.Tensor:
    """Tokens (B, T, C) attend to image tokens (1 or B, N, C) with keys ``image + image_pe``."""
    b, t, _ = tokens.shape
    h = attention.num_heads
    q = attention.q_proj(tokens)
    projected = _projected_image(attention, image, image_pe, b, projection, queries=False)
    if projected is not None:  # all prompts' tokens against the image projected once, one product per head
        q = q.view(b * t, h, -1).transpose(0, 1)  # (h, B*T, d)
        attn = ((q / math.sqrt(q.shape[-1])) @ projected.keys).softmax(dim=-1)
        return attention.out_proj((attn @ projected.values).transpose(0, 1).reshape(b, t, -1))
    pe = projection.pe if projection is not None else None
    attn = _image_scores(attention, q.view(b, t, h, -1), attention.k_proj, image, image_pe, pe).softmax(dim=-1)
    pooled = (attn @ image).view(b, h, t, -1)  # softmax rows sum to 1: attn @ (Wv x + bv) = Wv (attn @ x) + bv
    wv, bv = _heads(attention, attention.v_proj)
    out = torch.einsum("bhtc,hdc->bthd", pooled, wv) + bv
    return attention.out_proj(out.reshape(b, t, -1))


def image_update(attention: Attention, image, image_pe, tokens_k, tokens_v, projection=None):
    """Image tokens (1 or B, N, C) with queries ``image + image_pe`` attend to tokens (B, T, C): the
    attention output as the product ``weights @ values`` of (B, N, heads*T) attention weights and
    (B, heads*T, C) values, out_proj folded in (the caller adds it to the image tokens)."""
    b, t, _ = tokens_k.shape
    h = attention.num_heads
    k = attention.k_proj(tokens_k).view(b, t, h, -1)
    v = attention.v_proj(tokens_v).view(b, t, h, -1)
    # out_proj folded into the values; each head's weights sum to 1, so its bias is spread over them
    wo = attention.out_proj.weight.view(-1, h, k.shape[-1])
    v_out = torch.einsum("bthd,chd->bhtc", v, wo) + attention.out_proj.bias / h
    projected = _projected_image(attention, image, image_pe, b, projection, queries=True)
    if projected is not None:
        k = (k / math.sqrt(k.shape[-1])).permute(2, 0, 1, 3).reshape(h, b * t, -1)
        scores = (k @ projected.keys).view(h, b, t, -1).transpose(0, 1)  # (B, h, T, N)
    else:
        pe = projection.pe if projection is not None else None
        scores = _image_scores(attention, k, attention.q_proj, image, image_pe, pe).view(b, h, t, -1)
    attn = _softmax_over_tokens(scores).reshape(b, h * t, -1)
    return attn.transpose(1, 2), v_out.reshape(b, h * t, -1)


def _block(
    layer: TwoWayAttentionBlock, queries, keys, query_pe, key_pe, projections, updates: list | None, keys_owned: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` on a prepared image side. ``updates``: a list to append this layer's
    :class:`ImageUpdate` to (the norm's statistics kept); ``keys_owned``: the keys are this call's alone (a
    previous layer's output), updated in place."""
    to_image, to_tokens = projections
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q, q, queries)
    queries = layer.norm1(queries)

    q = queries + query_pe
    queries = layer.norm2(queries + tokens_to_image(layer.cross_attn_token_to_image, q, keys, key_pe, to_image))
    queries = layer.norm3(queries + layer.mlp(queries))

    q = queries + query_pe
    weights, values = image_update(layer.cross_attn_image_to_token, keys, key_pe, q, queries, to_tokens)
    if updates is not None and keys_owned and keys.shape[0] == weights.shape[0]:
        keys = keys.baddbmm_(weights, values)  # nobody reads these keys after this: in place
    else:  # e.g. the first layer's keys: the prepared image, shared by every prompt
        keys = _add_product(keys, weights, values)
    if updates is None:
        return queries, layer.norm4(keys)
    norm = layer.norm4  # the same layer norm, keeping its statistics
    keys, mean, rstd = torch.native_layer_norm(keys, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    updates.append(ImageUpdate(weights, values, mean, rstd))
    return queries, keys


def _attentions(transformer: TwoWayTransformer) -> list[Attention]:
    """Every cross-attention in call order: per layer token->image, image->token; then the final one."""
    pairs = [(layer.cross_attn_token_to_image, layer.cross_attn_image_to_token) for layer in transformer.layers]
    return [attention for pair in pairs for attention in pair] + [transformer.final_attn_token_to_image]


def transformer_pe(transformer: TwoWayTransformer, image_pe: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The PE token-major (1, N, C) and through every cross-attention's image-side projection, in call
    order: they depend on the weights alone, so callers may keep them across images."""
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    projected = tuple(project_pe(a, key_pe, i % 2 == 1) for i, a in enumerate(_attentions(transformer)))
    return key_pe, projected


def prepare(transformer: TwoWayTransformer, image_embedding: torch.Tensor, projected_pe: tuple) -> ImageSide:
    """Everything that does not depend on the prompts: computed once per image, reused by every prompt.

    Image tokens token-major (every projection, sum and norm then reads memory in order; a strided (N, C)
    view made the decoder ~15 % slower on CPU), the first layer's image projections (its image tokens are
    the same for every prompt when ``image_embedding`` has batch 1) and the PE projections
    (``projected_pe``: ``transformer_pe``'s result).
    """
    keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
    key_pe, pes = projected_pe
    projections = tuple(
        project_image(attention, keys, key_pe, i % 2 == 1, i < 2 and keys.shape[0] == 1, pe)
        for i, (attention, pe) in enumerate(zip(_attentions(transformer), pes))
    )
    return ImageSide(keys, key_pe, projections)


def run(
    transformer: TwoWayTransformer, point_embedding: torch.Tensor, side: ImageSide, updates: list | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` on a prepared image side: (tokens (B, T, C), image tokens (B, N, C));
    ``updates`` (a list) receives each layer's :class:`ImageUpdate`."""
    keys, key_pe, projections = side.keys, side.key_pe, side.projections
    queries = point_embedding
    for i, layer in enumerate(transformer.layers):
        queries, keys = _block(
            layer, queries, keys, point_embedding, key_pe, projections[2 * i : 2 * i + 2], updates, keys_owned=i > 0
        )
    q = queries + point_embedding
    final = tokens_to_image(transformer.final_attn_token_to_image, q, keys, key_pe, projections[-1])
    return transformer.norm_final_attn(queries + final), keys
