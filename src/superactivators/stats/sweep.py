"""Layer sweep: per concept and method, the best layer chosen on ``cal``, reported on ``test``.

Input is a run's ``detection_metrics.csv`` (one row per layer, concept type, method and
concept, plus ``__macro__`` / ``__weighted__`` rows). The best layer of a (concept type,
method, concept) is the one with the highest ``cal_f1``; ties go to the shallower layer
(cheaper to read, and the choice does not depend on row order). Test metrics are then read
at that layer only, so the choice never sees ``test``.

The ranking metrics (``auroc``, ``ap``; tables written since they exist) are read at the layer
with the highest ``cal_auroc`` instead (``auroc_layer``, ties to the shallower layer): a
ranking is chosen on a ranking metric, and SuperActivator, whose score is the max token at every
layer, then picks max-token pooling's layer and has exactly its AUROC and AP.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.detect import RATES
from ..evaluate.methods import AGGREGATES, MACRO, METHODS, MICRO, SA, WEIGHTED, is_baseline
from ..evaluate.metrics import Confusion
from ..store.layout import RunLayout
from ..util.tables import read_table

KEYS = ["concept_type", "method", "concept"]
COUNTS = ["tp", "fp", "fn", "tn"]
REPORTED = ["best_layer", "cal_f1", "n_pct", "threshold", *COUNTS, "support", *RATES]
#: read at ``auroc_layer`` (best ``cal_auroc``) when the table has them
RANKED = ["cal_auroc", "auroc", "ap"]
#: averaged by the macro / weighted rows when present (NaN values skipped)
OPTIONAL_MEANS = ["auroc", "ap", "precision_at_prevalence", "f1_at_prevalence", "hn_fpr", "hn_auroc"]


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``detection_metrics.csv``, with a clear error when the run is not finished."""
    path = RunLayout(run_dir).detection_metrics
    if not path.exists():
        raise FileNotFoundError(f"{os.path.abspath(path)} not found: is {run_dir} a finished run folder?")
    table = read_table(path)
    missing = sorted({"layer", *KEYS, "cal_f1", "f1"} - set(table.columns))
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return table


def per_concept_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of real concepts (no macro / weighted / micro aggregates)."""
    return table[~table["concept"].isin(AGGREGATES)]


def with_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the rate columns of :data:`~.detect.RATES` from the counts where a table lacks them
    (tables written before accuracy, FPR, TNR and FNR were added)."""
    missing = [r for r in RATES if r not in df.columns]
    if not missing or not set(COUNTS) <= set(df.columns):
        return df
    conf = Confusion(*(df[c].to_numpy(float) for c in COUNTS))
    rates = conf.rates()
    return df.assign(**{r: rates[r] for r in missing})


