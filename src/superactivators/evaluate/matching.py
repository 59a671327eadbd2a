"""Matching unlabelled units (k-means clusters, SAE units) to labelled concepts, then detection.

A *unit* is one column of an unsupervised concept set. One streaming pass over the store
(:func:`summarise_units`) keeps, for every unit, the per-sample reductions ``[N, K]`` (max,
mean, last, random token) and the activation rows ``[T, U]`` of the ``cal`` tokens that are
in-concept for at least one labelled concept (each token once, with its ``[T, C]`` ground
truth), plus the global-embedding scores of the global twin set.

Matching (:func:`match_units`) follows the supervised protocol of :mod:`superactivators.evaluate.detect`
for every (concept, unit) pair at once: the tail thresholds are the ``k``-th largest
values, ``k = ceil(N n / 100)`` (as :func:`superactivators.evaluate.calibrate.tail_thresholds`), of the
pair's calibration population, taken along axis 0 of the ``[t_c, K]`` rows of concept c (under
``protocol: seed``, ``rule="seed"``: the linear ``1 - N/100`` quantile instead);
``cal`` F1 is computed for every (N, unit) in one broadcast; N is picked per unit as the
first best on the grid, and the concept is matched to the unit with the best ``cal`` F1
(first best on ties). **Each method matches on its own criterion** (SuperActivator on its
tail-of-tokens detector, each baseline on its own score), so no method is judged on a unit
chosen for another. The matched columns are then calibrated and evaluated on ``test`` by
:func:`superactivators.evaluate.detect.run_detection`, exactly like supervised concepts.

Large unit counts (SAE dictionaries of 16k-65k units): keeping ``[T_cal, K]`` rows would not
fit, so when ``K > max_cal_units`` the SuperActivator pass keeps only candidate units: per
concept, the ``candidates_per_concept`` units with the best free-threshold ``cal`` F1 of
their max-token score. That F1 bounds the SuperActivator ``cal`` F1 of a unit from above
(same score, any threshold), so the match is provably the best over *all* units whenever the
best candidate reaches the best bound among the others; ``matches.csv`` says so per concept
(column ``exact``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..concepts.supervised import ConceptSet
from ..store.tokens import Shard, TokenStore
from ..store.artefacts import load_npz, recording
from ..util.io import atomic_save_npz
from .calibrate import DEFAULT_GRID, TailRule, best_f1_thresholds, column_tail_thresholds
from .detect import MethodResult, run_detection
from .methods import BASELINES, BY_NAME, GLOBAL, METHODS, SA, base_of, variant
from .scoring import ROLLING_WINDOW, PassContext, SampleReducer, ScoreSummary, make_scorer

BLOCK_BYTES = 256 << 20  # activations held at once while scoring
PAIR_BLOCK = 1 << 25  # booleans per block when computing F1 for (N, sample, unit)


# --- streaming pass --------------------------------------------------------------------
class CalTokenCollector:
    """Activation rows of the split's tokens that are in-concept for >= 1 labelled concept."""

    def __init__(self, split_mask: np.ndarray, units: np.ndarray | None = None):
        self.split_mask = split_mask  # [N] bool over samples
        self.units = units  # columns to keep (None: all)
        self._acts: list[np.ndarray] = []
        self._truth: list[np.ndarray] = []

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        tok_split = self.split_mask[ctx.store.sample_of_token[shard.token_start:shard.token_stop]]
        if not tok_split.any():
            return
        gt = ctx.token_labels(shard) & tok_split[:, None]
        keep = gt.any(axis=1)
        a = acts[keep]
        self._acts.append(np.ascontiguousarray(a if self.units is None else a[:, self.units], dtype=np.float32))
        self._truth.append(gt[keep])

    def result(self, n_units: int, n_concepts: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._acts:
            return np.empty((0, n_units), np.float32), np.empty((0, n_concepts), bool)
        return np.concatenate(self._acts), np.concatenate(self._truth)


def sub_shards(store: TokenStore, shard: Shard, max_rows: int) -> list[Shard]:
    """Split ``shard`` at sample boundaries into blocks of about ``max_rows`` tokens.

    Samples are grouped by ``start // max_rows``, so a block holds fewer than
    ``max_rows`` tokens plus one sample; one block when the shard fits.
    """
    if shard.n_tokens <= max_rows:
        return [shard]
    starts = store.offsets[shard.start:shard.stop] - shard.token_start
    grp = starts // max_rows
    cut = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
    bounds = np.r_[cut, shard.stop - shard.start] + shard.start
    return [Shard(int(a), int(b), int(store.offsets[a]), int(store.offsets[b])) for a, b in zip(bounds[:-1], bounds[1:])]


def score_units(store: TokenStore, cs: ConceptSet, accumulators: Sequence, device: str | torch.device = "cpu",
                block_bytes: int = BLOCK_BYTES) -> None:
    """Stream ``cs.layer`` once: one GEMM per shard (per block of a shard when ``[t, K]`` is large).

    Unlike :func:`superactivators.evaluate.scoring.score_store`, the activation columns are units,
    not labelled concepts: the context's ground truth covers every labelled concept.
    """
    scorer = make_scorer(cs, device)
    ctx = PassContext(store, np.arange(len(store.concepts)))
    max_rows = max(1, block_bytes // (4 * len(cs.names)))
    for shard in store.shards:
        tok = store.tokens(cs.layer, shard)
        for sub in sub_shards(store, shard, max_rows):
            acts = scorer(tok[sub.token_start - shard.token_start:sub.token_stop - shard.token_start])
            for acc in accumulators:
                acc.add(sub, acts, ctx)


def score_globals_blocked(store: TokenStore, cs: ConceptSet, device: str | torch.device = "cpu",
                          block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Activations ``[N, K]`` of each sample's global embedding, in row blocks."""
    g = store.globals(cs.layer)
    scorer = make_scorer(cs, device)
    step = max(1, block_bytes // (4 * len(cs.names)))
    return np.concatenate([scorer(g[a:a + step]) for a in range(0, len(g), step)])


@dataclass
class UnitSummary:
    """What matching needs from one pass (cached as ``unit_summary.npz``)."""

    unit_names: list[str]  # K token-level units
    sample_scores: dict[str, np.ndarray]  # method -> [N, K]; "global" -> [N, K_global]
    global_names: list[str]  # K_global (empty without a global twin)
    cal_units: np.ndarray  # [U] units whose cal token rows are kept
    cal_acts: np.ndarray  # [T, U] activations of cal tokens in-concept for >= 1 concept
    cal_truth: np.ndarray  # [T, C] bool

    def save(self, path: Path) -> None:
        arrays = {f"score__{k}": v for k, v in self.sample_scores.items()}
        with recording(Path(path)):
            atomic_save_npz(Path(path), **arrays, cal_units=self.cal_units, cal_acts=self.cal_acts,
                            cal_truth=self.cal_truth,
                            names=np.array(json.dumps({"units": self.unit_names, "global": self.global_names})))

    @classmethod
    def load(cls, path: Path) -> "UnitSummary":
        z = load_npz(path)
        names = json.loads(str(z["names"]))
        return cls(names["units"], {k[7:]: z[k] for k in z.files if k.startswith("score__")}, names["global"],
                   z["cal_units"], z["cal_acts"], z["cal_truth"])


def free_threshold_f1(scores: np.ndarray, truth: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Best ``cal`` F1 over all thresholds of every column of ``scores [n, K]`` for one ``truth [n]``."""
    out = np.empty(scores.shape[1])
    for a in range(0, scores.shape[1], chunk):
        s = scores[:, a:a + chunk]
        out[a:a + chunk] = best_f1_thresholds(s, np.broadcast_to(truth[:, None], s.shape))[1]
    return out


def cal_rows(splits: np.ndarray, known: np.ndarray | None, c: int) -> np.ndarray:
    """``[N]``: the ``cal`` samples whose label for concept ``c`` is known (``known`` None: every one)."""
    cal = np.asarray(splits) == "cal"
    return cal if known is None else cal & np.asarray(known, dtype=bool)[:, c]


def preselect_units(max_scores: np.ndarray, labels: np.ndarray, splits: np.ndarray, per_concept: int,
                    known: np.ndarray | None = None) -> np.ndarray:
    """Union over concepts of the ``per_concept`` units with the best free-threshold ``cal`` F1
    (on the samples whose label for the concept is known)."""
    picks = []
    for c in range(labels.shape[1]):
        rows = cal_rows(splits, known, c)
        f1 = free_threshold_f1(max_scores[rows], labels[rows, c].astype(bool))
        picks.append(np.argsort(-f1, kind="stable")[:per_concept])
    return np.unique(np.concatenate(picks))


def summarise_units(
    store: TokenStore,
    cs: ConceptSet,
    global_cs: ConceptSet | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_cal_units: int = 2048,
    candidates_per_concept: int = 64,
    block_bytes: int = BLOCK_BYTES,
    rolling_window: int = ROLLING_WINDOW,
) -> UnitSummary:
    """Per-sample reductions of every unit and cal in-concept token rows (module doc)."""
    K, C = len(cs.names), len(store.concepts)
    cal = store.splits == "cal"
    reducer = SampleReducer(store.n_samples, K, seed=seed, rolling_window=rolling_window)
    if K <= max_cal_units:
        units = np.arange(K)
        coll = CalTokenCollector(cal)
        score_units(store, cs, [reducer, coll], device, block_bytes)
    else:
        score_units(store, cs, [reducer], device, block_bytes)
        units = preselect_units(reducer.max, store.labels, store.splits, candidates_per_concept, store.known)
        coll = CalTokenCollector(cal)
        score_units(store, cs.subset(units), [coll], device, block_bytes)
    acts, truth = coll.result(len(units), C)
    scores = reducer.scores()
    gnames: list[str] = []
    if global_cs is not None:
        scores["global"] = score_globals_blocked(store, global_cs, device, block_bytes)
        gnames = list(global_cs.names)
    return UnitSummary(list(cs.names), scores, gnames, units, acts, truth)


# --- matching --------------------------------------------------------------------------
def pair_tail_thresholds(rows: np.ndarray, grid: Sequence[float] = DEFAULT_GRID,
                         rule: TailRule = "ours") -> np.ndarray:
    """Thresholds ``[G, K]``: per column of ``rows [t, K]``, the ``k``-th largest value with
    ``k = ceil(N t / 100)`` (:func:`superactivators.evaluate.calibrate.column_tail_thresholds`,
    the same rule as ``tail_thresholds``, ``rule`` included); no rows gives NaN (that pair never fires)."""
    return column_tail_thresholds(rows, grid, rule)


def pair_f1(scores: np.ndarray, truth: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """F1 ``[G, K]`` of predicting ``scores [n, K] >= thr [G, K]`` against one ``truth [n]``."""
    truth = np.asarray(truth, dtype=bool)
    P = int(truth.sum())
    G, K = thr.shape
    out = np.zeros((G, K))
    step = max(1, PAIR_BLOCK // max(1, G * len(scores)))
    for a in range(0, K, step):
        pred = scores[None, :, a:a + step] >= thr[:, None, a:a + step]  # [G, n, k]
        tp = pred[:, truth, :].sum(axis=1)
        denom = pred.sum(axis=1) + P  # 2tp + fp + fn
        out[:, a:a + step] = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
    return out


@dataclass
class Match:
    """The unit matched to every concept for one method."""

    method: str
    unit: np.ndarray  # [C] index into the method's unit columns
    cal_f1: np.ndarray  # [C] cal F1 of the matched unit
    exact: np.ndarray  # [C] bool: provably the best over all units


def _best_unit(f1_units: np.ndarray) -> int:
    return int(np.argmax(np.nan_to_num(f1_units, nan=-1.0)))


def match_tail(method: str, scores: np.ndarray, rows_of: callable, labels: np.ndarray, splits: np.ndarray,
               grid: Sequence[float], rule: TailRule = "ours", known: np.ndarray | None = None) -> Match:
    """Tail-calibrated matching: ``rows_of(c)`` gives the ``[t_c, K]`` calibration rows of concept c;
    its ``cal`` F1 counts the samples whose label for c is known (``known [N, C]``, None: all)."""
    y = labels.astype(bool)
    unit, f1 = np.zeros(y.shape[1], np.int64), np.zeros(y.shape[1])
    for c in range(y.shape[1]):
        rows = cal_rows(splits, known, c)
        curve = pair_f1(scores[rows], y[rows, c], pair_tail_thresholds(rows_of(c), grid, rule))  # [G, K]
        per_unit = curve.max(axis=0)  # the grid argmax (first best) reaches this value
        unit[c] = _best_unit(per_unit)
        f1[c] = per_unit[unit[c]]
    return Match(method, unit, f1, np.ones(len(unit), bool))


def match_free(method: str, scores: np.ndarray, labels: np.ndarray, splits: np.ndarray,
               known: np.ndarray | None = None) -> Match:
    """Free-threshold matching (``METHOD@best_threshold``), on the ``cal`` samples with known labels."""
    unit, f1 = np.zeros(labels.shape[1], np.int64), np.zeros(labels.shape[1])
    for c in range(labels.shape[1]):
        rows = cal_rows(splits, known, c)
        per_unit = free_threshold_f1(scores[rows], labels[rows, c].astype(bool))
        unit[c] = _best_unit(per_unit)
        f1[c] = per_unit[unit[c]]
    return Match(method, unit, f1, np.ones(len(unit), bool))


def match_units(summary: UnitSummary, labels: np.ndarray, splits: np.ndarray, methods: Sequence[str] = METHODS,
                grid: Sequence[float] = DEFAULT_GRID, best_threshold: bool = True,
                rule: TailRule = "ours", known: np.ndarray | None = None) -> list[Match]:
    """Match every concept to a unit, per method (and per ``@best_threshold`` variant); tails under ``rule``.

    ``known [N, C]`` (``data.missing_labels: allow``): a sample whose label for a concept is unknown
    is in neither that concept's calibration population nor its ``cal`` F1."""
    labels = labels.astype(bool)
    if known is not None:
        labels = labels & np.asarray(known, dtype=bool)  # an unknown label is never a positive
    cal = splits == "cal"
    out: list[Match] = []
    for m in methods:
        rec = BY_NAME.get(m)
        if rec is not None and rec.population == "in_concept_tokens":
            S = summary.sample_scores[rec.score][:, summary.cal_units]
            mt = match_tail(m, S, lambda c: summary.cal_acts[summary.cal_truth[:, c]], labels, splits, grid, rule,
                            known)
            mt.unit = summary.cal_units[mt.unit]
            if len(summary.cal_units) < len(summary.unit_names):  # preselected: check the bound
                others = np.setdiff1d(np.arange(len(summary.unit_names)), summary.cal_units)
                full = summary.sample_scores[rec.score]
                for c in range(labels.shape[1]):
                    rows = cal_rows(splits, known, c)
                    bound = free_threshold_f1(full[rows][:, others], labels[rows, c]).max()
                    mt.exact[c] = mt.cal_f1[c] >= bound
            out.append(mt)
            continue
        if m not in summary.sample_scores:
            continue
        S = summary.sample_scores[m]
        out.append(match_tail(m, S, lambda c: S[cal & labels[:, c]], labels, splits, grid, rule, known))
        if best_threshold:
            out.append(match_free(variant(m), S, labels, splits, known))
    return out


@dataclass
class MatchedUnits:
    """Unlabelled units matched to the labelled concepts: from here on, a supervised stage.

    ``summary`` is what :func:`superactivators.evaluate.detect.run_detection` reads for
    labelled concepts: the sample reductions and ``cal`` tail population of the unit matched
    for SuperActivator (so ``max_token`` and the stage's concept set agree), the global scores
    of the global unit matched for the ``global`` baseline, and in ``method_scores`` each
    baseline's scores at the unit matched on its own criterion.
    """

    summary: ScoreSummary
    tokens: np.ndarray  # [C] token-level unit matched for SuperActivator
    globals: np.ndarray | None  # [C] global unit matched for the global baseline (None: no global twin)
    table: pd.DataFrame  # matches.csv: method, concept, unit, unit_name, match_cal_f1, exact


def match_to_concepts(summary: UnitSummary, labels: np.ndarray, splits: np.ndarray, names: list[str],
                      grid: Sequence[float] = DEFAULT_GRID, rule: TailRule = "ours",
                      known: np.ndarray | None = None) -> MatchedUnits:
    """Match every concept for every method the unit summary can score (``@best_threshold`` too).

    All methods are matched whatever the run asks for, so the matched stage depends on the
    grid (and threshold ``rule``) only; detection then picks the requested methods.
    """
    labels = labels.astype(bool)
    methods = [SA, *(m for m in BASELINES if m in summary.sample_scores)]
    matches = {mt.method: mt for mt in match_units(summary, labels, splits, methods, grid, True, rule, known)}
    sa = matches[SA].unit
    local = np.searchsorted(summary.cal_units, sa)
    scores = {k: v[:, sa] for k, v in summary.sample_scores.items() if k != "global"}
    gunits = matches["global"].unit if "global" in matches else None
    if gunits is not None:
        scores["global"] = summary.sample_scores["global"][:, gunits]
    own = {m: summary.sample_scores[base_of(m)][:, mt.unit] for m, mt in matches.items() if m != SA}
    pops = [summary.cal_acts[summary.cal_truth[:, c], local[c]] for c in range(len(names))]
    rows = []
    for m, mt in matches.items():
        unit_names = summary.global_names if base_of(m) == GLOBAL.name else summary.unit_names
        rows += [{"method": m, "concept": n, "unit": int(u), "unit_name": unit_names[u],
                  "match_cal_f1": float(f), "exact": bool(e)}
                 for n, u, f, e in zip(names, mt.unit, mt.cal_f1, mt.exact)]
    return MatchedUnits(ScoreSummary(list(names), scores, pops, method_scores=own), sa, gunits, pd.DataFrame(rows))


def matched_results(summary: UnitSummary, labels: np.ndarray, splits: np.ndarray, names: list[str],
                    methods: Sequence[str] = METHODS, grid: Sequence[float] = DEFAULT_GRID,
                    best_threshold: bool = True, rule: TailRule = "ours",
                    known: np.ndarray | None = None) -> tuple[list[MethodResult], pd.DataFrame]:
    """Detection results of the matched units (as for supervised concepts) and the match table."""
    m = match_to_concepts(summary, labels, splits, names, grid, rule, known)
    return (run_detection(m.summary, labels.astype(bool), splits, methods, grid, best_threshold, rule, known=known),
            m.table)


def labelled_set(units: ConceptSet, idx: np.ndarray, names: Sequence[str]) -> ConceptSet:
    """The units at ``idx`` renamed to the labelled concepts they were matched to (``units`` keeps theirs)."""
    return dataclasses.replace(units.subset(idx), names=list(names), units=[units.names[i] for i in idx])
