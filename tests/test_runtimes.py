"""``SamPredictor(runtime=..., precision=...)`` and the CLI's export/runtime options, on the tiny variant.

The point here is plumbing: same API and the same masks as the torch path, errors for what a CPU cannot
run, the engine cache. Numerical parity of the graphs at full size is ``test_export.py``'s job (L0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from support import load_photo, randomize_
from typer.testing import CliRunner

import evitsam
from evitsam import SamPredictor
from evitsam.cli import app
from evitsam.runtime import engine, quantize
from evitsam.runtime import onnx_engines as engines

PIXEL_AGREEMENT = 0.995
RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory: pytest.TempPathFactory):
    """Exported graphs go to a private cache, shared by the tests of this module."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("home")
        patch.setenv("EVITSAM_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def model():
    return randomize_(evitsam.build_model("tiny"), seed=7)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return load_photo("dog.jpg")


@pytest.fixture(scope="module")
def reference(model, image) -> SamPredictor:
    predictor = SamPredictor(model)
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def predictors(model, image) -> dict[str, SamPredictor]:
    """One predictor per ONNX-based runtime (the first exports the graphs, the second reuses them)."""
    result = {}
    for runtime in RUNTIMES:
        predictor = SamPredictor(model, runtime=runtime)
        predictor.set_image(image)
        result[runtime] = predictor
    return result


def prompts(image: np.ndarray) -> dict[str, dict]:
    height, width = image.shape[:2]
    return {
        "point": dict(point_coords=np.array([[0.5 * width, 0.6 * height]]), point_labels=np.array([1])),
        "points": dict(
            point_coords=np.array([[0.5 * width, 0.6 * height], [0.1 * width, 0.1 * height]]),
            point_labels=np.array([1, 0]),
        ),  # fmt: skip
        "box": dict(box=np.array([0.3 * width, 0.3 * height, 0.8 * width, 0.9 * height])),
    }


@pytest.fixture(scope="module")
def expected(reference, image) -> dict[str, tuple]:
    """The torch path's answers, computed once for both runtimes."""
    cases = prompts(image)
    results = {
        name: reference.predict(**prompt, multimask_output=multi)
        for name, (prompt, multi) in (
            ("point", (cases["point"], True)),
            ("points", (cases["points"], False)),
            ("box", (cases["box"], False)),
        )
    }
    previous = results["point"][2][:1]
    results["point+mask"] = reference.predict(**cases["point"], mask_input=previous, multimask_output=False)
    results["mask"] = reference.predict(mask_input=previous, multimask_output=False)
    results["batch"] = reference.predict_torch(*batched_prompts(reference), multimask_output=True)
    return results


def batched_prompts(predictor: SamPredictor) -> tuple[torch.Tensor, ...]:
    """Two boxes sharing one point, as detector pipelines and the automatic mask generator call it."""
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [100.0, 50.0, 600.0, 500.0]])
    frame = predictor.transform.apply_boxes_torch(boxes, predictor.original_size)
    coords = predictor.transform.apply_coords_torch(torch.tensor([[[400.0, 300.0]]]), predictor.original_size)
    return coords.repeat(2, 1, 1), torch.ones(2, 1), frame


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_gives_the_torch_results(runtime, predictors, reference, expected, image):
    predictor = predictors[runtime]
    assert (predictor.runtime, predictor.precision) == (runtime, "fp32")
    assert predictor.original_size == reference.original_size
    features = predictor.get_image_embedding()
    grid = reference.model.config.embed_size  # tiny: 32x32
    assert features.shape == (1, 256, grid, grid) and features.dtype == torch.float32
    assert (features - reference.features).abs().max() <= 1e-3 * reference.features.abs().max()
    cases = prompts(image)
    previous = expected["point"][2][:1]
    got = {
        "point": predictor.predict(**cases["point"], multimask_output=True),
        "points": predictor.predict(**cases["points"], multimask_output=False),
        "box": predictor.predict(**cases["box"], multimask_output=False),
        "point+mask": predictor.predict(**cases["point"], mask_input=previous, multimask_output=False),
        "mask": predictor.predict(mask_input=previous, multimask_output=False),  # no sparse prompt at all
        "batch": predictor.predict_torch(*batched_prompts(predictor), multimask_output=True),
    }
    for name, result in got.items():
        (masks, scores, low_res), (want_masks, want_scores, want_low) = (
            [np.asarray(x) for x in r] for r in (result, expected[name])
        )
        assert masks.shape == want_masks.shape and masks.dtype == want_masks.dtype, name
        assert (masks == want_masks).mean() >= PIXEL_AGREEMENT, name
        assert (want_masks.any() and not want_masks.all()) or name == "mask", f"{name}: a blank mask proves nothing"
        np.testing.assert_allclose(scores, want_scores, atol=1e-3, err_msg=name)
        assert np.abs(low_res - want_low).max() <= 1e-3 * np.abs(want_low).max(), name
    if runtime == "openvino":  # a prompt shape seen again runs on a decoder compiled for it, same answers
        again = predictor.predict(**cases["box"], multimask_output=False)
        assert len(predictor.engine._static_decoders) == (1 if predictor.engine._dynamic_works else 5)
        np.testing.assert_array_equal(again[0], got["box"][0])
        np.testing.assert_allclose(again[2], got["box"][2], atol=1e-5)


