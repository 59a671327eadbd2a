"""Quantiles of in-concept activation populations too large to hold: streamed, bounded memory.

Calibration needs, per concept, order statistics (the ``k``-th largest value, see
:func:`superactivators.evaluate.calibrate.tail_counts`) of its in-concept ``cal`` token
activations; linear quantiles are offered too. Up to a few tens of millions of values they are
kept and the order statistic is exact. Beyond that, :class:`StreamingQuantiles` keeps a fixed-size
histogram instead.

**Method.** A float32 value ``x`` maps to a 32-bit key that sorts like ``x`` (sign bit flipped
for positives, all bits flipped for negatives). The histogram counts, per concept, the values
sharing the top ``bits`` bits of their key: with the default 16 bits a bucket is one sign, one
binary exponent and the top 7 mantissa bits, so its values lie within a factor ``1 + 2^-7`` of
each other. Memory is ``C * 2^bits`` counts (80 concepts: 42 MB), whatever the population.

**Error bound.** Counting tells exactly which bucket holds each order statistic. The estimate
of order statistic ``x_(k)`` interpolates linearly inside its bucket, clipped to the bucket's
(and the concept's observed) value range, so ``|estimate - x_(k)| <= width of that bucket``,
and a bucket of values with exponent ``e`` is ``2^(e - bits + 9)`` wide: a relative error of at
most ``2^-(bits - 9)`` = 0.78 % at 16 bits (``bounds`` gives the exact interval). A linear
quantile ``(1 - g) x_(k) + g x_(k+1)`` mixes two order statistics; its interval is the same mix
of theirs, no wider than the wider of the two buckets. That is how the seed's threshold rule
(``protocol: seed``: the linear ``1 - N/100`` quantile, see
:func:`superactivators.evaluate.calibrate.seed_thresholds`) keeps the bound: it reads
:meth:`HistogramPopulation.quantile`, so each threshold lies in the ``bounds`` interval, within
``2^-(bits - 9)`` of the exact linear quantile relative to the larger magnitude of its two order statistics.
Populations saved with a stage (:func:`pack_populations`) keep the raw values (exact under both
rules) or the histogram itself (the same bound after loading).

**Exact, in two passes.** :meth:`StreamingQuantiles.refinement` returns a :class:`BucketCollector`
that, fed the same values again, keeps only the values in the (at most 2 per quantile) buckets
holding the needed order statistics; its ``quantiles`` then equal ``np.quantile`` exactly. Its
memory is known before the second pass (:meth:`BucketCollector.n_expected`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

KEY_BITS = 32


def float_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving ``uint32`` keys of float32 values (``a < b`` iff ``key(a) < key(b)``)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def keys_to_floats(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys`."""
    k = np.asarray(k, dtype=np.uint32)
    bits = np.where(k & np.uint32(0x80000000), k & np.uint32(0x7FFFFFFF), ~k)
    return bits.view(np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own linear interpolation (same rounding as ``np.quantile(method='linear')``)."""
    d = b - a
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def _order_stats_needed(n: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks ``k0``, ``k1`` and weight ``gamma`` with quantile = lerp(x_(k0), x_(k1), gamma), as numpy."""
    h = (n - 1) * q
    k0 = np.floor(h)
    gamma = h - k0
    k0 = k0.astype(np.int64)
    return k0, np.minimum(k0 + 1, n - 1), gamma


class StreamingQuantiles:
    """Per-concept histograms over the top ``bits`` bits of order-preserving float keys."""

    def __init__(self, n_concepts: int, bits: int = 16):
        if not 4 <= bits <= 24:
            raise ValueError(f"bits must be in 4..24, got {bits}")
        self.n_concepts, self.bits = n_concepts, bits
        self.shift = KEY_BITS - bits
        self.counts = np.zeros((n_concepts, 1 << bits), dtype=np.int64)
        self.lo = np.full(n_concepts, np.inf, dtype=np.float32)  # observed min / max per concept
        self.hi = np.full(n_concepts, -np.inf, dtype=np.float32)

    @property
    def n(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    @property
    def memory_bytes(self) -> int:
        return int(self.counts.nbytes)

    def add(self, values: np.ndarray, cols: np.ndarray) -> None:
        """Count ``values[i]`` for concept ``cols[i]``."""
        values = np.asarray(values, dtype=np.float32)
        cols = np.asarray(cols, dtype=np.int64)
        if values.shape != cols.shape:
            raise ValueError(f"values {values.shape} and cols {cols.shape} differ in shape")
        if not len(values):
            return
        if not np.isfinite(values).all():
            raise FloatingPointError("non-finite activations in a quantile population")
        if cols.min() < 0 or cols.max() >= self.n_concepts:
            raise ValueError(f"concept index out of range 0..{self.n_concepts - 1}")
        width = 1 << self.bits
        flat = cols * width + (float_keys(values) >> np.uint32(self.shift)).astype(np.int64)
        self.counts += np.bincount(flat, minlength=self.n_concepts * width).reshape(self.n_concepts, width)
        np.minimum.at(self.lo, cols, values)
        np.maximum.at(self.hi, cols, values)

    def _locate(self, c: int, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bucket of each rank, the count before it, and the bucket's count."""
        cum = np.cumsum(self.counts[c])
        b = np.searchsorted(cum, ranks, side="right")  # first bucket whose cumulative count > rank
        before = np.where(b > 0, cum[np.maximum(b - 1, 0)], 0)
        return b, before, self.counts[c, b]

    def _bucket_range(self, c: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest float of buckets ``b``, clipped to the concept's observed range."""
        first = (b.astype(np.uint64) << np.uint64(self.shift)).astype(np.uint32)
        last = (first.astype(np.uint64) + np.uint64((1 << self.shift) - 1)).astype(np.uint32)
        with np.errstate(invalid="ignore"):
            lo = np.maximum(keys_to_floats(first).astype(np.float64), self.lo[c])
            hi = np.minimum(keys_to_floats(last).astype(np.float64), self.hi[c])
        return np.nan_to_num(lo, nan=float(self.lo[c])), np.nan_to_num(hi, nan=float(self.hi[c]))

    def _order_stat(self, c: int, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Estimate and guaranteed interval ``[lo, hi]`` of order statistics ``ranks`` (0-based)."""
        b, before, cnt = self._locate(c, ranks)
        lo, hi = self._bucket_range(c, b)
        est = lo + (hi - lo) * (ranks - before + 0.5) / np.maximum(cnt, 1)
        return np.clip(est, lo, hi), lo, hi

    def quantiles(self, q: Sequence[float]) -> np.ndarray:
        """Estimated linear quantiles ``[C, len(q)]`` (NaN for an empty concept)."""
        return self.bounds(q)[0]

    def bounds(self, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(estimate, lower, upper)`` ``[C, G]``; the exact quantile lies in ``[lower, upper]``."""
        q = _check_q(q)
        out = np.stack([np.stack(self.concept_bounds(c, q)) for c in range(self.n_concepts)], axis=1)
        return out[0], out[1], out[2]

    def concept_bounds(self, c: int, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(estimate, lower, upper)`` ``[G]`` for concept ``c`` (NaN when it has no values)."""
        q = _check_q(q)
        n = int(self.counts[c].sum())
        if n == 0:
            nan = np.full(len(q), np.nan)
            return nan, nan.copy(), nan.copy()
        k0, k1, g = _order_stats_needed(n, q)
        e0, l0, h0 = self._order_stat(c, k0)
        e1, l1, h1 = self._order_stat(c, k1)
        # lerp is monotone in both ends, so the bounds interpolate like the values
        return _lerp(e0, e1, g), _lerp(l0, l1, g), _lerp(h0, h1, g)

    def population(self, c: int) -> "HistogramPopulation":
        return HistogramPopulation(self, c)

    def refinement(self, q: Sequence[float]) -> "BucketCollector":
        """A second-pass collector that makes :meth:`quantiles` exact for these ``q``."""
        return BucketCollector(self, _check_q(q))


@dataclass
class HistogramPopulation:
    """One concept of a :class:`StreamingQuantiles`, usable where a population array is expected
    by :func:`superactivators.evaluate.calibrate.tail_thresholds` (``order_stats`` under the rule
    ``"ours"``, ``quantile`` under ``"seed"``)."""

    hist: StreamingQuantiles
    concept: int

    def __len__(self) -> int:
        return int(self.hist.counts[self.concept].sum())

    @property
    def size(self) -> int:
        return len(self)

    def quantile(self, q: Sequence[float]) -> np.ndarray:
        """Estimated linear quantiles ``[G]`` (within the bound of the module docstring)."""
        return self.hist.concept_bounds(self.concept, q)[0]

    def order_stats(self, ranks: Sequence[int]) -> np.ndarray:
        """Estimated order statistics ``x_(k)`` (0-based ascending ranks), each within its bucket."""
        return self.order_stat_bounds(ranks)[0]

    def order_stat_bounds(self, ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(estimate, lower, upper)``: the exact ``x_(k)`` lies in ``[lower, upper]``."""
        ranks = np.asarray(ranks, dtype=np.int64)
        n = len(self)
        if ranks.size and (ranks.min() < 0 or ranks.max() >= n):
            raise ValueError(f"ranks must lie in [0, {n}), got {ranks.min()}..{ranks.max()}")
        return self.hist._order_stat(self.concept, ranks)


class BucketCollector:
    """Second pass: keep only the values in the buckets that hold the needed order statistics."""

    def __init__(self, hist: StreamingQuantiles, q: np.ndarray):
        self.hist, self.q = hist, q
        width = 1 << hist.bits
        self.wanted = np.zeros(hist.n_concepts * width, dtype=bool)
        self._plan: list[tuple | None] = []
        for c, n in enumerate(hist.n):
            if n == 0:
                self._plan.append(None)
                continue
            k0, k1, g = _order_stats_needed(int(n), q)
            b0, before0, _ = hist._locate(c, k0)
            b1, before1, _ = hist._locate(c, k1)
            self.wanted[c * width + np.concatenate([b0, b1])] = True
            self._plan.append((k0 - before0, b0, k1 - before1, b1, g))
        self._vals: list[np.ndarray] = []
        self._flat: list[np.ndarray] = []

    def n_expected(self) -> int:
        """Values this pass will keep (known from the histogram before the pass)."""
        return int(self.hist.counts.reshape(-1)[self.wanted].sum())

    def add(self, values: np.ndarray, cols: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32)
        flat = np.asarray(cols, dtype=np.int64) * (1 << self.hist.bits) + \
            (float_keys(values) >> np.uint32(self.hist.shift)).astype(np.int64)
        keep = self.wanted[flat]
        self._vals.append(values[keep])
        self._flat.append(flat[keep])

    def quantiles(self) -> np.ndarray:
        """Exact linear quantiles ``[C, G]``, equal to ``np.quantile(population, q)``."""
        vals = np.concatenate(self._vals) if self._vals else np.empty(0, np.float32)
        flat = np.concatenate(self._flat) if self._flat else np.empty(0, np.int64)
        if len(vals) != self.n_expected():
            raise RuntimeError(f"second pass saw {len(vals)} values in the target buckets, the first "
                               f"{self.n_expected()}: the two passes must see the same population")
        order = np.lexsort((vals, flat))  # by bucket, then value
        vals, flat = vals[order].astype(np.float64), flat[order]
        width = 1 << self.hist.bits
        out = np.full((self.hist.n_concepts, len(self.q)), np.nan)
        for c, plan in enumerate(self._plan):
            if plan is None:
                continue
            r0, b0, r1, b1, g = plan
            s0 = np.searchsorted(flat, c * width + b0)  # where each target bucket starts
            s1 = np.searchsorted(flat, c * width + b1)
            out[c] = _lerp(vals[s0 + r0], vals[s1 + r1], g)
        return out


def _check_q(q: Sequence[float]) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 1 or np.any((q < 0) | (q > 1)):
        raise ValueError(f"quantile levels must be a 1-d sequence in [0, 1], got {q}")
    return q


def pack_populations(pops: Sequence) -> dict[str, np.ndarray]:
    """Arrays for an ``.npz``: exact populations as values + lengths, a histogram as its
    non-zero bins (a summary's cache file stays small either way)."""
    if pops and isinstance(pops[0], HistogramPopulation):
        h = pops[0].hist
        if any(not isinstance(p, HistogramPopulation) or p.hist is not h for p in pops):
            raise ValueError("populations mix a histogram with other kinds")
        nz = np.flatnonzero(h.counts)
        return {"cal_hist_bits": np.array(h.bits), "cal_hist_index": nz, "cal_hist_counts": h.counts.reshape(-1)[nz],
                "cal_hist_lo": h.lo, "cal_hist_hi": h.hi}
    lens = np.array([len(v) for v in pops], dtype=np.int64)
    vals = np.concatenate([np.asarray(v, dtype=np.float32) for v in pops]) if len(lens) else np.empty(0, np.float32)
    return {"cal_lengths": lens, "cal_values": vals}


def unpack_populations(z) -> list:
    """Inverse of :func:`pack_populations` (``z``: a loaded ``.npz`` or a dict)."""
    if "cal_hist_bits" in z:
        lo = np.asarray(z["cal_hist_lo"])
        h = StreamingQuantiles(len(lo), bits=int(z["cal_hist_bits"]))
        h.counts.reshape(-1)[np.asarray(z["cal_hist_index"])] = z["cal_hist_counts"]
        h.lo, h.hi = lo.astype(np.float32), np.asarray(z["cal_hist_hi"], dtype=np.float32)
        return [h.population(c) for c in range(len(lo))]
    bounds = np.concatenate([[0], np.cumsum(z["cal_lengths"])]).astype(np.int64)
    vals = z["cal_values"]
    return [vals[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
