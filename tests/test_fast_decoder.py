"""The inference fast path (``models/fast_decoder.py``) equals the reference modules on the same weights.

``EfficientViTSam.decode`` runs the plain prompt encoder and mask decoder (what training differentiates and
what segment-anything's code reads like); ``model.fast_decoder()`` runs the same weights arranged for many
prompts on one image. Both are compared on random weights (every tensor matters) and on the bundled model,
for every kind of prompt, one or several prompts, with and without a prepared image side.
"""

from __future__ import annotations

import pytest
import torch
from support import randomize_

import evitsam
from evitsam.models import FastDecoder


@pytest.fixture(scope="module", params=["random", "bundled"])
def model(request):
    if request.param == "bundled":
        return evitsam.load_model()
    return randomize_(evitsam.build_model("tiny"), seed=3).eval()


def _embedding(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    grid = model.config.embed_size
    return torch.randn(batch, 256, grid, grid, generator=torch.Generator().manual_seed(seed))


def _prompts(model, case: str, batch: int, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, 3, 2, generator=generator) * 1000
    labels = torch.randint(0, 2, (batch, 3), generator=generator).float()
    corners = torch.rand(batch, 2, 2, generator=generator) * 900
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 10], dim=1)
    low = model.low_res_size
    masks = torch.randn(batch, 1, low, low, generator=generator) * 5
    return {
        "points": dict(point_coords=coords, point_labels=labels),
        "boxes": dict(boxes=boxes),
        "points_boxes": dict(point_coords=coords[:, :1], point_labels=torch.ones(batch, 1), boxes=boxes),
        "masks": dict(point_coords=coords, point_labels=labels, mask_input=masks),
    }[case]


def _assert_close(fast: torch.Tensor, reference: torch.Tensor) -> None:
    assert fast.shape == reference.shape
    scale = max(1.0, reference.abs().max().item())
    assert (fast - reference).abs().max().item() < 1e-4 * scale


@pytest.mark.parametrize("case", ["points", "boxes", "points_boxes", "masks"])
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prepared", [False, True])
def test_fast_decoder_equals_the_reference_modules(model, case, batch, multimask, prepared):
    embedding = _embedding(model)
    prompts = _prompts(model, case, batch)
    with torch.no_grad():
        reference = model.decode(embedding, **prompts, multimask_output=multimask)
    fast = model.fast_decoder()
    side = fast.prepare(embedding) if prepared else None
    low, iou = fast.decode(embedding, **prompts, multimask_output=multimask, image_side=side)
    _assert_close(low, reference[0])
    _assert_close(iou, reference[1])


@pytest.mark.parametrize("batch", [1, 3])
def test_fast_decoder_with_one_embedding_per_prompt(model, batch):
    embedding = _embedding(model, batch)
    prompts = _prompts(model, "points", batch)
    with torch.no_grad():
        reference = model.decode(embedding, **prompts)
    low, iou = FastDecoder(model).decode(embedding, **prompts)
    _assert_close(low, reference[0])
    _assert_close(iou, reference[1])


def test_attend_then_masks_of_chosen_prompts_and_extent(model):
    """The split entry points ("everything", labelling): IoUs first, then masks of some prompts, cropped."""
    embedding = _embedding(model)
    prompts = _prompts(model, "points", 4)
    with torch.no_grad():
        reference_low, reference_iou = model.decode(embedding, **prompts)
    fast = model.fast_decoder()
    state = fast.attend(embedding, **prompts, image_side=fast.prepare(embedding))
    _assert_close(fast.predict_iou(state)[:, 1:], reference_iou)
    chosen = torch.tensor([0, 2])
    extent = (model.low_res_size // 2, model.low_res_size - 4)
    low = fast.mask_logits(state.select(chosen), slice(1, None), extent)
    _assert_close(low, reference_low[chosen][..., : extent[0], : extent[1]])


def test_prepared_side_follows_the_weights():
    """The PE projections kept across images are recomputed when the weights change in place."""
    model = randomize_(evitsam.build_model("tiny"), seed=5).eval()
    embedding = _embedding(model)
    prompts = _prompts(model, "boxes", 2)
    fast = model.fast_decoder()
    fast.decode(embedding, **prompts, image_side=fast.prepare(embedding))
    with torch.no_grad():
        model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(1.5)
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(0.5)
        reference = model.decode(embedding, **prompts)
    low, iou = fast.decode(embedding, **prompts, image_side=fast.prepare(embedding))
    _assert_close(low, reference[0])
    _assert_close(iou, reference[1])


def test_reference_path_trains_and_the_fast_path_does_not_record():
    model = randomize_(evitsam.build_model("tiny"), seed=6)
    embedding = _embedding(model)
    prompts = _prompts(model, "points", 2)
    low, iou = model.decode(embedding, **prompts)
    (low.mean() + iou.mean()).backward()
    assert all(p.grad is not None for p in model.mask_decoder.parameters())
    fast_low, _ = model.fast_decoder().decode(embedding, **prompts)
    assert not fast_low.requires_grad
