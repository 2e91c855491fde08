"""SAM-style mask losses on point-sampled logits, plus the IoU-head loss the official code omits.

Loss per mask and output = ``focal_weight`` x focal (or BCE, as the official code) + dice, computed on
PointRend-style points (most uncertain logits plus uniform ones) instead of every pixel; only the
best of the multimask outputs is back-propagated; the IoU head learns the IoU its mask really has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of (N, C, H, W) maps at (N, P, 2) coordinates in [0, 1] (x, y) -> (N, C, P)."""
    grid = 2.0 * coords[:, :, None, :] - 1.0
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False)[..., 0]


@torch.no_grad()
def uncertain_points(
    logits: torch.Tensor, num_points: int, oversample: float = 3.0, importance: float = 0.75
) -> torch.Tensor:
    """(N, P, 2) points: ``importance`` of them where |logit| is smallest among random candidates."""
    n = logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample), 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs()[:, 0]
    n_uncertain = int(importance * num_points)
    index = uncertainty.topk(n_uncertain, dim=1).indices
    picked = torch.gather(candidates, 1, index[..., None].expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - n_uncertain, 2, device=logits.device)
    return torch.cat([picked, uniform], dim=1)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Mean over the last axis of the focal loss (RetinaNet form; alpha < 0 disables weighting)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft dice over the last axis, +1 smoothing (as SAM and the official code)."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with (targets > 0.5), over the last two axes."""
    pred, gt = logits > 0, targets > 0.5
    inter = (pred & gt).flatten(-2).sum(-1).float()
    union = (pred | gt).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


def sam_loss(
    low_res_logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    gt_masks: torch.Tensor,
    num_points: int = 112 * 112,
    focal_weight: float = 20.0,
    use_focal: bool = True,
    iou_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Losses for (N, C, 256, 256) logits and (N, C) IoU predictions against (N, S, S) padded GT masks.

    Logits and GT cover the same padded square (the encoder input), so both are sampled at the same
    normalised points. Returns ``loss`` (to back-propagate) and its parts, averaged over masks.
    """
    if low_res_logits.ndim != 4 or gt_masks.ndim != 3 or low_res_logits.shape[0] != gt_masks.shape[0]:
        raise ValueError(
            f"expected logits (N, C, h, w) and gt_masks (N, H, W), got {tuple(low_res_logits.shape)} and "
            f"{tuple(gt_masks.shape)}"
        )
    n, c = low_res_logits.shape[:2]
    flat = low_res_logits.reshape(n * c, 1, *low_res_logits.shape[2:])
    coords = uncertain_points(flat.detach().float(), num_points)
    point_logits = point_sample(flat.float(), coords)[:, 0].reshape(n, c, -1)
    gt = gt_masks.float()[:, None]
    point_targets = point_sample(gt, coords.reshape(n, c, -1, 2).reshape(n, -1, 2))[:, 0].reshape(n, c, -1)
    if use_focal:
        mask_term = sigmoid_focal_loss(point_logits, point_targets)
    else:
        mask_term = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none").mean(-1)
    dice = dice_loss(point_logits, point_targets)
    per_output = focal_weight * mask_term + dice  # (N, C)
    best = per_output.argmin(dim=1)
    rows = torch.arange(n, device=best.device)

    gt_low = F.interpolate(gt, low_res_logits.shape[-2:], mode="area")[:, 0]
    actual_iou = mask_iou(low_res_logits.detach()[rows, best], gt_low)
    iou_loss = F.mse_loss(iou_predictions[rows, best].float(), actual_iou)
    mask_loss = per_output[rows, best].mean()
    return {
        "loss": mask_loss + iou_weight * iou_loss,
        "mask": mask_term[rows, best].mean().detach(),
        "dice": dice[rows, best].mean().detach(),
        "iou": iou_loss.detach(),
        "miou": actual_iou.mean(),
    }
