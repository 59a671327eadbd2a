"""best_layers.csv on a tiny finished run: best layer on cal, counts from the table, bootstrap columns."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from superactivators.stats.bestlayers import (
    best_layer_table,
    format_headline,
)
from superactivators.evaluate.detect import StagePredictions
from superactivators.store.layout import RunLayout, StageFolder
from superactivators.evaluate.methods import AGGREGATES, MACRO, MICRO, WEIGHTED
from superactivators.stats.sweep import best_layers, load_metrics
from superactivators.store.runs import find_stages, find_store


def test_pipeline_writes_best_layers_with_intervals(tiny_run_pair):
    run = tiny_run_pair[0]
    csv = pd.read_csv(RunLayout(run).best_layers)
    for col in ("best_layer", "n_pct", "threshold", "tp", "fp", "fn", "tn", "support", "precision", "recall", "f1",
                "accuracy", "fpr", "tnr", "fnr", "f1_lo", "f1_hi", "f1_err", "sa_diff", "sa_p", "sa_better",
                "sa_p_two", "sa_verdict"):
        assert col in csv.columns, col
    per = csv[~csv["concept"].isin(AGGREGATES)]
    # the per-concept rows are the sweep's choice on cal, with the table's counts at that layer
    want = best_layers(load_metrics(run)).set_index(["concept_type", "method", "concept"])
    got = per.set_index(["concept_type", "method", "concept"])
    pd.testing.assert_series_equal(got["best_layer"].astype(int), want.loc[got.index, "best_layer"].astype(int),
                                   check_names=False)
    np.testing.assert_array_equal(got["tp"], want.loc[got.index, "tp"])
    # every (concept type, method) has its three aggregates, each with an interval
    agg = csv[csv["concept"].isin(AGGREGATES)]
    assert (agg.groupby(["concept_type", "method"]).size() == 3).all()
    assert (csv["f1_lo"] <= csv["f1_hi"] + 1e-12).all() and csv["f1_lo"].notna().all()
    np.testing.assert_allclose(per["f1_err"], (per["f1_hi"] - per["f1_lo"]) / 2)
    sa = csv["method"] == "superactivator"
    assert csv.loc[sa, "sa_p"].isna().all() and csv.loc[~sa, "sa_p"].between(0, 1).all()
    # the two-sided p is at most twice the one-sided one, and its words follow its sign and size
    other = csv[~sa]
    assert (other["sa_p_two"] <= 2 * other["sa_p"] + 1e-12).all()
    for _, r in other.iterrows():
        want = ("no significant difference" if r["sa_p_two"] >= 0.05 or r["sa_diff"] == 0
                else "significantly better" if r["sa_diff"] > 0 else "significantly worse")
        assert r["sa_verdict"] == want
    # the paired difference on the whole test split is SuperActivator's F1 minus the method's
    sa_f1 = per[per["method"] == "superactivator"].set_index(["concept_type", "concept"])["f1"]
    other = per[per["method"] != "superactivator"]
    np.testing.assert_allclose(other["sa_diff"], sa_f1.loc[list(zip(other["concept_type"], other["concept"]))].to_numpy()
                               - other["f1"].to_numpy(), atol=1e-12)
    # micro = F1 of the pooled counts
    m = agg[agg["concept"] == MICRO].iloc[0]
    assert m["f1"] == pytest.approx(2 * m["tp"] / (2 * m["tp"] + m["fp"] + m["fn"]))


def test_stage_predictions_reproduce_the_counts(tiny_run_pair):
    run = tiny_run_pair[0]
    store = find_store(run)
    table = load_metrics(run)
    st = find_stages(run)[0]
    p = StagePredictions.load(StageFolder(st.path).predictions)
    np.testing.assert_array_equal(p.test_ids, np.flatnonzero(store.splits == "test"))
    rows = table[(table["layer"] == st.layer) & (table["concept_type"] == st.concept_type)
                 & ~table["concept"].isin(AGGREGATES)].set_index(["method", "concept"])
    truth = store.labels[p.test_ids].astype(bool)
    for m, pred in p.pred.items():
        for j, c in enumerate(p.names):
            t = truth[:, store.concepts.index(c)]
            assert (pred[:, j] & t).sum() == rows.loc[(m, c), "tp"]
            assert (pred[:, j] & ~t).sum() == rows.loc[(m, c), "fp"]


def test_old_runs_recompute_predictions_and_stale_stages_are_refused(tiny_run_pair, tmp_path):
    run = tiny_run_pair[0]
    ref = best_layer_table(run, n_resamples=200, seed=1).table
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for f in old.glob("stages/*/predictions.npz"):  # a run from before predictions.npz
        f.unlink()
    back = best_layer_table(old, n_resamples=200, seed=1)
    assert not back.notes
    pd.testing.assert_frame_equal(back.table, ref)  # recomputed from summary.npz: the same numbers
    # a stage whose predictions disagree with the table: no intervals for its concept type, and a note
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    ct = ref["concept_type"].iloc[0]
    for f in bad.glob(f"stages/*_{ct}_*/predictions.npz"):
        z = {k: (~v if k.startswith("pred__") else v) for k, v in np.load(f).items()}
        np.savez(f, **z)
    for f in bad.glob(f"stages/*_{ct}_*/summary.npz"):
        f.unlink()
    from superactivators.store.artefacts import SUMS, ArtefactError

    with pytest.raises(ArtefactError, match=r"predictions.npz: content differs"):  # its checksum says so
        best_layer_table(bad, n_resamples=50)
    for f in bad.glob(f"stages/*_{ct}_*/{SUMS}"):  # a run from before checksums: the table check remains
        f.unlink()
    res = best_layer_table(bad, n_resamples=50)
    assert any(ct in n and "reproduce" in n for n in res.notes)
    assert res.table.loc[res.table["concept_type"] == ct, "f1_lo"].isna().all()
    assert ct not in res.boot


def test_headline_names_weighted_and_macro(tiny_run_pair):
    res = best_layer_table(tiny_run_pair[0], n_resamples=100)
    short = format_headline(res)  # the console's default: calibrated methods only, one aligned column
    assert "@" not in short.replace("weighted", "")
    rows = [ln for ln in short.splitlines() if ln.startswith("  ") and " macro " in ln]
    assert len({ln.index(" macro ") for ln in rows}) <= 2 and len(rows) >= 2  # with and without "± err"
    text = format_headline(res, variants=True)
    assert "@best" in text and len(text.splitlines()) > len(short.splitlines())
    assert "weighted" in text and "macro" in text and "\n  SA " in text
    w = res.table[(res.table["concept"] == WEIGHTED) & (res.table["method"] == "superactivator")]
    assert f"{w['f1'].iloc[0]:.3f}" in text
    others = res.table[(res.table["concept"] == WEIGHTED) & (res.table["method"] != "superactivator")]
    for _, r in others.iterrows():  # SuperActivator against each method, in words, two-sided p
        assert f"SA {r['sa_diff']:+.3f} {r['sa_verdict']} (p={r['sa_p_two']:.3f})" in text
    assert "two-sided" in text and max(map(len, text.splitlines())) <= 100
    assert (res.table["concept"] == MACRO).sum() == (res.table["concept"] == WEIGHTED).sum()


def test_best_layers_ranking_fpr_rows_and_both_way_significance(tiny_run_pair):
    """Issue 21: auroc / ap with intervals, @fpr rows, SuperActivator's AUROC = max_token's, sa_worse."""
    from sklearn.metrics import roc_auc_score

    run = tiny_run_pair[0]
    csv = pd.read_csv(RunLayout(run).best_layers)
    for col in ("auroc", "auroc_lo", "auroc_hi", "ap", "ap_lo", "ap_hi", "auroc_layer", "sa_auroc_p",
                "sa_p_reverse", "sa_p_two", "sa_verdict", "sa_worse"):
        assert col in csv.columns, col
    assert {"max_token@fpr=1%", "max_token@fpr=5%"} <= set(csv["method"])
    per = csv[~csv["concept"].isin(AGGREGATES)].set_index(["concept_type", "method", "concept"])
    sa = per.xs("superactivator", level="method")
    mt = per.xs("max_token", level="method")
    np.testing.assert_array_equal(sa["auroc"].to_numpy(), mt.loc[sa.index, "auroc"].to_numpy())
    np.testing.assert_array_equal(sa["ap"].to_numpy(), mt.loc[sa.index, "ap"].to_numpy())
    ok = per["auroc"].notna()
    assert (per.loc[ok, "auroc_lo"] <= per.loc[ok, "auroc"] + 1e-12).all()
    assert (per.loc[ok, "auroc"] <= per.loc[ok, "auroc_hi"] + 1e-12).all()
    # the table's auroc is sklearn's on the test scores of predictions.npz at that layer
    store = find_store(run)
    g = per.xs("global", level="method").dropna(subset=["auroc"])
    row, (ctype, concept) = g.iloc[0], g.index[0]
    stage = next(s for s in find_stages(run) if s.layer == row["auroc_layer"] and s.concept_type == ctype)
    p = StagePredictions.load(StageFolder(stage.path).predictions)
    y = store.labels[p.test_ids, store.concepts.index(concept)]
    assert row["auroc"] == pytest.approx(roc_auc_score(y, p.test_scores["global"][:, p.names.index(concept)]))
    # both directions: p_reverse + p counts every resample once, plus ties at 0 twice
    other = csv[(csv["method"] != "superactivator") & csv["sa_p"].notna()]
    assert (other["sa_p_two"] <= 1).all()
    # the two-sided p is twice the smaller one-sided p (capped at 1)
    np.testing.assert_allclose(other["sa_p_two"], np.minimum(1, 2 * np.minimum(other["sa_p"], other["sa_p_reverse"])))
    np.testing.assert_array_equal(other["sa_worse"].astype(bool), other["sa_p_reverse"] < 0.05)
    # SuperActivator vs max_token on AUROC: identical rankings, no difference either way
    mrows = csv[(csv["method"] == "max_token") & ~csv["concept"].isin(AGGREGATES) & csv["sa_auroc_diff"].notna()]
    if (mrows["auroc_layer"].notna()).all():
        assert (mrows["sa_auroc_diff"] == 0).all() and (mrows["sa_auroc_p_two_sided"] == 1).all()
