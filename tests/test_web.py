"""The web app in a real browser: headless Chromium (Playwright) against a real ``evitsam serve`` process.

Every mask the page draws is compared with the server's own ``/v1/predict`` answer for the same prompts, which
the service tests compare with ``SamPredictor``; folder mode's annotations must survive a reload and a restart.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import playwright.sync_api as playwright_api
import pytest
from pycocotools.coco import COCO
from service_support import decode_coco
from web_support import CHROMIUM, CHROMIUM_ARGS, REPO, Server, iou

ARTIFACTS = REPO / "tests" / "artifacts"
IDLE = "window.evitsam.idle()"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("web") / "photos"
    root.mkdir()
    for name in ("dog.jpg", "truck.jpg"):
        shutil.copy(shared_data / "images" / name, root / name)
    return root


@pytest.fixture(scope="module")
def server(folder: Path):
    server = Server("--images", str(folder), "--db", str(folder.parent / "annotations.sqlite")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def open_page(browser, url: str, **context):
    page = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True, **context).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function(
        "window.evitsam && window.evitsam.ready && window.evitsam.state.decoderNote", timeout=120_000
    )
    page.wait_for_function("window.evitsam.state.image && window.evitsam.state.image.readyMs", timeout=120_000)
    page.errors = errors
    return page


def to_client(page, x: float, y: float) -> tuple[float, float]:
    """Image pixel -> the page's viewport coordinates (where the mouse must go)."""
    box = page.locator("#prompts-layer").bounding_box()
    image = page.evaluate("window.evitsam.state.image")
    return box["x"] + x * box["width"] / image["width"], box["y"] + y * box["height"] / image["height"]


def click(page, x: float, y: float, negative: bool = False) -> None:
    if negative:
        page.keyboard.down("Shift")
    page.mouse.click(*to_client(page, x, y))
    if negative:
        page.keyboard.up("Shift")
    page.evaluate(IDLE)


def page_mask(page) -> tuple[np.ndarray, dict]:
    current = page.evaluate("window.evitsam.currentMask()")
    assert current is not None, page.locator("#error").text_content()
    state = page.evaluate(
        "({points: window.evitsam.state.points, box: window.evitsam.state.box, image: window.evitsam.state.image})"
    )
    image = state["image"]
    return decode_coco({"size": [image["height"], image["width"]], "counts": current["counts"]}), state


def server_mask(server: Server, image_id: str, **prompt) -> tuple[np.ndarray, dict]:
    answer = server.predict(image_id=image_id, **prompt)
    return decode_coco(answer["masks"][0]["segmentation"]), answer


def test_click_negative_point_and_box_masks_equal_the_servers(server, browser):
    page = open_page(browser, f"{server.base}/?index=1")  # truck.jpg
    assert "decoded in this page (WebAssembly" in page.locator("#status").text_content()
    image_id = page.evaluate("window.evitsam.state.image.id")

    page.mouse.move(*to_client(page, 500, 375))  # hover: the preview (only the part of the grid the photo shows)
    page.evaluate(IDLE)
    hover = page.evaluate("window.evitsam.hoverMask()")
    assert hover is not None, page.locator("#error").text_content()
    image = page.evaluate("window.evitsam.state.image")
    hover = decode_coco({"size": [image["height"], image["width"]], "counts": hover["counts"]})

    click(page, 500, 375)  # the truck's window: one click, the best of the three candidate masks
    mask, state = page_mask(page)
    point = state["points"][0]
    expected, first = server_mask(server, image_id, points=[point], multimask=True)
    assert mask[375, 500] and iou(mask, expected) >= 0.99, iou(mask, expected)
    assert hover[375, 500] and iou(hover, expected) >= 0.99, iou(hover, expected)

    click(page, 377, 400, negative=True)  # the window's left part, inside the first mask
    refined, state = page_mask(page)
    assert [p[2] for p in state["points"]] == [1, 0]
    expected, _ = server_mask(server, image_id, points=state["points"], mask_input=first["low_res"])
    assert iou(refined, expected) >= 0.99, iou(refined, expected)
    assert mask[400, 377] and not refined[400, 377] and refined.sum() < mask.sum()  # the region is removed
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "web_mask.png")

    page.keyboard.press("Escape")
    start, end = to_client(page, 425, 600), to_client(page, 700, 875)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    page.mouse.move(*end)
    page.mouse.up()
    page.evaluate(IDLE)
    mask, state = page_mask(page)
    assert state["points"] == [] and state["box"] is not None
    expected, _ = server_mask(server, image_id, boxes=[state["box"]])
    assert iou(mask, expected) >= 0.99, iou(mask, expected)
    inside = mask[600:876, 425:701].sum()
    assert inside >= 0.95 * mask.sum() > 0  # the box's object
    assert page.errors == []


