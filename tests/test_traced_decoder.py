"""Traced decoding (``runtime/traced_decoder.py``) gives exactly the values of ``FastDecoder.decode``.

The trace runs the operations Python ran, recorded once per kind of call; these tests check that every kind a
client sends (points, boxes, both, one or several prompts, one or three masks, bf16 products) is bit-equal to
the Python path once traced, that a trace never serves a call of another shape or other weights, that the
caller's autocast does not leak into it, and that two threads can decode through one trace at once.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from support import randomize_

import evitsam
from evitsam import SamPredictor
from evitsam.io import read_image
from evitsam.runtime.traced_decoder import TracedDecoder


@pytest.fixture(scope="module", params=["random", "bundled"])
def model(request):
    if request.param == "bundled":
        return evitsam.load_model()
    return randomize_(evitsam.build_model("tiny"), seed=5).eval()


def _embedding(model, seed: int = 0) -> torch.Tensor:
    grid = model.config.embed_size
    return torch.randn(1, 256, grid, grid, generator=torch.Generator().manual_seed(seed))


def _prompts(case: str, batch: int, points: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, points, 2, generator=generator) * 1000
    labels = torch.randint(0, 2, (batch, points), generator=generator).float()
    corners = torch.rand(batch, 2, 2, generator=generator) * 900
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 10], dim=1)
    return {
        "points": dict(point_coords=coords, point_labels=labels, boxes=None),
        "boxes": dict(point_coords=None, point_labels=None, boxes=boxes),
        "points_boxes": dict(point_coords=coords, point_labels=labels, boxes=boxes),
    }[case]


def _decode_three_times(traced: TracedDecoder, embedding, side, case, batch, points, multimask) -> None:
    """Seen once (Python), twice (traced now), three times (the trace reused): each equals Python's values."""
    for seed in range(3):
        prompts = _prompts(case, batch, points, seed)
        got = traced.decode(embedding, **prompts, multimask_output=multimask, image_side=side)
        expected = traced.decoder.decode(embedding, **prompts, multimask_output=multimask, image_side=side)
        for value, reference in zip(got, expected, strict=True):
            assert value.shape == reference.shape
            assert torch.equal(value, reference)


@pytest.mark.parametrize(
    ("case", "batch", "points"),
    [("points", 1, 1), ("points", 1, 3), ("points", 4, 2), ("boxes", 1, 0), ("boxes", 3, 0), ("points_boxes", 2, 1)],
)
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("products", [torch.float32, torch.bfloat16])
def test_traced_equals_python_for_every_kind_of_call(model, case, batch, points, multimask, products):
    decoder = model.fast_decoder()
    embedding = _embedding(model)
    side = decoder.prepare(embedding, products)
    traced = TracedDecoder(decoder)
    _decode_three_times(traced, embedding, side, case, batch, points, multimask)
    assert len(traced._traces) == 1  # the third call ran the trace made by the second


def test_a_trace_serves_only_its_own_shapes(model):
    decoder = model.fast_decoder()
    embedding = _embedding(model)
    side = decoder.prepare(embedding)
    traced = TracedDecoder(decoder)
    _decode_three_times(traced, embedding, side, "points", 1, 2, False)
    # one prompt takes 2-D products, several a batched one: the one-prompt trace must not run for five
    _decode_three_times(traced, embedding, side, "points", 5, 2, False)
    _decode_three_times(traced, embedding, side, "points", 1, 2, True)
    assert len(traced._traces) == 3


def test_weights_changed_in_place_are_read_and_replaced_ones_get_a_new_trace(model):
    model = copy.deepcopy(model)
    decoder = model.fast_decoder()
    embedding = _embedding(model)
    side = decoder.prepare(embedding)
    traced = TracedDecoder(decoder)
    _decode_three_times(traced, embedding, side, "points", 1, 2, True)
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.5)
        model.mask_decoder.output_hypernetworks_mlps[1].layers[0].weight.mul_(1.5)
    _decode_three_times(traced, embedding, side, "points", 1, 2, True)
    assert len(traced._traces) == 1
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    head.weight = torch.nn.Parameter(head.weight.detach() * 2)
    _decode_three_times(traced, embedding, side, "points", 1, 2, True)
    assert len(traced._traces) == 2


def test_the_callers_autocast_does_not_reach_the_trace(model):
    decoder = model.fast_decoder()
    embedding = _embedding(model)
    side = decoder.prepare(embedding)
    traced = TracedDecoder(decoder)
    prompts = _prompts("points", 1, 2, seed=0)
    expected = decoder.decode(embedding, **prompts, multimask_output=True, image_side=side)
    with torch.autocast("cpu", torch.bfloat16):
        for _ in range(3):
            got = traced.decode(embedding, **prompts, multimask_output=True, image_side=side)
            assert got[0].dtype == torch.float32
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_least_recently_used_traces_are_dropped():
    decoder = randomize_(evitsam.build_model("tiny"), seed=1).eval().fast_decoder()
    embedding = _embedding(decoder.model)
    side = decoder.prepare(embedding)
    traced = TracedDecoder(decoder, capacity=2)
    for points in (1, 2, 3):
        _decode_three_times(traced, embedding, side, "points", 1, points, False)
    assert len(traced._traces) == 2
    assert [key[3][1][0] for key in traced._traces] == [(1, 2, 2), (1, 3, 2)]  # point coordinates' shapes


def test_two_threads_decode_through_one_trace_at_once():
    model = evitsam.load_model()
    predictor = SamPredictor(model)
    predictor.set_image(read_image("tests/data/images/truck.jpg"))
    engine, embedding, side = predictor.engine, predictor.features, predictor.decoder_image_side()
    assert engine.traced is not None
    prompts = [_prompts("points", 1, 2, seed) for seed in range(16)]
    expected = [engine.decoder.decode(embedding, **p, multimask_output=False, image_side=side) for p in prompts]
    for p in prompts[:2]:  # seen, then traced
        engine.decode(embedding, p["point_coords"], p["point_labels"], None, None, False, side)
    results: dict[tuple[int, int], tuple] = {}

    def work(thread: int) -> None:
        for _ in range(3):
            for index, p in enumerate(prompts):
                got = engine.decode(embedding, p["point_coords"], p["point_labels"], None, None, False, side)
                results[thread, index] = got

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(engine.traced._traces) == 1
    for (_, index), got in results.items():
        assert torch.equal(got[0], expected[index][0]) and torch.equal(got[1], expected[index][1])
