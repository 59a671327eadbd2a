"""Detection: SuperActivator vs baselines, calibrated on ``cal``, evaluated on ``test``.

A method is a per-sample score ``[N, C]`` plus a calibration population per concept:

- ``superactivator``: score = max token activation; population = in-concept *token*
  activations on ``cal``. A sample is positive iff some token reaches the tail threshold.
- ``superactivator_sample``: the sample-label variant, for data without token-level truth:
  score = max token activation; population = the top ``SAMPLE_DELTA`` (10) % tokens of each
  positive ``cal`` sample (:class:`~superactivators.evaluate.scoring.TopTokenCollector`), so
  its threshold is fitted on sample labels alone.
- baselines ``global``, ``max_token``, ``mean_token``, ``last_token``, ``random_token``:
  population = the score of the concept's positive ``cal`` samples (``random_token`` under
  ``protocol: seed``: of an independent second draw, see ``ScoreSummary.populations``).

Both use the same protocol: for every N of the grid the threshold is the ``k``-th largest of
the ``n`` population values, ``k = ceil(N n / 100)`` (:func:`~.calibrate.tail_counts`), or under
``protocol: seed`` (``rule="seed"``) the linear ``1 - N/100`` quantile of the population; N is picked
per concept by ``cal`` F1 (first best in grid order). ``METHOD@best_threshold`` picks the
threshold freely on ``cal`` instead; ``METHOD@fpr=1%`` (one row per ``detect.fpr_targets``)
takes the smallest threshold whose FPR on the ``cal`` negatives is <= 1 %
(:func:`~.ranking.fpr_thresholds`, the field's rule for monitors).
Every row also carries the ranking metrics of its score (``auroc``, ``ap`` on test,
``cal_auroc``, ``cal_ap``; :mod:`~.ranking`, scikit-learn's definitions): SuperActivator's
score is the max token, so its ranking, and its AUROC / AP, are max-token pooling's exactly;
what it adds is where its threshold sits. The test false-positive rate of every threshold is
the ``fpr`` column; with ``detect.prevalence`` = pi, ``precision_at_prevalence`` and
``f1_at_prevalence`` re-weight the test negatives to that share of positives
(:func:`~.ranking.reweighted_precision`).
Methods whose scores are already 0/1 decisions (``prompt_seed``: the seed's generated
Yes/No) are evaluated as they are, without a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..store.artefacts import load_npz, recording
from ..util.io import atomic_save_npz
from .calibrate import DEFAULT_GRID, TailRule, best_f1_thresholds, calibrate_tail, positive_populations
from .methods import BY_NAME, MACRO, METHODS, WEIGHTED, fpr_variant, variant
from .metrics import Confusion, f1_grid
from .ranking import auc_ap, fpr_thresholds, reweighted_f1, reweighted_precision
from .scoring import ScoreSummary

RATES = ("precision", "recall", "f1", "accuracy", "fpr", "tnr", "fnr")


@dataclass
class MethodResult:
    """A calibrated method: per concept threshold, chosen N (NaN when free), cal and test F1."""

    method: str
    names: list[str]
    threshold: np.ndarray  # [C]
    n_pct: np.ndarray  # [C]
    cal_f1: np.ndarray  # [C]
    test: Confusion
    cal_f1_curve: np.ndarray | None = None  # [C, G] F1 on cal for each N of the grid
    test_f1_curve: np.ndarray | None = None  # [C, G] F1 on test for each N (figures)
    test_pred: np.ndarray | None = None  # [n_test, C] bool, test samples in sample order (bootstrap)
    scores: np.ndarray | None = None  # [N, C] the sample score it thresholds, every split (ranking metrics)
    labels: np.ndarray | None = None  # [N, C] bool, the labels those scores are ranked against
    splits: np.ndarray | None = None  # [N] the split of each sample
    known: np.ndarray | None = None  # [N, C] bool, which labels are known (None: all; data.missing_labels)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold[None, :]


def calibrate_method(
    method: str,
    scores: np.ndarray,
    populations: Sequence[np.ndarray],
    labels: np.ndarray,
    splits: np.ndarray,
    names: list[str],
    grid: Sequence[float] = DEFAULT_GRID,
    rule: TailRule = "ours",
    known: np.ndarray | None = None,
) -> MethodResult:
    """Thresholds from the tail of ``populations`` (``rule``: :data:`~.calibrate.TailRule`); N per
    concept by ``cal`` F1; test metrics. ``known [N, C]``: unknown labels count nowhere."""
    cal, test = splits == "cal", splits == "test"
    cb = calibrate_tail(_cal_scores(scores, cal, known), populations, labels[cal], grid, rule)
    test_pred = scores[test][None, :, :] >= cb.thresholds.T[:, None, :]
    test_curve = f1_grid(test_pred if known is None else test_pred & known[test][None], labels[test]).T
    chosen = cb.threshold
    pred = scores[test] >= chosen
    return MethodResult(
        method=method, names=names, threshold=chosen, n_pct=cb.n_pct, cal_f1=cb.f1,
        test=Confusion.from_predictions(pred, labels[test], None if known is None else known[test]),
        cal_f1_curve=cb.f1_curve, test_f1_curve=test_curve, test_pred=pred,
        scores=scores, labels=labels, splits=np.asarray(splits), known=known,
    )


def _cal_scores(scores: np.ndarray, cal: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """``scores[cal]`` with unknown labels at -inf: never predicted, labelled 0, they count only
    as true negatives, which F1 (the calibration criterion) ignores."""
    return scores[cal] if known is None else np.where(known[cal], scores[cal], -np.inf)


def calibrate_best_threshold(method: str, scores: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                             names: list[str], known: np.ndarray | None = None) -> MethodResult:
    """Upper reference: the threshold maximising ``cal`` F1, applied to ``test``."""
    cal, test = splits == "cal", splits == "test"
    thr, f1 = best_f1_thresholds(_cal_scores(scores, cal, known), labels[cal])
    pred = scores[test] >= thr
    return MethodResult(
        method=variant(method), names=names, threshold=thr, n_pct=np.full(len(names), np.nan),
        cal_f1=f1, test=Confusion.from_predictions(pred, labels[test], None if known is None else known[test]),
        test_pred=pred, scores=scores, labels=labels, splits=np.asarray(splits), known=known,
    )


def calibrate_fpr(method: str, scores: np.ndarray, labels: np.ndarray, splits: np.ndarray, names: list[str],
                  alpha: float, known: np.ndarray | None = None) -> MethodResult:
    """``METHOD@fpr=A%``: per concept the smallest threshold with FPR <= ``alpha`` on the ``cal``
    negatives (:func:`~.ranking.fpr_thresholds`; unknown labels are not negatives), applied to
    ``test``; ``cal_f1`` at that threshold."""
    cal, test = splits == "cal", splits == "test"
    labels = np.asarray(labels, dtype=bool)
    thr = fpr_thresholds(scores[cal], labels[cal], alpha, None if known is None else known[cal])
    pred = scores[test] >= thr
    return MethodResult(
        method=fpr_variant(method, alpha), names=names, threshold=thr, n_pct=np.full(len(names), np.nan),
        cal_f1=Confusion.from_predictions(scores[cal] >= thr, labels[cal], None if known is None else known[cal]).f1(),
        test=Confusion.from_predictions(pred, labels[test], None if known is None else known[test]), test_pred=pred,
        scores=scores, labels=labels, splits=np.asarray(splits), known=known,
    )


def decision_result(method: str, decisions: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                    names: list[str], known: np.ndarray | None = None) -> MethodResult:
    """A method that already decided (1 = present): test metrics as they are, cal F1 where asked;
    ``known [N, C]``: unknown labels count in neither."""
    cal, test = splits == "cal", splits == "test"
    if np.isnan(decisions[test]).any():
        raise ValueError(f"{method}: some test samples have no answer")
    asked_cal = cal & ~np.isnan(decisions).any(axis=1)
    kn = (lambda m: None) if known is None else (lambda m: known[m])
    cal_f1 = (Confusion.from_predictions(decisions[asked_cal] >= 0.5, labels[asked_cal], kn(asked_cal)).f1()
              if asked_cal.any() else np.full(len(names), np.nan))
    return MethodResult(
        method=method, names=names, threshold=np.full(len(names), 0.5), n_pct=np.full(len(names), np.nan),
        cal_f1=cal_f1, test=Confusion.from_predictions(decisions[test] >= 0.5, labels[test], kn(test)),
    )


def run_detection(
    summary: ScoreSummary,
    labels: np.ndarray,
    splits: np.ndarray,
    methods: Sequence[str] = METHODS,
    grid: Sequence[float] = DEFAULT_GRID,
    best_threshold: bool = True,
    rule: TailRule = "ours",
    known: np.ndarray | None = None,
    fpr_targets: Sequence[float] = (),
) -> list[MethodResult]:
    """Calibrate and evaluate every requested method from one :class:`ScoreSummary`; every
    tail-calibrated method thresholds under ``rule`` (``protocol``: ``"ours"`` or ``"seed"``);
    the baselines also at each false-positive rate of ``fpr_targets`` (``METHOD@fpr=1%``).
    ``known [N, C]`` (the store's, ``data.missing_labels: allow``): an unknown label is read as 0
    (no population member) and left out of the calibration F1, the test counts and the ranking metrics."""
    labels = labels.astype(bool)
    if known is not None:
        known = np.asarray(known, dtype=bool)
        if known.shape != labels.shape:
            raise ValueError(f"known labels {known.shape} do not match the labels {labels.shape}")
    cal = splits == "cal"
    out: list[MethodResult] = []
    for m in methods:
        rec = BY_NAME.get(m)
        if rec is None:
            continue
        if rec.kind == "decision":
            if m in summary.sample_scores:
                out.append(decision_result(m, summary.sample_scores[m], labels, splits, summary.names, known))
            continue
        if rec.population == "in_concept_tokens":
            scores, pops = summary.sample_scores[rec.score], summary.cal_in_concept
        elif rec.population == "top_tokens":
            if m not in summary.populations:  # a summary cached before the variant existed
                continue
            scores, pops = summary.sample_scores[rec.score], summary.populations[m]
        elif m in summary.method_scores or rec.score in summary.sample_scores:
            # unlabelled types: a baseline's own matched unit (method_scores) has no separate population
            scores = summary.method_scores.get(m, summary.sample_scores.get(rec.score))
            own = None if m in summary.method_scores else summary.populations.get(m)
            pops = own or positive_populations(scores[cal], labels[cal])
        else:
            continue
        out.append(calibrate_method(m, scores, pops, labels, splits, summary.names, grid, rule, known))
        if best_threshold and rec.free_reference:
            free = summary.method_scores.get(variant(m), scores)
            out.append(calibrate_best_threshold(m, free, labels, splits, summary.names, known))
        if rec.fpr_reference:
            out += [calibrate_fpr(m, scores, labels, splits, summary.names, a, known) for a in fpr_targets]
    return out


RANKING = ("auroc", "ap", "cal_auroc", "cal_ap")
AT_PREVALENCE = ("precision_at_prevalence", "f1_at_prevalence")


def ranking_columns(r: MethodResult) -> dict[str, np.ndarray]:
    """``auroc``, ``ap`` (test) and ``cal_auroc``, ``cal_ap`` of a result's score; NaN without scores."""
    nan = np.full(len(r.names), np.nan)
    if r.scores is None or r.labels is None or r.splits is None:
        return {k: nan for k in RANKING}
    cal, test = r.splits == "cal", r.splits == "test"
    kn = (lambda m: None) if r.known is None else (lambda m: r.known[m])  # unknown labels: left out
    auc, ap = auc_ap(r.scores[test], r.labels[test], kn(test)) if test.any() else (nan, nan)
    cauc, cap = auc_ap(r.scores[cal], r.labels[cal], kn(cal)) if cal.any() else (nan, nan)
    return {"auroc": auc, "ap": ap, "cal_auroc": cauc, "cal_ap": cap}


HARD_NEGATIVE = ("hn_support", "hn_fpr", "hn_auroc")


def hard_negative_columns(r: MethodResult, hard: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per concept with a ``hard_negative::`` column (``hard``: concept -> ``[N]`` 0/1 over every
    sample): ``hn_support`` test hard negatives, ``hn_fpr`` the share of them the method's threshold
    calls positive, ``hn_auroc`` ROC AUC of test positives against test hard negatives only."""
    C = len(r.names)
    out = {"hn_support": np.full(C, np.nan), "hn_fpr": np.full(C, np.nan), "hn_auroc": np.full(C, np.nan)}
    if r.splits is None or r.labels is None:
        return out
    test = r.splits == "test"
    for j, c in enumerate(r.names):
        if c not in hard:
            continue
        hn = np.asarray(hard[c], dtype=bool)[test]
        out["hn_support"][j] = hn.sum()
        if r.test_pred is not None and hn.any():
            out["hn_fpr"][j] = r.test_pred[hn, j].mean()
        if r.scores is not None:
            keep = hn | r.labels[test, j]
            out["hn_auroc"][j] = auc_ap(r.scores[test][keep][:, [j]], r.labels[test][keep][:, [j]])[0][0]
    return out


def results_table(results: Sequence[MethodResult], prevalence: float | None = None,
                  hard_negatives: dict[str, np.ndarray] | None = None, **keys: object) -> pd.DataFrame:
    """Long table: one row per (method, concept), plus macro and support-weighted rows.

    Columns: threshold, chosen N, cal F1, test counts, support (test positives) and the rates
    of :meth:`Confusion.rates` (precision, recall, F1, accuracy, FPR, TNR, FNR), the ranking
    metrics of the score (:data:`RANKING`) and, with ``prevalence``, precision and F1
    re-weighted to that share of positives (:data:`AT_PREVALENCE`), with ``hard_negatives``
    (concept -> ``[N]`` marks) :data:`HARD_NEGATIVE` (:func:`hard_negative_columns`). Macro and weighted averages
    run over concepts with at least one positive test sample (ranking metrics: with a defined value).
    """
    frames = []
    # methods that rank the same score array (superactivator, its sample variant, max_token and
    # its @ variants share the max token) share its ranking metrics: computed once per array
    ranked: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
    for r in results:
        t = r.test
        key = (id(r.scores), id(r.labels), id(r.splits), id(r.known))
        if r.scores is None or key not in ranked:
            ranked[key] = ranking_columns(r)
        df = pd.DataFrame({
            "method": r.method, "concept": r.names, "n_pct": r.n_pct, "threshold": r.threshold,
            "cal_f1": r.cal_f1, "tp": t.tp, "fp": t.fp, "fn": t.fn, "tn": t.tn, "support": t.support,
            **t.rates(), **ranked[key],
        })
        extra = list(RANKING)
        if prevalence is not None:
            df["precision_at_prevalence"] = reweighted_precision(t.recall(), t.fpr(), prevalence)
            df["f1_at_prevalence"] = reweighted_f1(t.recall(), t.fpr(), prevalence)
            extra += list(AT_PREVALENCE)
        if hard_negatives:
            for k, v in hard_negative_columns(r, hard_negatives).items():
                df[k] = v
            extra += ["hn_fpr", "hn_auroc"]
        scored = df[df["support"] > 0]
        w = scored["support"] / max(scored["support"].sum(), 1)
        agg = {}
        for name, weights in ((MACRO, None), (WEIGHTED, w)):
            row = {"method": r.method, "concept": name, "support": int(scored["support"].sum())}
            for col in (*RATES, "cal_f1"):
                row[col] = float(np.average(scored[col], weights=weights)) if len(scored) else float("nan")
            for col in extra:
                ok = scored[col].notna().to_numpy()
                wc = None if weights is None else np.asarray(weights)[ok]
                row[col] = (float(np.average(scored[col].to_numpy()[ok], weights=wc))
                            if ok.any() and (wc is None or wc.sum() > 0) else float("nan"))
            agg[name] = row
        frames.append(pd.concat([df, pd.DataFrame(list(agg.values()))], ignore_index=True))
    table = pd.concat(frames, ignore_index=True)
    for i, (k, v) in enumerate(keys.items()):
        table.insert(i, k, v)
    return table


def macro_pivot(table: pd.DataFrame, index: Sequence[str] = ("layer", "concept_type")) -> pd.DataFrame:
    """Macro F1: rows = ``index``, columns = methods (SuperActivator first)."""
    macro = table[table["concept"] == MACRO]
    pv = macro.pivot_table(index=list(index), columns="method", values="f1")
    cols = [c for c in METHODS if c in pv.columns] + sorted(c for c in pv.columns if c not in METHODS)
    return pv[cols]


def save_predictions(path: Path, results: Sequence[MethodResult], splits: np.ndarray) -> None:
    """Every method's test predictions and test / cal sample scores of one stage, so that any
    metric can be recomputed from the run folder (the bootstrap of F1, AUROC and AP reads them).

    Arrays: ``test_ids`` / ``cal_ids`` (the samples' indices in the store, in row order),
    ``names`` (concepts, column order), per result row ``METHOD``: ``pred__METHOD`` (test
    predictions, bits packed along samples), ``test_score__METHOD`` and ``cal_score__METHOD``
    (``[n, C]``, the per-sample score the method thresholds, in the summary's dtype:
    SuperActivator's is its max token, so it equals ``max_token``'s; a ``@`` variant row has its
    base method's score, or for unlabelled types its own matched unit's).
    """
    splits = np.asarray(splits)
    test_ids = np.flatnonzero(splits == "test")
    cal_ids = np.flatnonzero(splits == "cal")
    arrays: dict[str, np.ndarray] = {"test_ids": test_ids, "cal_ids": cal_ids}
    for r in results:
        if r.scores is not None:
            arrays[f"test_score__{r.method}"] = np.asarray(r.scores)[test_ids]
            arrays[f"cal_score__{r.method}"] = np.asarray(r.scores)[cal_ids]
            arrays["names"] = np.array(r.names)
        if r.test_pred is None:
            continue
        if r.test_pred.shape != (len(test_ids), len(r.names)):
            raise ValueError(f"{r.method}: test predictions {r.test_pred.shape}, expected {(len(test_ids), len(r.names))}")
        arrays["names"] = np.array(r.names)
        arrays[f"pred__{r.method}"] = np.packbits(r.test_pred.astype(bool), axis=0)
    with recording(Path(path)):
        atomic_save_npz(Path(path), **arrays)


@dataclass
class StagePredictions:
    """A stage's ``predictions.npz``: per method, test predictions ``[n_test, C]`` bool and, in
    files written since they were added, test / cal sample scores (empty dicts otherwise)."""

    test_ids: np.ndarray
    names: list[str]
    pred: dict[str, np.ndarray]
    test_scores: dict[str, np.ndarray] = field(default_factory=dict)
    cal_scores: dict[str, np.ndarray] = field(default_factory=dict)
    cal_ids: np.ndarray | None = None

    @classmethod
    def load(cls, path: Path) -> "StagePredictions":
        z = load_npz(path)
        n = len(z["test_ids"])
        names = [str(v) for v in z["names"]] if "names" in z.files else []
        pred = {k[6:]: np.unpackbits(z[k], axis=0, count=n).astype(bool) for k in z.files if k.startswith("pred__")}
        test = {k[len("test_score__"):]: z[k] for k in z.files if k.startswith("test_score__")}
        cal = {k[len("cal_score__"):]: z[k] for k in z.files if k.startswith("cal_score__")}
        cal_ids = np.asarray(z["cal_ids"]) if "cal_ids" in z.files else None
        return cls(np.asarray(z["test_ids"]), names, pred, test, cal, cal_ids)
