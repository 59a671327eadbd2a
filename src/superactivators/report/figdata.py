"""Data behind the figures, saved per (layer, concept type) stage folder.

- ``hist.npz``: in- and out-of-concept token activation histograms on ``test``, built by
  :class:`HistogramAccumulator` during the scoring pass (fixed bins per concept from a cheap
  range estimate; one ``np.bincount`` per shard over (group, concept, bin) keys).
- ``curves.npz``: F1 as a function of N on ``cal`` and ``test`` for every tail-calibrated
  method (from :class:`~superactivators.evaluate.detect.MethodResult`).
- example token activations: the activations of a few chosen samples' tokens, read straight
  from the store (a handful of rows, so computed on demand by the report).

A stage written before these files existed is back-filled by :func:`ensure_histograms`
(one extra scoring pass) so that ``superactivators report`` works on any finished run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..concepts.supervised import ConceptSet
from ..concepts.types import load_concepts
from ..evaluate.scoring import PassContext, make_scorer, score_store
from ..store.layout import StageFolder
from ..store.tokens import Shard, TokenStore
from ..store.artefacts import load_npz, recording
from ..util.io import atomic_save_npz

OUT, IN = 0, 1  # group index of out-of-concept / in-concept tokens


@dataclass
class TokenHistograms:
    """Per concept, histograms of out- (row 0) and in-concept (row 1) token activations.

    ``counts[g, c, b]`` counts tokens of group ``g`` whose activation for concept ``c`` lies in
    ``[edges[c, b], edges[c, b + 1])``; values outside the range are counted in the end bins
    and also in ``under`` / ``over`` so that a figure can say so. ``vmin`` / ``vmax`` are the
    exact extremes seen (NaN for an empty group).
    """

    names: list[str]
    split: str
    edges: np.ndarray  # [C, B + 1]
    counts: np.ndarray  # [2, C, B] int64
    under: np.ndarray  # [2, C]
    over: np.ndarray  # [2, C]
    vmin: np.ndarray  # [2, C]
    vmax: np.ndarray  # [2, C]

    @property
    def n_tokens(self) -> np.ndarray:
        """Tokens per group and concept ``[2, C]``."""
        return self.counts.sum(axis=2)

    def save(self, path: Path) -> None:
        with recording(Path(path)):
            atomic_save_npz(Path(path), names=np.array(self.names), split=np.array(self.split), edges=self.edges,
                            counts=self.counts, under=self.under, over=self.over, vmin=self.vmin, vmax=self.vmax)

    @classmethod
    def load(cls, path: Path) -> "TokenHistograms":
        z = load_npz(path)
        return cls(names=[str(n) for n in z["names"]], split=str(z["split"]), edges=z["edges"], counts=z["counts"],
                   under=z["under"], over=z["over"], vmin=z["vmin"], vmax=z["vmax"])


def estimate_range(store: TokenStore, cs: ConceptSet, token_mask: np.ndarray, n: int = 4096, seed: int = 0,
                   device: str | torch.device = "cpu", widen: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-concept ``(lo, hi)`` from the activations of up to ``n`` random masked tokens.

    The observed span is widened by ``widen`` of itself on each side, so that the rare tail
    tokens (the point of the method) usually fall inside the bins; cosine ranges are clipped
    to ``[-1, 1]``. Reads only the sampled rows.
    """
    rows = np.flatnonzero(token_mask)
    if rows.size == 0:
        raise ValueError("no tokens to estimate an activation range from (empty split?)")
    if rows.size > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
    scorer = make_scorer(cs, device)
    parts = []
    for s in store.shards:
        lo, hi = np.searchsorted(rows, [s.token_start, s.token_stop])
        if hi > lo:
            parts.append(scorer(np.asarray(store.tokens(cs.layer, s)[rows[lo:hi] - s.token_start])))
    acts = np.concatenate(parts)
    lo, hi = acts.min(axis=0).astype(np.float64), acts.max(axis=0).astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - widen * span, hi + widen * span
    if cs.scoring == "cosine":
        lo, hi = np.maximum(lo, -1.0), np.minimum(hi, 1.0)
    return lo, hi


