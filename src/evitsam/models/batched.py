"""SAM's ``Sam.forward`` for EfficientViT-SAM: a batch of images with their prompts, end to end.

SAM's batched-inference examples and evaluation code call ``sam(batched_input, multimask_output)``
with each image already resized by ``ResizeLongestSide(sam.image_encoder.img_size)`` (1024) and its
prompts mapped into that frame. The same records work here: ``preprocess`` takes the 1024-frame
images on to the encoder's size, and prompts and masks stay in the 1024 frame the decoder uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..transforms import PROMPT_FRAME, get_preprocess_shape
from .prompt_encoder import validate_prompts

if TYPE_CHECKING:
    from .sam import EfficientViTSam

PROMPT_KEYS = ("point_coords", "point_labels", "boxes", "mask_inputs")


def _check_record(index: int, record: Any, encoder_size: int) -> tuple[int, int]:
    """The record's 1024-frame input size, after checking its image and original size."""
    name = f"batched_input[{index}]"
    if not isinstance(record, dict) or "image" not in record or "original_size" not in record:
        raise ValueError(f"{name} must be a dict with 'image' (3, H, W) and 'original_size' (H, W)")
    image, original = record["image"], record["original_size"]
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}['image'] must be a (3, H, W) tensor, got {shape}")
    if len(original) != 2 or min(original) <= 0:
        raise ValueError(f"{name}['original_size'] must be (height, width), got {original}")
    original = (int(original[0]), int(original[1]))
    frames = {get_preprocess_shape(*original, PROMPT_FRAME), get_preprocess_shape(*original, encoder_size)}
    if tuple(image.shape[-2:]) not in frames:
        raise ValueError(
            f"{name}['image'] is {tuple(image.shape[-2:])}, but an image of original_size {original} resized by "
            f"ResizeLongestSide({PROMPT_FRAME}) is {get_preprocess_shape(*original, PROMPT_FRAME)}"
        )
    return get_preprocess_shape(*original, PROMPT_FRAME)


@torch.no_grad()
def batched_forward(model: EfficientViTSam, batched_input: list[dict], multimask_output: bool) -> list[dict]:
    """``Sam.forward``: records with ``image`` (3, H, W) 0-255 in the 1024 frame, ``original_size`` (H, W) and
    optionally ``point_coords`` (B, N, 2), ``point_labels`` (B, N), ``boxes`` (B, 4) in the 1024 frame and
    ``mask_inputs`` (B, 1, M, M) -> per record ``masks`` (B, C, H, W) bool, ``iou_predictions`` (B, C) and
    ``low_res_logits`` (B, C, M, M). Gradients are off, as in SAM."""
    if not isinstance(batched_input, (list, tuple)) or not batched_input:
        raise ValueError("batched_input must be a non-empty list of dicts (one per image)")
    input_sizes = [_check_record(i, record, model.encoder_size) for i, record in enumerate(batched_input)]
    device = model.device
    images = torch.stack([model.preprocess(record["image"].to(device)) for record in batched_input])
    embeddings = model.encode(images)
    outputs = []
    for record, embedding, input_size in zip(batched_input, embeddings, input_sizes):
        prompts = [record.get(key) for key in PROMPT_KEYS]
        prompts = [None if p is None else p.to(device) for p in prompts]
        if prompts[2] is not None and prompts[2].ndim == 1:  # SAM's prompt encoder also takes a single box (4,)
            prompts[2] = prompts[2][None]
        validate_prompts(*prompts, mask_size=model.low_res_size)
        low_res, scores = model.fast_decoder().decode(embedding[None], *prompts, multimask_output=multimask_output)
        original = (int(record["original_size"][0]), int(record["original_size"][1]))
        masks = model.postprocess_masks(low_res, input_size, original, threshold=model.mask_threshold)
        outputs.append({"masks": masks, "iou_predictions": scores, "low_res_logits": low_res})
    return outputs
