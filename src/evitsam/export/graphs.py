"""The model re-wrapped into the graphs deployment tools expect: SAM's ONNX encoder and decoder signatures.

Every wrapper calls the model's own pre-processing, prompt encoder, decoder and post-processing, so the
exported graphs compute what ``SamPredictor`` computes; only the calling convention changes:

- encoder: ``input_image`` (H, W, 3) float32 RGB 0-255 of any size (annotation tools send a fixed
  letterboxed canvas, SAM tools the photo with its long side at 1024); the graph resizes it so its long
  side is the encoder size exactly as ``SamTransform.apply_image`` does (PIL's antialiased bilinear on
  uint8: a triangle filter widened by the scale, edge weights renormalised, width then height, each
  pass rounded to integers), then normalises and zero-pads;
- decoder: SAM's ONNX signature (``segment_anything.utils.onnx.SamOnnxModel``): points in the 1024 frame
  with labels -1 (padding), 0/1 (background/foreground), 2/3 (box corners), a 256x256 ``mask_input``
  gated by ``has_mask_input``, masks up-scaled to ``orig_im_size``, 256x256 ``low_res_masks`` that a
  tool can feed back as ``mask_input``, whatever the model's own low-res size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.onnx.operators
from torch import nn

from ..models import EfficientViTSam
from ..models.prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT
from ..models.sam import PROMPT_FRAME

# SAM's single-mask rule: with more than one real click the single-output token (0) is reliable, with one
# click (plus the padding point) the best multimask token is. The offset makes argmax choose without control flow.
SINGLE_TOKEN_BIAS = 1000.0


# SAM's low-res mask side: what ``mask_input`` and ``low_res_masks`` measure in SAM's ONNX signature.
SAM_LOW_RES = 256


class EncoderGraph(nn.Module):
    """(H, W, 3) float 0-255 RGB -> (1, 256, G, G) embeddings.

    ``resize=True`` (the tools' encoder): any H, W, resized inside the graph like ``SamTransform.apply_image``.
    ``resize=False`` (the engines' encoder): the long side must already be the encoder size; no resampling
    work at all, which matters for the engines that always feed a square of exactly that size.
    """

    def __init__(self, model: EfficientViTSam, resize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.resize = resize

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        images = input_image.permute(2, 0, 1)
        if self.resize:
            images = resize_like_pil(images, self.model.encoder_size)
        return self.model.encode(self.model.preprocess(images.unsqueeze(0)))


def resize_like_pil(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """(3, H, W) 0-255 -> (3, h, w) with max(h, w) = ``long_side``, sizes rounded half-up; PIL's uint8 bilinear.

    Both passes are products with (out, in) weight matrices built from the input's run-time shape, so the
    graph stays dynamic and runs the same in every ONNX runtime. A pass whose size does not change is the
    identity and is not rounded (non-integer inputs of the right size pass unchanged).
    """
    size = torch.onnx.operators.shape_as_tensor(image)[1:].to(torch.float64)
    target = torch.floor(size * (long_side / torch.max(size)) + 0.5).to(torch.int64)
    image = require_resizable(image, target)
    height, width = size.to(torch.int64)
    columns = antialiased_bilinear(width, target[1])
    image = round_if_resized(image @ columns.T, width != target[1])
    rows = antialiased_bilinear(height, target[0])
    return round_if_resized(rows @ image, height != target[0])


def antialiased_bilinear(in_size: torch.Tensor, out_size: torch.Tensor) -> torch.Tensor:
    """(out, in) float32 weights of PIL's bilinear resize along one axis (``ImagingResample``).

    Output i is centred at (i + 0.5) * scale; the triangle filter is widened by the scale when
    shrinking (antialiasing), weights falling outside the image are dropped and each row renormalised.
    """
    scale = in_size.to(torch.float64) / out_size.to(torch.float64)
    support = torch.clamp(scale, min=1.0)
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    taps = torch.arange(in_size, dtype=torch.float64) + 0.5
    weights = torch.relu(1 - torch.abs(taps[None, :] - centres[:, None]) / support)
    return (weights / weights.sum(dim=1, keepdim=True)).to(torch.float32)


def round_if_resized(result: torch.Tensor, resized: torch.Tensor) -> torch.Tensor:
    """A pass's result rounded half-up and clipped to 0-255 as PIL's uint8 passes are, if the pass changed
    the size; else as it is (its weights were the identity: the input, exactly)."""
    return torch.where(resized, torch.clamp(torch.floor(result + 0.5), 0, 255), result)


class _RequireResizable(torch.autograd.Function):
    """Passes the image through; fails when the resized image would have an empty side.

    In the exported graph the check is a Reshape to the image's own shape plus one row when the check
    fails, which every ONNX runtime rejects at run time ("cannot reshape" naming both shapes), instead of
    computing an embedding of an empty image.
    """

    @staticmethod
    def forward(ctx, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        if int(target.min()) < 1:
            shape, resized = tuple(image.shape[1:]), target.tolist()
            raise ValueError(f"input_image {shape} is too elongated: resized to {resized} it has an empty side")
        return image

    @staticmethod
    def symbolic(g, image, target):
        failed = g.op(
            "Cast",
            g.op("Less", g.op("ReduceMin", target, keepdims_i=1), g.op("Constant", value_t=torch.tensor(1))),
            to_i=7,
        )
        extra = g.op(
            "Concat",
            g.op("Constant", value_t=torch.tensor([0])),
            failed,
            g.op("Constant", value_t=torch.tensor([0])),
            axis_i=0,
        )
        return g.op("Reshape", image, g.op("Add", g.op("Shape", image), extra))


def require_resizable(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``image`` unchanged when every side of ``target`` (the resized size) is at least one pixel, else an error."""
    return _RequireResizable.apply(image, target)


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
        return self.model.fast_decoder().predict_masks(image_embeddings, sparse, dense)


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
    """A prompt decoder whose masks come out at the original image size, one or several per prompt.

    Its low-res masks, in and out, are SAM's 256x256 whatever the model's own size L (``low_res_size``):
    outputs are up-sampled (``mask_resamplers``), and a ``mask_input`` is brought back to L by the
    least-squares inverse of that up-sampling, so feeding ``low_res_masks`` back gives the model exactly
    its own low-res logits (what ``SamPredictor.predict(mask_input=...)`` refines with).
    """

    def __init__(self, model: EfficientViTSam, single_mask: bool) -> None:
        super().__init__()
        self.model = model
        self.decoder = PromptDecoderGraph(model)
        self.single_mask = single_mask
        up, down = mask_resamplers(model.low_res_size, SAM_LOW_RES)
        self.register_buffer("mask_up", up, persistent=False)
        self.register_buffer("mask_down", down, persistent=False)

    def to_sam_low_res(self, low_res: torch.Tensor) -> torch.Tensor:
        if self.model.low_res_size == SAM_LOW_RES:
            return low_res
        return self.mask_up @ low_res @ self.mask_up.T

    def from_sam_low_res(self, mask_input: torch.Tensor) -> torch.Tensor:
        if self.model.low_res_size == SAM_LOW_RES:
            return mask_input
        return self.mask_down @ mask_input @ self.mask_down.T


def mask_resamplers(low: int, sam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sam, low) up-sampling matrix U along one axis and its (low, sam) left inverse pinv(U) (pinv(U) @ U = I:
    low-res logits survive the round trip through SAM's size exactly).

    Tools resize ``low_res_masks`` to the 1024 frame themselves (bilinear, like SAM's post-processing), so U
    is the least-squares fit of that frame: bilinear(sam -> 1024) @ U ~ bilinear(low -> 1024). That halves
    the largest weight error of up-sampling bilinearly to ``sam`` first (a smoother, blurrier composite).
    """
    frame_low, frame_sam = _linear_upsampling(low, PROMPT_FRAME), _linear_upsampling(sam, PROMPT_FRAME)
    up = torch.linalg.lstsq(frame_sam, frame_low).solution
    return up.to(torch.float32), torch.linalg.pinv(up).to(torch.float32)


def _linear_upsampling(size: int, out: int) -> torch.Tensor:
    """(out, size) float64 matrix of ``F.interpolate(mode="linear", align_corners=False)`` along one axis."""
    basis = torch.eye(size, dtype=torch.float64)[:, None, :]
    return F.interpolate(basis, size=out, mode="linear", align_corners=False)[:, 0, :].T


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
        mask_input = self.from_sam_low_res(mask_input)
        low_res, scores = self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        if self.single_mask:
            low_res, scores = select_single_mask(low_res, scores, point_coords.shape[1])
        return upscale(self.model, low_res, orig_im_size), scores, self.to_sam_low_res(low_res)


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
        return upscale(self.model, low_res, orig_im_size), scores, self.to_sam_low_res(low_res)


def upscale(model: EfficientViTSam, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
    """The predictor's post-processing with sizes read from the ``orig_im_size`` tensor (dynamic in the graph)."""
    input_size = prompt_frame_size(orig_im_size)
    original = orig_im_size.to(torch.int64)
    return model.postprocess_masks(low_res, (input_size[0], input_size[1]), (original[0], original[1]))