def best_layers(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (concept type, method, concept): best layer on ``cal`` and its test metrics.

    A NaN ``cal_f1`` (uncalibratable at that layer) ranks below every number.
    """
    rows = with_rates(per_concept_rows(table).copy())
    if rows.empty:
        raise ValueError("the metrics table has no per-concept rows")
    rows["_rank"] = rows["cal_f1"].astype(float).fillna(-np.inf)
    rows = rows.sort_values(KEYS + ["_rank", "layer"], ascending=[True, True, True, False, True], kind="stable")
    best = rows.groupby(KEYS, sort=False, as_index=False).head(1).rename(columns={"layer": "best_layer"})
    extra = [c for c in ("precision_at_prevalence", "f1_at_prevalence", "hn_support", "hn_fpr", "hn_auroc")
             if c in best.columns]
    cols = KEYS + [c for c in REPORTED if c in best.columns] + extra
    best = best[cols]
    if "cal_auroc" in rows.columns and "auroc" in rows.columns:
        rows["_rank"] = rows["cal_auroc"].astype(float).fillna(-np.inf)
        rows = rows.sort_values(KEYS + ["_rank", "layer"], ascending=[True, True, True, False, True], kind="stable")
        ranked = rows.groupby(KEYS, sort=False, as_index=False).head(1).rename(columns={"layer": "auroc_layer"})
        best = best.merge(ranked[KEYS + ["auroc_layer"] + [c for c in RANKED if c in ranked.columns]],
                          on=KEYS, how="left")
    return order_methods(best).reset_index(drop=True)


def order_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by concept type, then methods in the canonical order (SuperActivator first)."""
    names = list(dict.fromkeys(df["method"]))
    rank = {m: i for i, m in enumerate([m for m in METHODS if m in names] + sorted(m for m in names if m not in METHODS))}
    key = df["method"].map(rank)
    return df.assign(_m=key).sort_values(["concept_type", "_m"], kind="stable").drop(columns="_m")


def sweep_macro(best: pd.DataFrame) -> pd.DataFrame:
    """Macro test F1 / precision / recall over concepts at their own best layers.

    Concepts without a positive test sample are left out of the average (as in the per-layer
    macro rows). Columns: concept_type, method, f1, precision, recall, f1_std, n_concepts.
    """
    scored = best[best["support"] > 0] if "support" in best.columns else best
    g = scored.groupby(["concept_type", "method"], sort=False)
    out = g.agg(f1=("f1", "mean"), precision=("precision", "mean"), recall=("recall", "mean"),
                f1_std=("f1", "std"), n_concepts=("f1", "size")).reset_index()
    return order_methods(out).reset_index(drop=True)


def aggregate_rows(best: pd.DataFrame) -> pd.DataFrame:
    """Per (concept type, method): ``__macro__``, ``__weighted__`` (by test positives, the
    paper's headline) and ``__micro__`` (rates of the counts pooled over concepts) rows.

    Macro and weighted run over concepts with at least one positive test sample (as the
    per-layer rows); micro pools every concept's counts (a false alarm on a concept without
    test positives is still an error). ``support`` is the total of test positives.
    """
    best = with_rates(best)
    rows = []
    for (ct, m), g in best.groupby(["concept_type", "method"], sort=False):
        scored = g[g["support"] > 0]
        base = {"concept_type": ct, "method": m, "support": int(scored["support"].sum()),
                "n_concepts": int(len(scored))}
        for name, w in ((MACRO, None), (WEIGHTED, scored["support"].to_numpy(float))):
            row = dict(base, concept=name)
            for col in (*RATES, "cal_f1"):
                ok = len(scored) and (w is None or w.sum() > 0)
                row[col] = float(np.average(scored[col], weights=w)) if ok else float("nan")
            for col in (c for c in OPTIONAL_MEANS if c in scored.columns):
                v = scored[col].to_numpy(float)
                has = ~np.isnan(v)
                wc = None if w is None else w[has]
                row[col] = (float(np.average(v[has], weights=wc)) if has.any() and (wc is None or wc.sum() > 0)
                            else float("nan"))
            rows.append(row)
        if set(COUNTS) <= set(g.columns):
            pooled = {c: float(g[c].sum()) for c in COUNTS}
            conf = Confusion(*(np.array([pooled[c]]) for c in COUNTS))
            rows.append(dict(base, concept=MICRO, **pooled, **{k: float(v[0]) for k, v in conf.rates().items()}))
    return pd.DataFrame(rows)


def layer_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Macro test F1 per (concept type, method, layer), from the table's ``__macro__`` rows."""
    macro = table[table["concept"] == MACRO]
    cols = ["concept_type", "method", "layer", "f1"] + (["cal_f1"] if "cal_f1" in macro.columns else [])
    return order_methods(macro[cols].sort_values(["concept_type", "method", "layer"])).reset_index(drop=True)


def headline(macro: pd.DataFrame, concept_type: str) -> dict[str, float | str]:
    """SuperActivator's swept macro F1 against the best plain baseline for one concept type.

    Plain baselines are the tail-calibrated ones (not ``METHOD@best_threshold``, whose
    thresholds are tuned freely on cal and serve as an upper reference).
    """
    m = macro[macro["concept_type"] == concept_type].set_index("method")["f1"]
    if SA not in m.index:
        raise ValueError(f"no {SA} rows for concept type {concept_type!r}")
    base = m[[k for k in m.index if is_baseline(k)]]
    out: dict[str, float | str] = {"concept_type": concept_type, SA: float(m[SA])}
    if len(base):
        out.update(best_baseline=str(base.idxmax()), baseline_f1=float(base.max()),
                   margin=float(m[SA] - base.max()))
    return out
