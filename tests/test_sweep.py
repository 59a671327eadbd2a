"""Layer sweep: best layer chosen on cal (never test), test metrics read at that layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from superactivators.evaluate.methods import MACRO, MICRO, WEIGHTED
from superactivators.stats.sweep import aggregate_rows, best_layers, headline, layer_curve, load_metrics, sweep_macro


def _table() -> pd.DataFrame:
    """Two methods x two concepts x three layers, numbers chosen by hand.

    superactivator/a: cal 0.5, 0.9, 0.7 -> layer 2 (test there 0.8, although layer 3 has test 0.95)
    superactivator/b: cal 0.6, 0.6, 0.4 -> tie at layers 1 and 2 -> shallower, layer 1 (test 0.3)
    max_token/a:      cal NaN, 0.2, 0.1 -> NaN ranks last -> layer 2 (test 0.25)
    max_token/b:      cal 0.1, 0.2, 0.3 -> layer 3 (test 0.5)
    """
    rows = []
    spec = {
        ("superactivator", "a"): ([0.5, 0.9, 0.7], [0.1, 0.8, 0.95], [5, 5, 5]),
        ("superactivator", "b"): ([0.6, 0.6, 0.4], [0.3, 0.9, 0.9], [4, 4, 4]),
        ("max_token", "a"): ([np.nan, 0.2, 0.1], [0.9, 0.25, 0.9], [5, 5, 5]),
        ("max_token", "b"): ([0.1, 0.2, 0.3], [0.9, 0.9, 0.5], [4, 4, 4]),
    }
    for (m, c), (cal, f1, sup) in spec.items():
        for layer in (1, 2, 3):
            rows.append({"layer": layer, "concept_type": "mean", "method": m, "concept": c, "n_pct": 10.0,
                         "threshold": 0.1 * layer, "cal_f1": cal[layer - 1], "support": sup[layer - 1],
                         "precision": f1[layer - 1], "recall": f1[layer - 1], "f1": f1[layer - 1]})
    for m in ("superactivator", "max_token"):
        for layer in (1, 2, 3):  # macro rows: must be ignored by best_layers, used by layer_curve
            rows.append({"layer": layer, "concept_type": "mean", "method": m, "concept": MACRO, "cal_f1": 0.0,
                         "support": 9, "precision": 0.0, "recall": 0.0, "f1": layer / 10 + (m == "max_token")})
    return pd.DataFrame(rows)


def test_best_layer_chosen_on_cal_with_ties_to_shallower_and_nan_last():
    best = best_layers(_table()).set_index(["method", "concept"])
    assert best.loc[("superactivator", "a"), "best_layer"] == 2
    assert best.loc[("superactivator", "a"), "f1"] == pytest.approx(0.8)  # not test's best (0.95 at layer 3)
    assert best.loc[("superactivator", "b"), "best_layer"] == 1
    assert best.loc[("superactivator", "b"), "f1"] == pytest.approx(0.3)
    assert best.loc[("max_token", "a"), "best_layer"] == 2
    assert best.loc[("max_token", "b"), "best_layer"] == 3
    assert best.loc[("superactivator", "a"), "threshold"] == pytest.approx(0.2)
    assert MACRO not in best.index.get_level_values("concept")
    # SuperActivator rows come first
    assert list(best_layers(_table())["method"])[:2] == ["superactivator", "superactivator"]


def test_sweep_macro_and_headline_by_hand():
    macro = sweep_macro(best_layers(_table())).set_index("method")
    assert macro.loc["superactivator", "f1"] == pytest.approx((0.8 + 0.3) / 2)
    assert macro.loc["max_token", "f1"] == pytest.approx((0.25 + 0.5) / 2)
    assert macro.loc["superactivator", "f1_std"] == pytest.approx(np.std([0.8, 0.3], ddof=1))
    assert macro.loc["superactivator", "n_concepts"] == 2
    h = headline(sweep_macro(best_layers(_table())), "mean")
    assert h["best_baseline"] == "max_token"
    assert h["margin"] == pytest.approx(0.55 - 0.375)


def test_sweep_macro_skips_concepts_without_test_positives():
    t = _table()
    t.loc[(t["concept"] == "b"), "support"] = 0
    macro = sweep_macro(best_layers(t)).set_index("method")
    assert macro.loc["superactivator", "f1"] == pytest.approx(0.8)
    assert macro.loc["superactivator", "n_concepts"] == 1


def test_layer_curve_reads_macro_rows():
    cur = layer_curve(_table())
    sa = cur[cur["method"] == "superactivator"]
    assert list(sa["layer"]) == [1, 2, 3]
    assert list(sa["f1"]) == pytest.approx([0.1, 0.2, 0.3])
    assert list(cur["method"])[:3] == ["superactivator"] * 3


def test_load_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="finished run folder"):
        load_metrics(tmp_path)
    pd.DataFrame({"layer": [1], "concept": ["a"]}).to_csv(tmp_path / "detection_metrics.csv", index=False)
    with pytest.raises(ValueError, match="missing column"):
        load_metrics(tmp_path)
    with pytest.raises(ValueError, match="no per-concept rows"):
        best_layers(_table().query("concept == @MACRO"))


def test_aggregate_rows_weighted_and_micro_by_hand():
    """Weighted by test positives and micro (pooled counts) at the per-concept best layers."""
    rows = []
    # concept, tp, fp, fn, tn (one layer, one method); supports 4, 1, 0
    for c, tp, fp, fn, tn in (("a", 3, 1, 1, 5), ("b", 0, 2, 1, 7), ("z", 0, 3, 0, 7)):
        f1 = 2 * tp / (2 * tp + fp + fn)
        rows.append({"layer": 1, "concept_type": "mean", "method": "superactivator", "concept": c, "cal_f1": 0.5,
                     "n_pct": 5.0, "threshold": 0.1, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                     "support": tp + fn, "precision": tp / (tp + fp), "recall": tp / max(tp + fn, 1), "f1": f1})
    agg = aggregate_rows(best_layers(pd.DataFrame(rows))).set_index("concept")
    f1_a, f1_b = 6 / 8, 0.0  # a: 2*3/(6+1+1); b: 0
    assert agg.loc[MACRO, "f1"] == pytest.approx((f1_a + f1_b) / 2)  # z has no test positive: left out
    assert agg.loc[WEIGHTED, "f1"] == pytest.approx((4 * f1_a + 1 * f1_b) / 5)
    # micro pools every concept: tp 3, fp 6, fn 2, tn 19 -> F1 6 / 14, accuracy 22 / 30, FPR 6 / 25
    assert agg.loc[MICRO, "f1"] == pytest.approx(6 / 14)
    assert agg.loc[MICRO, "accuracy"] == pytest.approx(22 / 30)
    assert agg.loc[MICRO, "fpr"] == pytest.approx(6 / 25) and agg.loc[MICRO, "tnr"] == pytest.approx(19 / 25)
    assert agg.loc[MICRO, "fnr"] == pytest.approx(2 / 5)
    assert agg.loc[WEIGHTED, "support"] == 5 and agg.loc[MACRO, "n_concepts"] == 2
    # rates filled from the counts for tables written before the rate columns existed
    best = best_layers(pd.DataFrame(rows)).set_index("concept")
    assert best.loc["a", "accuracy"] == pytest.approx(0.8) and best.loc["b", "fnr"] == 1.0
