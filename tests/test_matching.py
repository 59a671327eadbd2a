"""Matching units to concepts: vectorised thresholds/F1, planted clusters, detection of matches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from superactivators.concepts.kmeans import fit_token_kmeans, kmeans_concepts
from superactivators.config import config_from_dict
from superactivators.evaluate.calibrate import tail_thresholds
from superactivators.evaluate.detect import calibrate_method
from superactivators.evaluate.methods import MACRO, METHODS
from superactivators.evaluate.matching import (
    UnitSummary,
    match_units,
    matched_results,
    pair_f1,
    pair_tail_thresholds,
    score_units,
    sub_shards,
    summarise_units,
)
from superactivators.evaluate.metrics import Confusion
from superactivators.evaluate.scoring import SampleReducer
from superactivators.pipeline import run_pipeline

from .planted import planted_store

GRID = (5, 10, 50, 90)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("planted_m"))


@pytest.fixture(scope="module")
def fitted(planted):
    fit = fit_token_kmeans(planted.store, 1, k=5, seed=0, batch_size=64, min_steps=20)
    return fit, kmeans_concepts(fit, 1)


def test_pair_thresholds_equal_tail_thresholds_per_column():
    rows = np.random.default_rng(0).normal(size=(37, 6))
    got = pair_tail_thresholds(rows, GRID)
    want = tail_thresholds([rows[:, k] for k in range(6)], GRID)  # [K, G]
    np.testing.assert_allclose(got, want.T)
    # by hand: 5 values 1..5, N=50 keeps ceil(2.5) = 3 values -> 3; N=90 keeps ceil(4.5) = 5 -> 1
    np.testing.assert_allclose(pair_tail_thresholds(np.arange(1.0, 6)[:, None], (50, 90))[:, 0], [3.0, 1.0])
    assert np.isnan(pair_tail_thresholds(np.empty((0, 3)), GRID)).all()
    with pytest.raises(FloatingPointError):
        pair_tail_thresholds(np.array([[np.inf]]), GRID)


def test_pair_f1_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.1, 0.0]])
    truth = np.array([True, True, False, False])
    thr = np.array([[0.5, 0.5], [0.15, 0.05]])
    f1 = pair_f1(scores, truth, thr)
    # unit 0 @0.5: predicts {0,1} = truth -> 1; unit 1 @0.5: {1,2}: tp1 fp1 fn1 -> 0.5
    # unit 0 @0.15: {0,1,2}: tp2 fp1 -> 0.8; unit 1 @0.05: {0,1,2}: tp2 fp1 -> 0.8
    np.testing.assert_allclose(f1, [[1.0, 0.5], [0.8, 0.8]])
    np.testing.assert_allclose(pair_f1(scores, truth, np.full((1, 2), np.nan)), [[0.0, 0.0]])


def _hand_summary():
    """3 units, 1 concept, 6 samples (cal 0-3, test 4-5); unit 1 separates the cal samples."""
    labels = np.array([[1], [1], [0], [0], [1], [0]], dtype=np.uint8)
    splits = np.array(["cal"] * 4 + ["test"] * 2)
    mx = np.array([[0.5, 0.9, 0.2], [0.6, 0.8, 0.9], [0.7, 0.1, 0.8], [0.1, 0.2, 0.1],
                   [0.3, 0.95, 0.0], [0.9, 0.05, 0.0]], dtype=np.float32)
    cal_acts = np.array([[0.5, 0.9, 0.2], [0.6, 0.8, 0.9], [0.0, 0.3, 0.1]], dtype=np.float32)
    cal_truth = np.array([[True], [True], [True]])
    s = UnitSummary(["u0", "u1", "u2"], {"max_token": mx, "mean_token": mx * 0.5}, [], np.arange(3), cal_acts, cal_truth)
    return s, labels, splits


def test_matching_picks_separating_unit_and_matches_detection():
    s, labels, splits = _hand_summary()
    matches = {m.method: m for m in match_units(s, labels, splits, ["superactivator", "max_token"], (50, 90))}
    # superactivator, unit 1: tokens {0.9, 0.8, 0.3}; top 50% -> 0.8: cal predicts {0,1} = truth -> F1 1
    assert matches["superactivator"].unit[0] == 1 and matches["superactivator"].cal_f1[0] == 1.0
    assert matches["max_token"].unit[0] == 1 and matches["max_token@best_threshold"].unit[0] == 1
    results, table = matched_results(s, labels, splits, ["c"], ["superactivator", "max_token"], (50, 90))
    by = {r.method: r for r in results}
    assert set(by) == {"superactivator", "max_token", "max_token@best_threshold"}
    assert by["superactivator"].threshold[0] == pytest.approx(0.8)
    # test: sample 4 (pos, 0.95) fires, sample 5 (neg, 0.05) does not
    assert by["superactivator"].test.f1()[0] == 1.0
    assert list(table.unit_name[table.method == "superactivator"]) == ["u1"]
    assert table.exact.all()


def test_matching_on_planted_clusters(planted, fitted):
    store = planted.store
    fit, cs = fitted
    s = summarise_units(store, cs, seed=0)
    results, table = matched_results(s, store.labels, store.splits, store.concepts, METHODS, GRID)
    # the cluster holding the planted tokens of concept c
    owner = [np.bincount(fit.labels[planted.cluster[fit.rows] == c], minlength=5).argmax() for c in range(4)]
    sa = table[table.method == "superactivator"]
    np.testing.assert_array_equal(sa.unit.to_numpy(), owner)
    by = {r.method: r for r in results}
    assert (by["superactivator"].test.f1() > 0.95).all()  # tail thresholds, so a rare miss
    # every reported result = calibrate_method on the matched column, and the match's cal F1
    cal = store.splits == "cal"
    lab = store.labels.astype(bool)
    for r in results:
        if "@" in r.method or r.method == "global":
            continue
        t = table[table.method == r.method]
        np.testing.assert_allclose(r.cal_f1, t.match_cal_f1.to_numpy())
        cols = t.unit.to_numpy()
        if r.method == "superactivator":
            scores = s.sample_scores["max_token"][:, cols]
            pops = [s.cal_acts[s.cal_truth[:, c], cols[c]] for c in range(4)]
        else:
            scores = s.sample_scores[r.method][:, cols]
            pops = [scores[cal & lab[:, c], c] for c in range(4)]
        ref = calibrate_method(r.method, scores, pops, lab, store.splits, store.concepts, GRID)
        np.testing.assert_array_equal(r.threshold, ref.threshold)
        test = store.splits == "test"
        want = Confusion.from_predictions(scores[test] >= ref.threshold, lab[test])
        np.testing.assert_array_equal(r.test.tp, want.tp)
        np.testing.assert_array_equal(r.test.fp, want.fp)


def test_preselection_keeps_the_match_and_proves_it(planted, fitted):
    store = planted.store
    _, cs = fitted
    full = summarise_units(store, cs, seed=0)
    pre = summarise_units(store, cs, seed=0, max_cal_units=2, candidates_per_concept=1)
    assert len(pre.cal_units) < 5
    a = {m.method: m for m in match_units(full, store.labels, store.splits, ["superactivator"], GRID)}
    b = {m.method: m for m in match_units(pre, store.labels, store.splits, ["superactivator"], GRID)}
    np.testing.assert_array_equal(a["superactivator"].unit, b["superactivator"].unit)
    assert b["superactivator"].exact.all()
    np.testing.assert_array_equal(full.cal_acts[:, pre.cal_units], pre.cal_acts)


def test_blocked_scoring_equals_one_block(planted, fitted):
    store = planted.store
    _, cs = fitted
    shard = store.shards[0]
    blocks = sub_shards(store, shard, max_rows=30)
    assert len(blocks) > 1 and blocks[0].start == shard.start and blocks[-1].stop == shard.stop
    assert all(a.stop == b.start and a.token_stop == b.token_start for a, b in zip(blocks, blocks[1:]))
    one, many = SampleReducer(store.n_samples, 5), SampleReducer(store.n_samples, 5)
    score_units(store, cs, [one])
    score_units(store, cs, [many], block_bytes=30 * 4 * 5)
    for k, v in one.scores().items():
        np.testing.assert_allclose(v, many.scores()[k], rtol=1e-5, atol=1e-6)  # GEMM blocking rounds


def test_unit_summary_round_trip(tmp_path, planted, fitted):
    s = summarise_units(planted.store, fitted[1], seed=0)
    s.save(tmp_path / "u.npz")
    r = UnitSummary.load(tmp_path / "u.npz")
    assert r.unit_names == s.unit_names and r.global_names == s.global_names
    for k in s.sample_scores:
        np.testing.assert_array_equal(r.sample_scores[k], s.sample_scores[k])
    np.testing.assert_array_equal(r.cal_acts, s.cal_acts)
    np.testing.assert_array_equal(r.cal_truth, s.cal_truth)


def test_pipeline_with_kmeans_types(tmp_path, small_emotions, tiny_bert):
    cfg = config_from_dict({
        "name": "km", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
        "data": {"path": str(small_emotions)},
        "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 16, "max_length": 256},
        "concepts": {"types": ["mean", "kmeans", "kmeans-linsep"], "kmeans_k_tokens": 12, "kmeans_k_global": 4,
                     "linsep_max_tokens_per_class": 200},
        "detect": {"grid": list(GRID)},
    })
    res = run_pipeline(cfg, progress=False)
    t = res.table
    assert set(t.concept_type) == {"mean", "kmeans", "kmeans-linsep"}
    for ct in ("kmeans", "kmeans-linsep"):
        sub = t[t.concept_type == ct]
        assert set(METHODS) <= set(sub.method)
        assert sub[sub.concept == MACRO].f1.between(0, 1).all()
        # same row layout as supervised concepts
        assert len(sub) == len(t[t.concept_type == "mean"])
    stages = sorted((res.run_dir / "stages").glob("L02_kmeans_*"))
    m = pd.read_csv(stages[0] / "matches.csv")
    # every method matches on its own criterion; the sample-label variant reads SuperActivator's unit
    assert set(m.method) >= set(METHODS) - {"superactivator_sample"} and m.unit.between(0, 11).all()
    assert m[m.method == "global"].unit_name.str.startswith("gcluster_").all()
    # the k-means fit is shared by both k-means types, and the second run is served from the cache
    assert len(list((res.run_dir / "stages" / "units").glob("L02_kmeansfit_*"))) == 1
    summ = next((res.run_dir / "stages" / "units").glob("L02_kmeans-linsep_*")) / "unit_summary.npz"
    before = summ.stat().st_mtime_ns
    again = run_pipeline(cfg, progress=False)
    assert summ.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again.table, t)
