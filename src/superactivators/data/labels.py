"""Concept columns -> the label matrix, shared by the metadata.csv and the Arrow / Parquet readers.

Which column is a concept (metadata.csv): one whose name has the ``group::name`` form, or whose
non-blank cells are all 0/1-like (``0``/``1``, ``yes``/``no``, ``true``/``false``, ...). Every
cell of a concept column must be 0/1-like: a bad or blank cell is an error naming the column
and its rows. A column that only *looks* like labels gone wrong (two distinct values such as
``positive``/``negative`` or ``2``/``-1``; mostly 0/1; a few distinct values among them 0/1)
is refused too instead of silently becoming metadata and dropping the concept from the run;
listing the concepts in ``data.concepts`` keeps such a column as metadata. Other columns
(CLEVR's ``class``) are metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DatasetError

TRUE_VALUES = ("1", "1.0", "yes", "true", "y", "t")
FALSE_VALUES = ("0", "0.0", "no", "false", "n", "f")
GROUP_SEP = "::"
#: ``hard_negative::CONCEPT`` (0/1): negatives of CONCEPT built to confuse it (lexical overlap,
#: another sense of a word); metadata, never a concept; see :func:`hard_negative_matrix`
HARD_NEGATIVE_PREFIX = "hard_negative::"
# ``mask::NAME`` columns hold mask paths, ``hard_negative::NAME`` marks hard negatives: not labels
NOT_CONCEPT_PREFIXES = ("mask::", HARD_NEGATIVE_PREFIX)
#: What a blank label cell means, by default: "error". The one switch: ``data.missing_labels``
#: (:class:`~superactivators.data.options.DataConfig`) defaults to it; "allow" reads a blank cell
#: as *unknown* for that (sample, concept): the sample is left out of that concept's fit,
#: calibration and metrics and counts for the others (:func:`blank_cells`, ``Dataset.known``).
MISSING_LABELS = "error"
MISSING_CHOICES = ("error", "allow")
_SHOW_ROWS = 5


def _norm(cells: Sequence[object]) -> np.ndarray:
    return np.array([str(c).strip().lower() for c in cells], dtype=object)


def _rows(idx: np.ndarray, row0: int = 2) -> str:
    rows = ", ".join(str(int(i) + row0) for i in idx[:_SHOW_ROWS])  # csv: + header, 1-based
    return rows + (f" and {idx.size - _SHOW_ROWS} more" if idx.size > _SHOW_ROWS else "")


def is_group_name(name: str) -> bool:
    """``group::name`` (both parts non-empty), not a ``mask::`` path column."""
    head, sep, tail = name.partition(GROUP_SEP)
    return bool(sep and head.strip() and tail.strip()) and not name.startswith(NOT_CONCEPT_PREFIXES)


def is_concept_column(name: str, cells: Sequence[object]) -> bool:
    """A concept by its name (``group::name``) or by its values (every non-blank cell 0/1-like)."""
    if name.startswith(NOT_CONCEPT_PREFIXES):
        return False
    if is_group_name(name):
        return True
    v = _norm(cells)
    filled = v[v != ""]
    return bool(filled.size) and bool(np.isin(filled, TRUE_VALUES + FALSE_VALUES).all())


def looks_like_labels(cells: Sequence[object]) -> bool:
    """A non-concept column that is probably a label column written wrongly (see the module docstring)."""
    v = _norm(cells)
    filled = v[v != ""]
    if not filled.size:
        return False
    distinct = set(filled.tolist())
    like = np.isin(filled, TRUE_VALUES + FALSE_VALUES)
    return len(distinct) == 2 or like.mean() >= 0.5 or (bool(like.any()) and len(distinct) <= 4)


def parse_label_column(name: str, cells: Sequence[object], where: str,
                       missing: str = MISSING_LABELS, row0: int = 2) -> np.ndarray:
    """The 0/1 labels of concept column ``name``; one error line naming the column and the bad rows.

    ``missing`` says what a blank cell is: ``error`` (the default) or ``allow`` (read as 0; for
    the benchmarks issue's ``data.missing_labels``). ``row0``: the row number of the first cell
    in messages (2 in a CSV with its header; 0 for a table's row index).
    """
    v = _norm(cells)
    pos = np.isin(v, TRUE_VALUES)
    ok = pos | np.isin(v, FALSE_VALUES)
    blank = v == ""
    bad = np.flatnonzero(~ok & ~blank)
    if bad.size:
        shown = sorted({str(cells[int(i)]) for i in bad[:_SHOW_ROWS]})
        raise DatasetError(f"{where}: row {_rows(bad, row0)}, column {name!r}: expected 0 or 1, got "
                           f"{', '.join(repr(s) for s in shown)} ({bad.size} cell(s); yes/no and true/false are "
                           "read as 1/0 too)")
    if blank.any() and missing != "allow":
        idx = np.flatnonzero(blank)
        raise DatasetError(f"{where}: row {_rows(idx, row0)}, column {name!r}: blank label ({idx.size} cell(s)); "
                           "every sample needs 0 or 1")
    return pos.astype(np.uint8)


def blank_cells(cells: Sequence[object]) -> np.ndarray:
    """``[n]`` bool: which cells of a label column are blank (missing labels; NaN / None included)."""
    return np.array([c is None or (isinstance(c, float) and c != c) or str(c).strip() == "" for c in cells],
                    dtype=bool)


def split_columns(columns: dict[str, Sequence[object]], listed: Sequence[str] | None,
                  where: str, missing: str = MISSING_LABELS) -> tuple[dict[str, np.ndarray], list[str]]:
    """(label arrays of every concept column, metadata column names) of a metadata table.

    ``listed``: the concepts the run asks for (``data.concepts``), or None for every concept
    column. A listed column is parsed as labels whatever its values; when concepts are listed, a
    column that merely looks like labels (:func:`looks_like_labels`) stays metadata; when not,
    it is an error.
    """
    want = set(listed or ())
    labels: dict[str, np.ndarray] = {}
    meta: list[str] = []
    problems: list[str] = []
    for name, cells in columns.items():
        concept = name in want or is_concept_column(name, cells)
        if not concept:
            if listed is None and not name.startswith(NOT_CONCEPT_PREFIXES) and looks_like_labels(cells):
                v = _norm(cells)
                bad = np.flatnonzero(~np.isin(v, TRUE_VALUES + FALSE_VALUES))
                shown = sorted({str(cells[int(i)]) for i in bad[:_SHOW_ROWS]})
                problems.append(
                    f"{where}: row {_rows(bad)}, column {name!r}: expected 0 or 1, got "
                    f"{', '.join(repr(s) for s in shown)} ({bad.size} cell(s) of a column that looks like a "
                    "concept column; write 0/1, or list the concepts in data.concepts to keep it as metadata)")
            else:
                meta.append(name)
            continue
        try:
            labels[name] = parse_label_column(name, cells, where, missing=missing)
        except DatasetError as err:
            problems += err.problems
    if problems:
        raise DatasetError(problems)
    return labels, meta


def select_labels(label_cols: dict[str, np.ndarray], concepts: Sequence[str] | None, where: str,
                  hint: str = "") -> tuple[list[str], np.ndarray]:
    """The chosen concepts (all 0/1 columns when ``concepts`` is None) and their ``[N, C]`` labels."""
    if concepts is not None:
        missing = [c for c in concepts if c not in label_cols]
        if missing:
            raise DatasetError(f"{where}: missing concept column(s) {missing}")
        names = list(concepts)
    else:
        names = list(label_cols)
    if not names:
        raise DatasetError(f"{where}: no 0/1 concept columns found{hint}")
    return names, np.stack([label_cols[c] for c in names], axis=1)


def hard_negative_matrix(columns: dict[str, Sequence[object]], concepts: Sequence[str], labels: np.ndarray,
                         where: str) -> np.ndarray | None:
    """``[N, C]`` uint8 hard-negative marks from the ``hard_negative::CONCEPT`` columns, or None without any.

    Each column must name a concept of the run and hold 0/1 cells (a blank cell is an unmarked
    sample, e.g. AxBench rows outside the concept's own scope); a sample marked as a hard
    negative of a concept it is positive for is an error (a hard negative is a negative).
    Concepts without a column get zeros (no hard negatives).
    """
    cols = {n[len(HARD_NEGATIVE_PREFIX):]: v for n, v in columns.items() if str(n).startswith(HARD_NEGATIVE_PREFIX)}
    if not cols:
        return None
    out = np.zeros((len(labels), len(concepts)), dtype=np.uint8)
    problems: list[str] = []
    for concept, cells in cols.items():
        name = HARD_NEGATIVE_PREFIX + concept
        if concept not in concepts:
            problems.append(f"{where}: column {name!r}: no concept {concept!r} in this run "
                            f"(concepts: {list(concepts)[:8]}{' ...' if len(concepts) > 8 else ''})")
            continue
        try:
            v = parse_label_column(name, cells, where, missing="allow")  # a blank mark: not a hard negative
        except DatasetError as err:
            problems += err.problems
            continue
        j = list(concepts).index(concept)
        both = np.flatnonzero((v > 0) & (labels[:, j] > 0))
        if both.size:
            problems.append(f"{where}: row {_rows(both)}, column {name!r}: marked hard negative but positive for "
                            f"{concept!r} ({both.size} sample(s)); a hard negative must be a negative")
        out[:, j] = v
    if problems:
        raise DatasetError(problems)
    return out
