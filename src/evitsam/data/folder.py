"""A plain folder of images, without annotations: all that stage-1 distillation needs (the paper distils
the image encoder on SA-1B's images alone)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..io import image_suffixes
from .sample import Sample, SkippingDataset, read_rgb


def folder_images(root: Path) -> list[Path]:
    """Every file under ``root`` (recursively) with an extension Pillow reads, sorted by relative path;
    hidden files and folders (names starting with a dot) are left out."""
    suffixes = image_suffixes()
    files = [
        path
        for path in root.rglob("*")
        if path.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    ]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


class ImageFolder(SkippingDataset):
    """The images of a folder and its sub-folders, read with :func:`evitsam.io.read_image`; samples carry no
    masks. Unreadable files are skipped with a warning, as in the annotated datasets."""

    def __init__(self, root: str | Path, seed: int = 0) -> None:
        super().__init__(None, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = folder_images(self.root)
        if not self.files:
            raise ValueError(
                f"no image files in {self.root} or its sub-folders (extensions Pillow reads: .jpg .png ...)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index]

    def image_key(self, index: int) -> str:
        """The relative path with its folders percent-encoded (``a/1.jpg`` -> ``a%2F1.jpg``): unique, unlike
        the file stem, when sub-folders or extensions repeat a name."""
        return quote(self.files[index].relative_to(self.root).as_posix(), safe="")

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        image = read_rgb(self.files[index])
        empty = np.zeros((0, *image.shape[:2]), dtype=bool)
        return Sample(image, empty, np.zeros((0, 4), dtype=np.float32), self.image_key(index))
