"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


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
    """The decoder transformer's prompt-independent work on one image (see ``TwoWayTransformer.prepare``)."""

    keys: torch.Tensor  # (1 or B, N, C) image tokens, token-major
    key_pe: torch.Tensor  # (1, N, C)
    projections: tuple[ImageProjection, ...]  # per cross-attention, in the order the transformer calls them
    # (N, K) a shared image's tokens through the mask decoder's first up-scaling product, every norm's
    # scale folded in (``MaskDecoder.prepare_image``); None where not prepared
    upscaled: torch.Tensor | None = None
    # the dtype of each prompt's last up-scaling and hypernetwork products (the decoder's largest per-pixel
    # products): bfloat16 runs them on AMX / tensor cores; everything else stays float32
    products: torch.dtype = torch.float32


class ImageUpdate(NamedTuple):
    """One layer's change to the image tokens: ``keys = norm(keys + weights @ values)``.

    The attention output has rank H*T (heads x prompt tokens, ~56) against the width C (256), so a
    linear map of the new keys can be computed from the old keys' map and this low-rank term (see
    ``MaskDecoder.mask_logits``). ``mean``/``rstd``: the norm's statistics per image token.
    """

    weights: torch.Tensor  # (B, N, H*T) attention weights
    values: torch.Tensor  # (B, H*T, C) values with the output projection folded in
    mean: torch.Tensor  # (B, N, 1)
    rstd: torch.Tensor  # (B, N, 1)


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the internal width ({self.internal_dim})")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        attn = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = attn.softmax(dim=-1) @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    # Cross-attention between a few prompt tokens (T ~ 7 per prompt) and many image tokens
    # (N = 4096) whose keys are ``image + image_pe``. Mathematically the same as ``forward``, but
    # arranged for prompts on one image, where the decoder is memory-bound:
    # * an image side that every prompt shares (the first layer's) is projected once per image
    #   (``project_image``, cached by the predictor) and broadcast over the prompts;
    # * otherwise the q/k/v/out projections are folded into the token side (W^T q is only T
    #   vectors), so no per-prompt (B, N, C) projection is ever materialised;
    # * ``image + image_pe`` is never materialised either: the PE term uses the PE projected once
    #   per image, scores are laid out (B, heads * T, N) so softmax and products need no copies,
    #   and the image->token output lands on its residual inside one batched GEMM.

    def project_pe(self, image_pe: torch.Tensor, queries_from_image: bool) -> torch.Tensor:
        """The PE (1, N, C) through the projection that meets image tokens, (heads, d, N), no bias.

        ``queries_from_image``: image->token attention (image tokens are queries), else token->image.
        """
        linear = self.q_proj if queries_from_image else self.k_proj
        n, h = image_pe.shape[1], self.num_heads
        return (linear.weight @ image_pe[0].T).view(h, -1, n)  # (C', C) @ (C, N): lands in (heads, d, N)

    def project_image(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        queries_from_image: bool,
        shared: bool,
        pe: torch.Tensor | None = None,
    ) -> ImageProjection:
        """This attention's prompt-independent image side (see :class:`ImageProjection`).

        ``shared``: the image tokens are the same for every prompt (the first layer), so their
        projection itself is computed here; otherwise only the PE's. ``pe``: ``project_pe``'s result,
        if already known (it depends on the weights alone).
        """
        linear = self.q_proj if queries_from_image else self.k_proj
        pe = self.project_pe(image_pe, queries_from_image) if pe is None else pe
        if not shared:
            return ImageProjection(pe, None, None)
        h, d, n = pe.shape
        x = image[0].T  # (C, N): products land in the (heads, d, N) layout the attention reads, no copies
        keys = torch.addmm(pe.reshape(h * d, n), linear.weight, x).add_(linear.bias[:, None]).view(h, d, n)
        if queries_from_image:
            return ImageProjection(pe, keys, None)
        values = torch.addmm(self.v_proj.bias[:, None], self.v_proj.weight, x).view(h, d, n).transpose(1, 2)
        return ImageProjection(pe, keys, values)

    def _heads(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """A projection's weight as (heads, head_dim, C) and bias as (heads, head_dim)."""
        d = self.internal_dim // self.num_heads
        return linear.weight.view(self.num_heads, d, -1), linear.bias.view(self.num_heads, d)

    def _image_scores(
        self, x: torch.Tensor, linear: nn.Linear, image: torch.Tensor, image_pe: torch.Tensor, pe: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, heads*T, N) scaled scores of per-head token vectors x (B, T, heads, d) against
        ``linear(image + image_pe)``, with ``linear`` folded into x: ``x . (W y + b) = (W^T x) . y + x . b``."""
        b, t, h, d = x.shape
        weight, bias = self._heads(linear)
        x = x / math.sqrt(d)
        folded = torch.einsum("bthd,hdc->bhtc", x, weight).reshape(b, h * t, -1)
        offset = torch.einsum("bthd,hd->bht", x, bias).reshape(b, h * t, 1)
        if pe is not None:  # the PE projected once per image: (h, d, N)
            offset = offset + torch.einsum("bthd,hdn->bhtn", x, pe).reshape(b, h * t, -1)
        else:
            offset = offset + (folded.reshape(b * h * t, -1) @ image_pe[0].T).view(b, h * t, -1)
        return torch.baddbmm(offset, folded, image.transpose(1, 2).expand(b, -1, -1))

    def _projected_image(
        self, image: torch.Tensor, image_pe: torch.Tensor, b: int, projection: ImageProjection | None, queries: bool
    ) -> ImageProjection | None:
        """The image side as projected tensors when that is cheaper than folding, else None.

        Projecting costs one (N, C) x (C, C') product for all prompts; folding costs about half of
        that per prompt, so a shared image is projected for three prompts or more.
        """
        if projection is not None and projection.keys is not None:
            return projection
        if image.shape[0] == 1 and b > 2:
            return self.project_image(image, image_pe, queries, shared=True)
        return None

    def tokens_to_image(
        self,
        tokens: torch.Tensor,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        projection: ImageProjection | None = None,
    ) -> torch.Tensor:
        """Tokens (B, T, C) attend to image tokens (1 or B, N, C) with keys ``image + image_pe``."""
        b, t, _ = tokens.shape
        h = self.num_heads
        q = self.q_proj(tokens)
        projected = self._projected_image(image, image_pe, b, projection, queries=False)
        if projected is not None:  # all prompts' tokens against the image projected once, one product per head
            q = q.view(b * t, h, -1).transpose(0, 1)  # (h, B*T, d)
            attn = ((q / math.sqrt(q.shape[-1])) @ projected.keys).softmax(dim=-1)
            return self.out_proj((attn @ projected.values).transpose(0, 1).reshape(b, t, -1))
        pe = projection.pe if projection is not None else None
        attn = self._image_scores(q.view(b, t, h, -1), self.k_proj, image, image_pe, pe).softmax(dim=-1)
        pooled = (attn @ image).view(b, h, t, -1)  # softmax rows sum to 1: attn @ (Wv x + bv) = Wv (attn @ x) + bv
        wv, bv = self._heads(self.v_proj)
        out = torch.einsum("bhtc,hdc->bthd", pooled, wv) + bv
        return self.out_proj(out.reshape(b, t, -1))

    def image_update(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        tokens_k: torch.Tensor,
        tokens_v: torch.Tensor,
        projection: ImageProjection | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (1 or B, N, C) with queries ``image + image_pe`` attend to tokens (B, T, C): the
        attention output as the product ``weights @ values`` of (B, N, heads*T) attention weights and
        (B, heads*T, C) values, out_proj folded in (the caller adds it to the image tokens)."""
        b, t, _ = tokens_k.shape
        h = self.num_heads
        k = self.k_proj(tokens_k).view(b, t, h, -1)
        v = self.v_proj(tokens_v).view(b, t, h, -1)
        # out_proj folded into the values; each head's weights sum to 1, so its bias is spread over them
        wo = self.out_proj.weight.view(-1, h, k.shape[-1])
        v_out = torch.einsum("bthd,chd->bhtc", v, wo) + self.out_proj.bias / h
        projected = self._projected_image(image, image_pe, b, projection, queries=True)
        if projected is not None:
            k = (k / math.sqrt(k.shape[-1])).permute(2, 0, 1, 3).reshape(h, b * t, -1)
            scores = (k @ projected.keys).view(h, b, t, -1).transpose(0, 1)  # (B, h, T, N)
        else:
            pe = projection.pe if projection is not None else None
            scores = self._image_scores(k, self.q_proj, image, image_pe, pe).view(b, h, t, -1)
        attn = scores.softmax(dim=2).reshape(b, h * t, -1)  # softmax over each head's T tokens
        return attn.transpose(1, 2), v_out.reshape(b, h * t, -1)


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Self-attention on tokens, token->image, MLP on tokens, image->token (post-norm throughout)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        downsample_rate: int,
        skip_first_layer_pe: bool,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.mlp = MLPBlock(embedding_dim, mlp_dim)
        self.norm3 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.norm4 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        projections: tuple[ImageProjection | None, ImageProjection | None] = (None, None),
        updates: list[ImageUpdate] | None = None,
        keys_owned: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``updates``: a list to append this layer's :class:`ImageUpdate` to (inference only); then
        ``keys_owned`` says the keys are this call's alone (a previous layer's output), updated in place."""
        to_image, to_tokens = projections
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, keys, key_pe, to_image))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        weights, values = self.cross_attn_image_to_token.image_update(keys, key_pe, q, queries, to_tokens)
        if updates is not None and keys_owned and keys.shape[0] == weights.shape[0]:
            keys = keys.baddbmm_(weights, values)  # nobody reads these keys after this: in place
        else:  # e.g. the first layer's keys: the prepared image, shared by every prompt
            keys = torch.baddbmm(keys.expand(weights.shape[0], -1, -1), weights, values)
        if updates is None:
            return queries, self.norm4(keys)
        norm = self.norm4  # the same layer norm, keeping its statistics
        keys, mean, rstd = torch.native_layer_norm(keys, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        updates.append(ImageUpdate(weights, values, mean, rstd))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        downsample_rate: int = 2,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, downsample_rate, i == 0, norm_eps)
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim, eps=norm_eps)

    def project_pe(self, image_pe: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The PE token-major (1, N, C) and through every cross-attention's image-side projection, in
        call order: they depend on the weights alone, so callers may keep them across images."""
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        projected = []
        for layer in self.layers:
            projected.append(layer.cross_attn_token_to_image.project_pe(key_pe, False))
            projected.append(layer.cross_attn_image_to_token.project_pe(key_pe, True))
        projected.append(self.final_attn_token_to_image.project_pe(key_pe, False))
        return key_pe, tuple(projected)

    def prepare(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        projected_pe: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None,
    ) -> ImageSide:
        """Everything that does not depend on the prompts: computed once per image, reused by every prompt.

        Per-prompt image tokens token-major (every projection, sum and norm then reads memory in order;
        a strided (N, C) view made the decoder ~15 % slower on CPU), the first layer's image projections (its
        image tokens are the same for every prompt when ``image_embedding`` has batch 1) and the PE
        projections of every cross-attention (``projected_pe``: ``project_pe(image_pe)`` if known).
        """
        # token-major in memory: the folded path reads per-prompt images so, and every prompt's first
        # residual copies a shared one (from a strided view that copy took twice as long)
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe, pes = projected_pe if projected_pe is not None else self.project_pe(image_pe)
        attentions = [
            m for layer in self.layers for m in (layer.cross_attn_token_to_image, layer.cross_attn_image_to_token)
        ]
        attentions.append(self.final_attn_token_to_image)
        projections = tuple(
            attention.project_image(keys, key_pe, i % 2 == 1, i < 2 and keys.shape[0] == 1, pe)
            for i, (attention, pe) in enumerate(zip(attentions, pes))
        )
        return ImageSide(keys, key_pe, projections)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        image_side: ImageSide | None = None,
        updates: list[ImageUpdate] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns updated (tokens (B, T, C), image tokens (B, HW, C)); ``image_side`` from ``prepare``
        on the same inputs skips the prompt-independent work; ``updates`` (a list) receives each
        layer's :class:`ImageUpdate`."""
        side = image_side if image_side is not None else self.prepare(image_embedding, image_pe)
        keys, key_pe, projections = side.keys, side.key_pe, side.projections
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries, keys, point_embedding, key_pe, projections[2 * i : 2 * i + 2], updates, keys_owned=i > 0
            )
        q = queries + point_embedding
        final = self.final_attn_token_to_image.tokens_to_image(q, keys, key_pe, projections[-1])
        queries = self.norm_final_attn(queries + final)
        return queries, keys
