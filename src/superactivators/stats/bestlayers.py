"""``best_layers.csv``: each concept at its own best layer (chosen on ``cal``), with uncertainty.

One row per (concept type, method, concept): the layer with the best ``cal`` F1
(:func:`~.sweep.best_layers`), its chosen N and threshold, test counts, support and rates;
then per (concept type, method) the ``__macro__``, ``__weighted__`` (by test positives: the
paper's headline) and ``__micro__`` rows (:func:`~.sweep.aggregate_rows`).

Uncertainty (:mod:`~.bootstrap`): each method's test predictions at each concept's own best layer
are read from the stage folders' ``predictions.npz`` (or, for runs written before that file,
recomputed from ``summary.npz`` and the table's thresholds); the recomputed confusion counts
must equal the table's, else that concept type gets no intervals and a note says why. Added
columns: ``f1_lo``, ``f1_hi``, ``f1_err`` (see :mod:`~.bootstrap` for the seed's error), and for
every method but SuperActivator the paired comparison ``sa_diff`` = F1(SuperActivator) - F1(method),
``sa_diff_lo``, ``sa_diff_hi``, ``sa_p`` (one-sided p of "SuperActivator is not better"),
``sa_better`` (``sa_p < 0.05``), ``sa_p_two`` (two-sided p of "no difference") and ``sa_verdict``
(significantly better / significantly worse / no significant difference, from ``sa_p_two``).

Significance both ways: ``sa_p_reverse`` is the one-sided p of "SuperActivator is not worse"
(``(1 + #{d >= 0}) / (B + 1)``), ``sa_worse`` = ``sa_p_reverse < 0.05`` marks a method
significantly *better* than SuperActivator exactly as ``sa_better`` marks the reverse, and
``sa_p_two`` = ``min(1, 2 min(sa_p, sa_p_reverse))``.

Ranking metrics (:mod:`~.ranking`; runs whose ``predictions.npz`` holds the sample scores, or
recomputed from ``summary.npz``): ``auroc``, ``ap`` at ``auroc_layer`` (best ``cal_auroc``, see
:mod:`~.sweep`) with intervals ``auroc_lo``, ``auroc_hi``, ``ap_lo``, ``ap_hi`` on the same
resamples as F1, and per metric the paired test against SuperActivator:
``sa_auroc_diff``, ``sa_auroc_lo``, ``sa_auroc_hi``, ``sa_auroc_p``, ``sa_auroc_p_reverse``,
``sa_auroc_p_two_sided`` (and ``sa_ap_*``). SuperActivator's score is the max token, so its
AUROC and AP equal ``max_token``'s exactly (difference 0, p = 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.detect import StagePredictions
from ..evaluate.methods import MACRO, MICRO, SA, WEIGHTED, has_variant, score_of, short_label
from ..evaluate.ranking import auc_ap
from ..evaluate.scoring import ScoreSummary
from ..store.layout import RunLayout, StageFolder
from ..store.runs import find_stages, find_store
from ..util.io import atomic_write_bytes
from .bootstrap import ALPHA, DEFAULT_RESAMPLES, TIE, Bootstrap, significance_words
from .ranking import METRICS as RANK_METRICS, RankBootstrap, reverse_p
from .sweep import KEYS, aggregate_rows, best_layers, load_metrics, order_methods
from ..util.console import wrap

log = logging.getLogger(__name__)

AGG_OF = {MACRO: "macro", WEIGHTED: "weighted", MICRO: "micro"}


@dataclass
class BestLayers:
    """The best-layer table of a run and, per concept type, the bootstrap behind its intervals."""

    table: pd.DataFrame
    boot: dict[str, Bootstrap] = field(default_factory=dict)
    rank_boot: dict[str, RankBootstrap] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def __repr__(self) -> str:  # the headline lines, not the table and the resamples
        return f"BestLayers ({len(self.table)} rows, {self.n_resamples} resamples, seed {self.seed})\n" + format_headline(self)

    def headline(self, concept_type: str) -> pd.DataFrame:
        """Weighted and macro F1 (with error) per method for one concept type, methods as rows."""
        t = self.table[(self.table["concept_type"] == concept_type) & self.table["concept"].isin([WEIGHTED, MACRO])]
        cols = ["f1", "f1_err", "f1_lo", "f1_hi", "sa_diff", "sa_p", "sa_better"]
        wide = t.pivot_table(index="method", columns="concept", values=[c for c in cols if c in t.columns],
                             aggfunc="first", sort=False)
        return wide


def _stage_dirs(run_dir: Path) -> dict[tuple[int, str], list[Path]]:
    """Candidate stage folders per (layer, concept type): the run index first, then by name (newest first)."""
    out: dict[tuple[int, str], list[Path]] = {}
    for s in find_stages(run_dir):
        out.setdefault((s.layer, s.concept_type), []).append(s.path)
    extra = sorted(RunLayout(run_dir).stage_folders(), key=lambda ks: -ks[1].path.stat().st_mtime)
    for key, st in extra:  # unsupervised stages are not in stages.json on older runs
        if st.path not in out.get(key, []):
            out.setdefault(key, []).append(st.path)
    return out


def _stage_predictions(stage: Path, rows: pd.DataFrame, test_ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per method ``[n_test, C_stage]`` predictions of one stage, from ``predictions.npz`` or
    recomputed from ``summary.npz`` + thresholds; ``None`` when neither is there."""
    files = StageFolder(stage)
    if files.predictions.exists():
        p = StagePredictions.load(files.predictions)
        if not np.array_equal(p.test_ids, test_ids):
            return None
        return {m: pd.DataFrame(v, columns=p.names) for m, v in p.pred.items()}
    if not files.done:
        return None
    summ = ScoreSummary.load(files.summary)
    out = {}
    for m, g in rows.groupby("method"):
        key = score_of(m)  # the tail methods threshold the max token
        if key not in summ.sample_scores:
            continue
        thr = g.set_index("concept")["threshold"].reindex(summ.names).to_numpy(float)
        scores = summ.sample_scores[key][test_ids]
        out[m] = pd.DataFrame(scores >= np.where(np.isnan(thr), np.inf, thr)[None, :], columns=summ.names)
    return out


