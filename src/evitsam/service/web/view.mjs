// Drawing: the current mask, accepted objects, segment-everything masks and the prompts, over the image.

export const COLORS = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [128, 0, 0],
];

export function sizeCanvases(width, height) {
  for (const id of ["objects-layer", "everything-layer", "mask-layer"]) {
    const canvas = document.getElementById(id);
    canvas.width = width;
    canvas.height = height;
  }
  document.getElementById("prompts-layer").setAttribute("viewBox", `0 0 ${width} ${height}`);
}

/** Paint masks (row-major Uint8Array, each with an [r, g, b] colour and optionally the [x0, y0, x1, y1) box that
 * holds its pixels) onto a canvas, with their outlines; only the masks' boxes are written. */
export function paintMasks(canvasId, masks, alpha = 110) {
  const canvas = document.getElementById(canvasId);
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const boxes = masks.map((m) => m.bbox || [0, 0, width, height]);
  if (!masks.length || boxes.every((b) => b[2] <= b[0])) return;
  const [bx0, by0] = [Math.min(...boxes.map((b) => b[0])), Math.min(...boxes.map((b) => b[1]))];
  const [bx1, by1] = [Math.max(...boxes.map((b) => b[2])), Math.max(...boxes.map((b) => b[3]))];
  const w = bx1 - bx0;
  const image = context.createImageData(w, by1 - by0);
  const pixels = new Uint32Array(image.data.buffer);
  masks.forEach(({ mask, color }, n) => {
    const fill = (alpha << 24) | (color[2] << 16) | (color[1] << 8) | color[0];
    const edge = (255 << 24) | (color[2] << 16) | (color[1] << 8) | color[0];
    const [x0, y0, x1, y1] = boxes[n];
    for (let y = y0; y < y1; y++) {
      const row = y * width;
      for (let x = x0; x < x1; x++) {
        const i = row + x;
        if (!mask[i]) continue;
        const border = x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
          !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
        pixels[(y - by0) * w + x - bx0] = border ? edge : fill;
      }
    }
  });
  context.putImageData(image, bx0, by0);
}

/** Points (green positive, red negative) and the box, in image pixels. */
export function drawPrompts(points, box, hover, radius) {
  const svg = document.getElementById("prompts-layer");
  const parts = [];
  if (box) {
    const [x0, y0, x1, y1] = box;
    parts.push(`<rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" fill="none" stroke="#36f" stroke-width="${radius / 3}"/>`);
  }
  for (const [x, y, label] of points) {
    const color = label ? "#1a1" : "#d11";
    parts.push(`<circle cx="${x}" cy="${y}" r="${radius}" fill="${color}" stroke="#fff" stroke-width="${radius / 3}"/>`);
  }
  if (hover) parts.push(`<circle cx="${hover[0]}" cy="${hover[1]}" r="${radius * 0.6}" fill="none" stroke="#fff"/>`);
  svg.innerHTML = parts.join("");
}

/** The image with every object painted over it, as a PNG blob (the overlay export). */
export async function overlayBlob(img, objectMasks) {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  context.drawImage(document.getElementById("objects-layer"), 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

/** One mask as a black-and-white PNG blob at the image's size. */
export async function maskBlob(mask, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const pixels = new Uint32Array(image.data.buffer);
  for (let i = 0; i < mask.length; i++) pixels[i] = mask[i] ? 0xffffffff : 0xff000000;
  context.putImageData(image, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

export function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
