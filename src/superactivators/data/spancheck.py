"""Character spans against their texts: a span that ends past its text's end, or lies wholly
outside it, is a problem naming the file, row and concept (before any model loads); with
``data.clip_spans: true`` a warning instead, and the span is cut to the text. And the per-concept
amounts of inline / ``spans``-column truth for ``dataset-info``."""

from __future__ import annotations

import re
import warnings

from typing import Any

import numpy as np
import pandas as pd

Dataset = Any  # a superactivators.data.datasets.Dataset (not imported: datasets imports this module)

_WORD = re.compile(r"\S+")


def span_problems(ds: Dataset, clip: bool = False) -> list[str]:
    """One line per span outside its text (``clip``: warned about and cut instead; rows whose text
    cannot be read are left to the text checks)."""
    if ds.spans is None or ds.modality != "text":
        return []
    out = []
    for i, sp in enumerate(ds.spans):
        if not sp:
            continue
        try:
            n = len(ds.text(i))
        except Exception:  # noqa: BLE001 - unreadable texts are reported by the text-file check
            continue
        for c, lst in sp.items():
            kept = []
            for a, b in lst:
                if b <= n:
                    kept.append((a, b))
                    continue
                how = "lies wholly outside" if a >= n else "ends past the end of"
                line = (f"{ds.source}: row {i + 2}, column 'spans': span [{a}, {b}) for {c!r} {how} its text "
                        f"({n} characters)")
                if not clip:
                    out.append(line)
                    continue
                warnings.warn(line + ("; dropped" if a >= n else f"; cut to [{a}, {n})"), stacklevel=2)
                if a < n:
                    kept.append((a, n))
            if clip:
                sp[c] = kept
    if out:
        out.append("(fix the spans, or set data.clip_spans: true to cut them to their texts with a warning each)")
    return out


def span_amounts(ds: Dataset) -> pd.DataFrame | None:
    """Per concept: positives, positives with spans, spans, in-concept characters and words (a
    word counts when any of its characters is inside a span)."""
    if ds.spans is None or ds.modality != "text":
        return None
    C = len(ds.concepts)
    with_truth, n_spans, chars, words = (np.zeros(C, np.int64) for _ in range(4))
    for i, sp in enumerate(ds.spans):
        if not sp:
            continue
        text = ds.text(i)
        bounds = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        for c, lst in sp.items():
            j = ds.concepts.index(c)
            if not ds.labels[i, j]:
                continue
            with_truth[j] += 1
            n_spans[j] += len(lst)
            inside = np.zeros(len(text) + 1, bool)
            for a, b in lst:
                inside[a:min(b, len(text))] = True
            chars[j] += int(inside.sum())
            words[j] += sum(bool(inside[s:e].any()) for s, e in bounds)
    pos = ds.labels.astype(bool).sum(axis=0)
    return pd.DataFrame({"concept": ds.concepts, "positives": pos, "with_truth": with_truth, "spans": n_spans,
                         "characters": chars, "words": words}).set_index("concept")