def test_export_coco_equals_the_page_masks(server, browser, tmp_path):
    page = open_page(browser, f"{server.base}/?index=0")  # dog.jpg
    click(page, 300, 400)
    mask, _ = page_mask(page)
    page.fill("#label", "dog")
    page.locator("#accept").click()
    click(page, 560, 230)
    second, _ = page_mask(page)
    page.fill("#label", "bowl")
    page.keyboard.press("Enter")
    page.wait_for_function("window.evitsam.state.objects.every((o) => o.state === 'saved')")
    with page.expect_download() as download:
        page.select_option("#export", "coco")
    path = tmp_path / "export.json"
    download.value.save_as(path)
    coco = COCO(str(path))
    annotations = coco.loadAnns(coco.getAnnIds())
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert [names[a["category_id"]] for a in annotations] == ["dog", "bowl"]
    assert np.array_equal(coco.annToMask(annotations[0]).astype(bool), mask)
    assert np.array_equal(coco.annToMask(annotations[1]).astype(bool), second)
    with page.expect_download() as download:
        page.select_option("#export", "coco-folder")
    folder_doc = json.loads(Path(download.value.path()).read_text())
    assert {i["file_name"] for i in folder_doc["images"]} == {"dog.jpg", "truck.jpg"}

    def saved_labels() -> list[str]:
        return [o["label"] for o in httpx.get(f"{server.base}/v1/folder/images/0/objects").json()["objects"]]

    page.locator("#stage").click(position={"x": 5, "y": 5})  # focus off the export menu
    page.keyboard.press("Control+z")  # undo the last accept: deleted on the server too
    page.wait_for_function("window.evitsam.state.objects.length === 1")
    page.wait_for_timeout(200)
    assert saved_labels() == ["dog"]
    page.keyboard.press("Control+Shift+z")  # redo: saved again
    page.wait_for_function(
        "window.evitsam.state.objects.length === 2 && window.evitsam.state.objects[1].state === 'saved'"
    )
    assert saved_labels() == ["dog", "bowl"]
    page.locator("#objects li").nth(0).click()  # select, then delete
    page.keyboard.press("Delete")
    page.locator("#objects li").nth(0).click()
    page.keyboard.press("Delete")
    page.wait_for_function("window.evitsam.state.objects.length === 0")
    page.wait_for_timeout(200)
    assert saved_labels() == []


def test_folder_objects_survive_reload_and_restart(server, browser):
    page = open_page(browser, f"{server.base}/?index=1")
    click(page, 500, 375)
    first, _ = page_mask(page)
    page.keyboard.press("Enter")
    click(page, 1400, 700)
    second, _ = page_mask(page)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "window.evitsam.state.objects.length === 2 && window.evitsam.state.objects.every((o) => o.state === 'saved')"
    )

    def saved_masks(page) -> list[np.ndarray]:
        counts = page.evaluate("window.evitsam.state.objects.map((o) => o.counts)")
        return [decode_coco({"size": list(first.shape), "counts": c}) for c in counts]

    page.reload()
    page.wait_for_function("window.evitsam && window.evitsam.ready && window.evitsam.state.objects.length === 2")
    masks = saved_masks(page)
    assert np.array_equal(masks[0], first) and np.array_equal(masks[1], second)

    server.stop()
    server.start()
    page = open_page(browser, f"{server.base}/?index=1")
    page.wait_for_function("window.evitsam.state.objects.length === 2")
    masks = saved_masks(page)
    assert np.array_equal(masks[0], first) and np.array_equal(masks[1], second)
    assert "(2)" in page.locator("#images li").nth(1).text_content()


