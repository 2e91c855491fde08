"""Segment everything: SAM's automatic mask generator, made fast, and its runs over image files and folders.

* ``generator.py``: :class:`MaskGenerator` (SAM's ``SamAutomaticMaskGenerator``: same options and records);
* ``candidates.py``: the table of masks kept so far, through the generator's filters;
* ``mask_ops.py``: operations on batches of masks: point grids, crops, stability scores, boxes, NMS, RLE
  (segment-anything's ``utils/amg.py``, vectorised);
* ``folders.py``: one image or a folder to mask files, resumable (``evitsam everything``).
"""

from .generator import MaskGenerator

__all__ = ["MaskGenerator"]
