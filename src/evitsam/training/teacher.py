"""Distillation teachers: SAM's ViT-B/L/H (Meta's ``sam_vit_*.pth``) or any evitsam model.

A teacher is a frozen image encoder with its own input resolution (1024 for SAM, the encoder
size for evitsam models) plus the prompt encoder and mask decoder weights it was trained with, so
a distilled student starts with a decoder that already understands embeddings like its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.sam import normalize_and_pad
from ..models.sam_vit import SAM_IMAGE_SIZE, SamViTConfig, SamViTEncoder
from ..transforms import SamTransform
from ..weights import download_file, is_checkpoint_path, load_model, read_state_dict

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
_ENCODER = "image_encoder."
_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


@dataclass
class Teacher:
    name: str
    encoder: nn.Module  # (B, 3, S, S) normalised images -> (B, 256, G, G)
    encoder_size: int
    decoder_state: dict[str, torch.Tensor]  # prompt_encoder.* and mask_decoder.* weights

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """Embeddings of HxWx3 uint8 images, each pre-processed at the teacher's own resolution."""
        transform = SamTransform(self.encoder_size)
        device = next(self.encoder.parameters()).device
        batch = [
            normalize_and_pad(torch.from_numpy(transform.apply_image(image)).permute(2, 0, 1)[None].float().to(device),
                              self.encoder_size)
            for image in images
        ]  # fmt: skip
        return self.encoder(torch.cat(batch)).float()


def sam_vit_config(encoder_state: dict[str, torch.Tensor]) -> SamViTConfig:
    """The ViT's width, depth, heads and global-attention blocks, read from its tensors."""
    try:
        width = encoder_state["pos_embed"].shape[-1]
        depth = 1 + max(int(key.split(".")[1]) for key in encoder_state if key.startswith("blocks."))
        head_width = encoder_state["blocks.0.attn.rel_pos_h"].shape[1]
        grid = SAM_IMAGE_SIZE // 16
        global_blocks = tuple(
            i for i in range(depth) if encoder_state[f"blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1
        )
    except (KeyError, ValueError, IndexError) as error:
        raise ValueError(f"not a SAM ViT image encoder (missing or odd tensor: {error})") from None
    return SamViTConfig(width, depth, width // head_width, global_blocks)


def is_sam_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    return f"{_ENCODER}patch_embed.proj.weight" in state_dict


def sam_teacher(state_dict: dict[str, torch.Tensor], name: str) -> Teacher:
    """A teacher from a full SAM state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``)."""
    encoder_state = {k[len(_ENCODER) :]: v for k, v in state_dict.items() if k.startswith(_ENCODER)}
    encoder = SamViTEncoder(sam_vit_config(encoder_state))
    encoder.load_state_dict(encoder_state, strict=True)
    decoder_state = {k: v for k, v in state_dict.items() if k.startswith(_DECODER_PREFIXES)}
    return Teacher(name, encoder.eval().requires_grad_(False), SAM_IMAGE_SIZE, decoder_state)


def load_teacher(name_or_path: str, device: str | torch.device = "cpu") -> Teacher:
    """``vit_h``/``vit_l``/``vit_b`` (Meta's checkpoints, cached or downloaded), a SAM ``.pth`` path,
    or an evitsam variant name / checkpoint (e.g. ``xl1`` to distil XL1 into L0)."""
    key = str(name_or_path).strip().lower().removeprefix("sam_")
    if key in SAM_FILES:
        path = download_file(SAM_URL + SAM_FILES[key], SAM_FILES[key])
        return _to(sam_teacher(read_state_dict(path)[0], f"sam_{key}"), device)
    if is_checkpoint_path(name_or_path):
        state_dict, _ = read_state_dict(name_or_path)
        if is_sam_checkpoint(state_dict):
            return _to(sam_teacher(state_dict, str(name_or_path)), device)
    model = load_model(str(name_or_path), device=device).eval().requires_grad_(False)
    decoder_state = {k: v for k, v in model.state_dict().items() if k.startswith(_DECODER_PREFIXES)}
    return Teacher(model.variant, model.image_encoder, model.encoder_size, decoder_state)


def _to(teacher: Teacher, device: str | torch.device) -> Teacher:
    teacher.encoder.to(device)
    return teacher


def match_grid(targets: torch.Tensor, grid: int) -> torch.Tensor:
    """Teacher embeddings resized (area average) to the student's grid, when the two differ."""
    if targets.shape[-1] == grid:
        return targets
    return F.adaptive_avg_pool2d(targets, grid)