class HistogramAccumulator:
    """Streaming in/out-of-concept activation histograms over one split (for ``score_store``).

    Bins are fixed up front (``bins`` equal-width bins per concept over ``[lo, hi]``) so that
    each shard costs one vectorised bincount over ``2 * C * bins`` keys.
    """

    def __init__(self, names: Sequence[str], lo: np.ndarray, hi: np.ndarray, split_mask: np.ndarray,
                 bins: int = 200, split: str = "test"):
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if lo.shape != (len(names),) or hi.shape != lo.shape:
            raise ValueError(f"lo/hi must have shape ({len(names)},), got {lo.shape} and {hi.shape}")
        if not (hi > lo).all():
            raise ValueError("every concept needs hi > lo for its histogram range")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.names, self.split, self.bins = list(names), split, bins
        self.split_mask = np.asarray(split_mask, dtype=bool)
        self.lo, self.width = lo, (hi - lo) / bins
        C = len(names)
        self.edges = lo[:, None] + self.width[:, None] * np.arange(bins + 1)[None, :]
        self.counts = np.zeros(2 * C * bins, dtype=np.int64)
        self.under = np.zeros(2 * C, dtype=np.int64)
        self.over = np.zeros(2 * C, dtype=np.int64)
        self.vmin = np.full((2, C), np.inf)
        self.vmax = np.full((2, C), -np.inf)

    @classmethod
    def for_store(cls, store: TokenStore, cs: ConceptSet, split: str = "test", bins: int = 200, seed: int = 0,
                  device: str | torch.device = "cpu") -> "HistogramAccumulator":
        """Bins from :func:`estimate_range` on the split's valid tokens."""
        split_mask = store.splits == split
        tok_mask = store.valid & split_mask[store.sample_of_token]
        lo, hi = estimate_range(store, cs, tok_mask, seed=seed, device=device)
        return cls(cs.names, lo, hi, split_mask, bins=bins, split=split)

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        sl = slice(shard.token_start, shard.token_stop)
        keep = ctx.valid(shard) & self.split_mask[ctx.store.sample_of_token[sl]]
        if not keep.any():
            return
        a = acts[keep].astype(np.float64)  # [n, C]
        g = ctx.token_labels(shard)[keep].astype(np.int64)  # [n, C] 1 = in-concept
        C, B = len(self.names), self.bins
        b = np.floor((a - self.lo) / self.width).astype(np.int64)
        gc = g * C + np.arange(C)[None, :]  # group-concept key [n, C]
        self.under += np.bincount(gc[b < 0], minlength=2 * C)
        self.over += np.bincount(gc[b >= B], minlength=2 * C)
        self.counts += np.bincount((gc * B + np.clip(b, 0, B - 1)).ravel(), minlength=2 * C * B)
        for grp in (OUT, IN):
            m = g == grp
            self.vmin[grp] = np.minimum(self.vmin[grp], np.where(m, a, np.inf).min(axis=0))
            self.vmax[grp] = np.maximum(self.vmax[grp], np.where(m, a, -np.inf).max(axis=0))

    def result(self) -> TokenHistograms:
        C, B = len(self.names), self.bins
        finite = np.isfinite(self.vmin)
        return TokenHistograms(
            names=self.names, split=self.split, edges=self.edges, counts=self.counts.reshape(2, C, B),
            under=self.under.reshape(2, C), over=self.over.reshape(2, C),
            vmin=np.where(finite, self.vmin, np.nan), vmax=np.where(finite, self.vmax, np.nan),
        )


def save_curves(path: Path, results: Sequence, grid: Sequence[float]) -> None:
    """F1-vs-N curves ``[C, G]`` on cal and test of every method that has them."""
    arrays: dict[str, np.ndarray] = {"grid": np.asarray(grid, dtype=np.float64)}
    for r in results:
        if r.cal_f1_curve is None:
            continue
        arrays["names"] = np.array(r.names)
        arrays[f"cal__{r.method}"] = np.asarray(r.cal_f1_curve, dtype=np.float64)
        arrays[f"test__{r.method}"] = np.asarray(r.test_f1_curve, dtype=np.float64)
    with recording(Path(path)):
        atomic_save_npz(Path(path), **arrays)


@dataclass
class F1Curves:
    """F1 as a function of N (percent of the calibration population kept), per method."""

    grid: np.ndarray  # [G]
    names: list[str]
    cal: dict[str, np.ndarray]  # method -> [C, G]
    test: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path) -> "F1Curves":
        z = load_npz(path)
        names = [str(n) for n in z["names"]] if "names" in z.files else []
        return cls(grid=z["grid"], names=names,
                   cal={k[5:]: z[k] for k in z.files if k.startswith("cal__")},
                   test={k[6:]: z[k] for k in z.files if k.startswith("test__")})


def ensure_histograms(stage_dir: Path, store: TokenStore, split: str = "test", bins: int = 200,
                      device: str | torch.device = "cpu") -> TokenHistograms:
    """Load ``hist.npz`` of a stage, or compute it with one scoring pass and save it."""
    path = StageFolder(Path(stage_dir)).hist
    if path.exists():
        return TokenHistograms.load(path)
    cs = load_concepts(Path(stage_dir) / "concepts")
    acc = HistogramAccumulator.for_store(store, cs, split=split, bins=bins, device=device)
    score_store(store, cs, [acc], device=device)
    hist = acc.result()
    hist.save(path)
    return hist


def sample_token_activations(store: TokenStore, cs: ConceptSet, sample_ids: Sequence[int],
                             device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Activations ``[len_i, C]`` of every token of each requested sample (reads only those rows)."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    if ids.size == 0:
        return []
    if ids.min() < 0 or ids.max() >= store.n_samples:
        raise ValueError(f"sample ids must lie in [0, {store.n_samples}), got {ids.min()}..{ids.max()}")
    order = np.argsort(ids, kind="stable")
    rows = np.concatenate([np.arange(store.offsets[i], store.offsets[i + 1]) for i in ids[order]])
    scorer = make_scorer(cs, device)
    parts = []
    for s in store.shards:  # rows are sorted because ids are
        lo, hi = np.searchsorted(rows, [s.token_start, s.token_stop])
        if hi > lo:
            parts.append(np.asarray(store.tokens(cs.layer, s)[rows[lo:hi] - s.token_start]))
    acts = scorer(np.concatenate(parts))
    lens = store.lengths[ids[order]]
    pieces = np.split(acts, np.cumsum(lens)[:-1])
    out: list[np.ndarray] = [np.empty(0)] * len(ids)
    for k, j in enumerate(order):
        out[j] = pieces[k]
    return out
