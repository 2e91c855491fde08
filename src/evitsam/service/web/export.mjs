// Export: COCO instances JSON (this image, or the whole folder from the server), a PNG per mask, an overlay image.
import { request } from "./api.mjs";
import { download, maskBlob, overlayBlob } from "./view.mjs";

/** COCO instances JSON of the page's objects on the current image (COCO compressed RLE masks). */
export function cocoDocument(state) {
  const { width, height, name } = state.image;
  const labels = [...new Set(state.objects.map((o) => o.label))].sort();
  return {
    images: [{ id: 1, file_name: name, width, height }],
    categories: labels.map((label, i) => ({ id: i + 1, name: label })),
    annotations: state.objects.map((o, i) => ({
      id: i + 1, image_id: 1, category_id: labels.indexOf(o.label) + 1, segmentation: { size: [height, width], counts: o.counts },
      area: o.area, bbox: o.bbox, iscrowd: 0, score: o.score,
    })),
  };
}

/** kind: "coco" | "coco-folder" | "png" | "overlay"; throws an Error with one sentence when it cannot. */
export async function exportAs(state, kind) {
  if (!state.image && kind !== "coco-folder") throw new Error("Open an image first.");
  const stem = state.image ? state.image.name.replace(/\.[^.]+$/, "").replace(/[\\/]/g, "_") : "folder";
  if (kind === "coco") download(new Blob([JSON.stringify(cocoDocument(state))], { type: "application/json" }), `${stem}.coco.json`);
  if (kind === "coco-folder") {
    if (!state.folder) throw new Error("The whole-folder export needs folder mode (evitsam serve --images DIR).");
    download(await (await request("/v1/folder/coco")).blob(), `${state.folder.name}.coco.json`);
  }
  if (kind === "png") {
    const target = state.selected || state.current;
    if (!target) throw new Error("Select an object (or make a mask) to export it as a PNG.");
    download(await maskBlob(target.mask, state.image.width, state.image.height), `${stem}.${target.label || "mask"}.png`);
  }
  if (kind === "overlay") download(await overlayBlob(document.getElementById("image")), `${stem}.overlay.png`);
}
