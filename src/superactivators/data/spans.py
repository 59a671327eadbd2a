"""One ``spans`` cell (JSON ``{"concept": [[start, end], ...]}``) checked strictly.

Why strict: ``int()`` read ``[[false, true]]`` as ``[0, 1]``, ``1.9`` as ``1`` and ``1e400`` as an
overflow from deep inside numpy; JSON nested thousands deep ended in a RecursionError. Here a
bound is a JSON integer (no boolean, float or string) in ``[0, MAX_OFFSET]``, a span is exactly
``[start, end]`` with ``start < end``, and every refusal is one line naming the cell and concept.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from .errors import DatasetError

MAX_OFFSET = 2**31 - 1  # character offsets; no text of 2 GiB is embedded
Span = tuple[int, int]


def _no_float(text: str) -> float:
    raise ValueError(f"{text} is not an integer")


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not an integer")


def parse_span_cell(cell: str, where: str, concepts: Collection[str],
                    columns: Collection[str] = ()) -> dict[str, list[Span]]:
    """The spans of one non-blank cell; ``concepts``: the concept columns, ``columns``: every
    column (a span naming a metadata column says so instead of "unknown concept")."""
    try:
        obj = json.loads(cell, parse_float=_no_float, parse_constant=_no_constant)
    except RecursionError:
        raise DatasetError(f"{where}: invalid JSON (nested too deeply)") from None
    except ValueError as err:
        raise DatasetError(f"{where}: invalid JSON ({' '.join(str(err).split())}); bounds must be "
                           "integers") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object {{\"concept\": [[start, end], ...]}}, "
                           f"got a JSON {type(obj).__name__}")
    out: dict[str, list[Span]] = {}
    for c, lst in obj.items():
        if c not in concepts:
            if c in columns:
                raise DatasetError(f"{where}: span for {c!r}, which is a metadata column, not a concept "
                                   "(a concept column holds 0/1 labels)")
            raise DatasetError(f"{where}: unknown concept {c!r} (no such column)")
        if not isinstance(lst, list):
            raise DatasetError(f"{where}: concept {c!r}: expected a list of [start, end] pairs, got {lst!r}"[:300])
        spans: list[Span] = []
        for pair in lst:
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
                raise DatasetError(f"{where}: concept {c!r}: a span must be [start, end] with two integers "
                                   f"(no booleans, floats, strings or nested lists), got {json.dumps(pair)[:80]}")
            a, b = pair
            if not 0 <= a < b <= MAX_OFFSET:
                raise DatasetError(f"{where}: concept {c!r}: bad span [{a}, {b}) (need 0 <= start < end <= "
                                   f"{MAX_OFFSET})"[:300])
            spans.append((a, b))
        out[str(c)] = spans
    return out