@pytest.mark.slow
def test_openvino_compiles_for_the_shapes_where_the_dynamic_decoder_fails(model, image, reference, expected):
    """Some OpenVINO CPU builds cannot shape-infer the dynamic graph at run time; static shapes still run."""

    class BrokenDynamicDecoder:
        calls = 0

        def infer(self, feeds):
            BrokenDynamicDecoder.calls += 1
            raise RuntimeError("[CPU] Broadcast node: Value -1 not in range [0:18446744073709551615]")

    predictor = SamPredictor(model, runtime="openvino")
    predictor.set_image(image)
    predictor.engine._decoder_request = BrokenDynamicDecoder()
    cases = prompts(image)
    for name, multimask in (("box", False), ("points", False), ("box", False)):  # 2 prompt shapes
        masks, scores, low_res = predictor.predict(**cases[name], multimask_output=multimask)
        want_masks, want_scores, want_low = expected[name]
        assert (masks == want_masks).mean() >= PIXEL_AGREEMENT, name
        np.testing.assert_allclose(scores, want_scores, atol=1e-3, err_msg=name)
        assert np.abs(low_res - want_low).max() <= 1e-3 * np.abs(want_low).max(), name
    assert BrokenDynamicDecoder.calls == 1  # tried once, then every shape is compiled statically
    assert len(predictor.engine._static_decoders) == 2


