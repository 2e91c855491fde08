"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math

import torch
from torch import nn


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
    # arranged for many prompts on one image, where the decoder is memory-bound:
    # * a shared image side (batch 1) is projected once and broadcast over the prompts;
    # * otherwise the q/k/v/out projections are folded into the token side (W^T q is only T
    #   vectors), so no per-prompt (B, N, C) projection is ever materialised;
    # * ``image + image_pe`` is never materialised either (the PE term is one GEMM with the
    #   shared PE), scores are laid out (B, heads * T, N) so softmax and products need no copies,
    #   and the image->token output lands on its residual inside one batched GEMM.

    def _heads(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """A projection's weight as (heads, head_dim, C) and bias as (heads, head_dim)."""
        d = self.internal_dim // self.num_heads
        return linear.weight.view(self.num_heads, d, -1), linear.bias.view(self.num_heads, d)

    def _fold(self, x: torch.Tensor, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head token vectors x (B, T, heads, d) as (B, heads*T, C) and (B, heads*T, 1) with
        ``x . (W y + b) = folded . y + bias`` for any image token y, scaled by 1/sqrt(d)."""
        b, t, h, d = x.shape
        weight, bias = self._heads(linear)
        x = x / math.sqrt(d)
        return torch.einsum("bthd,hdc->bhtc", x, weight).reshape(b, h * t, -1), torch.einsum(
            "bthd,hd->bht", x, bias
        ).reshape(b, h * t, 1)

    def _image_scores(self, folded: torch.Tensor, bias: torch.Tensor, image: torch.Tensor, image_pe: torch.Tensor):
        """(B, heads*T, N) scores of folded token vectors against image tokens + PE."""
        b, ht, c = folded.shape
        pe_scores = (folded.reshape(b * ht, c) @ image_pe[0].T).view(b, ht, -1)
        return torch.baddbmm(pe_scores + bias, folded, image.transpose(1, 2))

    def tokens_to_image(self, tokens: torch.Tensor, image: torch.Tensor, image_pe: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, C) attend to image tokens (1 or B, N, C) with keys ``image + image_pe``."""
        b, t, _ = tokens.shape
        h = self.num_heads
        if image.shape[0] == 1:  # shared image side: project it once, all prompts' tokens in one product per head
            q = self.q_proj(tokens).view(b * t, h, -1).transpose(0, 1)  # (h, B*T, d)
            k = self.k_proj(image[0] + image_pe[0]).view(-1, h, q.shape[-1]).permute(1, 2, 0)  # (h, d, N)
            v = self.v_proj(image[0]).view(-1, h, q.shape[-1]).transpose(0, 1)  # (h, N, d)
            attn = ((q / math.sqrt(q.shape[-1])) @ k).softmax(dim=-1)
            return self.out_proj((attn @ v).transpose(0, 1).reshape(b, t, -1))
        q_in, q_bias = self._fold(self.q_proj(tokens).view(b, t, h, -1), self.k_proj)
        attn = self._image_scores(q_in, q_bias, image, image_pe).softmax(dim=-1)
        pooled = (attn @ image).view(b, h, t, -1)  # softmax rows sum to 1: attn @ (Wv x + bv) = Wv (attn @ x) + bv
        wv, bv = self._heads(self.v_proj)
        out = torch.einsum("bhtc,hdc->bthd", pooled, wv) + bv
        return self.out_proj(out.reshape(b, t, -1))

    def image_to_tokens(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens_k: torch.Tensor, tokens_v: torch.Tensor
    ) -> torch.Tensor:
        """``image + attention`` (residual included): image tokens (1 or B, N, C), queries ``image + image_pe``,
        attend to tokens (B, T, C)."""
        b, t, _ = tokens_k.shape
        h = self.num_heads
        k = self.k_proj(tokens_k).view(b, t, h, -1)
        v = self.v_proj(tokens_v).view(b, t, h, -1)
        # out_proj folded into the values; each head's weights sum to 1, so its bias is spread over them
        wo = self.out_proj.weight.view(-1, h, k.shape[-1])
        v_out = torch.einsum("bthd,chd->bhtc", v, wo) + self.out_proj.bias / h
        if image.shape[0] == 1:  # shared image side: project it once
            q = self.q_proj(image[0] + image_pe[0]).view(-1, h, k.shape[-1]).permute(1, 2, 0)  # (h, d, N)
            k = (k / math.sqrt(k.shape[-1])).permute(2, 0, 1, 3).reshape(h, b * t, -1)
            scores = (k @ q).view(h, b, t, -1).transpose(0, 1)  # (B, h, T, N)
            image = image.expand(b, *image.shape[1:])
        else:
            k_in, k_bias = self._fold(k, self.q_proj)
            scores = self._image_scores(k_in, k_bias, image, image_pe).view(b, h, t, -1)
        attn = scores.softmax(dim=2).reshape(b, h * t, -1)  # softmax over each head's T tokens
        return torch.baddbmm(image, attn.transpose(1, 2), v_out.reshape(b, h * t, -1))


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
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, keys, key_pe))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token.image_to_tokens(keys, key_pe, q, queries))
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

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns updated (tokens (B, T, C), image tokens (B, HW, C))."""
        # Token-major copies: every projection, sum and norm below then reads memory in order (a strided
        # (N, C) view made the decoder ~15 % slower on CPU); the numbers are the same.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.tokens_to_image(q, keys, key_pe))
        return queries, keys
