"""Load concept-labelled datasets in the seed ``metadata.csv`` format.

A dataset is a table of samples: an ``image_path`` or a ``text_path`` / inline ``text``
column, a 0/1 column per concept (names may be ``group::name``) and a ``split`` column in
{train, cal, test}. Optional token-level ground truth: a ``spans`` column (JSON object,
concept -> list of [start, end) character spans) for text, a ``mask_path`` column (label
map, see :mod:`superactivators.data.masks`) for images.

Which columns are concepts and which are metadata (e.g. CLEVR's ``class``):
:mod:`superactivators.data.labels`; a bad or blank label cell is an error naming file, column, rows.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..util.files import regular_file_problem
from .errors import DatasetError
from .hf import HFParts, is_hf_source, read_hf
from .labels import HARD_NEGATIVE_PREFIX, MISSING_LABELS, blank_cells, hard_negative_matrix, select_labels, split_columns
from .spans import parse_span_cell
from .seed import GroundTruth, MetaRows, TextTruth, find_ground_truth, resolve_concepts

SPLITS = ("train", "cal", "test")
RESERVED = {"image_path", "text_path", "text", "split", "spans", "mask_path", "id", "context_chars"}
# names the result tables use for aggregate rows (``__macro__``, ``__weighted__``, ``__micro__``, ...)
RESERVED_CONCEPT = re.compile(r"^__.*__$")
MASK_PREFIX = "mask::"

Modality = Literal["text", "image"]
Span = tuple[int, int]


@dataclass
class Dataset:
    """Samples, their concept labels and splits; texts/images are read lazily."""

    name: str
    root: Path
    modality: Modality
    concepts: list[str]
    labels: np.ndarray  # [N, C] uint8
    splits: np.ndarray  # [N] object (str)
    source: Path | None = None
    inline_texts: list[str] | None = None
    text_paths: list[str] | None = None
    image_paths: list[str] | None = None
    mask_paths: list[str] | None = None
    spans: list[dict[str, list[Span]]] | None = None
    metadata: pd.DataFrame = field(default_factory=pd.DataFrame)
    truth: GroundTruth | None = None  # a seed ground-truth source (superactivators.data.seed)
    allow_outside_paths: bool = False  # files may lie outside ``root`` (recorded so readers honour it)
    columns: dict | None = None  # a metadata.csv's column options (recorded so readers apply them too)
    # [N, C] bool: the label is known (None: every label is); unknown labels read 0 in ``labels``
    # and the sample is left out of that concept's fit, calibration and metrics
    known: np.ndarray | None = None
    # [N] int: the first characters of each text are context (a chat template, an instruction):
    # embedded with the text but never stored, so never scored, calibrated or localised
    context_chars: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def hard_negatives(self) -> np.ndarray | None:
        """``[N, C]`` uint8 marks of the metadata's ``hard_negative::CONCEPT`` columns (None without any)."""
        cols = {c: self.metadata[c].tolist() for c in self.metadata.columns
                if str(c).startswith(HARD_NEGATIVE_PREFIX) and str(c)[len(HARD_NEGATIVE_PREFIX):] in self.concepts}
        return hard_negative_matrix(cols, self.concepts, self.labels, str(self.source)) if cols else None

    def split_mask(self, split: str) -> np.ndarray:
        return self.splits == split

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def text(self, i: int) -> str:
        """Text of sample ``i``; a missing, unreadable or empty text is a clear error."""
        if self.inline_texts is not None:
            txt = self.inline_texts[i]
            where = f"{self.source}, row {i + 2}, column 'text'"
        elif self.text_paths is not None:
            path = self.root / self.text_paths[i]
            where = f"{os.path.abspath(path)} (row {i + 2} of {self.source})"
            why = regular_file_problem(path)  # a FIFO would block the read
            if why not in (None, "not found"):
                raise DatasetError(f"text file {where} {why}")
            try:
                txt = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise DatasetError(f"text file not found: {where}") from None
            except (OSError, UnicodeDecodeError) as err:
                raise DatasetError(f"cannot read text file {where}: {err}") from None
        else:
            raise DatasetError(f"{self.name} is not a text dataset")
        if not txt or not txt.strip():
            raise DatasetError(f"empty text: {where}")
        return txt

    def texts(self, indices: np.ndarray | None = None) -> list[str]:
        idx = range(len(self)) if indices is None else indices
        return [self.text(int(i)) for i in idx]

    def image_path(self, i: int) -> Path:
        if self.image_paths is None:
            raise DatasetError(f"{self.name} is not an image dataset")
        return self.root / self.image_paths[i]

    def load_image(self, i: int):
        """Sample ``i`` as an RGB PIL image; a missing or unreadable file is a clear error."""
        from PIL import Image

        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"image not found: {os.path.abspath(path)} (row {i + 2} of {self.source})") from None
        except Exception as err:  # PIL raises several types for corrupt files
            raise DatasetError(f"cannot read image {path} (row {i + 2} of {self.source}): {err}") from None

    def has_token_ground_truth(self) -> bool:
        return self.spans is not None or self.mask_paths is not None or self.truth is not None

    def source_row(self, i: int) -> int:
        """Row of ``metadata.csv`` behind sample ``i`` (differs once samples were skipped)."""
        if "_source_row" in self.metadata.columns:
            return int(self.metadata["_source_row"].iloc[i])
        return int(i)

    def positives_per_split(self) -> pd.DataFrame:
        """Number of positive samples per concept (rows) and split (columns)."""
        data = {s: self.labels[self.splits == s].sum(axis=0) for s in SPLITS}
        return pd.DataFrame(data, index=self.concepts).astype(int)

    def subset_concepts(self, keep: list[str]) -> "Dataset":
        """A view of this dataset restricted to the concepts in ``keep`` (in that order)."""
        idx = [self.concepts.index(c) for c in keep]
        spans = None
        if self.spans is not None:
            spans = [{c: s[c] for c in keep if c in s} for s in self.spans]
        return Dataset(
            name=self.name, root=self.root, modality=self.modality, concepts=list(keep),
            labels=self.labels[:, idx], splits=self.splits, source=self.source,
            inline_texts=self.inline_texts, text_paths=self.text_paths,
            image_paths=self.image_paths, mask_paths=self.mask_paths, spans=spans,
            metadata=self.metadata, truth=self.truth, allow_outside_paths=self.allow_outside_paths,
            known=None if self.known is None else self.known[:, idx], context_chars=self.context_chars,
        )


