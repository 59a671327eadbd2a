"""Which hidden-state layers to read: indices, percent-through-model, or ``all``.

Layer numbering: Hugging Face models return ``n_layers + 1`` hidden states; index 0 is the
embedding output and index ``k`` the output of block ``k`` (blocks counted from 1). Our layer
``k`` is that ``hidden_states[k]``.

Percent-through-model follows the seed study's rule (``percent_to_layer`` in its
``utils/embedding_utils.py``): ``p`` % of an ``n``-block model is the 0-based block
``floor(p * n / 100) - 1``, clamped to ``[0, n - 1]``, whose output is our layer
``floor(p * n / 100)``, clamped to ``[1, n]``. So a small percentage never selects the
embedding layer, ``100%`` is the last block, and the seed's own tables
(``Model_Layer_Mappings/percent_to_layer_lookup.json``) map back exactly for every seed model
at its real depth. The product is computed exactly (decimal arithmetic), so ``p * n / 100``
that is a whole number is never floored one block too low by binary rounding. Layer 0 is only
chosen when asked for by index.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Sequence

LayerSpec = int | str


def seed_block(percent: float | str, n_layers: int) -> int:
    """The seed's 0-based block for ``percent`` through an ``n_layers``-block model."""
    try:
        p = Decimal(str(percent).strip().rstrip("%"))
    except InvalidOperation:
        raise ValueError(f"bad layer percentage {percent!r}") from None
    if not p.is_finite() or not 0 <= p <= 100:
        raise ValueError(f"layer percentage must be in [0, 100], got {percent}")
    if n_layers < 1:
        raise ValueError(f"a model needs at least one block, got n_layers={n_layers}")
    return min(n_layers - 1, max(0, math.floor(p * n_layers / 100) - 1))


def percent_to_layer(percent: float | str, n_layers: int) -> int:
    """Our layer index (``hidden_states`` index, 1..n) for ``percent`` through the model."""
    return seed_block(percent, n_layers) + 1


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
                out.add(percent_to_layer(s[:-1], n_layers))
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
