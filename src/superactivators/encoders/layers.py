"""Which hidden-state layers to read: indices, percent-through-model, or ``all``.

Hugging Face models return ``n_layers + 1`` hidden states: index 0 is the embedding output
and index ``k`` the output of block ``k``. A percentage ``p`` maps to block
``floor(p / 100 * n_layers + 0.5)`` (round half up), clamped to ``[1, n_layers]`` so that a
small percentage never silently selects the embedding layer. Layer 0 is only chosen when
asked for by index.
"""

from __future__ import annotations

import math
from typing import Sequence

LayerSpec = int | str


def percent_to_layer(percent: float, n_layers: int) -> int:
    """Block index for ``percent`` through a model with ``n_layers`` blocks."""
    if not 0 <= percent <= 100:
        raise ValueError(f"layer percentage must be in [0, 100], got {percent}")
    return min(n_layers, max(1, math.floor(percent / 100 * n_layers + 0.5)))


def resolve_layers(spec: LayerSpec | Sequence[LayerSpec], n_layers: int) -> list[int]:
    """Sorted unique block indices for ``spec``.

    ``spec`` is ``"all"`` (every block 1..n), an int index (negative counts from the end,
    ``-1`` is the last block), a string ``"50%"`` or a list of these.
    """
    if isinstance(spec, (int, str)):
        spec = [spec]
    out: set[int] = set()
    for item in spec:
        if isinstance(item, str):
            s = item.strip().lower()
            if s == "all":
                out.update(range(1, n_layers + 1))
                continue
            if s.endswith("%"):
                out.add(percent_to_layer(float(s[:-1]), n_layers))
                continue
            try:
                item = int(s)
            except ValueError:
                raise ValueError(f"bad layer spec {item!r}: use an index, 'P%' or 'all'") from None
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"bad layer spec {item!r}")
        idx = n_layers + 1 + item if item < 0 else item
        if not 0 <= idx <= n_layers:
            raise ValueError(f"layer {item} out of range for a model with {n_layers} layers")
        out.add(idx)
    if not out:
        raise ValueError("no layers selected")
    return sorted(out)
