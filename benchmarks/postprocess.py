"""Mask post-processing (low-res logits -> thresholded masks at the photo's size): ours vs the official.

    python benchmarks/postprocess.py [--repeats 41] [--image PATH] [--threads N] [--json PATH]

The official ``postprocess_masks`` (two bilinear resizes through the padded 1024 frame) and then
``> mask_threshold``, against ours (one banded product per axis, thresholded in cache, constant tiles
filled without products). Inputs: real masks, i.e. the bundled model's low-res logits for a box (one
mask) and a point (three masks) on the photo, upsampled to an official model's 256 x 256; and noise
(logits ~ N(0, 5^2), an outline everywhere: the worst case for skipping tiles). Interleaved, medians;
the masks must be identical.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from efficientsam.sam_model_zoo import create_efficientvit_sam_model
from latency import DEFAULT_IMAGE, add_common_arguments, environment, parse_common_arguments, timed
from PIL import Image

import evitsam


def real_logits(image: np.ndarray) -> dict[str, torch.Tensor]:
    """The bundled model's low-res logits for a box and a point on ``image``, at 256 x 256."""
    predictor = evitsam.SamPredictor(evitsam.load_model())
    predictor.set_image(image)
    h, w = image.shape[:2]
    _, _, box = predictor.predict(box=np.array([w * 0.24, h * 0.5, w * 0.39, h * 0.73]), multimask_output=False)
    _, _, point = predictor.predict(point_coords=np.array([[w * 0.28, h * 0.31]]), point_labels=np.array([1]))
    size = (evitsam.models.sam.LOW_RES_MASK_SIZE,) * 2
    resize = lambda low: torch.nn.functional.interpolate(torch.from_numpy(low)[None], size, mode="bilinear")  # noqa: E731
    return {"real mask x1 (box)": resize(box), "real masks x3 (point)": resize(point)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, repeats=41, image=DEFAULT_IMAGE)
    args = parse_common_arguments(parser)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = image.shape[:2]
    ours = evitsam.build_model("l0").eval()
    official = create_efficientvit_sam_model("efficientvit-sam-l0", pretrained=False).eval()
    input_size = evitsam.transforms.get_preprocess_shape(h, w, 1024)
    generator = torch.Generator().manual_seed(0)
    inputs = real_logits(image)
    inputs["noise x1"] = torch.randn(1, 1, 256, 256, generator=generator) * 5
    inputs["noise x3"] = torch.randn(1, 3, 256, 256, generator=generator) * 5
    rows = []
    with torch.inference_mode():
        for name, low in inputs.items():
            fns = {
                "ours": lambda low=low: ours.postprocess_masks(low, input_size, (h, w), ours.mask_threshold),
                "official": lambda low=low: official.postprocess_masks(low, input_size, (h, w)) > 0.0,
            }
            times, outputs = {k: [] for k in fns}, {}
            for i in range(args.repeats):
                for side in fns if i % 2 == 0 else reversed(fns):
                    ms, _, outputs[side] = timed(fns[side], False)
                    times[side].append(ms)
            same = bool(torch.equal(outputs["ours"], outputs["official"]))
            agree = float((outputs["ours"] == outputs["official"]).float().mean())
            ours_ms, official_ms = statistics.median(times["ours"]), statistics.median(times["official"])
            rows.append(dict(input=name, ours_ms=ours_ms, official_ms=official_ms, identical=same, agreement=agree))
    env = environment()
    print(f"\nL0 post-processing to {w}x{h} ({args.image.name}), torch {env['torch']}, {env['threads']} threads")
    print("\n| input | ours ms | official ms | ratio | masks identical (pixel agreement) |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        ratio = r["ours_ms"] / r["official_ms"]
        print(
            f"| {r['input']} | {r['ours_ms']:.2f} | {r['official_ms']:.2f} | {ratio:.2f} "
            f"| {r['identical']} ({r['agreement']:.6f}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, rows=rows), indent=2))


if __name__ == "__main__":
    main()
