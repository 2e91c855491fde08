"""Our prompt encoder, two-way transformer, mask decoder and coordinate transforms against Meta's segment-anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import randomize_

from evitsam import build_model
from evitsam.transforms import SamTransform, get_preprocess_shape

sam_modeling = pytest.importorskip("segment_anything.modeling", reason="install the [test] extra")
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402


@pytest.fixture(scope="module")
def decoder_pair():
    prompt_encoder = sam_modeling.PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    mask_decoder = sam_modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sam_modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    for module in mask_decoder.modules():  # EfficientViT-SAM runs every LayerNorm at eps 1e-6
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    randomize_(prompt_encoder, seed=1)
    randomize_(mask_decoder, seed=2)
    ours = build_model("l0")
    ours.prompt_encoder.load_state_dict(prompt_encoder.state_dict(), strict=True)
    ours.mask_decoder.load_state_dict(mask_decoder.state_dict(), strict=True)
    return prompt_encoder.eval(), mask_decoder.eval(), ours


@pytest.mark.parametrize("case", ["points", "points_padding", "boxes", "points_boxes", "masks", "nothing"])
@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_decoder_matches_segment_anything(decoder_pair, case, multimask):
    prompt_encoder, mask_decoder, ours = decoder_pair
    generator = torch.Generator().manual_seed(3)
    batch = 5
    embedding = torch.randn(1, 256, 64, 64, generator=generator)
    coords = torch.rand(batch, 3, 2, generator=generator) * 1000
    labels = torch.tensor([[1, 0, 1], [1, 1, -1], [0, 1, 1], [1, -1, -1], [0, 0, 1]], dtype=torch.float)
    corners = torch.rand(batch, 2, 2, generator=generator) * 900
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 10], dim=1)
    masks = torch.randn(batch, 1, 256, 256, generator=generator) * 5
    kwargs = {
        "points": dict(point_coords=coords, point_labels=torch.ones(batch, 3)),
        "points_padding": dict(point_coords=coords, point_labels=labels),
        "boxes": dict(boxes=boxes),
        "points_boxes": dict(point_coords=coords, point_labels=labels, boxes=boxes),
        "masks": dict(point_coords=coords, point_labels=labels, mask_input=masks),
        "nothing": {},
    }[case]
    points = (kwargs["point_coords"], kwargs["point_labels"]) if "point_coords" in kwargs else None
    sparse, dense = prompt_encoder(points=points, boxes=kwargs.get("boxes"), masks=kwargs.get("mask_input"))
    ref_low, ref_iou = mask_decoder(embedding, prompt_encoder.get_dense_pe(), sparse, dense, multimask)
    low, iou = ours.decode(embedding, **kwargs, multimask_output=multimask)
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape
    assert ((low - ref_low).abs().max() / ref_low.abs().max()).item() < 1e-4
    assert (iou - ref_iou).abs().max().item() < 1e-4 * max(1.0, ref_iou.abs().max().item())


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("image", ["shared", "shared_cached_side", "per_prompt"])
@torch.no_grad()
def test_decoder_paths_match_segment_anything(decoder_pair, batch, image):
    """Every arrangement of the cross-attention (image side folded into the tokens for one or two
    prompts, projected once for three or more, cached per image, one embedding per prompt) is SAM's."""
    prompt_encoder, mask_decoder, ours = decoder_pair
    generator = torch.Generator().manual_seed(4)
    embedding = torch.randn(batch if image == "per_prompt" else 1, 256, 64, 64, generator=generator)
    coords = torch.rand(batch, 2, 2, generator=generator) * 1000
    labels = torch.tensor([[1, 0]] * batch, dtype=torch.float)
    sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    pe = prompt_encoder.get_dense_pe()
    if image == "per_prompt":  # segment-anything repeats one embedding per prompt: call it once per prompt
        outputs = [
            mask_decoder(embedding[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], True) for i in range(batch)
        ]
        ref_low, ref_iou = (torch.cat(parts) for parts in zip(*outputs))
    else:
        ref_low, ref_iou = mask_decoder(embedding, pe, sparse, dense, True)
    side = ours.fast_decoder().prepare(embedding) if image == "shared_cached_side" else None
    # a prepared shared image takes the low-rank route to the masks' first up-scaling product
    assert side is None or side.upscaled is not None
    low, iou = ours.fast_decoder().decode(embedding, coords, labels, image_side=side)
    assert ((low - ref_low).abs().max() / ref_low.abs().max()).item() < 1e-4
    assert (iou - ref_iou).abs().max().item() < 1e-4 * max(1.0, ref_iou.abs().max().item())


@pytest.mark.parametrize("size", [(1200, 1800), (534, 800), (800, 534), (1024, 1024), (7, 3000), (333, 333)])
def test_transforms_match_resize_longest_side(size):
    reference = ResizeLongestSide(1024)
    ours = SamTransform(encoder_size=512)
    assert get_preprocess_shape(*size, 1024) == reference.get_preprocess_shape(*size, 1024)
    coords = np.random.default_rng(0).uniform(0, 1, (4, 5, 2)) * [size[1], size[0]]
    np.testing.assert_allclose(ours.apply_coords(coords, size), reference.apply_coords(coords, size))
    boxes = np.concatenate([coords[0, :, :], coords[1, :, :] + 5], axis=1)
    np.testing.assert_allclose(ours.apply_boxes(boxes, size), reference.apply_boxes(boxes, size))
    torch_boxes = torch.as_tensor(boxes, dtype=torch.float)
    torch.testing.assert_close(
        ours.apply_boxes_torch(torch_boxes, size), reference.apply_boxes_torch(torch_boxes, size)
    )
