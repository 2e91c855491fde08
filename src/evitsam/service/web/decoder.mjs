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

/** Runs of consecutive outputs that read the same low-res inputs, 4 numbers each in one Int32Array:
 * first, end, lowest input, highest input. */
function readGroups(axis, size) {
  const groups = [];
  for (let o = 0; o < size; o++) {
    let lo = Infinity;
    let hi = -1;
    for (let k = 0; k < 4; k++) {
      if (axis.weight[o * 4 + k] !== 0) {
        lo = Math.min(lo, axis.index[o * 4 + k]);
        hi = Math.max(hi, axis.index[o * 4 + k]);
      }
    }
    const last = groups[groups.length - 1];
    if (last && last[2] === lo && last[3] === hi) last[1] = o + 1;
    else groups.push([o, o + 1, lo, hi]);
  }
  return Int32Array.from(groups.flat());
}

/** The taps of each output with a weight, in order: {count: per output, index, weight: 4 slots per output}. */
function nonzeroTaps(axis, size) {
  const count = new Uint8Array(size);
  const index = new Int32Array(size * 4);
  const weight = new Float64Array(size * 4);
  for (let o = 0; o < size; o++) {
    for (let k = 0; k < 4; k++) {
      const w = axis.weight[o * 4 + k];
      if (w === 0) continue;
      index[o * 4 + count[o]] = axis.index[o * 4 + k];
      weight[o * 4 + count[o]++] = w;
    }
  }
  return { count, index, weight };
}

/** Each output's weights on the inputs lowest, lowest + 1, .. lowest + 3 of its read group (0 where none). */
function groupWeights(axis, groups) {
  const dense = new Float64Array((axis.index.length / 4) * 4);
  for (let g = 0; g < groups.length; g += 4) {
    for (let o = groups[g]; o < groups[g + 1]; o++) {
      for (let k = 0; k < 4; k++) {
        const w = axis.weight[o * 4 + k];
        if (w !== 0) dense[o * 4 + axis.index[o * 4 + k] - groups[g + 2]] += w;
      }
    }
  }
  return dense;
}

/** Low-res logits (one mask, rows of ``stride`` values: the top-left part of the low x low grid that the resize
 * reads, or all of it) -> {mask: row-major Uint8Array at the original size (logits > threshold),
 * bbox: [x0, y0, x1, y1) of the pixels set}. Each output is a convex combination of at most 4x4 low-res
 * logits. Outputs come in blocks that read the same low-res inputs (a row group by a column group): a block
 * whose inputs all lie on one side of the threshold is filled (or skipped) without computing it. Otherwise each
 * low-res row is first resized along x once (``across``), then, over runs of adjacent mixed blocks, each column
 * of a row group is read once for all the group's output rows (a few products a pixel, not 16). */
