"""CLEVR object masks as the seed derives them.

The seed's ``object_segmentations.pt`` is a list of float 0/1 masks ``[H, W]``, one per metadata
row; without it the seed computes each from its image: foreground = the pixels that are **not
grey**, grey meaning every pairwise difference of the R, G, B channels is at most 20. Each CLEVR
scene has one object, so that one mask is the mask of every concept present in the row (its
colour and its shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import MaskTruth, MetaRows, fit_mask
from .torchfile import load_row_list

SEGMENTATIONS = "object_segmentations.pt"
GREY_TOLERANCE = 20


def foreground(rgb: np.ndarray, tolerance: int = GREY_TOLERANCE) -> np.ndarray:
    """Pixels that are not grey: some pair of channels differs by more than ``tolerance``."""
    x = np.asarray(rgb, dtype=np.int16)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    grey = (np.abs(r - g) <= tolerance) & (np.abs(g - b) <= tolerance) & (np.abs(r - b) <= tolerance)
    return ~grey


class ClevrMaskFile(MaskTruth):
    """``object_segmentations.pt``: one object mask per row, memory-mapped (read row by row)."""

    def __init__(self, rows: MetaRows, path: Path):
        super().__init__("clevr-masks", [path])
        self.path = path
        self.items = load_row_list(path, len(rows), rows.source, "object mask")

    def _mask(self, row: int) -> np.ndarray:
        m = self.items[row]
        arr = m.numpy() if hasattr(m, "numpy") else np.asarray(m)
        if arr.ndim != 2:
            raise DatasetError(f"{self.path}: entry {row} (row {row + 2} of metadata.csv) has shape "
                               f"{tuple(arr.shape)}; expected a 2-D mask")
        return arr != 0

    def check_row(self, row: int, image_hw: tuple[int, int], where: str) -> None:
        shape = tuple(int(v) for v in self.items[row].shape)
        if len(shape) != 2:
            raise DatasetError(f"{self.path}: entry {row} ({where}) has shape {shape}; expected a 2-D mask")
        fit_mask(np.zeros(shape, dtype=bool), image_hw, f"{self.path}, entry {row} ({where})")

    def masks(self, row: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        m = self._mask(row)
        return {n: m for n in names}


class ClevrFromImages(MaskTruth):
    """Object masks computed from each row's image (the seed's rule), when no mask file is shipped."""

    def __init__(self, rows: MetaRows, tolerance: int = GREY_TOLERANCE):
        if rows.image_paths is None:
            raise DatasetError(f"{rows.source}: CLEVR masks need an image dataset")
        super().__init__("clevr-images", [rows.root / "<images>"])
        self.rows, self.tolerance = rows, tolerance

    def describe(self) -> str:
        return f"clevr-images (object = non-grey pixels of each image, tolerance {self.tolerance})"

    def masks(self, row: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        from PIL import Image

        path = self.rows.root / self.rows.image_paths[row]
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read image {path} (row {row + 2} of {self.rows.source}): {err}") from None
        m = foreground(rgb, self.tolerance)
        return {n: m for n in names}
