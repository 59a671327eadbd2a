"""What a ground-truth reader hands the loader: spans for text, a lazy mask provider for images.

Readers see the metadata through :class:`MetaRows` (row ``i`` of ``metadata.csv`` is sample ``i``
in every seed file) and raise :class:`~superactivators.data.errors.DatasetError` naming the file
and row when a file is missing, truncated or disagrees with the metadata. Image masks are read one
sample at a time (:meth:`MaskTruth.masks`), never all at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...util.files import regular_file_problem
from ..errors import DatasetError

Span = tuple[int, int]


@dataclass(frozen=True)
class MetaRows:
    """The parts of a loaded ``metadata.csv`` a reader checks its files against."""

    root: Path
    source: Path
    concepts: list[str]  # every 0/1 column of metadata.csv
    labels: np.ndarray  # [N, C] uint8, columns as ``concepts``
    splits: np.ndarray  # [N] str
    image_paths: list[str] | None = None
    text: Callable[[int], str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class GroundTruth:
    """A token-level ground-truth source found beside a dataset."""

    kind: str  # e.g. "seed-words", "coco", "clevr-masks"
    files: list[Path]
    unit: str = "pixels"  # what :meth:`amounts` counts

    def describe(self) -> str:
        names = ", ".join(str(f) for f in self.files[:3]) + (" ..." if len(self.files) > 3 else "")
        return f"{self.kind} ({names})"

    def amounts(self, rows: Sequence[int], concepts: Sequence[str], labels: np.ndarray) -> pd.DataFrame:
        """Per concept: positives with truth and in-concept words / pixels over ``rows``."""
        raise NotImplementedError


@dataclass
class TextTruth(GroundTruth):
    """Character spans per metadata row (concept -> spans), from word-level annotations.

    A row that has annotations lists every annotated concept (an empty list: known, no word);
    a row without any is absent, so its positives fall back to sample-level truth.
    """

    spans: list[dict[str, list[Span]]] = field(default_factory=list)
    labels: np.ndarray | None = None  # [N, len(label_concepts)] sample labels from the truth files
    label_concepts: list[str] = field(default_factory=list)
    unit: str = "words"

    def amounts(self, rows: Sequence[int], concepts: Sequence[str], labels: np.ndarray) -> pd.DataFrame:
        out = []
        for j, c in enumerate(concepts):
            pos = [r for r, lab in zip(rows, labels[:, j]) if lab]
            known = [r for r in pos if c in self.spans[r]]
            out.append((c, len(pos), len(known), sum(len(self.spans[r][c]) for r in known)))
        return pd.DataFrame(out, columns=["concept", "positives", "with_truth", self.unit]).set_index("concept")


class MaskTruth(GroundTruth):
    """Per-row concept masks read lazily; subclasses implement :meth:`masks`."""

    def masks(self, row: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Boolean masks (native resolution) of those ``names`` this source has for ``row``."""
        raise NotImplementedError

    def check_row(self, row: int, image_hw: tuple[int, int], where: str) -> None:
        """Cheap check (sizes, file headers) that the row's masks fit its ``image_hw`` image.

        Called for every sample before any model loads; an error names the file and row.
        """

    def areas(self, row: int, names: Sequence[str]) -> dict[str, int]:
        """In-concept pixels of the row's concepts that have a mask (at mask resolution)."""
        return {k: int(np.count_nonzero(m)) for k, m in self.masks(row, names).items() if m is not None}

    def amounts(self, rows: Sequence[int], concepts: Sequence[str], labels: np.ndarray) -> pd.DataFrame:
        """Per concept: positives, positives with a mask, and their in-concept pixels."""
        n_known = np.zeros(len(concepts), dtype=np.int64)
        pixels = np.zeros(len(concepts), dtype=np.int64)
        for r, lab in zip(rows, labels):
            cols = np.flatnonzero(lab)
            if not cols.size:
                continue
            got = self.areas(int(r), [concepts[c] for c in cols])
            for c in cols:
                if concepts[c] in got:
                    n_known[c] += 1
                    pixels[c] += got[concepts[c]]
        return pd.DataFrame({"positives": labels.sum(axis=0).astype(np.int64), "with_truth": n_known,
                             self.unit: pixels}, index=pd.Index(list(concepts), name="concept"))


def fit_mask(mask: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    """``mask`` at image size ``shape``: as is, or repeated by a whole factor (Broden: 112 -> 224).

    Any other size is an error naming ``where`` (file and row): the mask belongs to another image.
    """
    m = np.asarray(mask)
    if m.shape == tuple(shape):
        return m
    h, w = m.shape
    H, W = shape
    if h and w and H % h == 0 and W % w == 0 and H // h == W // w:
        k = H // h
        return np.repeat(np.repeat(m, k, axis=0), k, axis=1)
    raise DatasetError(f"{where}: mask is {w}x{h} but the image is {W}x{H} (mask size mismatch)")


def binary_frame(df: pd.DataFrame, cols: Iterable[str], path: Path, line_offset: int = 2) -> np.ndarray:
    """0/1 columns of a CSV as ``uint8 [rows, cols]``; another value is an error naming row and column."""
    cols = list(cols)
    if not cols:
        return np.zeros((len(df), 0), dtype=np.uint8)
    raw = df[cols].astype(str).apply(lambda s: s.str.strip())
    ones, zeros = raw.isin(["1", "1.0"]), raw.isin(["0", "0.0"])
    bad = ~(ones | zeros).to_numpy()
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        raise DatasetError(f"{path}: row {r + line_offset}, column {cols[c]!r}: expected 0 or 1, "
                           f"got {df[cols[c]].iloc[r]!r}")
    return ones.to_numpy(dtype=np.uint8)


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """A ground-truth CSV as strings; missing or unparsable files are errors naming them."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {os.path.abspath(path)}")
    why = regular_file_problem(path)  # a FIFO would block the read
    if why is not None:
        raise DatasetError(f"{what} {path} {why}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot parse {what}: {err}") from None