def _parse_spans(df: pd.DataFrame, concepts: list[str], source: Path) -> list[dict[str, list[Span]]]:
    """Every row's spans (:func:`~superactivators.data.spans.parse_span_cell`; blank: none)."""
    out: list[dict[str, list[Span]]] = []
    for row, cell in enumerate(df["spans"].tolist()):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() == "":
            out.append({})
            continue
        out.append(parse_span_cell(str(cell), f"{source}: row {row + 2}, column 'spans'", set(concepts),
                                   set(df.columns)))
    return out


def _restrict_spans(spans: list[dict[str, list[Span]]], keep: list[str]) -> list[dict[str, list[Span]]]:
    return [{c: v for c, v in sp.items() if c in keep} for sp in spans]


def _header_problems(path: Path) -> list[int]:
    """Blank or duplicate column names (pandas would silently call them ``Unnamed: 3`` / ``name.1``)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from None
    seen: set[str] = set()
    dup = sorted({h for h in header if h.strip() and (h in seen or seen.add(h))})  # type: ignore[func-returns-value]
    if dup:
        raise DatasetError(f"{path}: duplicate column name(s) {dup}; every column needs its own name")
    return [i for i, h in enumerate(header) if not h.strip()]


def outside_paths(root: Path, paths: list[str], column: str, source: Path) -> list[str]:
    """One line per path of ``column`` that resolves outside ``root`` (absolute, ``..``, symlinks)."""
    base = os.path.realpath(root)
    out = []
    for i, p in enumerate(paths):
        if not str(p).strip():
            continue
        real = os.path.realpath(os.path.join(base, p))
        if os.path.commonpath([base, real]) != base:
            out.append(f"{source}: row {i + 2}, column {column!r}: {p!r} lies outside the dataset folder {base}")
    return out


def _confine(ds: "Dataset") -> None:
    cols = [("text_path", ds.text_paths), ("image_path", ds.image_paths), ("mask_path", ds.mask_paths)]
    cols += [(c, ds.metadata[c].tolist()) for c in ds.metadata.columns if c.startswith(MASK_PREFIX)]
    bad: list[str] = []
    for col, vals in cols:
        if vals is not None:
            bad += outside_paths(ds.root, vals, col, ds.source or ds.root)
    if bad:
        lines = bad[:20] + ([f"... and {len(bad) - 20} more"] if len(bad) > 20 else [])
        lines.append("(set data.allow_outside_paths: true to read files outside the dataset folder)")
        raise DatasetError("\n".join(lines))


def load_dataset(path: str | Path, concepts: list[str] | str | None = None, name: str | None = None,
                 ground_truth: str = "auto", columns: dict | None = None,
                 allow_outside_paths: bool = False, missing_labels: str = MISSING_LABELS) -> Dataset:
    """Read a seed-format ``metadata.csv`` (or a folder holding one, or ``builtin:NAME``).

    ``concepts`` restricts and orders the concept columns (a list, or a preset: ``seed`` for the
    seed's subset of this folder, ``preset:NAME``); by default every 0/1 column is one.
    ``ground_truth`` picks the token-level truth source beside the metadata (see
    :mod:`superactivators.data.seed`): ``auto`` recognises the seed's files, ``none`` uses sample
    labels only (or the metadata's own ``spans`` / ``mask_path`` columns), a kind forces one reader.
    Every ground-truth file is checked against the metadata here, before any model loads.
    Parquet / Arrow files, ``datasets`` folders and ``hf:ID`` go to :mod:`superactivators.data.hf`,
    with ``columns`` mapping their columns (``text_column``, ``concept_columns``, ...).
    File paths must resolve inside the folder of ``metadata.csv`` unless ``allow_outside_paths``
    (a shared dataset must not make a run read, and a report publish, ``/etc/passwd``).
    ``missing_labels="allow"``: a blank label cell is an unknown label (``Dataset.known``), not an error.
    """
    if is_hf_source(path):
        return _from_hf(read_hf(path, concepts=[concepts] if isinstance(concepts, str) else concepts, name=name,
                                columns=columns, missing_labels=missing_labels))
    path_str = str(path)
    if path_str.startswith("builtin:"):
        from .builtin import builtin_dataset_path

        bname = path_str.split(":", 1)[1]
        path = builtin_dataset_path(bname)
        name = name or bname
    path = Path(path)
    if path.is_dir():
        path = path / "metadata.csv"
    why = regular_file_problem(path)
    if why == "not found":
        raise DatasetError(f"metadata file not found: {path.resolve()}")
    if why is not None:
        raise DatasetError(f"{path} {why}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes); a metadata.csv needs a header row (text_path or "
                           "image_path, split, one column per concept) and one row per sample")
    blank_names = _header_problems(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: no header row (the file holds only blank lines)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot parse CSV: {err}") from None
    if df.empty:
        raise DatasetError(f"{path}: no samples")
    for i in blank_names:  # an empty trailing column (spreadsheet export) is dropped; one with values is not
        if i < len(df.columns) and (df.iloc[:, i].str.strip() != "").any():
            raise DatasetError(f"{path}: column {i + 1} holds values but has no name in the header")
    df = df.drop(columns=[df.columns[i] for i in blank_names if i < len(df.columns)])
    if columns:  # the Parquet readers' column options (superactivators.data.csvcolumns)
        from .csvcolumns import map_columns

        df, picked = map_columns(df, columns, path)
        concepts = picked if picked is not None and concepts is None else concepts
    if "split" not in df.columns:
        raise DatasetError(f"{path}: missing column 'split' (values train/cal/test)")
    splits = df["split"].str.strip().str.lower().to_numpy(dtype=object)
    bad = np.flatnonzero(~np.isin(splits, SPLITS))
    if bad.size:
        r = int(bad[0])
        raise DatasetError(
            f"{path}: row {r + 2}, column 'split': unknown split {df['split'].iloc[r]!r} (expected train, cal or test)"
        )
    has_img = "image_path" in df.columns
    has_txt = "text_path" in df.columns or "text" in df.columns
    if has_img == has_txt:
        raise DatasetError(
            f"{path}: need exactly one of an 'image_path' column or a 'text_path'/'text' column"
        )
    modality: Modality = "image" if has_img else "text"

    free = [c for c in df.columns if c not in RESERVED]
    concepts = resolve_concepts(concepts, free, path.parent.name, path)
    label_cols, meta_cols = split_columns({c: df[c].tolist() for c in free}, concepts, str(path), missing_labels)
    reserved = [c for c in label_cols if RESERVED_CONCEPT.match(c)]
    if reserved:
        raise DatasetError(f"{path}: concept column name(s) {reserved} are reserved for aggregate rows "
                           "(names of the form __name__); rename them")
    names, labels = select_labels(label_cols, concepts, str(path))
    known = np.stack([~blank_cells(df[c].tolist()) for c in names], axis=1)
    # hard negatives of concepts not in this run (data.concepts picked others) are left out
    hard = {c: df[c].tolist() for c in meta_cols if str(c).startswith(HARD_NEGATIVE_PREFIX)
            and (concepts is None or c[len(HARD_NEGATIVE_PREFIX):] in names)}
    hard_negative_matrix(hard, names, labels, str(path))  # checked here, before any model loads

    def _col(c: str) -> list[str] | None:
        if c not in df.columns:
            return None
        vals = df[c].tolist()
        empty = [i for i, v in enumerate(vals) if not str(v).strip()]
        if empty and c != "mask_path":
            raise DatasetError(f"{path}: row {empty[0] + 2}, column {c!r}: empty value")
        return vals

    ds = Dataset(
        name=name or path.parent.name,
        root=path.parent,
        modality=modality,
        concepts=names,
        labels=labels,
        splits=splits,
        source=path,
        inline_texts=_col("text") if "text" in df.columns else None,
        text_paths=_col("text_path") if "text" not in df.columns else None,
        image_paths=_col("image_path"),
        mask_paths=_col("mask_path"),
        spans=_restrict_spans(_parse_spans(df, list(label_cols), path), names) if "spans" in df.columns else None,
        metadata=df[meta_cols].copy(),
        allow_outside_paths=allow_outside_paths,
        columns=dict(columns) if columns else None,
        known=None if known.all() else known,
        context_chars=_context_chars(df, path) if "context_chars" in df.columns else None,
    )
    if not allow_outside_paths:
        _confine(ds)
    if ground_truth != "none" and not (ground_truth == "auto" and (ds.spans is not None or ds.mask_paths is not None)):
        _attach_truth(ds, df, label_cols, ground_truth)
    if ds.spans is not None and not isinstance(ds.truth, TextTruth):
        for row, (sp, lab) in enumerate(zip(ds.spans, labels)):
            for c in sp:
                if not lab[names.index(c)]:
                    raise DatasetError(
                        f"{path}: row {row + 2}, column 'spans': span for {c!r} but its label is 0"
                    )
    return ds


def _context_chars(df: pd.DataFrame, path: Path) -> np.ndarray:
    """The ``context_chars`` column: a non-negative integer per row, shorter than the row's text."""
    if "text" not in df.columns:
        raise DatasetError(f"{path}: column 'context_chars' needs an inline 'text' column")
    vals = pd.to_numeric(df["context_chars"].str.strip().replace("", "0"), errors="coerce")
    bad = np.flatnonzero(vals.isna().to_numpy() | (vals.fillna(0) < 0).to_numpy() | (vals.fillna(0) % 1 != 0).to_numpy())
    if bad.size:
        raise DatasetError(f"{path}: row {int(bad[0]) + 2}, column 'context_chars': expected a whole number >= 0, "
                           f"got {df['context_chars'].iloc[int(bad[0])]!r}")
    out = vals.to_numpy(dtype=np.int64)
    long = np.flatnonzero(out >= df["text"].str.len().to_numpy())
    if long.size:
        raise DatasetError(f"{path}: row {int(long[0]) + 2}, column 'context_chars': {int(out[long[0]])} covers the "
                           "whole text (nothing left to score)")
    return out


def _from_hf(p: HFParts) -> Dataset:
    """A Dataset over a Parquet / Arrow / datasets table (texts and images stay lazy)."""
    spans = None
    if p.span_cells is not None:
        where = Path(f"{p.where} (span column)")
        spans = _restrict_spans(_parse_spans(pd.DataFrame({"spans": p.span_cells}), p.label_names, where), p.concepts)
        for row, (sp, lab) in enumerate(zip(spans, p.labels)):
            for c in sp:
                if not lab[p.concepts.index(c)]:
                    raise DatasetError(f"{p.where}: row {row}, span column: span for {c!r} but its label is 0")
    return Dataset(name=p.name, root=p.root, modality=p.modality, concepts=p.concepts, labels=p.labels,
                   splits=p.splits, source=p.source, inline_texts=p.texts, image_paths=p.images,
                   mask_paths=p.masks, spans=spans, known=p.known)


def _attach_truth(ds: Dataset, df: pd.DataFrame, label_cols: dict[str, np.ndarray], kind: str) -> None:
    """Find (or read the named kind of) the seed's ground truth and put it on ``ds``."""
    all_names = list(label_cols)
    rows = MetaRows(
        root=ds.root, source=Path(ds.source), concepts=all_names,
        labels=np.stack([label_cols[c] for c in all_names], axis=1), splits=ds.splits,
        image_paths=ds.image_paths, text=ds.text if ds.modality == "text" else None,
    )
    truth = find_ground_truth(rows, ds.modality, kind)
    if truth is None:
        return
    ds.truth = truth
    if isinstance(truth, TextTruth):
        if truth.labels is not None and truth.label_concepts:
            ds.labels = ds.labels.copy()
            for j, c in enumerate(truth.label_concepts):
                if c in ds.concepts:
                    k = ds.concepts.index(c)
                    diff = np.flatnonzero(ds.labels[:, k] != truth.labels[:, j])
                    if diff.size:
                        warnings.warn(
                            f"{truth.files[-1]}: {diff.size} label(s) of {c!r} differ from {ds.source} "
                            f"(first: row {int(diff[0]) + 2}); the paragraph-level file's labels are used, "
                            "as the seed does", stacklevel=3)
                    ds.labels[:, k] = truth.labels[:, j]
        ds.spans = _restrict_spans(truth.spans, ds.concepts)


#: what a run on data with sample labels only has to say (dataset-info, run log, report)
SAMPLE_LABELS_NOTE = (
    "no token-level ground truth (sample labels only): every valid token of a positive sample counts "
    "as in-concept, so SuperActivator's calibration population is mostly tokens that do not carry the "
    "concept, its tail thresholds are set by that noise, and localisation cannot be scored. The "
    "sample-label variant 'superactivator_sample' (top 10 % tokens of each positive cal sample) is "
    "reported beside it; see docs/protocol.md."
)


def withhold_token_truth(ds: Dataset) -> Dataset:
    """``ds`` without its spans, masks, ``mask::`` columns and seed truth (``data.sample_labels_only``)."""
    import dataclasses

    meta = ds.metadata[[c for c in ds.metadata.columns if not str(c).startswith("mask::")]]
    return dataclasses.replace(ds, spans=None, mask_paths=None, metadata=meta, truth=None)


def usable_concepts(ds: Dataset, need: tuple[str, ...] = ("train", "cal")) -> list[str]:
    """Concepts with positives in every split of ``need`` and negatives in train; warns about each one dropped.

    Why negatives: a concept positive in every train sample has nothing to be separated from.
    """
    counts = ds.positives_per_split()
    n_train = int((ds.splits == "train").sum())
    keep = []
    for c in ds.concepts:
        empty = [s for s in need if counts.loc[c, s] == 0]
        if empty:
            warnings.warn(
                f"concept {c!r} skipped: no positive samples in split(s) {', '.join(empty)}",
                stacklevel=2,
            )
        elif "train" in need and n_train and counts.loc[c, "train"] == n_train:
            warnings.warn(f"concept {c!r} skipped: positive in every train sample (no negatives to learn from)",
                          stacklevel=2)
        else:
            keep.append(c)
    return keep


def truth_label(ds: Dataset) -> str:
    """Which token-level ground truth ``ds`` carries, in words (names a seed source and its files)."""
    if ds.truth is not None:
        return ds.truth.describe()
    if ds.spans is not None:
        return "character spans"
    if ds.mask_paths is not None or any(str(c).startswith("mask::") for c in ds.metadata.columns):
        return "masks"
    return "none (sample labels)"


def truth_amounts(ds: Dataset) -> pd.DataFrame | None:
    """Per concept: positives, positives with token-level truth, in-concept words / pixels (seed sources).

    Image sources read every positive sample's masks once, one sample at a time.
    """
    if ds.truth is None:
        return None
    rows = [ds.source_row(i) for i in range(len(ds))]
    return ds.truth.amounts(rows, ds.concepts, ds.labels)


def dataset_summary(ds: Dataset, amounts: bool = True) -> str:
    """Human-readable summary used by ``superactivators dataset-info``."""
    counts = ds.positives_per_split()
    n_per = {s: int((ds.splits == s).sum()) for s in SPLITS}
    lines = [
        f"dataset: {ds.name}  ({ds.source})",
        f"modality: {ds.modality}",
        f"samples: {len(ds)}  (" + ", ".join(f"{s} {n_per[s]}" for s in SPLITS) + ")",
        f"concepts: {len(ds.concepts)}",
        "token-level ground truth: " + truth_label(ds),
        "",
        "positives per split:",
        counts.to_string(),
    ]
    table = truth_amounts(ds) if amounts else None
    if table is not None:
        res = ", at mask resolution" if ds.truth.unit == "pixels" else ""
        lines += ["", f"token-level truth per concept (in-concept {ds.truth.unit}{res}; with_truth: positives "
                  "that have it, the others count every token):", table.to_string()]
    elif amounts and ds.truth is None and ds.spans is not None:  # inline / spans-column truth
        from .spancheck import span_amounts

        lines += ["", "token-level truth per concept (spans; characters / words inside them; with_truth: positives "
                  "that have spans, the others count every token):", span_amounts(ds).to_string()]
    if not ds.has_token_ground_truth():
        lines[5:5] = ["note: " + SAMPLE_LABELS_NOTE]
    if len(ds.metadata.columns):
        lines.insert(5, f"metadata columns: {', '.join(ds.metadata.columns)}")
    return "\n".join(lines)
