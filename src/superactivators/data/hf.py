"""Datasets from Parquet, Arrow and Hugging Face ``datasets``: streamed, never loaded whole.

``data.path`` may be a Parquet file, an Arrow file, a folder written by ``datasets``'
``save_to_disk`` (one split or a ``DatasetDict``), a folder of Parquet files, or ``hf:ID`` (a hub
dataset, fetched by ``datasets.load_dataset`` when the network allows). Columns are mapped by
config: ``text_column`` (default ``text``), ``image_column`` (``image``: an ``Image`` feature, bytes
or a path), ``mask_column`` (label-map images, as ``mask_path``), ``concept_columns`` (a list of
0/1 / bool columns, or one list-of-labels column such as ``labels`` with a ``ClassLabel``
feature; default: every 0/1 column), ``span_column`` (``spans``: JSON text or a
``{concept: [[start, end], ...]}`` mapping), ``split_column`` (``split``; a ``DatasetDict``'s
splits give it), ``split_map`` (split names to train / cal / test; ``validation`` is ``cal`` by
default).

Only the label, split and span columns are read up front. Texts are read on demand: from the
memory-mapped Arrow table, or one Parquet row group at a time (embedding reads in order, so each
row group is read once). Images are extracted on first use into the cache folder, one file each.
The dataset's ``source`` is a small descriptor JSON (path, column mapping, content fingerprint)
in the cache: it keys the token store and lets the report reload the dataset.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..util.io import atomic_write_bytes, stable_hash
from .builtin import cache_root
from .errors import DatasetError
from .labels import MISSING_LABELS, blank_cells, is_concept_column, looks_like_labels, parse_label_column, select_labels

COLUMN_KEYS = ("text_column", "image_column", "mask_column", "concept_columns", "span_column", "split_column",
               "split_map")
DEFAULT_SPLIT_MAP = {"train": "train", "cal": "cal", "test": "test", "validation": "cal", "valid": "cal",
                     "val": "cal", "calibration": "cal", "dev": "cal"}
DESCRIPTOR_SUFFIX = ".hfsource.json"


def is_hf_source(path: str | Path) -> bool:
    """Whether ``path`` names something this module reads (rather than a ``metadata.csv``)."""
    s = str(path)
    if s.startswith("hf:") or s.endswith(DESCRIPTOR_SUFFIX):
        return True
    p = Path(s)
    if p.suffix in (".parquet", ".arrow"):
        return True
    if p.is_dir() and not (p / "metadata.csv").exists():
        return any((p / f).exists() for f in ("state.json", "dataset_dict.json", "dataset_info.json")) \
            or any(p.glob("*.parquet"))
    return False


# --- tables ---------------------------------------------------------------------------------

class _Table:
    """Column access by row over a memory-mapped Arrow table or a Parquet file's row groups."""

    def __init__(self, table=None, parquet: Path | None = None):
        import pyarrow.parquet as pq

        self.table = table
        self.pf = pq.ParquetFile(str(parquet)) if parquet is not None else None
        self.schema = table.schema if table is not None else self.pf.schema_arrow
        if self.pf is not None:
            sizes = [self.pf.metadata.row_group(g).num_rows for g in range(self.pf.num_row_groups)]
            self._rg_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache: dict[str, tuple[int, list]] = {}

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else self.pf.metadata.num_rows

    @property
    def names(self) -> list[str]:
        return list(self.schema.names)

    def column(self, name: str):
        """A whole (small) column as a pyarrow ChunkedArray."""
        if self.table is not None:
            return self.table.column(name)
        return self.pf.read(columns=[name]).column(name)

    def value(self, name: str, i: int) -> Any:
        """One cell; Parquet reads (and keeps) the row group holding it."""
        if self.table is not None:
            return self.table.column(name)[i].as_py()
        g = int(np.searchsorted(self._rg_start, i, side="right") - 1)
        hit = self._cache.get(name)
        if hit is None or hit[0] != g:
            hit = (g, self.pf.read_row_group(g, columns=[name]).column(name).to_pylist())
            self._cache[name] = hit
        return hit[1][i - self._rg_start[g]]

    def features(self) -> dict:
        """The ``datasets`` features recorded in the schema metadata (ClassLabel names), if any."""
        meta = self.schema.metadata or {}
        raw = meta.get(b"huggingface")
        if not raw:
            return {}
        try:
            return json.loads(raw).get("info", {}).get("features", {}) or {}
        except ValueError:
            return {}


