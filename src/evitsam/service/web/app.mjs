// The annotation page: open an image (or step through the server's folder), prompt, accept, export.
import { ApiError, getJson, postJson, request } from "./api.mjs";
import { PageDecoder, parseNpy, usesMultimask } from "./decoder.mjs";
import { decodeMask, encodeMask, maskStats } from "./rle.mjs";
import { exportAs as exportFiles } from "./export.mjs";
import { COLORS, drawPrompts, paintMasks, sizeCanvases } from "./view.mjs";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  config: null, decoder: null, decoderNote: "", image: null, // image: {id, name, width, height, index}
  folder: null, // {name, images: [...]} in folder mode
  points: [], box: null, current: null, // current: {mask, score, lowRes | handle}
  steps: [], // earlier {points, box, current} of this object, for undo
  objects: [], selected: null, everything: [], hover: true,
  undo: [], redo: [], busy: 0, decodes: 0,
};
let decodeChain = Promise.resolve();

function status(text) { $("status").textContent = text; }
function showError(error) {
  const message = error instanceof ApiError ? error.message : `${error.message || error}`;
  $("error").textContent = message;
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; }
async function busy(text, work) {
  state.busy++;
  $("busy").hidden = false;
  const start = performance.now();
  const tick = setInterval(() => { $("busy-text").textContent = `${text} ${((performance.now() - start) / 1000).toFixed(1)} s`; }, 100);
  $("busy-text").textContent = text;
  try { return await work(); } finally {
    clearInterval(tick);
    if (--state.busy === 0) $("busy").hidden = true;
  }
}

// ------------------------------------------------------------------------------------------ loading
async function start() {
  try {
    state.config = await getJson("/v1/web/config");
  } catch (error) { showError(error); return; }
  const threads = Number(params.get("threads")) || (crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1);
  state.decoderReady = (params.get("decoder") === "server" ? Promise.reject(new Error("the server decoder was asked for")) :
    PageDecoder.load(state.config.graphs, authHeaders(), threads, state.config.low_res_size)).then(
    (decoder) => { state.decoder = decoder; state.decoderNote = `masks decoded in this page (WebAssembly, ${threads} thread${threads > 1 ? "s" : ""})`; },
    (error) => { state.decoderNote = `masks decoded on the server (${error.message || error})`; });
  state.decoderReady.then(showStatus);
  if (state.config.folder) await openFolder();
  showStatus();
}