export function upscaleMask(logits, low, rows, cols, height, width, threshold = 0, stride = low) {
  rows.groups ||= readGroups(rows, height);
  cols.groups ||= readGroups(cols, width);
  rows.dense ||= groupWeights(rows, rows.groups);
  cols.taps ||= nonzeroTaps(cols, width);
  if (!cols.across || cols.across.length !== low * width) cols.across = new Float64Array(low * width);
  const across = cols.across;
  const done = new Uint8Array(low); // low-res rows already resized along x in this call
  const resizeRow = (r) => {
    const { count, index, weight } = cols.taps;
    const src = r * stride;
    const out = r * width;
    for (let x = 0; x < width; x++) {
      const cx = x * 4;
      let sum = 0;
      for (let j = 0; j < count[x]; j++) sum += weight[cx + j] * logits[src + index[cx + j]];
      across[out + x] = sum;
    }
    done[r] = 1;
  };
  const mask = new Uint8Array(height * width);
  const bbox = [width, height, 0, 0];
  const groups = cols.groups;
  const count = groups.length / 4;
  const kinds = new Uint8Array(count); // per block of this row group: 0 all below, 1 all above, 2 mixed
  // per low-res row and column group, the lowest and highest logit it reads: a block's are those of its rows
  const rowMin = new Float32Array(low * count);
  const rowMax = new Float32Array(low * count);
  const extremesDone = new Uint8Array(low);
  const rowExtremes = (r) => {
    for (let g = 0; g < count; g++) {
      const first = r * stride + groups[4 * g + 2];
      let min = logits[first];
      let max = min;
      for (let c = first + 1, last = r * stride + groups[4 * g + 3]; c <= last; c++) {
        const v = logits[c];
        if (v < min) min = v;
        if (v > max) max = v;
      }
      rowMin[r * count + g] = min;
      rowMax[r * count + g] = max;
    }
    extremesDone[r] = 1;
  };
  const dense = rows.dense;
  for (let k = 0; k < rows.groups.length; k += 4) {
    const y0 = rows.groups[k], y1 = rows.groups[k + 1], r0 = rows.groups[k + 2], r1 = rows.groups[k + 3];
    for (let r = r0; r <= r1; r++) if (!extremesDone[r]) rowExtremes(r);
    let anyMixed = false;
    let anyAbove = false;
    for (let g = 0; g < count; g++) {
      let min = rowMin[r0 * count + g];
      let max = rowMax[r0 * count + g];
      for (let r = r0 + 1; r <= r1; r++) {
        const lo = rowMin[r * count + g], hi = rowMax[r * count + g];
        if (lo < min) min = lo;
        if (hi > max) max = hi;
      }
      kinds[g] = max <= threshold ? 0 : min > threshold ? 1 : 2;
      anyMixed ||= kinds[g] === 2;
      anyAbove ||= kinds[g] !== 0;
    }
    if (!anyAbove) continue;
    if (anyMixed) for (let r = r0; r <= r1; r++) if (!done[r]) resizeRow(r);
    // the group's low-res rows (up to 4; past the last, any row with weight 0)
    const a0 = r0 * width, a1 = Math.min(r0 + 1, r1) * width;
    const a2 = Math.min(r0 + 2, r1) * width, a3 = Math.min(r0 + 3, r1) * width;
    for (let g = 0; g < count; ) {
      const kind = kinds[g];
      const x0 = groups[4 * g];
      while (g < count && kinds[g] === kind) g++;
      const x1 = groups[4 * g - 3];
      if (kind === 0) continue;
      let any = kind === 1;
      for (let y = y0; y < y1; y++) {
        const out = y * width;
        if (kind === 1) {
          mask.fill(1, out + x0, out + x1);
          continue;
        }
        const w0 = dense[y * 4], w1 = dense[y * 4 + 1], w2 = dense[y * 4 + 2], w3 = dense[y * 4 + 3];
        for (let x = x0; x < x1; x++) {
          const v = w0 * across[a0 + x] + w1 * across[a1 + x] + w2 * across[a2 + x] + w3 * across[a3 + x];
          if (v > threshold) {
            mask[out + x] = 1;
            any = true;
          }
        }
      }
      if (any) {
        bbox[0] = Math.min(bbox[0], x0);
        bbox[1] = Math.min(bbox[1], y0);
        bbox[2] = Math.max(bbox[2], x1);
        bbox[3] = Math.max(bbox[3], y1);
      }
    }
  }
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
    for (const name of ["image", "refine", "prompt"]) sessions[name] = await session(graphs[name]);
    const decoder = new PageDecoder(ort, sessions, threads);
    await decoder.warmUp(low);
    return decoder;
  }

  /** One run of each graph on zeros: a session's first run costs about twice a later one (its buffers are
   * allocated), so it is paid while the server computes the first embedding, not on the first hover. */
  async warmUp(low) {
    const grid = low / 4;
    const zeros = { data: new Float32Array(256 * grid * grid), shape: [1, 256, grid, grid] };
    await this.setImage(zeros, [1024, 1024], [low, low], low);
    await this.decode({ points: [[0, 0, 1]], box: null, maskInput: null }, 0, { preview: true }); // prompt graph
    await this.decode({ points: [[0, 0, 1]], box: null, maskInput: new Float32Array(low * low) }); // refine graph
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

  /** prompt: {points: [[x, y, label]], box: [x0, y0, x1, y1] | null, maskInput: Float32Array | null} in image
   * pixels -> {mask (Uint8Array HxW), bbox, score, lowRes (Float32Array, this mask's low x low logits, for the
   * next prompt; null for a preview)}. ``preview`` (a hover): logits only where the photo reads them, not the
   * whole grid a later mask prompt needs. The image side prepared in setImage serves every prompt. */
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
    const [rows, cols] = preview ? this.extent : [low / 4, low / 4];
    const feeds = {
      point_coords: new this.ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new this.ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      extent: new this.ort.Tensor("int64", BigInt64Array.of(BigInt(rows), BigInt(cols)), [2]),
      multimask: new this.ort.Tensor("float32", Float32Array.of(usesMultimask(prompt) ? 1 : 0), [1]),
    };
    if (prompt.maskInput) feeds.mask_input = new this.ort.Tensor("float32", prompt.maskInput, [1, 1, low, low]);
    const t0 = performance.now();
    // a mask prompt (the previous low-res logits, the whole grid): the refine graph, which masks the image side
    const out = await this.sessions[prompt.maskInput ? "refine" : "prompt"].run({ ...this.side, ...feeds });
    const t1 = performance.now();
    const best = Number(out.mask_token.data[0]); // the graph's choice (see usesMultimask)
    const logits = out.low_res_masks.data;
    const lowCols = out.low_res_masks.dims[3];
    const { mask, bbox } = upscaleMask(logits, low, this.rows, this.cols, h, w, threshold, lowCols);
    const t2 = performance.now();
    const lowRes = preview ? null : logits;
    return { mask, bbox, score: out.iou_predictions.data[best], lowRes, timing: { decoder: t1 - t0, upscale: t2 - t1 } };
  }
}
