"""The variant registry builds models whose state dicts are exactly the official checkpoints'."""

from __future__ import annotations

import pytest
from support import REPO

from evitsam import VARIANTS, build_model, get_variant
from evitsam.weights import expected_shapes

KEY_TABLES = REPO / "tests" / "data" / "official_state_dict_keys"


def official_keys(name: str) -> dict[str, tuple[int, ...]]:
    rows = (KEY_TABLES / f"efficientvit_sam_{name}.tsv").read_text().splitlines()[1:]
    table = {}
    for row in rows:
        key, shape, _dtype = row.split("\t")
        table[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return table


@pytest.mark.parametrize("name", ["l0", "l1", "l2", "xl0", "xl1"])
def test_state_dict_matches_official_keys_and_shapes(name):
    expected = official_keys(name)
    shapes = expected_shapes(name)
    assert list(shapes) == list(expected)  # same keys, same order
    assert shapes == expected


@pytest.mark.parametrize(
    "name, count",
    [("l0", 34_792_784), ("l1", 47_650_128), ("l2", 61_328_592), ("xl0", 116_957_904), ("xl1", 203_346_128)],
)
def test_parameter_counts_are_exact(name, count):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == count == VARIANTS[name].num_params
    assert model.image_size == (1024, 512 if name.startswith("l") else 1024)
    assert not model.training


@pytest.mark.parametrize("spelling", ["l0", "L0", "efficientvit-sam-l0", "EfficientViT-SAM-L0", "efficientvit_sam_l0"])
def test_variant_spellings(spelling):
    assert get_variant(spelling).name == "l0"


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown variant 'l3'.*l0, l1, l2, xl0, xl1"):
        build_model("l3")