function authHeaders() {
  const token = sessionStorage.getItem("evitsam-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showStatus() {
  const model = state.config ? `${state.config.model.model} (${state.config.model.variant})` : "";
  const image = state.image ? `${state.image.name}, ${state.image.width}x${state.image.height}` : "no image";
  status(`${model} · ${state.decoderNote || "loading the decoder"} · ${image}`);
}

async function openFile(file) {
  clearError();
  try {
    const form = new FormData();
    form.append("file", file);
    const info = await busy("Computing the embedding", async () => (await request("/v1/images", { method: "POST", body: form })).json());
    await showImage({ ...info, name: file.name || "pasted.png", index: null }, URL.createObjectURL(file));
  } catch (error) { showError(error); }
}

async function openFolder() {
  state.folder = await getJson("/v1/folder");
  $("folder").hidden = $("folder-nav").hidden = false;
  renderFolder();
  if (state.folder.images.length) await openIndex(Number(params.get("index")) || 0);
  else showError(new Error(`The folder ${state.folder.name} holds no images.`));
}

async function openIndex(index) {
  if (!state.folder || index < 0 || index >= state.folder.images.length) return;
  clearError();
  const entry = state.folder.images[index];
  try {
    const saved = getJson(`/v1/folder/images/${index}/objects`); // while the server computes the embedding
    saved.catch(() => {}); // its error is shown when awaited below, not as an unhandled rejection
    const info = await busy(`Computing the embedding of ${entry.name}`, () => postJson(`/v1/folder/images/${index}/embed`, {}));
    await showImage({ ...info, name: entry.name, index }, `/v1/folder/images/${index}/file`);
    state.objects = (await saved).objects.map((o) => objectOf(o, "saved"));
    renderObjects();
  } catch (error) { showError(error); }
  renderFolder();
}

async function showImage(info, url) {
  const started = performance.now();
  state.image = { id: info.image_id, name: info.name, width: info.width, height: info.height, index: info.index };
  Object.assign(state, { points: [], box: null, current: null, steps: [], objects: [], selected: null, everything: [], undo: [], redo: [] });
  const img = $("image");
  const shown = new Promise((resolve, reject) => { img.onload = resolve; img.onerror = () => reject(new Error("The browser cannot display this image file.")); img.src = url; });
  const embedded = (async () => { // fetched while the browser decodes the photo
    await state.decoderReady;
    if (!state.decoder) return;
    const response = await busy("Loading the embedding", () => request(`/v1/images/${info.image_id}/embedding?dtype=float16`));
    const header = (name) => response.headers.get(name).split(",").map(Number);
    const embedding = parseNpy(await response.arrayBuffer());
    if (state.image.id !== info.image_id) return; // another image was opened meanwhile
    await state.decoder.setImage(embedding, header("X-Input-Size"), header("X-Original-Size"), state.config.low_res_size);
  })();
  await shown;
  $("drop").hidden = true;
  $("view").hidden = false;
  sizeCanvases(info.width, info.height);
  renderAll();
  await embedded;
  state.image.readyMs = performance.now() - started;
  showStatus();
}

// ------------------------------------------------------------------------------------------ decoding
/** The mask for the current prompts (page decoder, or the server's /v1/predict as the fallback). */
function decodeCurrent(extraPoint = null) {
  const points = extraPoint ? [...state.points, extraPoint] : state.points.slice();
  const box = state.box;
  const previous = extraPoint ? null : state.steps.length ? state.steps[state.steps.length - 1].current : null;
  const image = state.image;
  state.decodes++;
  const job = decodeChain.then(async () => {
    if ((!points.length && !box) || !image.readyMs) return null; // nothing to decode, or the image is still loading
    const start = performance.now();
    const prompt = { points, box, maskInput: previous ? previous.lowRes : null };
    // a hover's mask is a preview: never fed back as a mask prompt, so the rest of its low-res grid is not computed
    const result = state.decoder ? await state.decoder.decode(prompt, state.config.mask_threshold, { preview: Boolean(extraPoint) })
      : await serverDecode(points, box, previous);
    result.ms = performance.now() - start;
    return image === state.image ? result : null;
  });
  decodeChain = job.catch(() => null).finally(() => state.decodes--);
  return job;
}

async function serverDecode(points, box, previous) {
  const prompt = { points, box, maskInput: previous ? previous.handle : null };
  const body = { image_id: state.image.id, points, multimask: usesMultimask(prompt) };
  if (box) body.boxes = [box];
  if (previous && previous.handle) body.mask_input = previous.handle;
  const answer = await postJson("/v1/predict", body);
  const best = answer.masks[0];
  const [h, w] = best.segmentation.size;
  return { mask: decodeMask(best.segmentation.counts, h, w), score: best.score, handle: best.low_res };
}

async function refresh() {
  try {
    const result = await decodeCurrent();
    if (result !== null || (!state.points.length && !state.box)) state.current = result;
  } catch (error) { showError(error); }
  state.hoverMask = null;
  renderAll();
}

let hoverPending = null;
let hoverRunning = false;
async function hover(point) {
  if (!state.hover || state.points.length || state.box || !state.image || dragStart) return;
  hoverPending = point;
  if (hoverRunning) return;
  hoverRunning = true;
  while (hoverPending) {
    const p = hoverPending;
    hoverPending = null;
    try {
      const result = await decodeCurrent([p[0], p[1], 1]);
      if (!state.points.length && !state.box && result) {
        state.hoverMask = result;
        state.lastHoverMs = result.ms;
        renderMask();
      }
    } catch (error) { showError(error); break; }
  }
  hoverRunning = false;
}

// ------------------------------------------------------------------------------------------ actions (undoable)
function act(action) {
  action.redo();
  state.undo.push(action);
  state.redo = [];
}

function addPrompt(point, box) {
  const before = { points: state.points.slice(), box: state.box, current: state.current };
  act({
    redo: () => { state.steps.push(before); if (point) state.points = [...state.points, point]; if (box) state.box = box; return refresh(); },
    undo: () => { state.steps.pop(); Object.assign(state, before); renderAll(); },
  });
}

function clearPrompts() {
  if (!state.points.length && !state.box) return;
  const before = { points: state.points, box: state.box, current: state.current, steps: state.steps };
  act({
    redo: () => { Object.assign(state, { points: [], box: null, current: null, steps: [] }); renderAll(); },
    undo: () => { Object.assign(state, before); renderAll(); },
  });
}

function accept(candidate = null) {
  const result = candidate || state.current;
  if (!result || !state.image) return;
  const { width, height } = state.image;
  const label = $("label").value.trim() || "object";
  const object = { label, mask: result.mask, score: result.score, counts: encodeMask(result.mask, height, width), ...maskStats(result.mask, height, width) };
  const before = { points: state.points, box: state.box, current: state.current, steps: state.steps };
  act({
    redo: () => { state.objects.push(object); Object.assign(state, { points: [], box: null, current: null, steps: [] }); save(object); renderAll(); },
    undo: () => { remove(object); if (!candidate) Object.assign(state, before); renderAll(); },
  });
}

function deleteSelected() {
  const object = state.selected;
  if (!object) return;
  act({
    redo: () => { remove(object); state.selected = null; renderAll(); },
    undo: () => { state.objects.push(object); save(object); renderAll(); },
  });
}

function remove(object) {
  state.objects = state.objects.filter((o) => o !== object);
  if (state.folder && object.id !== undefined) {
    const id = object.id;
    delete object.id;
    request(`/v1/folder/objects/${id}`, { method: "DELETE" }).catch((error) => showError(new Error(`Deleting ${object.label} on the server failed: ${error.message}`)));
  }
}

/** Folder mode: save an accepted object now; a failure is shown and the object is marked for a retry. */
async function save(object) {
  if (!state.folder || state.image.index === null) return;
  object.state = "saving";
  const index = state.image.index;
  try {
    const record = await postJson(`/v1/folder/images/${index}/objects`, {
      label: object.label, score: object.score, segmentation: { size: [state.image.height, state.image.width], counts: object.counts },
    });
    object.id = record.id;
    object.state = "saved";
    if (!state.objects.includes(object)) remove(object); // undone while saving
    state.folder.images[index].objects = (await getJson("/v1/folder")).images[index].objects;
  } catch (error) {
    object.state = "failed";
    showError(new Error(`Saving "${object.label}" failed, it is kept in this page only (click it to retry): ${error.message}`));
  }
  renderObjects();
  renderFolder();
}

function objectOf(record, saveState) {
  const [h, w] = record.segmentation.size;
  return { id: record.id, label: record.label, score: record.score, counts: record.segmentation.counts, mask: decodeMask(record.segmentation.counts, h, w), area: record.area, bbox: record.bbox, state: saveState };
}

async function segmentEverything() {
  if (!state.image) return;
  try {
    const answer = await busy("Segmenting everything", () => postJson("/v1/everything", { image_id: state.image.id, points_per_side: 16 }));
    state.everything = answer.masks.map((m) => ({ mask: decodeMask(m.segmentation.counts, answer.height, answer.width), score: m.predicted_iou, area: m.area }))
      .sort((a, b) => a.area - b.area);
    renderAll();
    status(`${answer.masks.length} masks: click one to take it as an object (Esc hides them)`);
  } catch (error) { showError(error); }
}

// ------------------------------------------------------------------------------------------ rendering
function renderMask() {
  const shown = state.current || state.hoverMask;
  paintMasks("mask-layer", shown ? [{ mask: shown.mask, bbox: shown.bbox, color: [30, 144, 255] }] : []);
  const score = shown ? ` · score ${shown.score.toFixed(3)}${shown.ms !== undefined ? ` · ${shown.ms.toFixed(0)} ms` : ""}` : "";
  $("position").dataset.score = score;
  if (state.image) status(`${state.decoderNote} · ${state.image.name}${score}`);
}

function renderAll() {
  if (!state.image) return;
  paintMasks("objects-layer", state.objects.map((o, i) => ({ mask: o.mask, color: o === state.selected ? [255, 255, 255] : COLORS[i % COLORS.length] })));
  paintMasks("everything-layer", state.everything.map((e, i) => ({ mask: e.mask, color: COLORS[(i * 5) % COLORS.length] })), 90);
  drawPrompts(state.points, state.box, null, Math.max(4, Math.round(Math.max(state.image.width, state.image.height) / 150)));
  renderMask();
  renderObjects();
}

function renderObjects() {
  $("objects").innerHTML = "";
  state.objects.forEach((o, i) => {
    const item = document.createElement("li");
    const [r, g, b] = COLORS[i % COLORS.length];
    item.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>`;
    item.append(`${o.label} (${o.area} px${o.state === "saving" ? ", saving" : o.state === "failed" ? ", NOT SAVED: click to retry" : ""})`);
    item.className = `${o === state.selected ? "selected" : ""} ${o.state === "failed" ? "failed" : ""}`;
    item.onclick = () => { if (o.state === "failed") save(o); state.selected = state.selected === o ? null : o; renderAll(); };
    $("objects").append(item);
  });
}

function renderFolder() {
  if (!state.folder) return;
  const images = state.folder.images;
  const done = images.filter((i) => i.objects > 0).length;
  $("folder-title").textContent = state.folder.name;
  $("progress-text").textContent = `${done} of ${images.length} images have objects`;
  $("position").textContent = state.image && state.image.index !== null ? `${state.image.index + 1} / ${images.length}` : "";
  $("images").innerHTML = "";
  for (const entry of images) {
    const item = document.createElement("li");
    item.textContent = `${entry.name}${entry.objects ? ` (${entry.objects})` : ""}`;
    if (state.image && entry.index === state.image.index) item.className = "current";
    item.onclick = () => openIndex(entry.index);
    $("images").append(item);
  }
}

// ------------------------------------------------------------------------------------------ input
let dragStart = null;
function imagePoint(event) {
  const rect = $("prompts-layer").getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * state.image.width;
  const y = ((event.clientY - rect.top) / rect.height) * state.image.height;
  return [Math.min(Math.max(x, 0), state.image.width), Math.min(Math.max(y, 0), state.image.height)];
}

function bindInput() {
  const layer = $("prompts-layer");
  layer.addEventListener("contextmenu", (event) => event.preventDefault());
  layer.addEventListener("mousedown", (event) => { if (state.image) dragStart = { point: imagePoint(event), client: [event.clientX, event.clientY] }; });
  layer.addEventListener("mousemove", (event) => {
    if (!state.image) return;
    if (dragStart && Math.hypot(event.clientX - dragStart.client[0], event.clientY - dragStart.client[1]) > 5) {
      const [x0, y0] = dragStart.point;
      const [x1, y1] = imagePoint(event);
      drawPrompts(state.points, [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)], null, 4);
    } else hover(imagePoint(event));
  });
  layer.addEventListener("mouseleave", () => { state.hoverMask = null; hoverPending = null; renderMask(); });
  layer.addEventListener("mouseup", (event) => {
    if (!dragStart) return;
    const start = dragStart;
    dragStart = null;
    const end = imagePoint(event);
    if (Math.hypot(event.clientX - start.client[0], event.clientY - start.client[1]) > 5) {
      const [x0, y0] = start.point;
      addPrompt(null, [Math.min(x0, end[0]), Math.min(y0, end[1]), Math.max(x0, end[0]), Math.max(y0, end[1])]);
    } else if (state.everything.length && event.button === 0 && !event.shiftKey) {
      pickEverything(end);
    } else {
      addPrompt([end[0], end[1], event.button === 2 || event.shiftKey ? 0 : 1], null);
    }
  });
  $("file").addEventListener("change", (event) => event.target.files[0] && openFile(event.target.files[0]));
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dragging"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragging");
    if (event.dataTransfer.files[0]) openFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) openFile(item.getAsFile());
  });
  $("accept").onclick = () => accept();
  $("clear").onclick = () => clearPrompts();
  $("undo").onclick = () => undo();
  $("redo").onclick = () => redo();
  $("everything").onclick = () => segmentEverything();
  $("prev").onclick = () => openIndex(state.image.index - 1);
  $("next").onclick = () => openIndex(state.image.index + 1);
  $("export").onchange = (event) => { exportAs(event.target.value); event.target.value = ""; };
  document.addEventListener("keydown", onKey);
}

function pickEverything(point) {
  const i = Math.round(point[1]) * state.image.width + Math.round(point[0]);
  const hit = state.everything.find((e) => e.mask[i]); // smallest first
  if (hit) accept(hit);
}

async function exportAs(kind) {
  try { await exportFiles(state, kind); } catch (error) { showError(error); }
}

function undo() { const action = state.undo.pop(); if (action) { action.undo(); state.redo.push(action); } }
function redo() { const action = state.redo.pop(); if (action) { action.redo(); state.undo.push(action); } }

function onKey(event) {
  if (event.target.tagName === "INPUT" && event.key !== "Enter") return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === "z") event.shiftKey ? redo() : undo();
  else if ((event.ctrlKey || event.metaKey) && key === "y") redo();
  else if (event.ctrlKey || event.metaKey || event.altKey) return;
  else if (key === "enter" || key === "a") accept();
  else if (key === "escape") { if (state.everything.length) { state.everything = []; renderAll(); } else clearPrompts(); }
  else if (key === "delete" || key === "backspace") deleteSelected();
  else if (key === "n" || key === "arrowright") state.image && openIndex(state.image.index + 1);
  else if (key === "p" || key === "arrowleft") state.image && openIndex(state.image.index - 1);
  else if (key === "e") segmentEverything();
  else if (key === "h") { state.hover = !state.hover; state.hoverMask = null; renderMask(); }
  else return;
  event.preventDefault();
}

const maskRle = (shown) => (shown ? { counts: encodeMask(shown.mask, state.image.height, state.image.width), score: shown.score } : null);

// For scripts and tests: the page's state and its current and hover masks as COCO RLE.
window.evitsam = {
  state,
  openFile, openIndex, exportAs, accept, undo, redo,
  idle: async () => { while (state.decodes || state.busy || hoverRunning) await new Promise((r) => setTimeout(r, 10)); },
  currentMask: () => maskRle(state.current),
  hoverMask: () => maskRle(state.hoverMask),
  ready: false,
};
bindInput();
start().then(() => { window.evitsam.ready = true; });