def test_graphs_are_exported_once_per_set_of_weights(model, predictors, engine_cache, monkeypatch):
    folders = list((engine_cache / "engines").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tiny-")
    assert {p.name for p in folders[0].iterdir()} >= {"encoder.onnx", "prompt_decoder.onnx"}
    monkeypatch.setattr(engines, "export_encoder", lambda *a: pytest.fail("exported again"))
    SamPredictor(model, runtime="onnxruntime")  # from the cache
    other = randomize_(evitsam.build_model("tiny"), seed=8)
    assert engines.engine_dir(other) != folders[0]


@pytest.mark.parametrize(
    ("runtime", "precision", "message"),
    [
        ("tensorrt", "fp32", "runtime must be one of 'torch', 'onnxruntime', 'openvino'"),
        ("torch", "fp8", "precision must be one of 'fp32', 'bf16', 'fp16', 'int8'"),
        ("torch", "fp16", "precision='fp16' runs on a CUDA GPU; the model is on cpu"),
        ("openvino", "fp16", "precision='fp16' needs runtime='torch' on a CUDA GPU"),
        ("torch", "int8", "precision='int8' needs runtime='openvino'"),
        ("onnxruntime", "int8", "precision='int8' needs runtime='openvino'"),
        ("onnxruntime", "bf16", "runtime='onnxruntime' runs fp32 only"),
        ("openvino", "int8", "needs calibration photos"),
    ],
)
def test_unavailable_options_fail_clearly(model, predictors, runtime, precision, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamPredictor(model, runtime=runtime, precision=precision)


def test_calibration_only_with_int8(model):
    with pytest.raises(ValueError, match="only used with precision='int8'"):
        SamPredictor(model, runtime="openvino", calibration=["photo"])


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_bf16_runs_natively_or_falls_back_with_a_notice(runtime, model, predictors, reference, image, monkeypatch):
    """Emulated bf16 is slower than fp32, so a CPU without it gets fp32 and a one-line warning."""
    import openvino as ov

    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if runtime == "torch":
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    if native:
        predictor = SamPredictor(model, runtime=runtime, precision="bf16")
        assert predictor.precision == "bf16"
    else:
        with pytest.warns(engine.PrecisionFallback, match="running fp32 instead") as caught:
            predictor = SamPredictor(model, runtime=runtime, precision="bf16")
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
        assert predictor.precision == "fp32"
    predictor.set_image(image)
    a, b = predictor.features.flatten().double(), reference.features.flatten().double()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= 0.99


def test_torch_bf16_where_the_cpu_has_it(model, monkeypatch):
    """Only the choice: autocast numerics are test_precision's job, and emulated bf16 takes seconds here."""
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert SamPredictor(model, precision="bf16").precision == "bf16"


@pytest.mark.slow
def test_int8_is_calibrated_checked_and_cached(model, predictors, reference, image, shared_data, monkeypatch):
    photos = shared_data / "coco_train_subset" / "images"  # calibration photos; coco_subset is for measuring
    calibration = [load_photo_path(p) for p in sorted(photos.iterdir())[:5]]
    folder = engines.engine_dir(model)
    # Random tiny weights need not pass the accuracy bar, so both sides of the gate are forced: first a
    # result below it (a stand-in for the quantiser, to spare a second calibration run) is refused...
    with monkeypatch.context() as patch:
        patch.setattr(quantize, "worst_cosine", lambda *args: 0.93)
        patch.setattr("nncf.quantize", lambda model, *args, **kwargs: model)
        with pytest.raises(ValueError, match=r"not accurate for these weights: embedding cosine 0.9300 < 0.99"):
            SamPredictor(model, runtime="openvino", precision="int8", calibration=calibration)
    assert not (folder / quantize.INT8_FILE).exists(), "a refused int8 model must not be cached"
    # ... then the real NNCF run, accepted whatever its accuracy, is cached and reused.
    monkeypatch.setattr(quantize, "MIN_COSINE", -1.0)
    try:
        predictor = SamPredictor(model, runtime="openvino", precision="int8", calibration=calibration)
        assert predictor.precision == "int8" and (folder / quantize.INT8_FILE).is_file()
        again = SamPredictor(model, runtime="openvino", precision="int8")  # cached: no calibration needed
        again.set_image(image)
        assert again.features.shape[1:] == (256, 32, 32) and torch.isfinite(again.features).all()
        masks, scores, _ = again.predict(**prompts(image)["box"])
        assert masks.shape == (3, *image.shape[:2]) and np.isfinite(scores).all()
    finally:  # other tests expect no int8 model in the cache
        for path in folder.glob("encoder_int8.*"):
            path.unlink()


def load_photo_path(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_calibration_input_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration folder not found"):
        quantize.calibration_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least 4 photos"):
        quantize.calibration_images([np.zeros((8, 8, 3), np.uint8)])


# ------------------------------------------------------------------------------------------------ CLI
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_cli_exports_single_mask_graphs_with_sams_selection(checkpoint, reference, image, tmp_path):
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "onnx", "--checkpoint", str(checkpoint), "--output", str(out),
                                 "--single-mask"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["variant"] == "tiny" and summary["single_mask"] is True
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "decoder.onnx", "decoder_boxes.onnx",
                                                      "encoder.onnx"]  # fmt: skip
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["evitsam"]["single_mask"] is True and config["max_width"] == 256

    decoder = ort.InferenceSession(str(out / "decoder.onnx"))
    height, width = image.shape[:2]
    one_click = prompts(image)["point"]
    two_clicks = prompts(image)["points"]
    for prompt, multimask in ((one_click, True), (two_clicks, False)):
        # SAM's rule: one click (+ padding point) -> the best of the multimask outputs; more -> the single output
        coords = reference.transform.apply_coords(prompt["point_coords"], reference.original_size)
        feeds = {
            "image_embeddings": reference.features.numpy(),
            "point_coords": np.concatenate([coords, [[0, 0]]])[None].astype(np.float32),
            "point_labels": np.concatenate([prompt["point_labels"], [-1]])[None].astype(np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),  # SAM's shape, whatever the model's low-res size
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([height, width], np.float32),
        }
        masks, iou, _ = decoder.run(None, feeds)
        expected, scores, _ = reference.predict(**prompt, multimask_output=multimask)
        best = int(np.argmax(scores))
        assert masks.shape == (1, 1, height, width)
        assert iou[0, 0] == pytest.approx(scores[best], abs=1e-3)
        assert ((masks[0, 0] > 0) == expected[best]).mean() >= PIXEL_AGREEMENT


@pytest.mark.slow
def test_cli_segment_with_openvino(checkpoint, reference, image, predictors, tmp_path, shared_data):
    out = tmp_path / "mask.png"
    result = runner.invoke(app, ["segment", str(shared_data / "images" / "dog.jpg"), "--checkpoint", str(checkpoint),
                                 "--runtime", "openvino", "--box", "240,160,640,480", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["runtime"], summary["precision"]) == ("openvino", "fp32")
    from PIL import Image

    expected, _, _ = reference.predict(box=np.array([240, 160, 640, 480]), multimask_output=False)
    assert ((np.asarray(Image.open(out)) > 0) == expected[0]).mean() >= PIXEL_AGREEMENT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "IMG", "--checkpoint", "CKPT", "-p", "1,1", "--runtime", "tvm", "-o", "OUT/m.png"], "runtime"),
        (["segment", "IMG", "--checkpoint", "CKPT", "-p", "1,1", "--precision", "int8", "-o", "OUT/m.png"],
         "precision='int8' needs runtime='openvino'"),
        (["export", "onnx", "--checkpoint", "CKPT", "--model", "l0", "--output", "OUT/x"], "mutually exclusive"),
        (["export", "onnx", "--checkpoint", "OUT/none.pt", "--output", "OUT/x"], "not found"),
        (["export", "onnx", "--checkpoint", "CKPT", "--output", "IMG"], "expected a folder"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(args, message, checkpoint, shared_data, tmp_path):
    swap = {"IMG": str(shared_data / "images" / "dog.jpg"), "CKPT": str(checkpoint)}
    args = [swap.get(a, a.replace("OUT", str(tmp_path))) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not list(tmp_path.iterdir()), "nothing may be written after an error"
