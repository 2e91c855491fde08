// Masks decoded in the page: the image embedding from the server, the decoder run by onnxruntime-web (WASM),
// low-res logits scaled to the image here (the model's post-processing: two bilinear resizes composed per axis).

const PROMPT_FRAME = 1024; // prompts and the intermediate mask frame: the long side is 1024

/** The ``.npy`` bytes of GET /v1/images/{id}/embedding -> {shape, data: Float32Array}. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = (major === 1 ? 10 : 12) + headerLength;
  const header = new TextDecoder().decode(bytes.subarray(major === 1 ? 10 : 12, start));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  if (descr === "<f4") return { shape, data: new Float32Array(buffer.slice(start, start + 4 * count)) };
  if (descr !== "<f2") throw new Error(`unexpected embedding dtype ${descr}`);
  const halves = new Uint16Array(buffer.slice(start, start + 2 * count));
  const data = new Float32Array(count);
  halfTable ||= Float32Array.from({ length: 65536 }, (_, h) => halfToFloat(h));
  for (let i = 0; i < count; i++) data[i] = halfTable[halves[i]];
  return { shape, data };
}

let halfTable = null;

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** (out, in) weights of PyTorch's bilinear resize (align_corners=False) along one axis: two taps per output. */
function bilinear(inSize, outSize) {
  const f = Math.fround;
  const scale = f(inSize / outSize);
  const taps = [];
  for (let o = 0; o < outSize; o++) {
    const src = Math.max(0, f(f(scale * f(o + 0.5)) - 0.5));
    const i0 = Math.floor(src);
    const frac = Math.min(1, Math.max(0, f(src - i0)));
    const i1 = i0 < inSize - 1 ? i0 + 1 : i0;
    taps.push([[i0, 1 - frac], [i1, frac]]);
  }
  return taps;
}

/** One axis of low-res -> 1024 frame -> crop to ``input`` -> ``original``, as sparse rows {index, weight}. */
export function resizeAxis(low, input, original) {
  const first = bilinear(low, PROMPT_FRAME);
  const second = bilinear(input, original);
  const index = new Int32Array(original * 4);
  const weight = new Float32Array(original * 4);
  for (let o = 0; o < original; o++) {
    const sums = new Map();
    for (const [j, wj] of second[o]) {
      for (const [k, wk] of first[j]) sums.set(k, (sums.get(k) || 0) + wj * wk);
    }
    let n = 0;
    for (const [k, w] of sums) {
      index[o * 4 + n] = k;
      weight[o * 4 + n] = w;
      n++;
    }
  }
  return { index, weight };
}

/** Each output's taps with a weight, ``taps`` per output (``taps``, or the most any output has; the rest weight 0
 * on its first input): {taps, index: Int32Array, weight: Float32Array, read: inputs read (highest index + 1)}. */
function paddedTaps(axis, size, taps = 0) {
  if (!taps) {
    for (let o = 0; o < size; o++) {
      let n = 0;
      for (let k = 0; k < 4; k++) n += axis.weight[o * 4 + k] !== 0 ? 1 : 0;
      taps = Math.max(taps, n);
    }
  }
  const index = new Int32Array(size * taps);
  const weight = new Float32Array(size * taps);
  let read = 0;
  for (let o = 0; o < size; o++) {
    let n = 0;
    for (let k = 0; k < 4; k++) {
      const w = axis.weight[o * 4 + k];
      if (w === 0) continue;
      index[o * taps + n] = axis.index[o * 4 + k];
      weight[o * taps + n++] = w;
      read = Math.max(read, axis.index[o * 4 + k] + 1);
    }
    for (let j = n; j < taps; j++) index[o * taps + j] = index[o * taps];
  }
  return { taps, index, weight, read };
}

// The scaling kernel (scale.wat, WebAssembly SIMD): loaded by loadScaleKernel, before the first upscaleMask.
let kernel = null;

/** Load the scaling kernel (once; PageDecoder.load does). */
export async function loadScaleKernel() {
  if (!kernel) {
    const response = await fetch(new URL("./scale.wasm", import.meta.url));
    if (!response.ok) throw new Error(`the mask scaling did not load (HTTP ${response.status})`);
    kernel = (await WebAssembly.instantiate(await response.arrayBuffer())).instance.exports;
  }
  return kernel;
}

