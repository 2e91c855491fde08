"""The one table of EfficientViT-SAM variants: name -> architecture, encoder size, weights file."""

from __future__ import annotations

from dataclasses import dataclass

from .models import BackboneConfig, EfficientViTSam, SamConfig

HF_REPO = "mit-han-lab/efficientvit-sam"
# The model ``load_model()`` and every CLI command use when none is named: small, trained by our own
# pipeline, shipped in the package, so a first command works offline (docs/model_card.md).
DEFAULT_VARIANT = "nano"
BUNDLED_FILE = "nano.safetensors"
BUNDLED_SHA256 = "e461d37d6f78f546b7d2861c3a33e2a1aace0ab5d61274e9f631ce9f82227a8e"

_L_WIDTHS = (32, 64, 128, 256, 512)
_L_TYPES = ("res", "fmb", "fmb", "mb", "att@5")
_L_EXPANDS = (1, 4, 4, 4, 6)
_XL_WIDTHS = (32, 64, 128, 256, 512, 1024)
_XL_TYPES = ("res", "fmb", "fmb", "fmb", "att@3", "att@3")
_XL_EXPANDS = (1, 4, 4, 4, 4, 6)


@dataclass(frozen=True)
class Variant:
    config: SamConfig
    num_params: int | None = None  # exact count of the official model, checked by the tests
    weights_file: str | None = None  # file name in the Hugging Face repo
    sha256: str | None = None
    bundled_file: str | None = None  # file name in evitsam/assets/: weights shipped inside the package
    # (pred_iou_thresh, stability_score_thresh) that `evitsam everything` uses for this model when not
    # given: SAM's 0.88 / 0.95 suit the official models; a small model's IoU head predicts lower.
    everything_thresholds: tuple[float, float] = (0.88, 0.95)

    @property
    def name(self) -> str:
        return self.config.name


def _l(name: str, depths: tuple[int, ...], neck_depth: int) -> SamConfig:
    return SamConfig(name, BackboneConfig(_L_WIDTHS, depths, _L_TYPES, _L_EXPANDS), (4, 3, 2), neck_depth, 1, 512)


def _xl(name: str, depths: tuple[int, ...], neck_depth: int) -> SamConfig:
    return SamConfig(name, BackboneConfig(_XL_WIDTHS, depths, _XL_TYPES, _XL_EXPANDS), (5, 4, 3), neck_depth, 4, 1024)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(_l("l0", (1, 1, 1, 4, 4), 4), 34_792_784, "efficientvit_sam_l0.pt"),
        Variant(_l("l1", (1, 1, 1, 6, 6), 8), 47_650_128, "efficientvit_sam_l1.pt"),
        Variant(_l("l2", (1, 2, 2, 8, 8), 12), 61_328_592, "efficientvit_sam_l2.pt"),
        Variant(_xl("xl0", (0, 1, 1, 2, 3, 3), 6), 116_957_904, "efficientvit_sam_xl0.pt"),
        Variant(_xl("xl1", (1, 2, 2, 4, 6, 6), 12), 203_346_128, "efficientvit_sam_xl1.pt"),
        # Same architecture family, reduced widths/depths, a 256 px encoder and a 32x32 embedding
        # grid (stride 8, like L models at 512 px): the SAM decoder then costs ~1/10 of its 64x64
        # self, so this trains on 2 CPU cores; used by the tests. SAM's prompt encoder/decoder kept.
        Variant(
            SamConfig(
                "tiny",
                BackboneConfig((8, 16, 32, 64, 128), (0, 1, 1, 1, 1), _L_TYPES, (1, 2, 2, 2, 2)),
                (4, 3, 2),
                1,
                1,
                256,
                embed_size=32,
            )
        ),
        # The bundled default model: trained by our own pipeline on synthetic scenes and COCO
        # train2017 cut-outs (configs/nano.yaml, docs/model_card.md); 5.0 M encoder parameters, 256 px encoder,
        # 32x32 grid, SAM's prompt encoder and decoder. Ships in the package as fp16 safetensors.
        Variant(
            SamConfig(
                "nano",
                BackboneConfig((16, 32, 64, 128, 256), (0, 1, 1, 2, 2), _L_TYPES, (1, 4, 4, 4, 4)),
                (4, 3, 2),
                2,
                1,
                256,
                embed_size=32,
            ),
            bundled_file=BUNDLED_FILE,
            sha256=BUNDLED_SHA256,
            # its IoU head rarely predicts above 0.7 and its logits are soft: SAM's 0.88 / 0.95 keep no mask;
            # these keep 30-70 masks on the demo photos at 32x32 (docs/model_card.md)
            everything_thresholds=(0.5, 0.4),
        ),
    ]
}


def get_variant(name: str) -> Variant:
    """Look a variant up by ``l0`` or ``efficientvit-sam-l0`` style names (case-insensitive)."""
    if not isinstance(name, str):
        raise ValueError(f"variant must be a string such as 'l0', got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = key.removeprefix("efficientvit-sam-")
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def build_model(name: str) -> EfficientViTSam:
    """A randomly initialised model of the named variant, in eval mode."""
    return EfficientViTSam(get_variant(name).config).eval()