def collect_predictions(run_dir: Path, best: pd.DataFrame, concept_type: str, table: pd.DataFrame,
                        test_ids: np.ndarray, truth: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], str | None]:
    """Test predictions ``{method: [n_test, concepts]}`` of each (method, concept) at its best layer.

    A stage's predictions must give the table's tp / fp / fn / tn at that layer (``truth``:
    test labels, one column per concept); a folder that disagrees (a stale stage of another
    config) is skipped for the next candidate. Returns the predictions, or a note saying what
    is missing.
    """
    dirs = _stage_dirs(run_dir)
    sub = best[best["concept_type"] == concept_type]
    methods = list(dict.fromkeys(sub["method"]))
    concepts = list(dict.fromkeys(sub["concept"]))
    pred = {m: pd.DataFrame(np.zeros((len(test_ids), len(concepts)), bool), columns=concepts) for m in methods}
    for layer, g in sub.groupby("best_layer"):
        rows = table[(table["concept_type"] == concept_type) & (table["layer"] == layer)]
        found = None
        for d in dirs.get((int(layer), concept_type), []):
            cand = _stage_predictions(d, rows, test_ids)
            if cand is not None and _counts_match(cand, g, truth):
                found = cand
                break
        if found is None:
            return {}, (f"{concept_type}: no stage folder of layer {int(layer)} has test predictions that "
                        f"reproduce the table's counts (run written before predictions.npz, or a stale stage)")
        for m, c in zip(g["method"], g["concept"]):
            pred[m][c] = found[m][c].to_numpy()
    return pred, None


def _stage_scores(stage: Path, methods: list[str], test_ids: np.ndarray) -> dict[str, pd.DataFrame]:
    """Per method ``[n_test, C_stage]`` test sample scores of one stage, from ``predictions.npz`` or
    (runs written before the scores were kept there) ``summary.npz``'s score of the method."""
    files = StageFolder(stage)
    if files.predictions.exists():
        p = StagePredictions.load(files.predictions)
        if p.test_scores and np.array_equal(p.test_ids, test_ids):
            return {m: pd.DataFrame(v, columns=p.names) for m, v in p.test_scores.items()}
    if not files.done:
        return {}
    summ = ScoreSummary.load(files.summary)
    out = {}
    for m in methods:
        v = summ.method_scores.get(m, summ.sample_scores.get(score_of(m)))
        if v is not None:
            out[m] = pd.DataFrame(np.asarray(v)[test_ids], columns=summ.names)
    return out