/** Byte offsets of consecutive 16-byte aligned regions of these sizes, and their end. */
function regions(sizes) {
  const offsets = {};
  let end = 0;
  for (const [name, bytes] of Object.entries(sizes)) {
    offsets[name] = end;
    end += Math.ceil(bytes / 16) * 16;
  }
  return { offsets, end };
}

/** Low-res logits (one mask, rows of ``stride`` values: the top-left part of the low x low grid that the resize
 * reads, or all of it) -> {mask: row-major Uint8Array at the original size (logits > threshold),
 * bbox: [x0, y0, x1, y1) of the pixels set}. Each output is a convex combination of at most 4x4 low-res
 * logits, separable: the WebAssembly kernel resizes each low-res row along x once, then makes each output row
 * from at most four of those rows and compares it with the threshold, 16 pixels at a time (float32 SIMD: the
 * same mask as the exact sums but for pixels within float32 rounding of the threshold). */
export function upscaleMask(logits, low, rows, cols, height, width, threshold = 0, stride = low) {
  if (!kernel) throw new Error("the mask scaling kernel is not loaded (loadScaleKernel)");
  rows.taps ||= paddedTaps(rows, height, 4);
  cols.taps ||= paddedTaps(cols, width);
  const rowsRead = rows.taps.read;
  const colsRead = cols.taps.read;
  if (colsRead > stride || rowsRead * stride > logits.length) {
    throw new Error(`the resize reads ${rowsRead} x ${colsRead} low-res logits, got ${logits.length / stride} x ${stride}`);
  }
  const taps = cols.taps.taps;
  const pitch = Math.ceil(width / 16) * 16; // the kernel's rows: whole 16-pixel groups
  const { offsets, end } = regions({
    logits: rowsRead * stride * 4,
    across: rowsRead * pitch * 4,
    rowIndex: height * 16,
    rowWeight: height * 16,
    colIndex: width * taps * 4,
    colWeight: width * taps * 4,
    mask: height * pitch,
    rowAny: height,
    colAny: pitch,
    columns: pitch,
  });
  const memory = kernel.memory;
  if (end > memory.buffer.byteLength) memory.grow(Math.ceil((end - memory.buffer.byteLength) / 65536));
  const buffer = memory.buffer;
  new Float32Array(buffer, offsets.logits, rowsRead * stride).set(logits.subarray(0, rowsRead * stride));
  new Int32Array(buffer, offsets.rowIndex, height * 4).set(rows.taps.index);
  new Float32Array(buffer, offsets.rowWeight, height * 4).set(rows.taps.weight);
  new Int32Array(buffer, offsets.colIndex, width * taps).set(cols.taps.index);
  new Float32Array(buffer, offsets.colWeight, width * taps).set(cols.taps.weight);
  new Uint8Array(buffer, offsets.colAny, pitch).fill(0);
  new Uint8Array(buffer, offsets.columns, pitch).fill(1).fill(0, width); // the photo's columns, not the padding
  kernel.resize_rows(offsets.logits, rowsRead, stride, offsets.colIndex, offsets.colWeight, taps, width, pitch,
    offsets.across);
  kernel.threshold_rows(offsets.across, pitch, offsets.rowIndex, offsets.rowWeight, height, threshold, offsets.mask,
    offsets.rowAny, offsets.colAny, offsets.columns);
  const bytes = new Uint8Array(buffer, offsets.mask, height * pitch);
  const mask = new Uint8Array(height * width);
  if (pitch === width) mask.set(bytes);
  else for (let y = 0; y < height; y++) mask.set(bytes.subarray(y * pitch, y * pitch + width), y * width);
  const rowAny = new Uint8Array(buffer, offsets.rowAny, height);
  const colAny = new Uint8Array(buffer, offsets.colAny, width);
  const y0 = rowAny.indexOf(1);
  if (y0 < 0) return { mask, bbox: [width, height, 0, 0] };
  const bbox = [colAny.indexOf(1), y0, colAny.lastIndexOf(1) + 1, rowAny.lastIndexOf(1) + 1];
  return { mask, bbox };
}

