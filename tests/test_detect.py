"""Detection protocol on a hand-computed example."""

import numpy as np
import pytest

from superactivators.evaluate.detect import calibrate_method, results_table, run_detection
from superactivators.evaluate.methods import MACRO, WEIGHTED
from superactivators.evaluate.scoring import ScoreSummary


def _example():
    # samples: 4 cal then 3 test, one concept
    splits = np.array(["cal"] * 4 + ["test"] * 3)
    max_score = np.array([0.9, 0.4, 0.8, 0.1, 0.95, 0.5, 0.2])[:, None]
    labels = np.array([1, 0, 1, 0, 1, 1, 0])[:, None]
    tokens = [np.array([0.5, 0.6, 0.7, 0.8, 0.9])]  # in-concept token activations on cal
    return splits, max_score, labels, tokens


def test_superactivator_calibration_by_hand():
    splits, score, labels, tokens = _example()
    r = calibrate_method("superactivator", score, tokens, labels.astype(bool), splits, ["c"], grid=[20, 60])
    # N=20 keeps ceil(1.0) = 1 token -> 0.9: cal preds [1,0,0,0] -> F1 2/3 ;
    # N=60 keeps ceil(3.0) = 3 tokens -> 0.7: [1,0,1,0] -> F1 1
    np.testing.assert_allclose(r.cal_f1_curve[0], [2 / 3, 1.0])
    assert r.n_pct[0] == 60 and r.threshold[0] == 0.7
    # test: .95 yes, .5 no, .2 no -> tp1 fn1 tn1
    assert (r.test.tp[0], r.test.fp[0], r.test.fn[0], r.test.tn[0]) == (1, 0, 1, 1)
    assert r.test.f1()[0] == pytest.approx(2 / 3)


def test_ties_in_cal_f1_pick_smallest_n():
    splits, score, labels, tokens = _example()
    r = calibrate_method("x", score, tokens, labels.astype(bool), splits, ["c"], grid=[60, 70])
    # N=60 -> 0.7, N=70 keeps ceil(3.5) = 4 -> 0.6: same cal predictions; first in grid order wins
    assert r.n_pct[0] == 60


def test_baseline_population_is_positive_cal_scores_and_table():
    splits, score, labels, tokens = _example()
    summary = ScoreSummary(["c"], {"max_token": score, "mean_token": score * 0.5}, tokens)
    res = run_detection(summary, labels, splits, methods=["superactivator", "mean_token"], grid=[50])
    mean = next(r for r in res if r.method == "mean_token")
    # positive cal mean scores: .45 and .4; N=50 keeps ceil(1.0) = 1 -> .45
    assert mean.threshold[0] == pytest.approx(0.45)
    names = [r.method for r in res]
    assert names == ["superactivator", "mean_token", "mean_token@best_threshold"]
    best = res[-1]
    assert best.threshold[0] == pytest.approx(0.4) and best.cal_f1[0] == 1.0
    table = results_table(res, layer=3, concept_type="mean")
    assert list(table.columns[:2]) == ["layer", "concept_type"]
    macro = table[(table.method == "superactivator") & (table.concept == MACRO)]
    assert macro["f1"].iloc[0] == pytest.approx(2 / 3)
    assert (table.concept == WEIGHTED).sum() == 3


def test_macro_excludes_concepts_without_test_positives():
    splits = np.array(["cal", "cal", "test", "test"])
    score = np.array([[0.9, 0.9], [0.1, 0.1], [0.95, 0.95], [0.2, 0.2]])
    labels = np.array([[1, 1], [0, 0], [1, 0], [0, 0]])
    summary = ScoreSummary(["a", "b"], {"max_token": score}, [np.array([0.9]), np.array([0.9])])
    res = run_detection(summary, labels, splits, methods=["superactivator"], grid=[50])
    t = results_table(res)
    m = t[t.concept == MACRO].iloc[0]
    assert m["f1"] == 1.0 and m["support"] == 1


def test_methods_sharing_a_score_share_its_ranking_metrics_by_hand():
    # superactivator and max_token rank the same max-token array; mean_token ranks its own.
    # test samples (.95, .5, .2) labelled (1, 1, 0): every positive above the negative -> AUROC 1;
    # mean scores (.1, .6, .3): positive .1 below the negative .3 -> AUROC 1/2
    splits, score, labels, tokens = _example()
    mean = np.array([0.2, 0.1, 0.3, 0.0, 0.1, 0.6, 0.3])[:, None]
    summary = ScoreSummary(["c"], {"max_token": score, "mean_token": mean}, tokens)
    res = run_detection(summary, labels, splits, methods=["superactivator", "max_token", "mean_token"], grid=[50])
    table = results_table(res).set_index(["method", "concept"])
    for m in ("superactivator", "max_token", "max_token@best_threshold"):
        assert table.loc[(m, "c"), "auroc"] == 1.0
    assert table.loc[("mean_token", "c"), "auroc"] == 0.5
    # cal (.9, .4, .8, .1) labelled (1, 0, 1, 0): AUROC 1; mean cal (.2, .1, .3, 0): also 1
    assert table.loc[("max_token", "c"), "cal_auroc"] == 1.0 and table.loc[("mean_token", "c"), "cal_auroc"] == 1.0
