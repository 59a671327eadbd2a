"""Small tables for the terminal and for Jupyter (result CSVs are read by :mod:`.tables`): detector summaries, detections, console output.

Terminal tables are fitted to a width (100 columns by default): the widest text columns are
cut with "…" until the table fits, numbers are never cut. Files (CSV) keep the full values.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import pandas as pd

WIDTH = 100  # console columns a table may take
MAX_ROWS = 20  # rows shown in a repr before "... and N more"


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[:max(n - 1, 0)] + "…"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], width: int = WIDTH,
               numeric: Sequence[bool] | None = None, indent: str = "") -> str:
    """A plain left/right-aligned table no wider than ``width`` (text cells cut with "…")."""
    cells = [[str(c) for c in r] for r in rows]
    heads = [str(h) for h in headers]
    num = list(numeric) if numeric is not None else [False] * len(heads)
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(heads)]
    sep = 2

    def total() -> int:
        return len(indent) + sum(widths) + sep * (len(widths) - 1)

    while total() > width:  # shrink the widest text column, down to 6 characters
        cand = [j for j in range(len(widths)) if not num[j] and widths[j] > 6]
        if not cand:
            break
        j = max(cand, key=lambda k: widths[k])
        widths[j] -= min(widths[j] - 6, total() - width)

    def line(vals: Sequence[str]) -> str:
        out = [(_cut(v, w).rjust(w) if n else _cut(v, w).ljust(w)) for v, w, n in zip(vals, widths, num)]
        return (indent + (" " * sep).join(out)).rstrip()

    return "\n".join([line(heads)] + [line(r) for r in cells])


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table as HTML (for ``_repr_html_``), every cell escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def limited(rows: list, n: int = MAX_ROWS) -> tuple[list, str]:
    """The first ``n`` rows and a "... and K more" line (empty when all fit)."""
    return (rows, "") if len(rows) <= n else (rows[:n], f"... and {len(rows) - n} more")


def fmt_num(v: object, digits: int = 4) -> str:
    """A number for a table cell: ``g``-formatted, "–" for missing."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)
    return "–" if f != f else f"{f:.{digits}g}"


def frame_text(df: pd.DataFrame, width: int = WIDTH, index: bool = True, digits: int = 3,
               short: Callable[[str], str] = str) -> str:
    """A DataFrame for the console: names shortened by ``short`` (e.g. the method records'
    :func:`~superactivators.evaluate.methods.short_label`), numbers rounded, and the columns
    wrapped into blocks of at most ``width`` characters (the full table is in the CSV)."""
    out = df.copy()
    out.columns = [short(c) if isinstance(c, str) else c for c in out.columns]
    if isinstance(out.index, pd.MultiIndex):
        out.index = out.index.set_names([short(n) if isinstance(n, str) else n for n in out.index.names])
    elif isinstance(out.index.name, str):
        out.index.name = short(out.index.name)
    if "method" in out.columns:
        out["method"] = [short(v) for v in out["method"]]
    return out.round(digits).to_string(index=index, line_width=width)


def wrap(text: str, width: int = WIDTH, indent: str = "") -> str:
    """A long line (legend, header) wrapped to ``width`` columns."""
    import textwrap  # noqa: PLC0415

    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False))