def collect_scores(run_dir: Path, best: pd.DataFrame, concept_type: str, test_ids: np.ndarray,
                   truth: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], str | None]:
    """Test sample scores ``{method: [n_test, concepts]}`` of each (method, concept) at its
    ``auroc_layer``; a stage's scores must reproduce the table's ``auroc`` (else the next candidate)."""
    dirs = _stage_dirs(run_dir)
    sub = best[(best["concept_type"] == concept_type) & best["auroc_layer"].notna()]
    methods = list(dict.fromkeys(sub["method"]))
    concepts = list(dict.fromkeys(sub["concept"]))
    out = {m: pd.DataFrame(np.zeros((len(test_ids), len(concepts))), columns=concepts) for m in methods}
    for layer, g in sub.groupby("auroc_layer"):
        found = False
        for d in dirs.get((int(layer), concept_type), []):
            cand = _stage_scores(d, methods, test_ids)
            ok = True
            for m, c, want in g[["method", "concept", "auroc"]].itertuples(index=False):
                if m not in cand or c not in cand[m].columns or c not in truth.columns:
                    ok = False
                    break
                got = auc_ap(cand[m][[c]].to_numpy(), truth[[c]].to_numpy(bool))[0][0]
                if not (np.isnan(got) and np.isnan(want)) and not np.isclose(got, want, rtol=0, atol=1e-9):
                    ok = False
                    break
            if ok:
                for m, c in zip(g["method"], g["concept"]):
                    out[m][c] = cand[m][c].to_numpy(float)
                found = True
                break
        if not found:
            return {}, (f"{concept_type}: no stage folder of layer {int(layer)} has test scores that reproduce "
                        f"the table's auroc (no ranking intervals)")
    return out, None