def _memory_mapped_arrow(path: Path):
    import pyarrow as pa

    try:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def _hf_table(obj, split_map: Mapping[str, str], where: str):
    """A ``datasets`` Dataset / DatasetDict as one memory-mapped table (+ split column for a dict)."""
    import pyarrow as pa

    def table_of(d):
        if getattr(d, "_indices", None) is not None:
            d = d.flatten_indices()
        return d.data.table

    if hasattr(obj, "keys") and not hasattr(obj, "features"):  # DatasetDict
        parts, split_vals = [], []
        for key in obj.keys():
            if key not in split_map:
                raise DatasetError(f"{where}: split {key!r} is not one of {sorted(split_map)}; map it with data.split_map")
            t = table_of(obj[key])
            parts.append(t)
            split_vals.append(np.full(t.num_rows, split_map[key], dtype=object))
        table = pa.concat_tables(parts, promote_options="default")
        return table.append_column("__split__", pa.array(np.concatenate(split_vals).tolist())), obj[next(iter(obj.keys()))]
    return table_of(obj), obj


def _open(spec: str, split_map: Mapping[str, str]) -> tuple[_Table, Path, dict]:
    """The table, the folder relative image paths start from, and the content fingerprint."""
    if spec.startswith("hf:"):
        import datasets

        hub_id, _, config = spec[3:].partition(":")
        obj = datasets.load_dataset(hub_id, config or None)
        table, first = _hf_table(obj, split_map, spec)
        files = [f["filename"] for d in (obj.values() if hasattr(obj, "values") else [obj]) for f in d.cache_files]
        return _Table(table), Path(files[0]).parent if files else Path("."), {"hub": spec, "cache_files": files}
    p = Path(spec)
    if not p.exists():
        raise DatasetError(f"dataset not found: {os.path.abspath(p)}")
    if p.is_file() and p.suffix == ".parquet":
        st = p.stat()
        return _Table(parquet=p), p.parent, {"file": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    if p.is_file() and p.suffix == ".arrow":
        st = p.stat()
        return (_Table(_memory_mapped_arrow(p)), p.parent,
                {"file": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns})
    if p.is_dir():
        import datasets

        if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            obj = datasets.load_from_disk(str(p))  # memory-mapped Arrow
        else:  # a folder of Parquet (or other) data files: datasets infers the splits from file names
            obj = datasets.load_dataset(str(p))
        table, _ = _hf_table(obj, split_map, str(p))
        stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.rglob("*")) if f.is_file()]
        return _Table(table), p, {"folder": str(p.resolve()), "files": stamp}
    raise DatasetError(f"{p}: not a Parquet / Arrow file or a datasets folder")


# --- lazy columns ---------------------------------------------------------------------------

class LazyTexts(Sequence):
    """Texts read from the table on access (nothing held but the current Parquet row group)."""

    def __init__(self, table: _Table, column: str, where: str):
        self.table, self.column, self.where = table, column, where

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:  # stable: cache keys hash it
        return f"LazyTexts({self.where!r}, {self.column!r}, {len(self)})"

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        v = self.table.value(self.column, int(i))
        if not isinstance(v, str):
            raise DatasetError(f"{self.where}: row {i}, column {self.column!r}: expected text, got {type(v).__name__}")
        return v


class LazyImageFiles(Sequence):
    """File names of an image column under ``root``; an image stored as bytes is written there on
    first access (``iter`` lists the names without extracting anything)."""

    def __init__(self, table: _Table, column: str, root: Path, data_root: Path, where: str):
        self.table, self.column, self.root, self.data_root, self.where = table, column, root, data_root, where

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:  # stable: cache keys hash it
        return f"LazyImageFiles({self.where!r}, {self.column!r}, {len(self)})"

    def _name(self, i: int) -> str:
        return f"{self.column}/{i:08d}.png"

    def __iter__(self):
        return (self._name(i) for i in range(len(self)))

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        out = self.root / self._name(i)
        if out.exists():
            return self._name(i)
        cell = self.table.value(self.column, i)
        data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (None, cell)
        if data is None and path:
            src = Path(path) if Path(path).is_absolute() else self.data_root / path
            if not src.exists():
                raise DatasetError(f"{self.where}: row {i}, column {self.column!r}: image file not found: {os.path.abspath(src)}")
            return str(src.resolve())
        if data is None:
            if self.column.startswith("mask"):
                return ""  # no mask for this sample
            raise DatasetError(f"{self.where}: row {i}, column {self.column!r}: no image bytes or path")
        from PIL import Image

        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.save(buf, format="PNG")  # lossless; label maps keep their values
        except Exception as err:  # PIL raises several types for corrupt data
            raise DatasetError(f"{self.where}: row {i}, column {self.column!r}: unreadable image ({err})") from None
        atomic_write_bytes(out, buf.getvalue())
        return self._name(i)


