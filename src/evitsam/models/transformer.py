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

    # Cross-attention between a few prompt tokens (T ~ 7) and many image tokens (N = 4096). When the
    # image side differs per prompt, projecting all N image tokens per prompt dominates the decoder;
    # instead the projections are folded into the token side (W^T q is only T vectors), which is
    # exact algebra with ~2.5x fewer multiply-adds and no per-head copies of (B, N, C) tensors.
    # When the image side is shared (batch 1), it is projected once and broadcast over prompts.

    def _heads(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """A projection's weight as (heads, head_dim, C) and bias as (heads, head_dim)."""
        d = self.internal_dim // self.num_heads
        return linear.weight.view(self.num_heads, d, -1), linear.bias.view(self.num_heads, d)

    def tokens_to_image(self, tokens: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, C) attend to image tokens (1 or B, N, C); same result as ``forward``."""
        if image_k.shape[0] == 1 or tokens.shape[0] == 1:
            return self.forward(tokens, image_k, image_v)
        b, t, _ = tokens.shape
        h = self.num_heads
        q = self.q_proj(tokens).view(b, t, h, -1)
        wk, bk = self._heads(self.k_proj)
        q_in = torch.einsum("bthd,hdc->bhtc", q, wk).reshape(b, h * t, -1)  # q . (Wk x + bk) = (Wk^T q) . x + q . bk
        q_bias = torch.einsum("bthd,hd->bht", q, bk).reshape(b, h * t, 1)
        attn = ((q_in @ image_k.transpose(1, 2) + q_bias) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        pooled = (attn @ image_v).view(b, h, t, -1)  # softmax rows sum to 1: attn @ (Wv x + bv) = Wv (attn @ x) + bv
        wv, bv = self._heads(self.v_proj)
        out = torch.einsum("bhtc,hdc->bthd", pooled, wv) + bv
        return self.out_proj(out.reshape(b, t, -1))

    def image_to_tokens(self, image_q: torch.Tensor, tokens_k: torch.Tensor, tokens_v: torch.Tensor) -> torch.Tensor:
        """Image tokens (1 or B, N, C) attend to tokens (B, T, C); same result as ``forward``."""
        b, t, _ = tokens_k.shape
        h = self.num_heads
        k = self.k_proj(tokens_k).view(b, t, h, -1)
        v = self.v_proj(tokens_v).view(b, t, h, -1)
        # out_proj folded into the values: the output is a softmax-weighted sum of H*T vectors of width C.
        v_out = torch.einsum("bthd,chd->bhtc", v, self.out_proj.weight.view(-1, h, k.shape[-1])).reshape(b, h * t, -1)
        if image_q.shape[0] == 1:
            q = self.q_proj(image_q[0]).view(-1, h, k.shape[-1])
            scores = torch.einsum("nhd,bthd->bnht", q, k)
        else:
            wq, bq = self._heads(self.q_proj)
            k_in = torch.einsum("bthd,hdc->bhtc", k, wq).reshape(b, h * t, -1)
            k_bias = torch.einsum("bthd,hd->bht", k, bq).reshape(b, 1, h * t)
            scores = (image_q @ k_in.transpose(1, 2) + k_bias).view(b, -1, h, t)
        attn = (scores / math.sqrt(k.shape[-1])).softmax(dim=-1)
        return attn.reshape(b, -1, h * t) @ v_out + self.out_proj.bias


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
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token.image_to_tokens(k, q, queries))
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
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.tokens_to_image(q, k, keys))
        return queries, keys
