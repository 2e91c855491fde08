"""Dataset-scale labelling: a detector's boxes (or "everything") to instance masks for a whole image
collection, on one process or sharded over ``torchrun`` processes and machines, resumable, merged into
one COCO instances JSON. See docs/labelling.md.
"""

from .inputs import Collection, ImageEntry, load_collection, load_detections
from .parts import failures_path_for, merge, parts_dir_for
from .runner import LabelSettings, label_images

__all__ = [
    "Collection",
    "ImageEntry",
    "LabelSettings",
    "failures_path_for",
    "label_images",
    "load_collection",
    "load_detections",
    "merge",
    "parts_dir_for",
]
