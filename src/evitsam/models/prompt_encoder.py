"""SAM's prompt encoder: points, boxes and low-res masks to sparse and dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import LayerNorm2d

# SAM's prompt frame: prompts, the dense positional encoding and mask post-processing live in a 1024 square
# whatever the encoder's input size.
PROMPT_FRAME = 1024

# Label conventions shared with SAM and its ONNX decoder.
LABEL_PADDING = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an ``h x w`` grid of cell centres, shaped (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates (..., 2) given in an image of ``image_size`` = (h, w)."""
        # One broadcast division, not SAM's in-place column writes: the same numbers, and an exported
        # graph without ScatterND/Range index plumbing (which some OpenVINO CPU builds mis-shape).
        coords = coords / coords.new_tensor([image_size[1], image_size[0]])
        return self._pe_encoding(coords.to(torch.float))


class PromptEncoder(nn.Module):
    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, shaped (1, C, 64, 64)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) points with labels -1..3 (SAM's ONNX convention) -> (B, N [+1], C) tokens.

        ``pad`` appends SAM's not-a-point token; without a box the decoder was trained with it.
        """
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == LABEL_PADDING, self.not_a_point_embed.weight, embedding)
        for label, label_embed in enumerate(self.point_embeddings):
            embedding = embedding + (labels == label) * label_embed.weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embeds = torch.cat(
            [self.point_embeddings[LABEL_BOX_TOP_LEFT].weight, self.point_embeddings[LABEL_BOX_BOTTOM_RIGHT].weight]
        )
        return embedding + corner_embeds

    @staticmethod
    def _batch_size(points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, C) and dense embeddings; boxes are (B, 4) in the 1024 frame.

        Dense embeddings are (B, C, 64, 64) for mask prompts, and (1, C, 64, 64) without them: the
        same for every prompt, so the decoder can share the image-side work instead of repeating it.
        """
        batch = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty((batch, 0, self.embed_dim), device=device)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1)
        if masks is not None:
            dense_embeddings = self.mask_downscaling(masks)
        else:
            dense_embeddings = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                1, self.embed_dim, *self.image_embedding_size
            )
        return sparse_embeddings, dense_embeddings


VALID_LABELS = (LABEL_PADDING, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT)


def _check_tensor(name: str, value: torch.Tensor, ndim: int, last: int | None, form: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor shaped {form}, got {type(value).__name__}")
    if value.ndim != ndim or (last is not None and value.shape[-1] != last):
        raise ValueError(f"{name} must be shaped {form}, got {tuple(value.shape)}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise ValueError(f"{name} must contain only finite values (no NaN or inf)")


def validate_prompts(
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    mask_size: int = 256,
) -> None:
    """Check batched prompts (B, N, 2) / (B, N) / (B, 4) / (B, 1, M, M) for shape and sanity.

    ``mask_size`` M is the model's low-res mask side (``model.low_res_size``, 256 for official models).
    """
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    batch_sizes = {}
    if point_coords is not None:
        _check_tensor("point_coords", point_coords, 3, 2, "(B, N, 2)")
        _check_tensor("point_labels", point_labels, 2, None, "(B, N)")
        if point_labels.shape != point_coords.shape[:2]:
            raise ValueError(
                f"point_labels must be shaped (B, N) = {tuple(point_coords.shape[:2])} to match point_coords, "
                f"got {tuple(point_labels.shape)}"
            )
        invalid = ~torch.isin(point_labels.to(torch.long), torch.tensor(VALID_LABELS, device=point_labels.device))
        if point_labels.is_floating_point():
            invalid |= point_labels != point_labels.round()
        if invalid.any():
            bad = point_labels[invalid][0].item()
            raise ValueError(f"point_labels must be in {{-1, 0, 1, 2, 3}} (1 foreground, 0 background), got {bad}")
        batch_sizes["point_coords"] = point_coords.shape[0]
    if boxes is not None:
        _check_tensor("boxes", boxes, 2, 4, "(B, 4) as x0, y0, x1, y1")
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            bad = boxes[degenerate][0].tolist()
            raise ValueError(f"boxes must satisfy x0 < x1 and y0 < y1 (XYXY), got degenerate box {bad}")
        batch_sizes["boxes"] = boxes.shape[0]
    if mask_input is not None:
        form = f"(B, 1, {mask_size}, {mask_size}) low-res logits"
        _check_tensor("mask_input", mask_input, 4, None, form)
        if tuple(mask_input.shape[1:]) != (1, mask_size, mask_size):
            raise ValueError(f"mask_input must be shaped {form}, got {tuple(mask_input.shape)}")
        batch_sizes["mask_input"] = mask_input.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(f"prompt batch sizes disagree: {batch_sizes}")
