"""Broden (Pascal, OpenSurfaces) masks: the seed's ``segmentations.pt`` or the raw Broden release.

``segmentations.pt`` (what the seed reads): a list indexed by metadata row of ``{concept: mask}``
dicts (tensor or array, any nonzero = in concept). Its resolution is not documented; a mask at
the image size or at a whole-factor fraction of it (Broden's 112-px segmentations of 224-px
images) is accepted, anything else is a size mismatch.

Raw Broden (``broden1_224`` and the like, NetDissect's format): ``index.csv``
(``image,split,ih,iw,sh,sw,color,object,part,material,scene,texture``; pixel categories hold PNG
names relative to ``images/``, ``part`` may hold several ``;``-joined planes, ``scene`` / ``texture``
hold image-level label numbers), ``label.csv`` (``number,name,category,...``), ``category.csv`` and
``c_<category>.csv`` (``code,number,name,...``, a per-category recoding used here only to check that
a label belongs to its category). A PNG pixel stores the global label number as ``R + 256 * G``.
The seed's concept ``category::name`` of a row is the union over the row's ``category`` planes
of the pixels equal to ``name``'s number. ``scene`` / ``texture`` concepts have no pixels (they
fall back to sample-level truth).

Looked for, in order: the dataset folder itself, ``broden*/`` inside it, ``broden*/`` beside it.
Metadata ``image_path`` values are the paths inside Broden's ``images/`` (``pascal/2008_006841.jpg``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import MaskTruth, MetaRows, fit_mask, read_csv
from .torchfile import load_row_list

SEGMENTATIONS = "segmentations.pt"
PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")


def broden_release(root: Path) -> Path | None:
    """The folder of a raw Broden release (holding ``index.csv`` and ``label.csv``) for ``root``."""
    cands = [root, *sorted(root.glob("broden*")), *sorted(root.parent.glob("broden*"))]
    for d in cands:
        if d.is_dir() and (d / "index.csv").exists() and (d / "label.csv").exists():
            return d
    return None


class BrodenSegmentations(MaskTruth):
    """The seed's ``segmentations.pt``: ``{concept: mask}`` per metadata row, memory-mapped."""

    def __init__(self, rows: MetaRows, path: Path):
        super().__init__("broden-segmentations", [path])
        self.path, self.rows = path, rows
        self.items = load_row_list(path, len(rows), rows.source, "segmentation")
        known = set(rows.concepts)
        for r, d in enumerate(self.items):
            if not isinstance(d, dict):
                raise DatasetError(f"{path}: entry {r} (row {r + 2} of {rows.source}) is a "
                                   f"{type(d).__name__}; expected a dict concept -> mask")
            bad = [k for k in d if k not in known]
            if bad:
                raise DatasetError(f"{path}: entry {r} (row {r + 2} of {rows.source}): concept(s) {bad[:5]} "
                                   "are not columns of metadata.csv (unknown concept)")

    def check_row(self, row: int, image_hw: tuple[int, int], where: str) -> None:
        for n, m in self.items[row].items():
            shape = tuple(int(v) for v in m.shape)
            if len(shape) != 2:
                raise DatasetError(f"{self.path}: entry {row} ({where}), concept {n!r}: mask of shape {shape}; "
                                   "expected 2-D")
            fit_mask(np.zeros(shape, dtype=bool), image_hw, f"{self.path}, entry {row} ({where}), concept {n!r}")

    def masks(self, row: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        d = self.items[row]
        out = {}
        for n in names:
            if n in d:
                m = d[n]
                arr = m.numpy() if hasattr(m, "numpy") else np.asarray(m)
                if arr.ndim != 2:
                    raise DatasetError(f"{self.path}: entry {row} (row {row + 2} of {self.rows.source}), "
                                       f"concept {n!r}: mask of shape {tuple(arr.shape)}; expected 2-D")
                out[n] = arr != 0
        return out


class BrodenRelease(MaskTruth):
    """Masks decoded from a raw Broden release's segmentation PNGs, one row at a time."""

    def __init__(self, rows: MetaRows, folder: Path):
        if rows.image_paths is None:
            raise DatasetError(f"{rows.source}: Broden masks need an image dataset")
        super().__init__("broden-release", [folder / "index.csv", folder / "label.csv"])
        self.rows, self.folder, self.images = rows, folder, folder / "images"
        index = read_csv(folder / "index.csv", "Broden index")
        for col in ("image", "sh", "sw", "ih", "iw"):
            if col not in index.columns:
                raise DatasetError(f"{folder / 'index.csv'}: missing column {col!r}")
        labels = read_csv(folder / "label.csv", "Broden label table")
        for col in ("number", "name"):
            if col not in labels.columns:
                raise DatasetError(f"{folder / 'label.csv'}: missing column {col!r}")
        number = {}
        for r, (num, name) in enumerate(zip(labels["number"], labels["name"])):
            try:
                number.setdefault(name, int(num))
            except ValueError:
                raise DatasetError(f"{folder / 'label.csv'}: row {r + 2}, column 'number': {num!r}") from None
        # concept -> (category, label number); image-level categories are not covered
        self.concept_label: dict[str, tuple[str, int]] = {}
        for c in rows.concepts:
            cat, sep, name = c.partition("::")
            if not sep:
                raise DatasetError(f"{rows.source}: concept column {c!r} is not 'category::label' "
                                   "(Broden columns name their category)")
            if cat in IMAGE_CATEGORIES:
                continue
            if cat not in PIXEL_CATEGORIES or cat not in index.columns:
                raise DatasetError(f"{rows.source}: concept {c!r}: category {cat!r} is not a pixel category "
                                   f"of {folder / 'index.csv'} (unknown concept)")
            if name not in number:
                raise DatasetError(f"{rows.source}: concept {c!r}: label {name!r} is not in "
                                   f"{folder / 'label.csv'} (unknown concept)")
            self._check_category(cat, name, folder)
            self.concept_label[c] = (cat, number[name])
        # metadata row -> index row
        pos = {p: i for i, p in enumerate(index["image"].str.strip())}
        self.index_row: list[int] = []
        for r, p in enumerate(rows.image_paths):
            key = p.strip().removeprefix("images/")
            if key not in pos:
                raise DatasetError(f"{rows.source}: row {r + 2}: image {p!r} is not in {folder / 'index.csv'} "
                                   "(unknown sample)")
            self.index_row.append(pos[key])
        self.index = index

    def _check_category(self, cat: str, name: str, folder: Path) -> None:
        table = folder / f"c_{cat}.csv"
        if not table.exists():
            return
        if not hasattr(self, "_cat_names"):
            self._cat_names: dict[str, set[str]] = {}
        if cat not in self._cat_names:
            self._cat_names[cat] = set(read_csv(table, f"Broden {cat} table").get("name", []))
        if name not in self._cat_names[cat]:
            raise DatasetError(f"{self.rows.source}: concept '{cat}::{name}': label {name!r} is not in "
                               f"{table} (unknown concept)")

    def check_row(self, row: int, image_hw: tuple[int, int], where: str) -> None:
        from PIL import Image

        r = self.index_row[row]
        seg = (int(self.index["sh"].iloc[r]), int(self.index["sw"].iloc[r]))
        fit_mask(np.zeros(seg, dtype=bool), image_hw, f"{self.folder / 'index.csv'}, row {r + 2} ({where})")
        for cat in sorted({c for c, _ in self.concept_label.values()}):
            for plane in filter(None, (p.strip() for p in str(self.index[cat].iloc[r]).split(";"))):
                path = self.images / plane
                try:
                    with Image.open(path) as im:
                        hw = (im.height, im.width)
                except FileNotFoundError:
                    raise DatasetError(f"Broden segmentation not found: {os.path.abspath(path)} ({where})") from None
                except (OSError, ValueError) as err:
                    raise DatasetError(f"cannot read Broden segmentation {path} ({where}): {err}") from None
                if hw != seg:
                    raise DatasetError(f"{path}: {hw[1]}x{hw[0]} but {self.folder / 'index.csv'} says "
                                       f"{seg[1]}x{seg[0]} ({where}; mask size mismatch)")

    def _plane(self, name: str, row: int, shape: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        path = self.images / name
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
        except FileNotFoundError:
            raise DatasetError(f"Broden segmentation not found: {os.path.abspath(path)} (row {row + 2} of {self.rows.source})") from None
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read Broden segmentation {path} (row {row + 2} of "
                               f"{self.rows.source}): {err}") from None
        if rgb.shape[:2] != shape:
            raise DatasetError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} but {self.folder / 'index.csv'} says "
                               f"{shape[1]}x{shape[0]} (row {row + 2} of {self.rows.source}; mask size mismatch)")
        return rgb[..., 0] + 256 * rgb[..., 1]

    def masks(self, row: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        r = self.index_row[row]
        shape = (int(self.index["sh"].iloc[r]), int(self.index["sw"].iloc[r]))
        want = [n for n in names if n in self.concept_label]
        out: dict[str, np.ndarray] = {n: np.zeros(shape, dtype=bool) for n in want}
        for cat in sorted({self.concept_label[n][0] for n in want}):
            cell = str(self.index[cat].iloc[r]).strip()
            if not cell:
                continue
            mine = [n for n in want if self.concept_label[n][0] == cat]
            for plane in cell.split(";"):
                lab = self._plane(plane.strip(), row, shape)
                for n in mine:
                    out[n] |= lab == self.concept_label[n][1]
        return out