def test_a_failed_save_is_shown_and_can_be_retried(server, browser):
    page = open_page(browser, f"{server.base}/?index=0")
    before = len(httpx.get(f"{server.base}/v1/folder/images/0/objects").json()["objects"])
    page.route(
        "**/v1/folder/images/0/objects",
        lambda route: route.abort() if route.request.method == "POST" else route.continue_(),
    )
    click(page, 300, 400)
    page.keyboard.press("Enter")
    page.wait_for_function("window.evitsam.state.objects.some((o) => o.state === 'failed')")
    assert page.locator("#error").is_visible() and "Saving" in page.locator("#error").text_content()
    assert len(httpx.get(f"{server.base}/v1/folder/images/0/objects").json()["objects"]) == before
    page.unroute("**/v1/folder/images/0/objects")
    page.locator("#objects li.failed").click()
    page.wait_for_function("window.evitsam.state.objects.every((o) => o.state === 'saved')")
    assert len(httpx.get(f"{server.base}/v1/folder/images/0/objects").json()["objects"]) == before + 1


def test_without_webassembly_masks_come_from_the_server(server, playwright):
    # V8 without its JIT has no WebAssembly at all: the page must fall back to the server
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--js-flags=--jitless"])
    try:
        page = open_page(browser, f"{server.base}/?index=1")
        assert "decoded on the server" in page.locator("#status").text_content()
        assert page.evaluate("typeof WebAssembly") == "undefined"
        image_id = page.evaluate("window.evitsam.state.image.id")
        click(page, 500, 375)
        click(page, 377, 400, negative=True)
        mask, state = page_mask(page)
        first = server.predict(image_id=image_id, points=state["points"][:1], multimask=True)
        expected, _ = server_mask(server, image_id, points=state["points"], mask_input=first["low_res"])
        assert iou(mask, expected) >= 0.99
    finally:
        browser.close()


def test_segment_everything_masks_are_picked_as_objects(server, browser):
    page = open_page(browser, f"{server.base}/?index=0")
    before = page.evaluate("window.evitsam.state.objects.length")
    page.keyboard.press("e")
    page.wait_for_function("window.evitsam.state.everything.length > 0", timeout=120_000)
    page.evaluate(IDLE)
    # a pixel of the smallest mask that no other mask covers: clicking it must pick exactly that mask
    x, y, index = page.evaluate(
        """() => { const s = window.evitsam.state, w = s.image.width;
        for (let k = 0; k < s.everything.length; k++) { const m = s.everything[k].mask;
          for (let i = 0; i < m.length; i++) if (m[i] && s.everything.every((o, j) => j === k || !o.mask[i]))
            return [i % w + 0.5, Math.floor(i / w) + 0.5, k]; }
        return null; }"""
    )
    click(page, x, y)
    page.wait_for_function(f"window.evitsam.state.objects.length === {before + 1}")
    same = page.evaluate(
        f"""() => {{ const s = window.evitsam.state;
        const a = s.objects[s.objects.length - 1].mask, b = s.everything[{index}].mask;
        return a.length === b.length && a.every((v, i) => v === b[i]); }}"""
    )
    assert same
    page.wait_for_function("window.evitsam.state.objects.every((o) => o.state === 'saved')")
    last = httpx.get(f"{server.base}/v1/folder/images/0/objects").json()["objects"][-1]
    httpx.delete(f"{server.base}/v1/folder/objects/{last['id']}")


