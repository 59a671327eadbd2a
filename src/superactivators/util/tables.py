"""The one reader for every result table the project writes and reads back.

Why: pandas' default CSV reader turns the cells ``nan``, ``NA``, ``None``, ``null``, ``N/A``
(and the rest of its NA spellings) into NaN, so a concept of that name silently vanished from
every table read back (``best_layers.csv`` and its ``__weighted__`` rows included). Here no text
is ever reinterpreted: every cell is read as the exact string written; the name columns
(:data:`TEXT_COLUMNS`) stay strings, and every other column becomes numbers (a blank cell is
NaN, which is how ``DataFrame.to_csv`` writes NaN) or booleans when all its cells are numbers
or ``True`` / ``False``. A table that is empty, cut or not CSV is an error naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

#: columns holding names (concepts, methods, concept types, ...): never converted
TEXT_COLUMNS = frozenset({
    "concept", "concept_type", "method", "ctype", "split", "dataset", "model", "group", "name", "label",
    "text", "answer", "prompt", "question", "cluster", "matched", "best_method", "note", "row", "kind", "unit_name",
})


class TableError(ValueError):
    """A result table cannot be read; the message names the file and says how to rebuild it."""


def _convert(col: pd.Series) -> pd.Series:
    """Numbers (blank -> NaN) or booleans when every cell is one; else the strings as written."""
    vals = col.to_numpy(dtype=object)
    filled = np.array([v != "" for v in vals], dtype=bool)
    if filled.any() and all(v in ("True", "False") for v in vals[filled]):
        return pd.Series([None if not f else v == "True" for v, f in zip(vals, filled)], index=col.index,
                         name=col.name, dtype=object if not filled.all() else bool)
    try:
        out = pd.to_numeric(col.where(filled, np.nan), errors="raise")
    except (ValueError, TypeError):
        return col
    return out


def read_table(path: str | Path, text_columns: Iterable[str] = (), index_col: int | None = None,
               rebuild: str = "delete it and run the same command again") -> pd.DataFrame:
    """The table at ``path`` with every text kept exactly (see the module docstring).

    ``text_columns`` adds columns to :data:`TEXT_COLUMNS`; ``index_col`` (as in pandas) reads a
    table written with its index (kept as strings). ``rebuild`` is the hint a damaged file's
    error gives.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, index_col=index_col)
    except FileNotFoundError:
        raise
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: empty file (no header); {rebuild}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TableError(f"{path}: not a readable CSV table ({msg}); {rebuild}") from None
    keep = TEXT_COLUMNS | set(text_columns)
    for c in df.columns:
        if c not in keep:
            df[c] = _convert(df[c])
    return df