# --- columns -> Dataset -------------------------------------------------------------------

def _binary(col, name: str, where: str, listed: bool = False, missing: str = MISSING_LABELS) -> np.ndarray | None:
    """0/1 values of a label column (bool, numbers, 0/1-like strings), None for a metadata column;
    the same rules as metadata.csv (:mod:`superactivators.data.labels`), rows counted from 0.
    A null is a blank label: an error, never silently 0."""
    import pyarrow as pa

    t = col.type
    if not (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t)):
        return None
    cells = ["" if v is None else str(v) for v in col.to_pylist()]
    if listed or is_concept_column(name, cells):
        return parse_label_column(name, cells, where, missing=missing, row0=0)
    if looks_like_labels(cells):  # refused naming the rows (data.concept_columns keeps it as metadata)
        parse_label_column(name, cells, where, row0=0)
    return None


def _multi_label(table: _Table, name: str, where: str) -> tuple[list[str], np.ndarray]:
    """One list-of-labels column (class ids with ClassLabel names, or label strings) -> [N, K] 0/1."""
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    feat = table.features().get(name, {})
    inner = feat.get("feature", feat) if isinstance(feat, dict) else {}
    class_names = inner.get("names") if isinstance(inner, dict) else None
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(col)), lengths)
    if flat.dtype.kind in "iu":
        if class_names is None:
            class_names = [str(k) for k in range(int(flat.max()) + 1 if flat.size else 0)]
        if flat.size and (flat.min() < 0 or flat.max() >= len(class_names)):
            r = int(rows[np.flatnonzero((flat < 0) | (flat >= len(class_names)))[0]])
            raise DatasetError(f"{where}: row {r}, column {name!r}: label id outside its {len(class_names)} classes")
        ids = flat.astype(np.int64)
    else:
        class_names = sorted(set(flat.tolist()))
        ids = np.searchsorted(class_names, flat)
    labels = np.zeros((len(col), len(class_names)), dtype=np.uint8)
    labels[rows, ids] = 1
    return [str(c) for c in class_names], labels


def _spans_cells(col, where: str, name: str) -> list[str]:
    """Span cells as the CSV loader's JSON text (parsed and checked there)."""
    cells = []
    for v in col.to_pylist():
        if v is None or isinstance(v, str):
            cells.append(v or "")
        elif isinstance(v, Mapping):
            cells.append(json.dumps({k: s for k, s in v.items() if s}))
        else:
            raise DatasetError(f"{where}: column {name!r}: spans must be JSON text or a mapping, got {type(v).__name__}")
    return cells


def _split_values(table: _Table, name: str, split_map: Mapping[str, str], where: str) -> np.ndarray:
    col = table.column(name)
    feat = table.features().get(name, {})
    vals = col.to_numpy(zero_copy_only=False)
    if vals.dtype.kind in "iu" and isinstance(feat, dict) and feat.get("names"):
        vals = np.asarray(feat["names"], dtype=object)[vals]
    s = pd.Series(vals, dtype=object).astype(str).str.strip().str.lower()
    mapped = s.map(dict(split_map))
    bad = np.flatnonzero(mapped.isna().to_numpy())
    if bad.size:
        r = int(bad[0])
        raise DatasetError(f"{where}: row {r}, column {name!r}: unknown split {vals[r]!r} "
                           f"(expected one of {sorted(split_map)}; map others with data.split_map)")
    return mapped.to_numpy(dtype=object)


@dataclass
class HFParts:
    """What :func:`superactivators.data.datasets.load_dataset` builds its Dataset from."""

    name: str
    root: Path
    modality: str
    concepts: list[str]
    labels: np.ndarray  # [N, C] uint8
    splits: np.ndarray  # [N] object
    source: Path  # the descriptor JSON
    label_names: list[str]  # every concept column (spans may name any of them)
    texts: LazyTexts | None = None
    images: LazyImageFiles | None = None
    masks: LazyImageFiles | None = None
    span_cells: list[str] | None = None  # JSON per row
    where: str = ""
    known: np.ndarray | None = None  # [N, C] bool, which labels are known (data.missing_labels: allow)


