"""Localisation ("inversion"): which tokens of a sample carry the concept.

Every method predicts a set of tokens per (sample, concept); scores are token-level
precision, recall, F1 and IoU over every valid ``test`` token against the ground truth
(mask-covered patches, span tokens); padding tokens count nowhere. Thresholds are calibrated
on ``cal`` and N (percent of the in-concept ``cal`` token activations kept) is chosen per
concept by token-level ``cal`` F1 (first best in grid order).

Detect-then-invert methods (tokens of samples not detected are predicted negative):

- ``superactivator``: the detector's own N (chosen for *detection* F1) flags samples; in them,
  tokens with ``a(t, c) >= tau_c(N_inv)``, ``N_inv`` from the localisation grid (the detection
  grid plus :data:`LOC_GRID_EXTRA`);
- ``superactivator_joint``: the pair ``(N_det, N_inv)`` chosen jointly on ``cal`` by token F1,
  over every pair with ``N_inv >= N_det`` (the seed's protocol: the inversion keeps at least
  the tail that detected the sample);
- ``twostage``: per detected sample a concept vector ``v_s`` = the softmax(activation)-weighted
  mean of the sample's SuperActivator tokens (``a >= tau_c(N_det)``, normalised hidden states),
  as the seed builds it; every token of the sample is scored by ``cos(h_t, v_s)`` and kept when
  the score reaches a threshold: the ``k``-th largest (``k = ceil(N n / 100)``) of the in-concept ``cal`` tokens'
  two-stage scores, N chosen on ``cal``;
- ``positive``: tokens with ``a(t, c) > 0`` in detected samples (no tail threshold);
- ``topk``: the ``k`` highest-scoring tokens of each detected sample, ``k`` = the median number
  of in-concept tokens of a positive ``cal`` sample (at least 1).

Baselines without detection: ``random`` (each valid token positive with probability = the
concept's in-concept rate among valid ``cal`` tokens, seeded and independent of shard layout),
``always_positive`` and ``always_negative``. Attribution baselines live in
:mod:`superactivators.localize.attribution`.

Everything is streamed over the store (:func:`superactivators.evaluate.scoring.score_store` or
one pass that also reads hidden states for ``twostage``): per shard, tokens are counted per
concept and candidate threshold (pair) with ``searchsorted`` + ``bincount``; ``topk`` ranks
tokens within samples with one ``lexsort`` per concept. No per-token Python code runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..concepts.supervised import ConceptSet
from ..evaluate.calibrate import DEFAULT_GRID, tail_rule_key, tail_thresholds
from ..evaluate.methods import LOC_METHODS, LOC_SUPERACTIVATOR, MACRO, SA, short_label
from ..evaluate.metrics import Confusion
from ..evaluate.scoring import PassContext, ScoreSummary, make_scorer, score_store
from ..store.layout import StageFolder
from ..store.tokens import Shard, TokenStore
from ..util.io import atomic_write_bytes, stable_hash
from ..util.tables import read_table
from ..util.console import frame_text

#: Added to the detection grid for localisation: its optimum keeps most in-concept tokens (on the
#: image demo, N = 95 %, the detection grid's broadest value, won for 131 of 168 concept x layer x
#: type cells), so the grid goes on to the minimum of the in-concept population (N = 100 %).
LOC_GRID_EXTRA: tuple[float, ...] = (97.5, 99.0, 100.0)
SPLIT_IDS = {"cal": 0, "test": 1}


@dataclass
class LocMethodResult:
    """One localisation method: per concept parameters, ``cal`` F1 and ``test`` counts."""

    method: str
    names: list[str]
    test: Confusion
    cal_f1: np.ndarray  # [C]
    n_pct: np.ndarray  # [C] chosen inversion N (NaN for methods without one)
    threshold: np.ndarray  # [C] inversion threshold (0 for positive, NaN where none)
    k: np.ndarray  # [C] tokens kept per detected sample (topk), else -1
    n_det: np.ndarray | None = None  # [C] detection N used (NaN for methods without detection)


def in_concept_counts(store: TokenStore, concepts: np.ndarray | None = None) -> np.ndarray:
    """Ground-truth in-concept token count per sample and concept ``[N, C]`` (index only)."""
    C = len(store.concepts) if concepts is None else len(concepts)
    counts = np.zeros((store.n_samples, C), dtype=np.int64)
    for s in store.shards:
        gt = store.token_labels(s, concepts).astype(np.int64)
        counts[s.start:s.stop] = np.add.reduceat(gt, store.offsets[s.start:s.stop] - s.token_start, axis=0)
    return counts


def topk_sizes(counts: np.ndarray, labels: np.ndarray, split_mask: np.ndarray) -> np.ndarray:
    """``k`` per concept: median in-concept token count over positive samples of a split (>= 1)."""
    k = np.ones(counts.shape[1], dtype=np.int64)
    for c in range(counts.shape[1]):
        sel = split_mask & (labels[:, c] > 0)
        if sel.any():
            k[c] = max(1, int(np.round(np.median(counts[sel, c]))))
    return k


def in_concept_rate(store: TokenStore, concepts: np.ndarray, split: str = "cal") -> np.ndarray:
    """Share of valid tokens of a split that are in-concept, per concept ``[C]`` (index only)."""
    tok_split = store.valid & (store.splits == split)[store.sample_of_token]
    n_in = np.zeros(len(concepts), dtype=np.int64)
    for s in store.shards:
        gt = store.token_labels(s, concepts)
        n_in += gt[tok_split[s.token_start:s.token_stop]].sum(axis=0)
    return n_in / max(int(tok_split.sum()), 1)


def token_uniforms(token_index: np.ndarray, concept: int, seed: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) per (global token index, concept, seed): splitmix64.

    A counter-based hash, so the random baseline does not depend on how the store is sharded.
    """
    with np.errstate(over="ignore"):
        z = (np.asarray(token_index, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64((seed * 1_000_003 + concept + 1) & 0xFFFFFFFFFFFFFFFF) * np.uint64(0xD1B54A32D192ED03))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _sorted_candidates(thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates per concept in ascending order (NaN -> +inf: never reached) and that order."""
    thr = np.where(np.isnan(thresholds), np.inf, thresholds)
    order = np.argsort(thr, axis=1, kind="stable")
    return np.take_along_axis(thr, order, axis=1), order


def _at_least(hist: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Suffix sums along ``axes`` with the first bin dropped: counts with reach > j."""
    out = hist
    for ax in axes:
        out = np.flip(np.cumsum(np.flip(out, ax), axis=ax), ax)
        out = np.take(out, np.arange(1, out.shape[ax]), axis=ax)
    return out


class LocalizationCounter:
    """Streaming token-level confusion counts of every activation-based localisation method.

    ``sample_max [N, C]``: each sample's max token activation (the detection score).
    ``det_thr [C, Gd]`` / ``loc_thr [C, Gi]``: detection and inversion candidates (NaN: concept
    cannot be calibrated, never predicted). ``fixed_det [C]``: the detector's own threshold
    (``inf``: never detects). ``k [C]``: top-k size; ``rate [C]``: the random baseline's rate.
    Counts are kept for the ``cal`` (row 0) and ``test`` (row 1) splits.
    """

    def __init__(self, splits: np.ndarray, sample_max: np.ndarray, det_thr: np.ndarray, loc_thr: np.ndarray,
                 fixed_det: np.ndarray, k: np.ndarray, rate: np.ndarray, seed: int = 0):
        self.split_id = np.full(len(splits), -1, dtype=np.int64)
        for name, sid in SPLIT_IDS.items():
            self.split_id[splits == name] = sid
        self.sample_max = np.asarray(sample_max, dtype=np.float64)
        self.fixed_det = np.asarray(fixed_det, dtype=np.float64)
        C = self.sample_max.shape[1]
        self.det_sorted, self.det_order = _sorted_candidates(det_thr)
        self.loc_sorted, self.loc_order = _sorted_candidates(loc_thr)
        self.Gd, self.Gi = det_thr.shape[1], loc_thr.shape[1]
        self.k = np.asarray(k, dtype=np.int64)
        self.rate = np.asarray(rate, dtype=np.float64)
        self.seed = seed
        # joint histogram over (split, gt, detection reach, inversion reach) per concept
        self.hist = np.zeros((C, 2, 2, self.Gd + 1, self.Gi + 1), dtype=np.int64)
        self.fix_hist = np.zeros((C, 2, 2, self.Gi + 1), dtype=np.int64)  # under the detector's own N
        z = np.zeros((2, C), dtype=np.int64)
        self.pos_tp, self.pos_fp, self.top_tp, self.top_fp, self.rnd_tp, self.rnd_fp = (z.copy() for _ in range(6))
        self.n_gt = np.zeros((2, C), dtype=np.int64)
        self.n_valid = np.zeros(2, dtype=np.int64)

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        sample = ctx.store.sample_of_token[shard.token_start:shard.token_stop]
        split = self.split_id[sample]
        valid = ctx.valid(shard)
        keep = valid & (split >= 0)
        if not keep.any():
            return
        gt = ctx.token_labels(shard)  # [t, C], invalid tokens False
        smax = self.sample_max[sample]  # [t, C]
        det = (smax >= self.fixed_det[None, :]) & keep[:, None]  # [t, C] the detector's own samples
        sp2 = np.stack([split == 0, split == 1], axis=1) & keep[:, None]  # [t, 2]
        self.n_valid += sp2.sum(axis=0)
        self.n_gt += sp2.T.astype(np.int64) @ gt.astype(np.int64)

        self._count(self.pos_tp, self.pos_fp, det & (acts > 0), gt, sp2)

        # topk: rank within the sample (valid tokens first, descending activation)
        local = sample - shard.start
        starts = ctx.local_starts(shard)
        masked = np.where(valid[:, None], acts, -np.inf)
        rank = np.empty(acts.shape, dtype=np.int64)
        pos = np.arange(len(sample))
        for c in range(acts.shape[1]):
            o = np.lexsort((-masked[:, c], local))
            rank[o, c] = pos - starts[local[o]]
        self._count(self.top_tp, self.top_fp, det & (rank < self.k[None, :]), gt, sp2)

        tok = np.arange(shard.token_start, shard.token_stop)
        Gd1, Gi1 = self.Gd + 1, self.Gi + 1
        for c in range(acts.shape[1]):
            rnd = keep & (token_uniforms(tok, c, self.seed) < self.rate[c])
            self._count(self.rnd_tp[:, c:c + 1], self.rnd_fp[:, c:c + 1], rnd[:, None], gt[:, c:c + 1], sp2)
            rows = np.flatnonzero(keep & (smax[:, c] >= self.det_sorted[c, 0]))  # detected at some N
            if not rows.size:
                continue
            rd = np.searchsorted(self.det_sorted[c], smax[rows, c], side="right")  # max >= thr[j] for j < rd
            ri = np.searchsorted(self.loc_sorted[c], acts[rows, c], side="right")
            cell = split[rows] * 2 + gt[rows, c]
            code = (cell * Gd1 + rd) * Gi1 + ri
            self.hist[c] += np.bincount(code, minlength=4 * Gd1 * Gi1).reshape(2, 2, Gd1, Gi1)
            fr = det[rows, c]
            if fr.any():
                self.fix_hist[c] += np.bincount(cell[fr] * Gi1 + ri[fr], minlength=4 * Gi1).reshape(2, 2, Gi1)

    @staticmethod
    def _count(tp: np.ndarray, fp: np.ndarray, pred: np.ndarray, gt: np.ndarray, sp2: np.ndarray) -> None:
        s = sp2.T.astype(np.int64)  # [2, t]
        tp += s @ (pred & gt).astype(np.int64)
        fp += s @ (pred & ~gt).astype(np.int64)

    def _confusion(self, split: int, tp: np.ndarray, fp: np.ndarray) -> Confusion:
        fn = self.n_gt[split] - tp
        tn = self.n_valid[split] - tp - fp - fn
        return Confusion(tp=tp, fp=fp, fn=fn, tn=tn)

    def results(self, names: list[str], det_thr: np.ndarray, det_grid: Sequence[float], loc_thr: np.ndarray,
                loc_grid: Sequence[float], fixed_n: np.ndarray) -> list[LocMethodResult]:
        """Every method; N (pairs) per concept picked on ``cal`` F1, first best in grid order."""
        C = len(names)
        rows = np.arange(C)
        dg, lg = np.asarray(det_grid, dtype=float), np.asarray(loc_grid, dtype=float)
        inv_d = np.argsort(self.det_order, axis=1)
        inv_i = np.argsort(self.loc_order, axis=1)
        al = _at_least(self.hist, (3, 4))  # [C, 2, 2, Gd, Gi], sorted candidate order
        al = np.take_along_axis(al, inv_d[:, None, None, :, None], axis=3)
        al = np.take_along_axis(al, inv_i[:, None, None, None, :], axis=4)  # grid order
        tp, fp = al[:, :, 1], al[:, :, 0]  # [C, 2, Gd, Gi]
        f1 = _f1(tp[:, 0], fp[:, 0], self.n_gt[0][:, None, None])  # [C, Gd, Gi]
        ok = (lg[None, :] >= dg[:, None])[None] & ~np.isnan(det_thr)[:, :, None] & ~np.isnan(loc_thr)[:, None, :]
        f1 = np.where(ok, f1, -1.0)
        flat = np.argmax(f1.reshape(C, -1), axis=1)
        bd, bi = np.divmod(flat, self.Gi)
        cal_best = f1[rows, bd, bi]
        none = cal_best < 0  # no calibratable pair: predicts nothing
        j_tp = np.where(none, 0, tp[rows, 1, bd, bi])
        j_fp = np.where(none, 0, fp[rows, 1, bd, bi])
        joint = LocMethodResult(
            "superactivator_joint", names, self._confusion(1, j_tp, j_fp), cal_f1=np.maximum(cal_best, 0.0),
            n_pct=np.where(none, np.nan, lg[bi]), threshold=np.where(none, np.nan, loc_thr[rows, bi]),
            k=np.full(C, -1), n_det=np.where(none, np.nan, dg[bd]),
        )

        fal = _at_least(self.fix_hist, (3,))
        fal = np.take_along_axis(fal, inv_i[:, None, None, :], axis=3)  # [C, 2, 2, Gi]
        ftp, ffp = fal[:, :, 1], fal[:, :, 0]
        ff1 = np.where(np.isnan(loc_thr), -1.0, _f1(ftp[:, 0], ffp[:, 0], self.n_gt[0][:, None]))
        best = np.argmax(ff1, axis=1)
        tail = LocMethodResult(
            LOC_SUPERACTIVATOR.name, names, self._confusion(1, ftp[rows, 1, best], ffp[rows, 1, best]),
            cal_f1=np.maximum(ff1[rows, best], 0.0), n_pct=lg[best], threshold=loc_thr[rows, best],
            k=np.full(C, -1), n_det=np.asarray(fixed_n, dtype=float),
        )
        nan = np.full(C, np.nan)
        pos = LocMethodResult(
            "positive", names, self._confusion(1, self.pos_tp[1], self.pos_fp[1]),
            cal_f1=_f1(self.pos_tp[0], self.pos_fp[0], self.n_gt[0]), n_pct=nan, threshold=np.zeros(C),
            k=np.full(C, -1), n_det=np.asarray(fixed_n, dtype=float),
        )
        top = LocMethodResult(
            "topk", names, self._confusion(1, self.top_tp[1], self.top_fp[1]),
            cal_f1=_f1(self.top_tp[0], self.top_fp[0], self.n_gt[0]), n_pct=nan, threshold=nan,
            k=self.k.copy(), n_det=np.asarray(fixed_n, dtype=float),
        )
        rnd = LocMethodResult(
            "random", names, self._confusion(1, self.rnd_tp[1], self.rnd_fp[1]),
            cal_f1=_f1(self.rnd_tp[0], self.rnd_fp[0], self.n_gt[0]), n_pct=100.0 * self.rate,
            threshold=nan, k=np.full(C, -1), n_det=nan,
        )
        n_out = self.n_valid[:, None] - self.n_gt  # [2, C]
        allp = LocMethodResult(
            "always_positive", names, self._confusion(1, self.n_gt[1], n_out[1]),
            cal_f1=_f1(self.n_gt[0], n_out[0], self.n_gt[0]), n_pct=nan, threshold=nan, k=np.full(C, -1), n_det=nan,
        )
        zero = np.zeros(C, dtype=np.int64)
        alln = LocMethodResult(
            "always_negative", names, self._confusion(1, zero, zero), cal_f1=np.zeros(C), n_pct=nan, threshold=nan,
            k=np.full(C, -1), n_det=nan,
        )
        return [tail, joint, pos, top, rnd, allp, alln]


def _f1(tp: np.ndarray, fp: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    denom = (tp + fp + n_gt).astype(np.float64)  # 2tp + fp + fn = tp + fp + n_gt
    return np.divide(2.0 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


# ---------------------------------------------------------------------------------- two-stage
def twostage_scores(x: np.ndarray, acts: np.ndarray, starts: np.ndarray, det_thr: np.ndarray,
                    valid: np.ndarray | None = None) -> np.ndarray:
    """Two-stage SuperActivator scores ``[t, C]`` of the tokens of whole samples.

    ``x [t, d]``: normalised hidden states (samples contiguous, sample ``i`` starting at row
    ``starts[i]``); ``acts [t, C]``: concept activations; ``det_thr [C]``: the detection
    thresholds. In each sample with SuperActivator tokens (valid, ``a >= det_thr``), the vector
    ``v = sum_j softmax(a_j) x_j`` over them; every token's score is ``cos(x_t, v)``. Tokens of
    samples without SuperActivators (and invalid tokens) get NaN.
    """
    t, C = acts.shape
    valid = np.ones(t, bool) if valid is None else np.asarray(valid, bool)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, t)))
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.full((t, C), np.nan, dtype=np.float32)
    for c in range(C):
        sup = np.flatnonzero(valid & (acts[:, c] >= det_thr[c]))
        if not sup.size:
            continue
        a = acts[sup, c].astype(np.float64)
        s = seg[sup]
        amax = np.full(len(starts), -np.inf)
        np.maximum.at(amax, s, a)
        w = np.exp(a - amax[s])  # softmax within each sample, stable
        V = np.zeros((len(starts), x.shape[1]))
        np.add.at(V, s, w[:, None] * x[sup])
        has = np.isfinite(amax)
        V /= np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        rows = np.flatnonzero(has[seg] & valid)
        out[rows, c] = np.einsum("ij,ij->i", xn[rows], V[seg[rows]])
    return out


class _TwoStagePass:
    """Streams the store once: hidden states + activations -> two-stage scores per shard."""

    def __init__(self, store: TokenStore, cs: ConceptSet, det_thr: np.ndarray, device: str):
        self.store, self.cs, self.det_thr = store, cs, np.where(np.isnan(det_thr), np.inf, det_thr)
        self.scorer = make_scorer(cs, device)
        self.mean, self.scale = store.norm(cs.layer)
        self.concepts = np.array([store.concepts.index(n) for n in cs.names])

    def __iter__(self):
        for shard in self.store.shards:
            raw = self.store.tokens(self.cs.layer, shard)
            acts = self.scorer(raw)
            x = (np.asarray(raw, dtype=np.float32) - self.mean) / self.scale
            starts = self.store.offsets[shard.start:shard.stop] - shard.token_start
            valid = self.store.valid[shard.token_start:shard.token_stop]
            yield shard, twostage_scores(x, acts, starts, self.det_thr, valid)


def localize_twostage(store: TokenStore, cs: ConceptSet, det_thr: np.ndarray, grid: Sequence[float],
                      fixed_n: np.ndarray | None = None, device: str = "cpu", rule: str = "ours") -> LocMethodResult:
    """The two-stage inversion: thresholds from the in-concept ``cal`` scores (under ``rule``), N by ``cal`` F1.

    Two passes: the first collects the in-concept ``cal`` two-stage scores (tokens of detected
    samples), the second counts tokens per candidate threshold.
    """
    concepts = np.array([store.concepts.index(n) for n in cs.names])
    C = len(concepts)
    split_id = np.full(store.n_samples, -1, dtype=np.int64)
    for name, sid in SPLIT_IDS.items():
        split_id[store.splits == name] = sid
    pops: list[list[np.ndarray]] = [[] for _ in range(C)]
    for shard, sc in _TwoStagePass(store, cs, det_thr, device):
        gt = store.token_labels(shard, concepts)
        cal = split_id[store.sample_of_token[shard.token_start:shard.token_stop]] == 0
        for c in range(C):
            m = cal & gt[:, c] & np.isfinite(sc[:, c])
            pops[c].append(sc[m, c])
    populations = [np.concatenate(p) if p else np.empty(0, np.float32) for p in pops]
    with np.errstate(all="ignore"):
        thr = np.full((C, len(grid)), np.nan)
        for c, p in enumerate(populations):
            if p.size:
                thr[c] = tail_thresholds([p], grid, rule)[0]
    srt, order = _sorted_candidates(thr)
    G1 = len(grid) + 1
    hist = np.zeros((C, 2, 2, G1), dtype=np.int64)
    n_gt = np.zeros((2, C), dtype=np.int64)
    n_valid = np.zeros(2, dtype=np.int64)
    for shard, sc in _TwoStagePass(store, cs, det_thr, device):
        gt = store.token_labels(shard, concepts)
        split = split_id[store.sample_of_token[shard.token_start:shard.token_stop]]
        keep = store.valid[shard.token_start:shard.token_stop] & (split >= 0)
        for sid in (0, 1):
            m = keep & (split == sid)
            n_valid[sid] += int(m.sum())
            n_gt[sid] += gt[m].sum(axis=0)
        for c in range(C):
            rows = np.flatnonzero(keep & np.isfinite(sc[:, c]))
            if not rows.size:
                continue
            reach = np.searchsorted(srt[c], sc[rows, c], side="right")
            code = (split[rows] * 2 + gt[rows, c]) * G1 + reach
            hist[c] += np.bincount(code, minlength=4 * G1).reshape(2, 2, G1)
    al = np.take_along_axis(_at_least(hist, (3,)), np.argsort(order, axis=1)[:, None, None, :], axis=3)
    tp, fp = al[:, :, 1], al[:, :, 0]  # [C, 2, G]
    f1 = np.where(np.isnan(thr), -1.0, _f1(tp[:, 0], fp[:, 0], n_gt[0][:, None]))
    best = np.argmax(f1, axis=1)
    rows = np.arange(C)
    none = f1[rows, best] < 0
    ttp = np.where(none, 0, tp[rows, 1, best])
    tfp = np.where(none, 0, fp[rows, 1, best])
    fn = n_gt[1] - ttp
    return LocMethodResult(
        "twostage", list(cs.names), Confusion(ttp, tfp, fn, n_valid[1] - ttp - tfp - fn),
        cal_f1=np.maximum(f1[rows, best], 0.0), n_pct=np.where(none, np.nan, np.asarray(grid, float)[best]),
        threshold=np.where(none, np.nan, thr[rows, best]), k=np.full(C, -1),
        n_det=None if fixed_n is None else np.asarray(fixed_n, dtype=float),
    )


def localization_grid(grid: Sequence[float]) -> list[float]:
    """Candidate N (percent of in-concept ``cal`` tokens kept) for the localisation threshold."""
    return sorted({float(g) for g in grid} | set(LOC_GRID_EXTRA))


def localize(
    store: TokenStore,
    cs: ConceptSet,
    sample_max: np.ndarray,
    cal_in_concept: Sequence[np.ndarray],
    det_grid: Sequence[float] = DEFAULT_GRID,
    det_n: np.ndarray | None = None,
    grid: Sequence[float] | None = None,
    device: str = "cpu",
    seed: int = 0,
    twostage: bool = True,
    rule: str = "ours",
) -> list[LocMethodResult]:
    """Calibrate every localisation method on ``cal`` and score it on ``test``.

    ``sample_max [N, C]``: max token activation per sample (columns in ``cs.names`` order);
    ``cal_in_concept``: in-concept ``cal`` token activations per concept; ``det_grid``: the
    detection grid; ``det_n [C]``: the detector's chosen N per concept (NaN: never detects;
    default: the first grid value). ``grid``: inversion candidates (default
    :func:`localization_grid` of ``det_grid``). ``rule``: the tail threshold rule (the run's ``protocol``).
    """
    grid = localization_grid(det_grid) if grid is None else list(grid)
    idx = np.array([store.concepts.index(n) for n in cs.names])
    C = len(idx)
    labels = store.labels[:, idx]
    counts = in_concept_counts(store, idx)
    k = topk_sizes(counts, labels, store.splits == "cal")
    rate = in_concept_rate(store, idx)
    det_thr = tail_thresholds(cal_in_concept, det_grid, rule)
    loc_thr = tail_thresholds(cal_in_concept, grid, rule)
    det_n = np.full(C, float(det_grid[0])) if det_n is None else np.asarray(det_n, dtype=float)
    dg = np.asarray(det_grid, dtype=float)
    fixed = np.full(C, np.inf)
    for c in range(C):
        j = np.flatnonzero(np.isclose(dg, det_n[c]))
        if j.size and not np.isnan(det_thr[c, j[0]]):
            fixed[c] = det_thr[c, j[0]]
    counter = LocalizationCounter(store.splits, sample_max, det_thr, loc_thr, fixed, k, rate, seed)
    score_store(store, cs, [counter], device=device)
    res = counter.results(list(cs.names), det_thr, det_grid, loc_thr, grid, det_n)
    if twostage:
        res.insert(2, localize_twostage(store, cs, fixed, grid, det_n, device, rule))
    return res


def localization_table(results: Sequence[LocMethodResult], **keys: object) -> pd.DataFrame:
    """Long table: one row per (method, concept) plus a ``__macro__`` row per method.

    Macro averages run over concepts with at least one ground-truth ``test`` token.
    """
    frames = []
    for r in results:
        t = r.test
        df = pd.DataFrame({
            "method": r.method, "concept": r.names,
            "n_det": np.full(len(r.names), np.nan) if r.n_det is None else r.n_det,
            "n_pct": r.n_pct, "threshold": r.threshold, "k": r.k, "cal_f1": r.cal_f1, "tp": t.tp, "fp": t.fp, "fn": t.fn, "support": t.support,
            "precision": t.precision(), "recall": t.recall(), "f1": t.f1(), "iou": t.iou(),
        })
        scored = df[df["support"] > 0]
        macro = {"method": r.method, "concept": MACRO, "support": int(scored["support"].sum())}
        for col in ("precision", "recall", "f1", "iou", "cal_f1"):
            macro[col] = float(scored[col].mean()) if len(scored) else float("nan")
        frames.append(pd.concat([df, pd.DataFrame([macro])], ignore_index=True))
    table = pd.concat(frames, ignore_index=True)
    for i, (key, v) in enumerate(keys.items()):
        table.insert(i, key, v)
    return table


def localize_stage(
    store: TokenStore,
    concept_set: Callable[[], ConceptSet],
    summary: ScoreSummary,
    detection: Sequence,
    grid: Sequence[float],
    stage_dir: Path,
    device: str = "cpu",
    seed: int = 0,
    rule: str = "ours",
    **keys: object,
) -> pd.DataFrame:
    """Localisation for one (layer, concept type), cached as a CSV in the stage folder.

    ``detection`` are the stage's :class:`~superactivators.evaluate.detect.MethodResult` s; the
    ``superactivator`` one gives the detector's own N per concept. ``grid`` is the detection
    grid. ``concept_set`` loads the stage's (already learned) concept set only when the table
    is not cached. ``rule``: the tail threshold rule (the run's ``protocol``; part of the cache key).
    """

    loc_grid = localization_grid(grid)
    key = stable_hash([list(grid), loc_grid, LOC_METHODS, seed, tail_rule_key(rule)], 8)
    path = StageFolder(Path(stage_dir)).localization(key)
    if path.exists():
        return read_table(path)
    sa = next((r for r in detection if r.method == SA), None)
    if sa is None:
        raise ValueError(f"localisation needs the {SA!r} detection method (detect.methods)")
    det_n = np.where(np.isfinite(sa.threshold), sa.n_pct, np.nan)
    res = localize(store, concept_set(), summary.sample_scores["max_token"], summary.cal_in_concept, grid,
                   det_n, loc_grid, device, seed, rule=rule)
    table = localization_table(res, **keys)
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return table


def localization_macro(table: pd.DataFrame, index: Sequence[str] = ("layer", "concept_type")) -> pd.DataFrame:
    """Macro F1 and IoU: rows = ``index``, columns = (metric, method)."""
    m = table[table["concept"] == MACRO]
    pv = m.pivot_table(index=list(index), columns="method", values=["f1", "iou"])
    methods = list(dict.fromkeys(m["method"]))
    order = [x for x in LOC_METHODS if x in methods] + [x for x in methods if x not in LOC_METHODS]
    cols = [(v, meth) for v in ("f1", "iou") for meth in order if (v, meth) in pv.columns]
    return pv[cols]


def format_localization(table: pd.DataFrame) -> str:
    """Macro token-level F1 and IoU per (layer, concept type) and method, as text."""
    pv = localization_macro(table)
    parts = []
    for metric in dict.fromkeys(m for m, _ in pv.columns):  # one narrow table per metric
        sub = pv[metric]
        sub.columns = [str(c) for c in sub.columns]
        parts.append(f"{metric}:\n" + frame_text(sub, short=short_label))
    return "\n".join(parts)  # 100 columns each; the full table is localization_metrics.csv
