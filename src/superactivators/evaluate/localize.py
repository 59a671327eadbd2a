"""Localisation ("inversion"): which tokens of a detected sample carry the concept.

In every sample the SuperActivator detector flags for concept ``c`` (max token activation
``>= tau_c``, calibrated on ``cal``), the predicted concept tokens are, per method:

- ``superactivator``: tokens with ``a(t, c) >=`` a localisation threshold, the
  ``(1 - N/100)`` quantile of the in-concept ``cal`` token activations; ``N`` is chosen per
  concept by token-level F1 on ``cal`` (first best in grid order) from the detection grid
  plus :data:`LOC_GRID_EXTRA` (the pipeline's choice; :func:`localize` takes any grid);
- ``positive``: every token with ``a(t, c) > 0`` (the same concept vector, no tail threshold);
- ``topk``: the ``k`` highest-scoring tokens of the sample, ``k`` = the median number of
  in-concept tokens of a positive ``cal`` sample (at least 1).

Tokens of samples not detected for ``c`` are predicted negative. Scores are token-level
precision, recall, F1 and IoU over every valid ``test`` token against the ground truth
(mask-covered patches, span tokens); padding tokens count nowhere.

Everything is one streaming pass over the store (:func:`superactivators.evaluate.scoring.score_store`):
per shard, the tail method counts tokens per concept and candidate threshold with
``searchsorted`` + ``bincount``; ``topk`` ranks tokens within samples with one ``lexsort`` per
concept. No per-token Python code runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..concepts.supervised import ConceptSet
from ..store.tokens import Shard, TokenStore
from ..util.io import atomic_write_bytes
from .calibrate import DEFAULT_GRID, tail_thresholds
from .metrics import Confusion
from .scoring import PassContext, ScoreSummary, score_store

LOC_METHODS = ("superactivator", "positive", "topk")
#: Added to the detection grid for localisation: its optimum keeps most in-concept tokens (on the
#: image demo, N = 95 %, the detection grid's broadest value, won for 131 of 168 concept x layer x
#: type cells), so the grid goes on to the minimum of the in-concept population (N = 100 %).
LOC_GRID_EXTRA: tuple[float, ...] = (97.5, 99.0, 100.0)
MACRO = "__macro__"
SPLIT_IDS = {"cal": 0, "test": 1}


@dataclass
class LocMethodResult:
    """One localisation method: per concept parameters, ``cal`` F1 and ``test`` counts."""

    method: str
    names: list[str]
    test: Confusion
    cal_f1: np.ndarray  # [C]
    n_pct: np.ndarray  # [C] chosen N (NaN for methods without one)
    threshold: np.ndarray  # [C] activation threshold (0 for positive, NaN for topk)
    k: np.ndarray  # [C] tokens kept per detected sample (topk), else -1


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


class LocalizationCounter:
    """Streaming token-level confusion counts of the three localisation methods.

    ``detected [N, C]``: samples the detector flags per concept. ``thresholds [C, G]``: the
    tail candidates (NaN: concept cannot be calibrated, never predicted). ``k [C]``: top-k size.
    Counts are kept for the ``cal`` (row 0) and ``test`` (row 1) splits.
    """

    def __init__(self, splits: np.ndarray, detected: np.ndarray, thresholds: np.ndarray, k: np.ndarray):
        self.split_id = np.full(len(splits), -1, dtype=np.int64)
        for name, sid in SPLIT_IDS.items():
            self.split_id[splits == name] = sid
        self.detected = np.asarray(detected, dtype=bool)
        C, G = thresholds.shape
        thr = np.where(np.isnan(thresholds), np.inf, thresholds)
        self.order = np.argsort(thr, axis=1, kind="stable")  # ascending candidates per concept
        self.sorted_thr = np.take_along_axis(thr, self.order, axis=1)
        self.k = np.asarray(k, dtype=np.int64)
        self.G = G
        # tail counts of tokens reaching each sorted candidate: [split, C, G]
        self.tail_tp = np.zeros((2, C, G), dtype=np.int64)
        self.tail_fp = np.zeros((2, C, G), dtype=np.int64)
        self.pos_tp = np.zeros((2, C), dtype=np.int64)
        self.pos_fp = np.zeros((2, C), dtype=np.int64)
        self.top_tp = np.zeros((2, C), dtype=np.int64)
        self.top_fp = np.zeros((2, C), dtype=np.int64)
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
        det = self.detected[sample] & keep[:, None]  # [t, C]
        sp2 = np.stack([split == 0, split == 1], axis=1) & keep[:, None]  # [t, 2]
        self.n_valid += sp2.sum(axis=0)
        self.n_gt += sp2.T.astype(np.int64) @ gt.astype(np.int64)

        # positive: a > 0 in detected samples
        pred = det & (acts > 0)
        self._count(self.pos_tp, self.pos_fp, pred, gt, sp2)

        # topk: rank within the sample (valid tokens first, descending activation)
        local = sample - shard.start
        starts = ctx.local_starts(shard)
        masked = np.where(valid[:, None], acts, -np.inf)
        rank = np.empty(acts.shape, dtype=np.int64)
        pos = np.arange(len(sample))
        for c in range(acts.shape[1]):
            o = np.lexsort((-masked[:, c], local))
            rank[o, c] = pos - starts[local[o]]
        pred = det & (rank < self.k[None, :])
        self._count(self.top_tp, self.top_fp, pred, gt, sp2)

        # tail: per concept, how many candidates each detected token reaches
        G1 = self.G + 1
        for c in range(acts.shape[1]):
            rows = np.flatnonzero(det[:, c])
            if not rows.size:
                continue
            reach = np.searchsorted(self.sorted_thr[c], acts[rows, c], side="right")  # a >= thr[j] for j < reach
            code = (split[rows] * 2 + gt[rows, c]) * G1 + reach
            hist = np.bincount(code, minlength=4 * G1).reshape(2, 2, G1)
            at_least = np.cumsum(hist[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]  # tokens with reach > j
            self.tail_tp[:, c] += at_least[:, 1]
            self.tail_fp[:, c] += at_least[:, 0]

    @staticmethod
    def _count(tp: np.ndarray, fp: np.ndarray, pred: np.ndarray, gt: np.ndarray, sp2: np.ndarray) -> None:
        s = sp2.T.astype(np.int64)  # [2, t]
        tp += s @ (pred & gt).astype(np.int64)
        fp += s @ (pred & ~gt).astype(np.int64)

    def _confusion(self, split: int, tp: np.ndarray, fp: np.ndarray) -> Confusion:
        fn = self.n_gt[split] - tp
        tn = self.n_valid[split] - tp - fp - fn
        return Confusion(tp=tp, fp=fp, fn=fn, tn=tn)

    def results(self, names: list[str], thresholds: np.ndarray, grid: Sequence[float]) -> list[LocMethodResult]:
        """The three methods; the tail's N per concept is picked on ``cal`` F1."""
        C = len(names)
        rows = np.arange(C)
        inv = np.argsort(self.order, axis=1)  # back to grid order
        tp = np.take_along_axis(self.tail_tp, inv[None].repeat(2, 0), axis=2)
        fp = np.take_along_axis(self.tail_fp, inv[None].repeat(2, 0), axis=2)
        cal_f1 = _f1(tp[0], fp[0], self.n_gt[0][:, None])  # [C, G]
        cal_f1 = np.where(np.isnan(thresholds), -1.0, cal_f1)
        best = np.argmax(cal_f1, axis=1)
        chosen_thr = thresholds[rows, best]
        tail = LocMethodResult(
            "superactivator", names, self._confusion(1, tp[1][rows, best], fp[1][rows, best]),
            cal_f1=np.maximum(cal_f1[rows, best], 0.0), n_pct=np.asarray(grid, dtype=float)[best],
            threshold=chosen_thr, k=np.full(C, -1),
        )
        pos = LocMethodResult(
            "positive", names, self._confusion(1, self.pos_tp[1], self.pos_fp[1]),
            cal_f1=_f1(self.pos_tp[0], self.pos_fp[0], self.n_gt[0]), n_pct=np.full(C, np.nan),
            threshold=np.zeros(C), k=np.full(C, -1),
        )
        top = LocMethodResult(
            "topk", names, self._confusion(1, self.top_tp[1], self.top_fp[1]),
            cal_f1=_f1(self.top_tp[0], self.top_fp[0], self.n_gt[0]), n_pct=np.full(C, np.nan),
            threshold=np.full(C, np.nan), k=self.k.copy(),
        )
        return [tail, pos, top]


