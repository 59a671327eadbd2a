"""COCO instance masks from the official ``instances_*.json`` files, through pycocotools.

Each metadata row's image is found by file name (``basename(image_path) == images[].file_name``),
all its annotations are drawn (``COCO.annToMask``: polygons, uncompressed RLE for crowd regions,
compressed RLE; ``iscrowd`` included, as in the seed) and OR-merged by category name and by
supercategory name, at the image's own size; those names are the seed's concept columns.

Where the files are looked for (every ``instances_*.json`` found is read): the dataset folder,
its ``annotations/`` subfolder, and the calibration folder the seed uses beside it,
``../Coco-Cal/annotations/`` (also ``../<folder>-Cal/annotations/``). The seed reads train and test
rows from ``Coco/instances_val2017.json`` and cal rows from
``Coco-Cal/annotations/instances_train2017.json``; rows are matched by file name in the cal folder's
files first for cal rows and in the dataset folder's first otherwise (COCO file names are unique
across its splits, so the order only matters for hand-made files).

Only the annotations of the metadata's images are kept after reading (COCO's train2017 file is
~450 MB of JSON: reading it needs a few GB once; masks themselves are drawn one image at a time).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import MaskTruth, MetaRows


def coco_annotation_files(root: Path) -> tuple[list[Path], list[Path]]:
    """``(main files, cal files)``: the ``instances_*.json`` files of a seed Coco layout."""
    main = sorted(root.glob("instances_*.json")) + sorted((root / "annotations").glob("instances_*.json"))
    cal: list[Path] = []
    for d in (root.parent / f"{root.name}-Cal" / "annotations", root.parent / "Coco-Cal" / "annotations"):
        cal += [p for p in sorted(d.glob("instances_*.json")) if p not in cal]
    return main, cal


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        raise DatasetError(f"COCO annotation file not found: {os.path.abspath(path)}") from None
    except (ValueError, UnicodeDecodeError) as err:  # truncated / not JSON
        raise DatasetError(f"{path}: not a valid COCO instances file ({err})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise DatasetError(f"{path}: missing list {key!r} (not an instances_*.json file?)")
    return obj


class CocoTruth(MaskTruth):
    """Masks per category and supercategory name, drawn lazily per metadata row."""

    def __init__(self, rows: MetaRows, main: list[Path], cal: list[Path] | None = None):
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise DatasetError(f"{rows.root} holds COCO annotations; reading them needs pycocotools "
                               "(pip install 'superactivators[images]'), or set data.ground_truth: none") from None

        cal = list(cal or [])
        files = main + [p for p in cal if p not in main]
        if not files:
            raise DatasetError(f"{rows.root}: no COCO instances_*.json file (looked in the folder, "
                               "annotations/ and ../Coco-Cal/annotations/)")
        if rows.image_paths is None:
            raise DatasetError(f"{rows.source}: COCO masks need an image dataset")
        super().__init__("coco", files)
        self.rows = rows
        wanted = {Path(p).name for p in rows.image_paths}
        raw = [_read_json(p) for p in files]
        # categories: id -> (name, supercategory), consistent across the files
        self.cat_of: dict[int, tuple[str, str]] = {}
        for path, obj in zip(files, raw):
            for i, c in enumerate(obj["categories"]):
                try:
                    cid, name, sup = int(c["id"]), str(c["name"]), str(c.get("supercategory", ""))
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(f"{path}: categories[{i}] lacks id/name") from None
                if self.cat_of.setdefault(cid, (name, sup)) != (name, sup):
                    raise DatasetError(f"{path}: category {cid} is {name!r} here but {self.cat_of[cid][0]!r} "
                                       f"in {files[0]}")
        names = {n for n, _ in self.cat_of.values()} | {s for _, s in self.cat_of.values() if s}
        unknown = [c for c in rows.concepts if c not in names]
        if unknown:
            raise DatasetError(f"{rows.source}: concept column(s) {unknown[:8]} are neither a category nor a "
                               f"supercategory in {', '.join(map(str, files))}")
        # per file: file name -> image record, for the metadata's images only
        by_name: list[dict[str, dict]] = []
        for path, obj in zip(files, raw):
            table: dict[str, dict] = {}
            for im in obj["images"]:
                fn = str(im.get("file_name", ""))
                if fn in wanted:
                    table[fn] = im
            by_name.append(table)
        cal_idx = [files.index(p) for p in cal]
        main_idx = [i for i in range(len(files)) if i not in cal_idx]
        self.where: list[tuple[int, int]] = []  # row -> (file index, image id)
        self.size: list[tuple[int, int]] = []
        for r, (p, split) in enumerate(zip(rows.image_paths, rows.splits)):
            fn = Path(p).name
            order = cal_idx + main_idx if split == "cal" else main_idx + cal_idx
            hit = next((i for i in order if fn in by_name[i]), None)
            if hit is None:
                raise DatasetError(f"{rows.source}: row {r + 2}: image {fn!r} is in none of the COCO annotation "
                                   f"files {', '.join(map(str, files))} (unknown sample)")
            im = by_name[hit][fn]
            try:
                self.where.append((hit, int(im["id"])))
                self.size.append((int(im["height"]), int(im["width"])))
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{files[hit]}: image {fn!r} lacks id/height/width") from None
        # one pycocotools index per file over the metadata's images and their annotations only
        self.apis: list[COCO] = []
        for i, (path, obj) in enumerate(zip(files, raw)):
            ids = {iid for f, iid in self.where if f == i}
            api = COCO()
            api.dataset = {"images": [im for im in by_name[i].values() if int(im["id"]) in ids],
                           "annotations": [a for a in obj["annotations"] if a.get("image_id") in ids],
                           "categories": obj["categories"]}
            for a in api.dataset["annotations"]:
                if "segmentation" not in a or int(a.get("category_id", -1)) not in self.cat_of:
                    raise DatasetError(f"{path}: annotation {a.get('id')} has no segmentation or an unknown "
                                       f"category_id {a.get('category_id')!r}")
            _quiet(api.createIndex)
            self.apis.append(api)
        del raw

    def check_row(self, row: int, image_hw: tuple[int, int], where: str) -> None:
        if tuple(image_hw) != self.size[row]:
            h, w = self.size[row]
            f, iid = self.where[row]
            raise DatasetError(f"{self.files[f]}: image {iid} is {w}x{h} but {where} is {image_hw[1]}x{image_hw[0]} "
                               "(mask size mismatch)")

    def _rles(self, row: int, names: Sequence[str]) -> dict[str, dict]:
        """Per requested name present in the row's image: the union of its annotations as one RLE."""
        from pycocotools import mask as mask_utils

        f, iid = self.where[row]
        api = self.apis[f]
        want = set(names)
        parts: dict[str, list] = {}
        for ann in api.imgToAnns.get(iid, []):
            name, sup = self.cat_of[int(ann["category_id"])]
            keys = [k for k in dict.fromkeys((name, sup)) if k in want]
            if not keys:
                continue
            try:
                rle = _call(api.annToRLE, ann)  # polygons merged, uncompressed (crowd) RLE compressed
            except Exception as err:  # malformed polygon / RLE
                raise DatasetError(f"{self.files[f]}: annotation {ann.get('id')} (row {row + 2} of "
                                   f"{self.rows.source}): cannot read its segmentation: {err}") from None
            for k in keys:
                parts.setdefault(k, []).append(rle)
        return {k: (v[0] if len(v) == 1 else _call(mask_utils.merge, v, intersect=False)) for k, v in parts.items()}

    def masks(self, row: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        from pycocotools import mask as mask_utils

        return {k: _call(mask_utils.decode, r).astype(bool) for k, r in self._rles(row, names).items()}

    def areas(self, row: int, names: Sequence[str]) -> dict[str, int]:
        """As :meth:`MaskTruth.areas`, from the run-length encodings (no mask is drawn)."""
        from pycocotools import mask as mask_utils

        return {k: int(_call(mask_utils.area, r)) for k, r in self._rles(row, names).items()}


def _call(fn, *args, **kwargs):
    """A pycocotools call without its numpy-2 ``copy=`` deprecation notice (one per mask otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args, **kwargs)


def _quiet(fn) -> None:
    """pycocotools prints progress lines; keep stdout for our own output."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        fn()