def read_hf(path: str | Path, concepts: Sequence[str] | None = None, name: str | None = None,
            columns: Mapping[str, Any] | None = None, missing_labels: str = MISSING_LABELS) -> HFParts:
    """Read a Parquet / Arrow file, a ``datasets`` folder or ``hf:ID`` (see the module docstring)."""

    spec, cols = str(path), dict(columns or {})
    if spec.endswith(DESCRIPTOR_SUFFIX):  # a dataset this loader described before (store / report)
        desc = json.loads(Path(spec).read_text())
        spec, cols = desc["path"], {**desc["columns"], **cols}
    unknown = sorted(set(cols) - set(COLUMN_KEYS))
    if unknown:
        raise DatasetError(f"unknown column option(s) {unknown}; valid: {list(COLUMN_KEYS)}")
    split_map = {**DEFAULT_SPLIT_MAP, **{str(k).lower(): v for k, v in (cols.get("split_map") or {}).items()}}
    bad_targets = sorted({v for v in split_map.values() if v not in ("train", "cal", "test")})
    if bad_targets:
        raise DatasetError(f"data.split_map maps to {bad_targets}; targets must be train, cal or test")
    table, data_root, fingerprint = _open(spec, split_map)
    where = spec
    if len(table) == 0:
        raise DatasetError(f"{where}: no samples")
    names_in = table.names

    def pick(key: str, default: str | None) -> str | None:
        c = cols.get(key)
        if c is not None and c not in names_in:
            raise DatasetError(f"{where}: data.{key} {c!r} is not a column (columns: {names_in})")
        return c if c is not None else (default if default in names_in else None)

    split_col = pick("split_column", "split") or ("__split__" if "__split__" in names_in else None)
    if split_col is None:
        raise DatasetError(f"{where}: no split column (set data.split_column; values train/cal/test)")
    text_col, image_col = pick("text_column", "text"), pick("image_column", "image")
    if (text_col is None) == (image_col is None):
        raise DatasetError(f"{where}: need exactly one of a text column or an image column "
                           f"(set data.text_column or data.image_column; columns: {names_in})")
    mask_col, span_col = pick("mask_column", None), pick("span_column", "spans")
    splits = _split_values(table, split_col, split_map, where)

    cc = cols.get("concept_columns")
    if isinstance(cc, str):  # one list-of-labels column
        if cc not in names_in:
            raise DatasetError(f"{where}: data.concept_columns {cc!r} is not a column (columns: {names_in})")
        all_names, all_labels = _multi_label(table, cc, where)
        label_cols = {n: all_labels[:, k] for k, n in enumerate(all_names)}
    else:
        reserved = {split_col, text_col, image_col, mask_col, span_col}
        cand = list(cc) if cc is not None else [c for c in names_in if c not in reserved]
        label_cols = {}
        for c in cand:
            if c not in names_in:
                raise DatasetError(f"{where}: concept column {c!r} not found (columns: {names_in})")
            v = _binary(table.column(c), c, where, listed=cc is not None, missing=missing_labels)
            if v is None:
                if cc is not None:
                    raise DatasetError(f"{where}: concept column {c!r} is not 0/1")
                continue
            label_cols[c] = v
    names, labels = select_labels(label_cols, concepts, where, " (set data.concept_columns)")
    known = None
    if missing_labels == "allow" and not isinstance(cc, str):  # nulls / blanks: unknown labels
        known = np.stack([~blank_cells(table.column(c).to_pylist()) for c in names], axis=1)
        known = None if known.all() else known
    span_cells = _spans_cells(table.column(span_col), where, span_col) if span_col is not None else None

    key = stable_hash([spec, {k: cols[k] for k in sorted(cols)}], 16)
    cache = cache_root() / "hf" / key
    cache.mkdir(parents=True, exist_ok=True)
    descriptor = cache / f"source{DESCRIPTOR_SUFFIX}"
    body = json.dumps({"path": spec, "columns": cols, "fingerprint": fingerprint}, sort_keys=True, default=str)
    if not descriptor.exists() or descriptor.read_text() != body:
        atomic_write_bytes(descriptor, body.encode())
    ds_name = name or (spec[3:].replace("/", "_") if spec.startswith("hf:") else Path(spec).stem or Path(spec).name)
    images = LazyImageFiles(table, image_col, cache, data_root, where) if image_col else None
    masks = LazyImageFiles(table, mask_col, cache, data_root, where) if mask_col else None
    return HFParts(
        name=ds_name, root=cache, modality="image" if image_col else "text", concepts=names, labels=labels,
        splits=splits, source=descriptor, label_names=list(label_cols),
        texts=LazyTexts(table, text_col, where) if text_col else None, images=images, masks=masks,
        span_cells=span_cells, where=where, known=known)