/** The image-token rows (or columns) whose low-res logits an axis reads: 4 low-res pixels per token. */
function tokensRead(axis, tokens) {
  let last = 0;
  for (let k = 0; k < axis.index.length; k++) if (axis.weight[k] !== 0) last = Math.max(last, axis.index[k]);
  return Math.min(tokens, Math.floor(last / 4) + 1);
}

/** SamPredictor's choice: one click alone is ambiguous (best of the three multimask outputs), else token 0. */
export function usesMultimask(prompt) {
  return prompt.points.length === 1 && !prompt.box && !prompt.maskInput;
}

export class PageDecoder {
  /** Load onnxruntime-web and the decoder graphs; throws (with a reason) when WebAssembly or a graph cannot load. */
  static async load(graphs, headers, threads, low) {
    if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
    const ort = await import("./vendor/ort.wasm.min.mjs");
    await loadScaleKernel();
    ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.simd = true;
    const session = async (url) => {
      const response = await fetch(url, { headers });
      if (!response.ok) throw new Error(`the decoder model did not load (HTTP ${response.status})`);
      const model = new Uint8Array(await response.arrayBuffer());
      return ort.InferenceSession.create(model, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    };
    // sequentially: onnxruntime-web initialises its WebAssembly module on the first session
    const sessions = {};
    for (const name of ["image", "refine", "prompt", "rest"]) sessions[name] = await session(graphs[name]);
    const decoder = new PageDecoder(ort, sessions, threads);
    await decoder.warmUp(low);
    return decoder;
  }

  /** One run of each graph on zeros: a session's first run costs about twice a later one (its buffers are
   * allocated), so it is paid while the server computes the first embedding, not on the first hover. */
  async warmUp(low) {
    const grid = low / 4;
    const zeros = { data: new Float32Array(256 * grid * grid), shape: [1, 256, grid, grid] };
    // a photo a token row short of square: the rest graph has that row to compute
    await this.setImage(zeros, [PROMPT_FRAME - 16, PROMPT_FRAME], [low - 4, low], low);
    await this.decode({ points: [[0, 0, 1]], box: null, maskInput: null }, 0, { preview: true }); // prompt graph
    const click = await this.decode({ points: [[0, 0, 1]], box: null, maskInput: new Float32Array(low * low) });
    await click.lowRes; // the refine graph, then the rest graph
    this.side = null;
  }

  constructor(ort, sessions, threads) {
    this.ort = ort;
    this.sessions = sessions;
    this.threads = threads;
  }

  /** Use this image: its embedding and sizes (from the embedding response's headers); runs the image side. */
  async setImage(embedding, inputSize, originalSize, low) {
    this.embedding = new this.ort.Tensor("float32", embedding.data, embedding.shape);
    this.inputSize = inputSize;
    this.originalSize = originalSize;
    this.low = low;
    this.rows = resizeAxis(low, inputSize[0], originalSize[0]);
    this.cols = resizeAxis(low, inputSize[1], originalSize[1]);
    const grid = low / 4;
    this.extent = [tokensRead(this.rows, grid), tokensRead(this.cols, grid)]; // what a hover computes
    this.side = await this.sessions.image.run({ image_embeddings: this.embedding });
  }

  /** prompt: {points: [[x, y, label]], box: [x0, y0, x1, y1] | null, maskInput: Float32Array | Promise of one |
   * null} in image pixels -> {mask (Uint8Array HxW), bbox, score, lowRes, timing}. The mask needs the low-res
   * logits only where the photo reads them (``extent``), so that is all the prompt graph computes. ``lowRes``:
   * for a click, a Promise of this mask's whole low x low logits (the next click's mask prompt), whose other
   * tokens the rest graph computes once the caller has the mask (after a macrotask: the page paints first);
   * null for a ``preview`` (a hover). The image side prepared in setImage serves every prompt. */
  async decode(prompt, threshold = 0, { preview = false } = {}) {
    const [h, w] = this.originalSize;
    const sy = this.inputSize[0] / h;
    const sx = this.inputSize[1] / w;
    const coords = [];
    const labels = [];
    for (const [x, y, label] of prompt.points) {
      coords.push(x * sx, y * sy);
      labels.push(label);
    }
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      coords.push(x0 * sx, y0 * sy, x1 * sx, y1 * sy);
      labels.push(2, 3);
    } else {
      coords.push(0, 0);
      labels.push(-1);
    }
    const n = labels.length;
    const low = this.low;
    const [rows, cols] = this.extent;
    const maskInput = await prompt.maskInput; // a click's lowRes may still be on its way
    const feeds = {
      point_coords: new this.ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new this.ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      extent: new this.ort.Tensor("int64", BigInt64Array.of(BigInt(rows), BigInt(cols)), [2]),
      multimask: new this.ort.Tensor("float32", Float32Array.of(usesMultimask(prompt) ? 1 : 0), [1]),
    };
    if (maskInput) feeds.mask_input = new this.ort.Tensor("float32", maskInput, [1, 1, low, low]);
    const t0 = performance.now();
    // a mask prompt (the previous low-res logits, the whole grid): the refine graph, which masks the image side
    const fetches = preview ? MASK_OUTPUTS : [...MASK_OUTPUTS, ...REST_INPUTS];
    const out = await this.sessions[maskInput ? "refine" : "prompt"].run({ ...this.side, ...feeds }, fetches);
    const t1 = performance.now();
    const best = Number(out.mask_token.data[0]); // the graph's choice (see usesMultimask)
    const logits = out.low_res_masks.data;
    const lowCols = out.low_res_masks.dims[3];
    const { mask, bbox } = upscaleMask(logits, low, this.rows, this.cols, h, w, threshold, lowCols);
    const t2 = performance.now();
    const timing = { decoder: t1 - t0, upscale: t2 - t1 };
    const lowRes = preview ? null : this.wholeGrid(out, timing);
    return { mask, bbox, score: out.iou_predictions.data[best], lowRes, timing };
  }