def _f1(tp: np.ndarray, fp: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    denom = (tp + fp + n_gt).astype(np.float64)  # 2tp + fp + fn = tp + fp + n_gt
    return np.divide(2.0 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


def localization_grid(grid: Sequence[float]) -> list[float]:
    """Candidate N (percent of in-concept ``cal`` tokens kept) for the localisation threshold."""
    return sorted({float(g) for g in grid} | set(LOC_GRID_EXTRA))


def localize(
    store: TokenStore,
    cs: ConceptSet,
    detected: np.ndarray,
    cal_in_concept: Sequence[np.ndarray],
    grid: Sequence[float] = DEFAULT_GRID,
    device: str = "cpu",
) -> list[LocMethodResult]:
    """Calibrate localisation on ``cal`` and score it on ``test`` in one pass over the store.

    ``detected [N, C]`` are the samples flagged per concept of ``cs`` (column order of
    ``cs.names``); ``cal_in_concept`` the in-concept ``cal`` token activations per concept.
    """
    idx = np.array([store.concepts.index(n) for n in cs.names])
    labels = store.labels[:, idx]
    counts = in_concept_counts(store, idx)
    k = topk_sizes(counts, labels, store.splits == "cal")
    thresholds = tail_thresholds(cal_in_concept, grid)
    counter = LocalizationCounter(store.splits, detected, thresholds, k)
    score_store(store, cs, [counter], device=device)
    return counter.results(list(cs.names), thresholds, grid)


def localization_table(results: Sequence[LocMethodResult], **keys: object) -> pd.DataFrame:
    """Long table: one row per (method, concept) plus a ``__macro__`` row per method.

    Macro averages run over concepts with at least one ground-truth ``test`` token.
    """
    frames = []
    for r in results:
        t = r.test
        df = pd.DataFrame({
            "method": r.method, "concept": r.names, "n_pct": r.n_pct, "threshold": r.threshold, "k": r.k,
            "cal_f1": r.cal_f1, "tp": t.tp, "fp": t.fp, "fn": t.fn, "support": t.support,
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
    **keys: object,
) -> pd.DataFrame:
    """Localisation for one (layer, concept type), cached as a CSV in the stage folder.

    ``detection`` are the stage's :class:`~superactivators.evaluate.detect.MethodResult` s; the
    ``superactivator`` one gives the detected samples. ``concept_set`` loads the stage's
    (already learned) concept set only when the table is not cached.
    """
    from ..util.io import stable_hash

    grid = localization_grid(grid)
    path = Path(stage_dir) / f"localization_{stable_hash([grid, LOC_METHODS], 8)}.csv"
    if path.exists():
        return pd.read_csv(path)
    sa = next((r for r in detection if r.method == "superactivator"), None)
    if sa is None:
        raise ValueError("localisation needs the 'superactivator' detection method (detect.methods)")
    detected = summary.sample_scores["max_token"] >= sa.threshold[None, :]
    res = localize(store, concept_set(), detected, summary.cal_in_concept, grid, device)
    table = localization_table(res, **keys)
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return table


def localization_macro(table: pd.DataFrame, index: Sequence[str] = ("layer", "concept_type")) -> pd.DataFrame:
    """Macro F1 and IoU: rows = ``index``, columns = (metric, method)."""
    m = table[table["concept"] == MACRO]
    pv = m.pivot_table(index=list(index), columns="method", values=["f1", "iou"])
    cols = [(v, meth) for v in ("f1", "iou") for meth in LOC_METHODS if (v, meth) in pv.columns]
    return pv[cols]


def format_localization(table: pd.DataFrame) -> str:
    """Macro token-level F1 and IoU per (layer, concept type) and method, as text."""
    pv = localization_macro(table)
    pv.columns = [f"{metric}:{method}" for metric, method in pv.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        return pv.round(3).to_string()
