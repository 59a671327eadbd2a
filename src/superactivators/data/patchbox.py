"""Which pixels of an input image one patch token covers: for image evidence ("patch row 3,
column 5 = pixels x 42-56, y 70-84"), through the processor's resize / crop / pad recipe."""

from __future__ import annotations

import math

from .masks import Placement


def patch_box(pl: Placement, patch: int, row: int, col: int) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` in the original image's pixels (end exclusive, rounded outwards) that
    patch ``(row, col)`` covers, clipped to the image; None when it covers only padding."""
    def span(i: int, offset: int, resized: int, orig: int) -> tuple[int, int] | None:
        a = min(max(i * patch - offset, 0), resized)
        b = min(max((i + 1) * patch - offset, 0), resized)
        if b <= a:
            return None
        return math.floor(a * orig / resized + 1e-9), math.ceil(b * orig / resized - 1e-9)

    ys = span(row, pl.top, pl.resized_h, pl.orig_h)
    xs = span(col, pl.left, pl.resized_w, pl.orig_w)
    if ys is None or xs is None:
        return None
    return xs[0], ys[0], xs[1], ys[1]