  /** The whole low x low logits of a click's mask: the prompt graph's top-left part (``out.low_res_masks``) and,
   * from the rest graph, every other token's 4x4 block; ``timing.rest`` its milliseconds. */
  async wholeGrid(out, timing) {
    await new Promise((resolve) => setTimeout(resolve, 0)); // let the caller show the mask first
    const t0 = performance.now();
    const low = this.low;
    const grid = low / 4;
    const visible = out.low_res_masks.data;
    const [rows, cols] = out.low_res_masks.dims.slice(2).map((size) => size / 4); // the part's tokens
    const whole = new Float32Array(low * low);
    for (let y = 0; y < 4 * rows; y++) whole.set(visible.subarray(y * 4 * cols, (y + 1) * 4 * cols), y * low);
    const indices = restTokens(grid, rows, cols);
    if (indices.length) {
      const feeds = Object.fromEntries(REST_INPUTS.map((name) => [name, out[name]]));
      feeds.token_indices = new this.ort.Tensor("int64", indices, [indices.length]);
      const rest = (await this.sessions.rest.run(feeds)).rest_masks.data; // 4 rows of 4 x M logits
      const m = indices.length;
      for (let k = 0; k < m; k++) {
        const token = Number(indices[k]);
        const corner = 4 * Math.floor(token / grid) * low + 4 * (token % grid);
        for (let dy = 0; dy < 4; dy++) {
          for (let dx = 0; dx < 4; dx++) whole[corner + dy * low + dx] = rest[dy * 4 * m + 4 * k + dx];
        }
      }
    }
    timing.rest = performance.now() - t0;
    return whole;
  }
}

const MASK_OUTPUTS = ["low_res_masks", "iou_predictions", "mask_token"];
const REST_INPUTS = ["image_tokens", "tokens", "mask_token"]; // the prompt graph's outputs the rest graph reads

/** The image tokens outside the top-left rows x cols of a grid x grid grid, row-major (BigInt64Array). */
function restTokens(grid, rows, cols) {
  const indices = [];
  for (let t = 0; t < grid * grid; t++) if (Math.floor(t / grid) >= rows || t % grid >= cols) indices.push(BigInt(t));
  return BigInt64Array.from(indices);
}