UPSCALE = """async ({logits, low, input, original, threshold}) => {
  const {loadScaleKernel, resizeAxis, upscaleMask} = await import("/web/decoder.mjs");
  await loadScaleKernel();
  const data = Float32Array.from(logits);
  const [h, w] = original;
  const rows = resizeAxis(low, input[0], h), cols = resizeAxis(low, input[1], w);
  const {mask: fast, bbox} = upscaleMask(data, low, rows, cols, h, w, threshold);
  // the plain path: every pixel from its 4 x 4 weighted low-res logits, in float64; its margin to the threshold
  const plain = new Uint8Array(h * w), margin = new Float64Array(h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let v = 0;
    for (let i = 0; i < 4; i++) {
      const wr = rows.weight[y * 4 + i];
      if (wr === 0) continue;
      let sum = 0;
      const src = rows.index[y * 4 + i] * low;
      for (let j = 0; j < 4; j++) sum += cols.weight[x * 4 + j] * data[src + cols.index[x * 4 + j]];
      v += wr * sum;
    }
    plain[y * w + x] = v > threshold ? 1 : 0;
    margin[y * w + x] = Math.abs(v - threshold);
  }
  // pixels that differ from the float64 sums, and the largest margin among them
  let differ = 0, widest = 0;
  for (let k = 0; k < h * w; k++) if (fast[k] !== plain[k]) { differ++; widest = Math.max(widest, margin[k]); }
  let short = null;  // fewer logit rows than the resize reads: an error, not a mask read out of bounds
  try { upscaleMask(data.subarray(0, 40 * low), low, rows, cols, h, w, threshold); } catch (e) { short = e.message; }
  // no pixel above the threshold: an empty box (the kernel's padding columns past the photo do not count)
  const none = upscaleMask(new Float32Array(data.length).fill(-10), low, rows, cols, h, w, -5).bbox;
  return {fast: Array.from(fast), differ, widest, bbox, short, none};
}"""


@pytest.mark.parametrize("smooth", [False, True])
def test_the_pages_mask_scaling_equals_the_plain_sum_and_the_models(server, browser, smooth):
    """Noisy logits and smooth ones: the page's scaling (the WebAssembly kernel, float32) equals the plain weighted
    sums in float64 but for pixels within float32 rounding of the threshold, and the model's own post-processing
    but for a few pixels at the threshold; its box is the set pixels' box; too few logits are refused."""
    import torch

    import evitsam

    model = evitsam.load_model()
    low = model.low_res_size
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (low, low)).astype(np.float32)
    if smooth:
        y, x = np.mgrid[0:low, 0:low] / low
        logits = (0.3 - np.hypot(y - 0.4, x - 0.5)).astype(np.float32) * 40
    original, threshold = (301, 457), 0.5
    scale = 1024 / max(original)  # the prompt frame, where input_size lives (SamPredictor.input_size)
    input_size = (round(original[0] * scale), round(original[1] * scale))
    page = open_page(browser, server.base)
    args = {"logits": logits.ravel().tolist(), "low": low, "input": list(input_size), "original": list(original)}
    result = page.evaluate(UPSCALE, {**args, "threshold": threshold})
    fast = np.array(result["fast"], bool).reshape(original)
    assert result["differ"] < 1e-4 * fast.size and result["widest"] < 1e-5 * np.abs(logits).max()
    rows, columns = np.flatnonzero(fast.any(1)), np.flatnonzero(fast.any(0))
    assert result["bbox"] == [columns[0], rows[0], columns[-1] + 1, rows[-1] + 1]
    assert result["none"] == [original[1], original[0], 0, 0]
    reference = model.postprocess_masks(torch.from_numpy(logits)[None, None], input_size, original, threshold)
    reference = reference[0, 0].numpy().astype(bool)
    assert (fast != reference).mean() < 1e-3 and 0.05 < fast.mean() < 0.95
    read = math.ceil(low * input_size[0] / 1024)  # the low-res rows the photo's part covers, and one more at most
    assert result["short"] in [f"the resize reads {r} x {low} low-res logits, got 40 x {low}" for r in (read, read + 1)]


