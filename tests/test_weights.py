"""Checkpoint reading, variant inference, conversion, cache resolution and clear failures."""

from __future__ import annotations

import os

import pytest
import torch
from support import randomize_

import evitsam
from evitsam import CheckpointError, build_model, convert_checkpoint, load_model
from evitsam.weights import infer_variant, read_state_dict


@pytest.fixture(scope="module")
def l0_state():
    return randomize_(build_model("l0"), seed=5).state_dict()


@pytest.fixture(scope="module")
def l0_file(tmp_path_factory, l0_state):
    path = tmp_path_factory.mktemp("ckpt") / "efficientvit_sam_l0.pt"
    torch.save(l0_state, path)
    return path


def assert_same_weights(model, state):
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("form", ["bare", "wrapped", "no_bn_counters", "ddp_prefix"])
def test_official_pt_forms_load_and_infer_variant(tmp_path, l0_state, form):
    state = dict(l0_state)
    if form == "no_bn_counters":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if form == "ddp_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 3} if form == "wrapped" else state
    path = tmp_path / "weights.pt"
    torch.save(obj, path)
    model = load_model(path)
    assert isinstance(model, evitsam.EfficientViTSam) and not model.training
    assert model.encoder_size == 512
    expected = {k.removeprefix("module."): v for k, v in state.items()}
    assert_same_weights(model, expected)


def test_safetensors_roundtrip_keeps_weights_and_variant(tmp_path, l0_file, l0_state):
    target = tmp_path / "out" / "l0.safetensors"
    assert convert_checkpoint(l0_file, target) == "l0"
    _, metadata = read_state_dict(target)
    assert metadata["evitsam_variant"] == "l0"
    assert_same_weights(load_model(target), l0_state)
    assert not list(target.parent.glob("*.tmp"))  # atomic write leaves no temporary file


def test_wrong_variant_names_what_the_file_is(l0_file):
    with pytest.raises(CheckpointError, match="does not fit variant 'xl0'.*it is a 'l0' checkpoint"):
        load_model(l0_file, variant="xl0")


def test_truncated_file_is_reported(tmp_path, l0_file):
    data = l0_file.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_partial_state_dict_reports_closest_variant(tmp_path, l0_state):
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in l0_state.items() if "mask_decoder" not in k}, path)
    with pytest.raises(CheckpointError, match="closest: 'l0'"):
        load_model(path)


def test_non_checkpoint_files_are_reported(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(text)
    not_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        load_model(not_tensors)


def test_unsafe_pickle_is_refused(tmp_path):
    """weights_only loading: a checkpoint that would run arbitrary code is rejected, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"hook": os.getcwd}}, path)  # a global reference, as exploits use
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(path)


def test_missing_path_and_bad_device(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="device"):
        load_model("l0", device="not-a-device")


def test_names_resolve_from_the_cache(tmp_path, monkeypatch, l0_file, l0_state):
    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path))
    (tmp_path / "efficientvit_sam_l0.pt").write_bytes(l0_file.read_bytes())
    assert_same_weights(load_model("efficientvit-sam-l0"), l0_state)


def test_missing_named_weights_explain_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        load_model("l1")
    message = str(info.value)
    assert str(tmp_path / "efficientvit_sam_l1.pt") in message
    assert "huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/efficientvit_sam_l1.pt" in message


def test_variants_without_published_weights_say_so():
    with pytest.raises(ValueError, match="no published weights exist for variant 'tiny'"):
        load_model("tiny")


@pytest.mark.slow
def test_half_precision_conversion_halves_the_file_and_loads_as_fp32(tmp_path, l0_file, l0_state):
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    assert convert_checkpoint(l0_file, full) == convert_checkpoint(l0_file, half, half=True) == "l0"
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    model = load_model(half)
    assert model.variant == "l0" and all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, l0_state[key].half().float(), rtol=0, atol=0, msg=key)


def test_infer_variant_for_every_variant():
    for name in evitsam.VARIANTS:
        from evitsam.weights import expected_shapes

        fake = {k: torch.empty(shape) for k, shape in expected_shapes(name).items()}
        assert infer_variant(fake) == name


def test_unresolvable_hub_fails_fast_with_the_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    with pytest.raises(FileNotFoundError, match="does not resolve"):
        load_model("l0")


def test_download_goes_to_the_cache_and_loads(tmp_path, monkeypatch, l0_file, l0_state):
    """The real download path with the network replaced: repo, file name and target folder are checked."""
    import huggingface_hub

    from evitsam import weights

    calls = []

    def fake_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename, str(local_dir)))
        target = tmp_path / filename
        target.write_bytes(l0_file.read_bytes())
        return str(target)

    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "_hub_resolvable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert_same_weights(load_model("l0"), l0_state)
    assert calls == [("mit-han-lab/efficientvit-sam", "efficientvit_sam_l0.pt", str(tmp_path))]
    load_model("l0")  # now cached: no second download
    assert len(calls) == 1
