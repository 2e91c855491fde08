"""Zero-shot evaluation exactly as the EfficientViT-SAM paper: COCO/LVIS, GT boxes, clicks, detector boxes.

from evitsam import load_model
from evitsam.evaluation import evaluate

results = evaluate(load_model("l0"), "coco/val2017", "coco/annotations/instances_val2017.json", prompt="box")
results["miou"]  # {"all": ..., "large": ..., "medium": ..., "small": ...}, percent
"""

from .clicker import Click, Clicker
from .dataset import EvalDataset, EvalImage, load_detections
from .metrics import coco_mask_ap, lvis_mask_ap, mask_ious, miou_by_size
from .report import markdown_table, summary_line, write_results
from .runner import PROMPTS, evaluate, run_evaluation

__all__ = [
    "PROMPTS",
    "Click",
    "Clicker",
    "EvalDataset",
    "EvalImage",
    "coco_mask_ap",
    "evaluate",
    "load_detections",
    "lvis_mask_ap",
    "markdown_table",
    "mask_ious",
    "miou_by_size",
    "run_evaluation",
    "summary_line",
    "write_results",
]