def _counts_match(cand: dict[str, pd.DataFrame], wanted: pd.DataFrame, truth: pd.DataFrame) -> bool:
    """Do the candidate predictions give the table's tp / fp / fn / tn for every wanted (method, concept)?"""
    for m, c, tp, fp, fn, tn in wanted[["method", "concept", "tp", "fp", "fn", "tn"]].itertuples(index=False):
        if m not in cand or c not in cand[m].columns or c not in truth.columns:
            return False
        p, t = cand[m][c].to_numpy(bool), truth[c].to_numpy(bool)
        if ((p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum()) != (tp, fp, fn, tn):
            return False
    return True


def best_layer_table(run_dir: str | Path, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     alpha: float = ALPHA) -> BestLayers:
    """The best-layer table of a finished run, with bootstrap intervals and paired tests."""
    run_dir = Path(run_dir)
    table = load_metrics(run_dir)
    best = best_layers(table)
    agg = aggregate_rows(best)
    result = BestLayers(pd.DataFrame(), n_resamples=n_resamples, seed=seed)
    try:
        store = find_store(run_dir)
    except (FileNotFoundError, RuntimeError) as err:
        store = None
        result.notes.append(f"no intervals: {err}")
    frames = []
    for ct in dict.fromkeys(best["concept_type"]):
        b = best[best["concept_type"] == ct].copy()
        a = agg[agg["concept_type"] == ct].copy()
        if store is not None and not (store.splits == "test").any():
            result.notes.append(f"{ct}: no intervals: the store has no test samples")
        elif store is not None and store.known is not None:  # the bootstrap resamples every test sample
            result.notes.append(f"{ct}: no intervals: some labels are unknown (data.missing_labels: allow)")
        elif store is not None:
            test_ids = np.flatnonzero(store.splits == "test")
            truth = pd.DataFrame(store.labels[test_ids].astype(bool), columns=list(store.concepts))
            pred, note = collect_predictions(run_dir, best, ct, table, test_ids, truth)
            if note:
                result.notes.append(note)
            else:
                b, a, boot = _with_intervals(b, a, pred, store, test_ids, n_resamples, seed, alpha)
                result.boot[ct] = boot
            if "auroc_layer" in best.columns:
                scores, note = collect_scores(run_dir, best, ct, test_ids, truth)
                if note:
                    result.notes.append(note)
                elif scores:
                    b, a, rb = _with_rank_intervals(b, a, scores, store, test_ids, n_resamples, seed)
                    result.rank_boot[ct] = rb
        frames += [b, a]
    out = pd.concat(frames, ignore_index=True)
    result.table = order_methods(out).reset_index(drop=True)
    for note in result.notes:
        log.warning("best_layers: %s", note)
    return result


def _with_intervals(b: pd.DataFrame, a: pd.DataFrame, pred: dict[str, pd.DataFrame], store, test_ids: np.ndarray,
                    n_resamples: int, seed: int, alpha: float):
    methods = list(pred)
    concepts = list(pred[methods[0]].columns)
    ci = [store.concepts.index(c) for c in concepts]
    truth = store.labels[test_ids][:, ci].astype(bool)
    P = np.stack([pred[m][concepts].to_numpy(bool) for m in methods])  # [M, n, C]
    boot = Bootstrap.run(P, truth, methods, concepts, n_resamples, seed)
    pc = boot.per_concept()
    idx = pd.MultiIndex.from_product([methods, concepts], names=["method", "concept"])
    per = pd.DataFrame({"f1_lo": pc.lo.ravel(), "f1_hi": pc.hi.ravel(), "f1_err": pc.err.ravel()}, index=idx)
    if SA in methods:
        cols = {"sa_diff": [], "sa_diff_lo": [], "sa_diff_hi": [], "sa_p": [], "sa_p_two": [], "sa_p_reverse": []}
        f1 = boot.f1()
        for m in methods:
            pr = boot.paired(SA, m)
            d = f1[:, methods.index(SA)] - f1[:, methods.index(m)]
            vals = ((pr.diff, pr.lo, pr.hi, pr.p, pr.p_two, reverse_p(d)) if m != SA
                    else (np.full(len(concepts), np.nan),) * 6)
            for key, v in zip(cols, vals):
                cols[key].append(np.asarray(v, dtype=float))
        for key, v in cols.items():
            per[key] = np.concatenate(v)
    b = b.join(per, on=["method", "concept"])
    rows = []
    for kind_row, kind in AGG_OF.items():
        iv = boot.aggregate(kind)
        for i, m in enumerate(methods):
            r = {"method": m, "concept": kind_row, "f1_lo": iv.lo[i], "f1_hi": iv.hi[i], "f1_err": iv.err[i]}
            if SA in methods and m != SA:
                pr = boot.paired(SA, m, kind)
                s = boot.aggregate_samples(kind)
                d = s[:, methods.index(SA)] - s[:, i]
                r.update(sa_diff=float(pr.diff), sa_diff_lo=float(pr.lo), sa_diff_hi=float(pr.hi), sa_p=float(pr.p),
                         sa_p_two=float(pr.p_two), sa_p_reverse=float(reverse_p(d)))
            rows.append(r)
    a = a.merge(pd.DataFrame(rows), on=["method", "concept"], how="left")
    for df in (b, a):
        if "sa_p" in df.columns:
            df["sa_better"] = np.where(df["sa_p"].notna(), df["sa_p"] < alpha, None)
            df["sa_verdict"] = [significance_words(d, p, alpha) if pd.notna(p) else None
                                for d, p in zip(df["sa_diff"], df["sa_p_two"])]
        if "sa_p_reverse" in df.columns:
            df["sa_worse"] = np.where(df["sa_p_reverse"].notna(), df["sa_p_reverse"] < alpha, None)
    return b, a, boot


def _with_rank_intervals(b: pd.DataFrame, a: pd.DataFrame, scores: dict[str, pd.DataFrame], store,
                         test_ids: np.ndarray, n_resamples: int, seed: int):
    """``auroc_lo/hi``, ``ap_lo/hi`` and the ``sa_auroc_*`` / ``sa_ap_*`` paired columns, on F1's resamples."""
    methods = list(scores)
    concepts = list(scores[methods[0]].columns)
    ci = [store.concepts.index(c) for c in concepts]
    truth = store.labels[test_ids][:, ci].astype(bool)
    S = np.stack([scores[m][concepts].to_numpy(float) for m in methods])
    rb = RankBootstrap.run(S, truth, methods, concepts, n_resamples, seed)
    idx = pd.MultiIndex.from_product([methods, concepts], names=["method", "concept"])
    per = pd.DataFrame(index=idx)
    rows = {kind_row: [{"method": m, "concept": kind_row} for m in methods] for kind_row in (MACRO, WEIGHTED)}
    for metric in RANK_METRICS:
        _, lo, hi = rb.per_concept(metric)
        per[f"{metric}_lo"], per[f"{metric}_hi"] = lo.ravel(), hi.ravel()
        for kind_row in rows:
            v, lo, hi = rb.aggregate(metric, AGG_OF[kind_row])
            for i, r in enumerate(rows[kind_row]):
                r.update({metric: float(v[i]), f"{metric}_lo": float(lo[i]), f"{metric}_hi": float(hi[i])})
        if SA not in methods:
            continue
        names = ("diff", "lo", "hi", "p", "p_reverse", "p_two_sided")
        cols: dict[str, list[np.ndarray]] = {f"sa_{metric}_{k}": [] for k in names}
        for m in methods:
            pr = rb.paired(metric, SA, m)
            vals = ((pr.diff, pr.lo, pr.hi, pr.p, pr.p_reverse, pr.p_two_sided) if m != SA
                    else (np.full(len(concepts), np.nan),) * 6)
            for key, v in zip(cols, vals):
                cols[key].append(np.asarray(v, dtype=float))
        for key, v in cols.items():
            per[key] = np.concatenate(v)
        for kind_row in rows:
            for r in rows[kind_row]:
                if r["method"] == SA:
                    continue
                pr = rb.paired(metric, SA, r["method"], AGG_OF[kind_row])
                r.update({f"sa_{metric}_{k}": float(v) for k, v in
                          zip(names, (pr.diff, pr.lo, pr.hi, pr.p, pr.p_reverse, pr.p_two_sided))})
    b = b.join(per, on=["method", "concept"])
    agg = pd.DataFrame([r for rs in rows.values() for r in rs])
    a = a.drop(columns=[c for c in RANK_METRICS if c in a.columns]).merge(agg, on=["method", "concept"], how="left")
    return b, a, rb


def write_best_layers(run_dir: str | Path, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> BestLayers:
    """Compute :func:`best_layer_table` and write ``RUN_DIR/best_layers.csv``."""
    res = best_layer_table(run_dir, n_resamples, seed)
    atomic_write_bytes(RunLayout(run_dir).best_layers, res.table.to_csv(index=False).encode())
    return res


def format_headline(res: BestLayers, variants: bool = False) -> str:
    """Weighted (the paper's) and macro F1 at the per-concept best layers, one line per method,
    fitted to 100 columns (intervals and every p-value are in best_layers.csv).

    Calibrated methods only, unless ``variants``: their free-threshold and operating-point rows
    are in best_layers.csv and the report.
    """
    lines = []
    t = res.table if variants else res.table[~res.table["method"].map(has_variant)]
    width = max([11, *(len(short_label(m)) for m in t["method"].unique())])
    for ct in dict.fromkeys(t["concept_type"]):
        lines.append(wrap(f"{ct}: test F1 with each concept at its best layer (chosen on cal), weighted by test "
                          f"positives ± error, and macro; SA = SuperActivator minus the method, paired bootstrap, "
                          f"two-sided p (< {ALPHA:g}: significantly better / worse)"))
        sub = t[t["concept_type"] == ct]
        w = sub[sub["concept"] == WEIGHTED].set_index("method")
        m = sub[sub["concept"] == MACRO].set_index("method")
        for meth in w.index:
            r = w.loc[meth]
            err = f" ± {r['f1_err']:.3f}" if "f1_err" in r and pd.notna(r.get("f1_err")) else ""
            sig = ""
            if pd.notna(r.get("sa_p_two", np.nan)):
                sig = f"  SA {r['sa_diff']:+.3f} {r.get('sa_verdict') or TIE} (p={r['sa_p_two']:.3f})"
            rank = f"  auc {r['auroc']:.3f}" if pd.notna(r.get("auroc")) else ""
            line = f"  {short_label(meth):<{width}} {r['f1']:.3f}{err}  macro {m.loc[meth, 'f1']:.3f}{rank}"
            if len(line + sig) <= 100:
                lines.append(line + sig)
            else:  # a long method name or verdict: the comparison on its own line
                lines += [line, " " * (width + 2) + sig.strip()] if sig else [line]
    if "auroc" in t.columns and t["auroc"].notna().any():
        lines.append(wrap("  auc: weighted ROC AUC of each method's score; SuperActivator's equals max_token's "
                          "(the same score, the max token): the methods differ only in the threshold"))
    if res.notes:
        lines += [wrap(f"  note: {n}", indent="    ") for n in res.notes]
    return "\n".join(lines)


__all__ = ["KEYS", "BestLayers", "best_layer_table", "format_headline", "write_best_layers"]
