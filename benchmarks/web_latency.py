"""The web app's mask latency in a real browser (headless Chromium, Playwright) against ``evitsam serve``.

    python benchmarks/web_latency.py --image photo.jpg [--events 100] [--threads 1 2] [--models nano l0]

For each served model (``nano``: the bundled model; ``l0``: the L0 architecture with random weights) and each
onnxruntime-web thread count, in the same page and the same onnxruntime-web (WASM, SIMD):
- ``ours``: the page's decode of a hover/click (the decoder graphs over the part of the low-res grid the photo
  covers, then the logits scaled to the photo); after a click's mask, the rest graph completes its low-res grid
  for the next refinement (``rest``, timed apart: the mask is shown before it runs);
- ``sam``: SAM's own ViT-B decoder as SAM's ``scripts/export_onnx_model.py`` exports it
  (``SamOnnxModel(return_single_mask=True)``, random weights; masks at the photo's size, thresholded);
- ``full``: the served model's decoder as SAM's full-size single-mask graph (``export_decoder``), for comparison;
- ``server``: the round trip of ``POST /v1/predict`` from the page;
p50 and p95 over ``--events`` prompts (alternately one point, and two points with the previous mask fed back),
and the time from opening a new image to its first mask next to the server's ``set_image`` time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from web_support import CHROMIUM_ARGS, free_port  # noqa: E402  (the browser settings of the web app's tests)

# Runs in the page: `events` prompts through the page's decoder, SAM's exported decoder and /v1/predict.
MEASURE = """async ({events, samUrl, fullUrl}) => {
  const app = window.evitsam, state = app.state, decoder = state.decoder;
  const ort = await import("/web/vendor/ort.wasm.min.mjs");  // the page's own onnxruntime-web instance
  const sam = await ort.InferenceSession.create(new Uint8Array(await (await fetch(samUrl)).arrayBuffer()),
    {executionProviders: ["wasm"], graphOptimizationLevel: "all"});
  const full = await ort.InferenceSession.create(new Uint8Array(await (await fetch(fullUrl)).arrayBuffer()),
    {executionProviders: ["wasm"], graphOptimizationLevel: "all"});
  const {width, height} = state.image;
  const scale = 1024 / Math.max(width, height);
  const random = Float32Array.from({length: 256 * 64 * 64}, () => Math.random() - 0.5);
  const samEmbedding = new ort.Tensor("float32", random, [1, 256, 64, 64]);
  const noMask = new ort.Tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]);
  const size = new ort.Tensor("float32", Float32Array.of(height, width), [2]);
  const points = Array.from({length: events},
    (_, i) => [(0.1 + 0.8 * ((i * 0.618) % 1)) * width, (0.1 + 0.8 * ((i * 0.382) % 1)) * height]);
  const ours = [], samTimes = [], fullTimes = [], server = [], clicks = [], upscale = [], rest = [];
  let previous = null;
  for (let i = 0; i < events; i++) {
    const [x, y] = points[i];
    const click = i % 2 === 1 && previous;
    const prompt = click ? {points: [previous.point, [x, y, 0]], box: null, maskInput: previous.lowRes}
      : {points: [[x, y, 1]], box: null, maskInput: null};
    let t = performance.now();
    const result = await decoder.decode(prompt, 0, {preview: !click});  // as the page: a hover is a preview
    ours.push(performance.now() - t);
    clicks.push(Boolean(click));
    upscale.push(result.timing.upscale);
    // the next click refines this point's mask: its whole low-res grid, as a click on it would give (not timed;
    // a click's rest of the grid is computed after its mask is shown, timed apart)
    const whole = click ? result : await decoder.decode(prompt, 0);
    previous = {point: [x, y, 1], lowRes: await whole.lowRes};
    if (click) rest.push(result.timing.rest);
    const coords = prompt.points.flatMap(([px, py]) => [px * scale, py * scale]).concat([0, 0]);
    const labels = prompt.points.map((p) => p[2]).concat([-1]);
    const n = labels.length;
    t = performance.now();
    const out = await sam.run({image_embeddings: samEmbedding,
      point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      mask_input: click ? new ort.Tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]) : noMask,
      has_mask_input: new ort.Tensor("float32", Float32Array.of(click ? 1 : 0), [1]), orig_im_size: size});
    const logits = out.masks.data, mask = new Uint8Array(logits.length);
    for (let k = 0; k < logits.length; k++) mask[k] = logits[k] > 0 ? 1 : 0;
    samTimes.push(performance.now() - t);
    const frame = decoder.inputSize[1] / width;
    t = performance.now();
    // exported decoders take SAM's 256x256 mask prompt whatever the model's own low-res size (the graph resamples)
    const fullOut = await full.run({image_embeddings: decoder.embedding,
      point_coords: new ort.Tensor("float32", Float32Array.from(coords.map((v) => v / scale * frame)), [1, n, 2]),
      point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      mask_input: click ? new ort.Tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]) : noMask,
      has_mask_input: new ort.Tensor("float32", Float32Array.of(click ? 1 : 0), [1]), orig_im_size: size});
    const fullLogits = fullOut.masks.data, fullMask = new Uint8Array(fullLogits.length);
    for (let k = 0; k < fullLogits.length; k++) fullMask[k] = fullLogits[k] > 0 ? 1 : 0;
    fullTimes.push(performance.now() - t);
  }
  for (let i = 0; i < events; i++) {
    const [x, y] = points[i];
    const t = performance.now();
    const response = await fetch("/v1/predict", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({image_id: state.image.id, points: [[x, y, 1]], multimask: true})});
    await response.json();
    server.push(performance.now() - t);
  }
  return {ours, sam: samTimes, full: fullTimes, server, clicks, upscale, rest, threads: decoder.threads,
    samOutput: [height, width]};
}"""

FIRST_MASK = """async ({index, x, y}) => {
  const app = window.evitsam;
  const t = performance.now();
  await app.openIndex(index);
  // the first mask a person sees: the hover preview under the cursor
  const result = await app.state.decoder.decode({points: [[x, y, 1]], box: null, maskInput: null}, 0, {preview: true});
  return {first: performance.now() - t, score: result.score};
}"""


def export_sam_decoder(path: Path) -> Path:
    """SAM's ViT-B decoder exported as SAM's scripts/export_onnx_model.py does (random weights, opset 17)."""
    from segment_anything import sam_model_registry
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(sam_model_registry["vit_b"](), return_single_mask=True)
    dummy = {
        "image_embeddings": torch.randn(1, 256, 64, 64),
        "point_coords": torch.randint(0, 1024, (1, 5, 2)).float(),
        "point_labels": torch.randint(0, 4, (1, 5)).float(),
        "mask_input": torch.randn(1, 1, 256, 256),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(dummy.values()),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes=dynamic,
        )
    return path


def model_options(name: str, folder: Path) -> tuple[list[str], Path]:
    """The served model's options, and its decoder as SAM's full-size single-mask graph (``export_decoder``)."""
    from evitsam import build_model, load_model
    from evitsam.export.onnx_export import export_decoder

    full = folder / f"{name}-full.onnx"
    if name == "nano":
        export_decoder(load_model(None), full, single_mask=True)
        return [], full
    path = folder / f"{name}-random.pt"
    torch.manual_seed(0)
    model = build_model(name).eval()
    torch.save(model.state_dict(), path)
    export_decoder(model, full, single_mask=True)
    return ["--checkpoint", str(path), "--variant", name], full


def start_server(options: list[str], images: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    command = [sys.executable, "-m", "evitsam", "serve", "--port", str(port), "--images", str(images), *options]
    command += ["--db", str(images.parent / f"{images.name}-{port}.sqlite")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(900):
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read())
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("evitsam serve did not start")


def serve_file(path: Path):
    """A Playwright route handler that answers with the file at ``path``."""
    return lambda route: route.fulfill(path=str(path))


def encoder_seconds(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("evitsam_encoder_seconds_sum"):
            return float(line.split()[-1])
    return 0.0


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["nano", "l0"])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "photos"
        images.mkdir()
        data = args.image.read_bytes()
        shutil.copy(args.image, images / f"a{args.image.suffix}")
        for n in range(len(args.threads)):  # the same photo, new bytes: new images for the first-mask timing
            (images / f"b{n}{args.image.suffix}").write_bytes(data + b"\0" * (n + 1))
        sam_path = export_sam_decoder(tmp / "sam_vit_b_decoder.onnx")
        print(f"photo {args.image.name}; {args.events} events; p50 / p95 ms; machine load {os.getloadavg()[0]:.1f}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            for name in args.models:
                options, full_path = model_options(name, tmp)
                process, base = start_server(options, images)
                try:
                    for n, threads in enumerate(args.threads):
                        page = browser.new_page(viewport={"width": 1400, "height": 900})
                        page.route("**/bench/sam.onnx", serve_file(sam_path))
                        page.route("**/bench/full.onnx", serve_file(full_path))
                        page.goto(f"{base}/?index=0&threads={threads}")
                        page.wait_for_function("window.evitsam && window.evitsam.ready", timeout=300_000)
                        page.wait_for_function("window.evitsam.state.image && window.evitsam.state.image.readyMs")
                        urls = {"samUrl": "/bench/sam.onnx", "fullUrl": "/bench/full.onnx"}
                        result = page.evaluate(MEASURE, {"events": args.events, **urls})
                        before = encoder_seconds(base)
                        image = page.evaluate("window.evitsam.state.image")
                        point = {"x": image["width"] * 0.4, "y": image["height"] * 0.5}
                        first = page.evaluate(FIRST_MASK, {"index": 1 + n, **point})
                        set_image = (encoder_seconds(base) - before) * 1000
                        ours, sam, full, server = (percentiles(result[k]) for k in ("ours", "sam", "full", "server"))
                        split = {  # hovers (prompt graph) and clicks (mask fed back: image side first) apart
                            (kind, clicked): statistics.median(
                                [t for t, c in zip(result[kind], result["clicks"]) if c == clicked]
                            )
                            for kind in ("ours", "sam")
                            for clicked in (False, True)
                        }
                        print(
                            f"{name:5s} threads {threads}: ours {ours[0]:6.1f} / {ours[1]:6.1f}  "
                            f"SAM export {sam[0]:6.1f} / {sam[1]:6.1f}  ratio {ours[0] / sam[0]:.2f}x  "
                            f"hover p50 ours {split['ours', False]:.1f} SAM {split['sam', False]:.1f}  "
                            f"click p50 ours {split['ours', True]:.1f} SAM {split['sam', True]:.1f}  "
                            f"(of ours, the mask's scaling to the photo {statistics.median(result['upscale']):.1f}; "
                            f"after a click's mask, the rest of its grid {statistics.median(result['rest']):.1f})  "
                            f"ours full-size graph {full[0]:6.1f} / {full[1]:6.1f} ({full[0] / sam[0]:.2f}x)  "
                            f"server /v1/predict {server[0]:6.1f} / {server[1]:6.1f}  "
                            f"first mask {first['first']:.0f} ms = set_image {set_image:.0f} ms "
                            f"+ {first['first'] - set_image:.0f} ms (output {'x'.join(map(str, result['samOutput']))})",
                            flush=True,
                        )
                        page.close()
                finally:
                    process.send_signal(signal.SIGINT)
                    process.wait(timeout=30)
            browser.close()


if __name__ == "__main__":
    main()
