"""The Parquet readers' column options for a ``metadata.csv``: ``text_column``, ``image_column``,
``split_column``, ``span_column``, ``mask_column`` rename a column to the seed format's name
(``text``, ``image_path``, ``split``, ``spans``, ``mask_path``); ``split_map`` maps split values
(``validation`` is ``cal`` by default, as for Parquet); ``concept_columns`` (a list) picks the
concept columns. Applied to the table before it is read as usual, so every check still names the
file, row and (mapped) column."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .errors import DatasetError

TARGETS = {"text_column": "text", "image_column": "image_path", "split_column": "split", "span_column": "spans",
           "mask_column": "mask_path"}
KEYS = (*TARGETS, "split_map", "concept_columns")
DEFAULT_SPLIT_MAP = {"train": "train", "cal": "cal", "test": "test", "validation": "cal", "valid": "cal",
                     "val": "cal", "calibration": "cal", "dev": "cal"}


def map_columns(df: pd.DataFrame, columns: Mapping, path: Path) -> tuple[pd.DataFrame, list[str] | None]:
    """``df`` with the mapped columns renamed and split values mapped; the concept columns asked for
    (None when not given). One-line errors name the file, the option and the columns there are."""
    unknown = sorted(set(columns) - set(KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown column option(s) {unknown}; valid: {list(KEYS)}")
    have = list(df.columns)
    rename = {}
    for key, target in TARGETS.items():
        col = columns.get(key)
        if col is None or col == target:
            continue
        if col not in have:
            raise DatasetError(f"{path}: data.{key} {col!r} is not a column (columns: {have})")
        if target in have:
            raise DatasetError(f"{path}: data.{key} maps {col!r} to {target!r}, but the file already has a "
                               f"{target!r} column; drop one of them")
        rename[col] = target
    out = df.rename(columns=rename)
    if "split" in out.columns and (columns.get("split_map") or columns.get("split_column")):
        smap = {**DEFAULT_SPLIT_MAP, **{str(k).lower(): str(v) for k, v in (columns.get("split_map") or {}).items()}}
        bad = sorted({v for v in smap.values() if v not in ("train", "cal", "test")})
        if bad:
            raise DatasetError(f"{path}: data.split_map maps to {bad}; targets must be train, cal or test")
        low = out["split"].str.strip().str.lower()
        out["split"] = [smap.get(v, v) for v in low]
    cc = columns.get("concept_columns")
    if cc is None:
        return out, None
    cc = [cc] if isinstance(cc, str) else list(cc)
    missing = [c for c in cc if c not in out.columns]
    if missing:
        raise DatasetError(f"{path}: data.concept_columns {missing} not found (columns: {have})")
    return out, cc