PREVIEW = """async (points) => {
  const decoder = window.evitsam.state.decoder;
  const grid = decoder.low / 4, extent = decoder.extent;
  const out = [];
  for (const [x, y] of points) {
    const prompt = {points: [[x, y, 1]], box: null, maskInput: null};
    const preview = await decoder.decode(prompt, 0, {preview: true});
    const click = await decoder.decode(prompt, 0);
    const assembled = await click.lowRes;  // the click's part of the grid, then the rest graph's tokens
    decoder.extent = [grid, grid];  // the whole grid in one run of the prompt graph, as the reference
    const full = await decoder.decode(prompt, 0);
    const whole = await full.lowRes;
    decoder.extent = extent;
    let differ = 0, set = 0, furthest = 0;
    for (let k = 0; k < full.mask.length; k++) {
      differ += (preview.mask[k] !== full.mask[k]) + (click.mask[k] !== full.mask[k]);
      set += full.mask[k];
    }
    for (let k = 0; k < whole.length; k++) furthest = Math.max(furthest, Math.abs(assembled[k] - whole[k]));
    const scores = [preview.score, click.score, full.score];
    out.push({differ, set, furthest, lowRes: preview.lowRes, wholeLength: assembled.length, scores});
  }
  return {out, extent, grid};
}"""


ROTATED = """async () => {  // the dog photo turned to portrait, opened as a file
  const bitmap = await createImageBitmap(await (await fetch("/v1/folder/images/0/file")).blob());
  const canvas = new OffscreenCanvas(bitmap.height, bitmap.width);
  const context = canvas.getContext("2d");
  context.translate(bitmap.height, 0);
  context.rotate(Math.PI / 2);
  context.drawImage(bitmap, 0, 0);
  const blob = await canvas.convertToBlob({type: "image/png"});
  await window.evitsam.openFile(new File([blob], "portrait.png", {type: "image/png"}));
}"""


def test_a_hover_preview_decodes_only_the_photos_part_and_equals_the_whole(server, browser):
    """Landscape and portrait photos: a hover or a click decodes only the grid rows (or columns) the photo covers;
    its mask equals the whole grid's pixel for pixel, at the photo's far edges too; a hover hands no low-res mask
    on, a click the whole grid's (its part, then the rest graph's tokens), equal to one run over the whole grid."""
    page = open_page(browser, f"{server.base}/?index=1")  # truck.jpg, 3:2
    for photo in ("landscape", "portrait"):
        if photo == "portrait":
            page.evaluate(ROTATED)
            opened = "window.evitsam.state.image.name === 'portrait.png' && window.evitsam.state.image.readyMs"
            page.wait_for_function(opened)
        image = page.evaluate("window.evitsam.state.image")
        w, h = image["width"], image["height"]
        assert (w > h) == (photo == "landscape")
        points = [(0.5 * w, 0.5 * h), (w - 2, h - 2), (w - 2, 2), (2, h - 2), (0.2 * w, 0.9 * h)]
        result = page.evaluate(PREVIEW, points)
        grid, (rows, columns) = result["grid"], result["extent"]
        assert (rows < grid, columns < grid) == ((True, False) if photo == "landscape" else (False, True))
        assert 0.6 < min(rows, columns) / grid < 0.75  # 2:3 of the grid, and a token more at most
        for point in result["out"]:
            assert point["differ"] == 0 and point["lowRes"] is None and point["wholeLength"] == (4 * grid) ** 2
            assert point["furthest"] < 1e-4 and len(set(point["scores"])) == 1
        assert sum(point["set"] > 0 for point in result["out"]) >= 3
    assert page.errors == []
