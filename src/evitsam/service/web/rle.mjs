// COCO run-length encoding of binary masks (column-major, first run = zeros), as pycocotools writes it.

/** Row-major Uint8Array mask (height x width) -> COCO compressed RLE string. */
export function encodeMask(mask, height, width) {
  const counts = [];
  let previous = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const value = mask[y * width + x] ? 1 : 0;
      if (value !== previous) {
        counts.push(run);
        run = 0;
        previous = value;
      }
      run++;
    }
  }
  counts.push(run);
  return countsToString(counts);
}

/** COCO compressed RLE string -> row-major Uint8Array mask (height x width). */
export function decodeMask(text, height, width) {
  const counts = stringToCounts(text);
  const mask = new Uint8Array(height * width);
  let position = 0;
  let value = 0;
  for (const run of counts) {
    if (value) {
      let x = Math.floor(position / height);
      let y = position - x * height;
      for (let k = 0; k < run; k++) {
        mask[y * width + x] = 1;
        if (++y === height) {
          y = 0;
          x++;
        }
      }
    }
    position += run;
    value = 1 - value;
  }
  return mask;
}

export function countsToString(counts) {
  let text = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      text += String.fromCharCode(c + 48);
    }
  }
  return text;
}

export function stringToCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** Area and [x, y, w, h] box of a row-major mask. */
export function maskStats(mask, height, width) {
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      if (mask[row + x]) {
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return { area, bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0] };
}
