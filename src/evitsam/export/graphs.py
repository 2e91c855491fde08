"""The model re-wrapped into the graphs deployment tools expect: SAM's ONNX encoder and decoder signatures.

Every wrapper calls the model's own pre-processing, prompt encoder, decoder and post-processing, so the
exported graphs compute what ``SamPredictor`` computes; only the calling convention changes:

- encoder: ``input_image`` (H, W, 3) float32 RGB 0-255, long side already resized to the encoder size;
  normalisation and zero padding happen inside the graph;
- decoder: SAM's ONNX signature (``segment_anything.utils.onnx.SamOnnxModel``): points in the 1024 frame
  with labels -1 (padding), 0/1 (background/foreground), 2/3 (box corners), a low-res ``mask_input``
  gated by ``has_mask_input``, masks up-scaled to ``orig_im_size``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import EfficientViTSam
from ..models.prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT
from ..models.sam import PROMPT_FRAME

# SAM's single-mask rule: with more than one real click the single-output token (0) is reliable, with one
# click (plus the padding point) the best multimask token is. The offset makes argmax choose without control flow.
SINGLE_TOKEN_BIAS = 1000.0


class EncoderGraph(nn.Module):
    """(H, W, 3) float 0-255 RGB, long side = encoder size -> (1, 256, 64, 64) embeddings."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        images = input_image.permute(2, 0, 1).unsqueeze(0)
        return self.model.encode(self.model.preprocess(images))


class PromptDecoderGraph(nn.Module):
    """SAM's prompt convention -> all four low-res masks (B, 4, 256, 256) and IoU predictions (B, 4).

    Token 0 is the single-mask output, tokens 1..3 the multimask outputs. This is the decoder the
    runtimes execute for ``SamPredictor``; post-processing stays with the predictor.
    """

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = self.model.prompt_encoder
        sparse = prompts.embed_points(point_coords, point_labels, pad=False)
        gate = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = prompts.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = gate * prompts.mask_downscaling(mask_input) + (1 - gate) * no_mask
        return self.model.mask_decoder.predict_masks(image_embeddings, prompts.get_dense_pe(), sparse, dense)


def select_single_mask(masks: torch.Tensor, scores: torch.Tensor, num_points: torch.Tensor | int):
    """SAM's ``--return-single-mask`` rule on all four outputs: (B, 4, ...) -> (B, 1, ...)."""
    bias = torch.zeros_like(scores[:1])
    bias[:, 0] = SINGLE_TOKEN_BIAS
    best = torch.argmax(scores + (num_points - 2.5) * bias, dim=1)
    rows = torch.arange(masks.shape[0], device=masks.device)
    return masks[rows, best].unsqueeze(1), scores[rows, best].unsqueeze(1)


def prompt_frame_size(orig_im_size: torch.Tensor) -> torch.Tensor:
    """(h, w) of the image resized into the 1024 frame, rounded half-up (``get_preprocess_shape``)."""
    size = orig_im_size.to(torch.float32)
    return torch.floor(size * (PROMPT_FRAME / torch.max(size)) + 0.5).to(torch.int64)


class _UpscalingDecoder(nn.Module):
    """A prompt decoder whose masks come out at the original image size, one or several per prompt."""

    def __init__(self, model: EfficientViTSam, single_mask: bool) -> None:
        super().__init__()
        self.model = model
        self.decoder = PromptDecoderGraph(model)
        self.single_mask = single_mask


class SamDecoderGraph(_UpscalingDecoder):
    """SAM's ONNX decoder: outputs ``masks`` (logits at ``orig_im_size``), ``iou_predictions``, ``low_res_masks``.

    ``single_mask=False`` returns all four outputs, as SAM's exported decoder does (tools pick by score).
    """

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low_res, scores = self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        if self.single_mask:
            low_res, scores = select_single_mask(low_res, scores, point_coords.shape[1])
        return upscale(self.model, low_res, orig_im_size), scores, low_res


class BoxesDecoderGraph(_UpscalingDecoder):
    """Detector boxes -> masks in one call: ``boxes`` (B, 4) XYXY in the 1024 frame, no other prompt.

    Outputs follow ``SamPredictor.predict_torch``: one mask per box (token 0) with ``single_mask``,
    else the three multimask outputs.
    """

    def forward(
        self, image_embeddings: torch.Tensor, boxes: torch.Tensor, orig_im_size: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coords = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], dtype=boxes.dtype, device=boxes.device)
        labels = labels.expand(coords.shape[0], 2)
        side = self.model.low_res_size
        no_mask = torch.zeros(1, 1, side, side, dtype=boxes.dtype, device=boxes.device)
        has_mask = torch.zeros(1, dtype=boxes.dtype, device=boxes.device)
        low_res, scores = self.decoder(image_embeddings, coords, labels, no_mask, has_mask)
        selected = slice(0, 1) if self.single_mask else slice(1, None)
        low_res, scores = low_res[:, selected], scores[:, selected]
        return upscale(self.model, low_res, orig_im_size), scores, low_res


def upscale(model: EfficientViTSam, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
    """The predictor's post-processing with sizes read from the ``orig_im_size`` tensor (dynamic in the graph)."""
    input_size = prompt_frame_size(orig_im_size)
    original = orig_im_size.to(torch.int64)
    return model.postprocess_masks(low_res, (input_size[0], input_size[1]), (original[0], original[1]))
