"""Ranking metrics, operating points on negatives and prevalence re-weighting (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from superactivators.evaluate.detect import StagePredictions, calibrate_fpr, results_table, save_predictions
from superactivators.evaluate.methods import fpr_of, fpr_variant, label
from superactivators.evaluate.options import DetectConfig
from superactivators.evaluate.ranking import (allowed_false_positives, auc_ap, fpr_thresholds, reweighted_f1,
                                              reweighted_precision, weighted_auc_ap)


@pytest.mark.parametrize("tied", [False, True])
def test_auc_ap_equal_sklearn(tied: bool) -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(3, 50))
        s = rng.integers(0, 4, (n, 4)).astype(np.float32) if tied else rng.normal(size=(n, 4))
        y = rng.random((n, 4)) < 0.3
        auc, ap = auc_ap(s, y)
        for c in range(4):
            if 0 < y[:, c].sum() < n:
                assert auc[c] == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-12)
                assert ap[c] == pytest.approx(average_precision_score(y[:, c], s[:, c]), abs=1e-12)
            elif y[:, c].sum() == 0:
                assert np.isnan(auc[c]) and np.isnan(ap[c])


def test_auc_ap_by_hand_with_ties() -> None:
    # scores 3(+) 2(+) 2(-) 1(-): pairs (+3,-2) 1, (+3,-1) 1, (+2,-2) 1/2, (+2,-1) 1 -> 3.5 / 4
    # AP: at 3: P=1, R=1/2; at 2: P=2/3, R=1 -> 1/2 * 1 + 1/2 * 2/3 = 5/6
    auc, ap = auc_ap(np.array([[3.0], [2.0], [2.0], [1.0]]), np.array([[1], [1], [0], [0]]))
    assert auc[0] == 3.5 / 4 and ap[0] == pytest.approx(5 / 6)


def test_weights_equal_repeated_samples() -> None:
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=30), rng.random(30) < 0.4
    idx = rng.integers(0, 30, 30)
    w = np.bincount(idx, minlength=30)[None, :]
    auc, ap = weighted_auc_ap(s, y, w)
    assert auc[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))
    assert ap[0] == pytest.approx(average_precision_score(y[idx], s[idx]))


def test_fpr_threshold_by_hand_with_ties() -> None:
    # 10 negatives: 9 8 7 7 7 5 4 3 2 1 ; alpha 0.2 -> at most floor(2) = 2 may reach the threshold;
    # v_3 = 7 (tied three times) -> threshold just above 7: only 9 and 8 reach it, cal FPR 0.2.
    neg = [9, 8, 7, 7, 7, 5, 4, 3, 2, 1]
    s = np.array(neg + [7.5, 6], dtype=float)[:, None]
    y = np.array([0] * 10 + [1, 1], bool)[:, None]
    t = fpr_thresholds(s, y, 0.2)[0]
    assert 7 < t < 7.5 and t == np.nextafter(7.0, np.inf)
    assert ((s[~y] >= t).sum()) == 2
    # alpha 0.3 -> k = 3, v_4 = 7: the tied 7s all fall below -> realised FPR 0.2 <= 0.3
    t3 = fpr_thresholds(s, y, 0.3)[0]
    assert t3 == np.nextafter(7.0, np.inf) and (s[~y] >= t3).mean() == 0.2
    # alpha 0.5 -> k = 5, v_6 = 5 -> the five largest (9 8 7 7 7) reach it: FPR exactly 0.5
    t5 = fpr_thresholds(s, y, 0.5)[0]
    assert (s[~y] >= t5).sum() == 5 and t5 > 5
    assert fpr_thresholds(s, y, 0.05)[0] == np.nextafter(9.0, np.inf)  # k = 0: above every negative
    assert fpr_thresholds(s, y, 1.0)[0] == -np.inf
    assert fpr_thresholds(s, np.ones_like(y), 0.1)[0] == np.inf  # no negatives
    assert allowed_false_positives(0.05, 100) == 5 and allowed_false_positives(0.07, 100) == 7


def test_reweighted_precision_by_hand() -> None:
    # TPR 0.8, FPR 0.01 at prevalence 1 %: 0.008 / (0.008 + 0.0099) = 0.44692...
    p = reweighted_precision(np.array([0.8]), np.array([0.01]), 0.01)[0]
    assert p == pytest.approx(0.008 / 0.0179)
    assert reweighted_f1(np.array([0.8]), np.array([0.01]), 0.01)[0] == pytest.approx(2 * p * 0.8 / (p + 0.8))
    # importance weights: 4 pos (tp 2), 8 neg (fp 2) at pi = 0.2 -> neg weight (0.8 / 0.2) * 4 / 8 = 2
    assert reweighted_precision(np.array([0.5]), np.array([0.25]), 0.2)[0] == pytest.approx(2 / (2 + 2 * 2))
    # 1 % FPR at 1 % prevalence with full recall: about half the alarms are false (0.01 / 0.0199)
    assert reweighted_precision(np.array([1.0]), np.array([0.01]), 0.01)[0] == pytest.approx(0.01 / 0.0199)


def test_fpr_rows_table_and_predictions(tmp_path) -> None:
    rng = np.random.default_rng(1)
    n, C = 200, 3
    labels = rng.random((n, C)) < 0.3
    scores = rng.normal(size=(n, C)) + 1.5 * labels
    splits = np.array(["cal", "test"] * (n // 2))
    r = calibrate_fpr("max_token", scores, labels, splits, ["a", "b", "c"], 0.05)
    assert r.method == "max_token@fpr=5%" == fpr_variant("max_token", 0.05) and fpr_of(r.method) == 0.05
    assert label(r.method) == "max token @FPR<=5%"
    cal = splits == "cal"
    cal_fpr = ((scores[cal] >= r.threshold) & ~labels[cal]).sum(0) / (~labels[cal]).sum(0)
    assert (cal_fpr <= 0.05).all()
    t = results_table([r], prevalence=0.1, layer=3)
    row = t[t["concept"] == "a"].iloc[0]
    test = splits == "test"
    assert row["auroc"] == pytest.approx(roc_auc_score(labels[test, 0], scores[test, 0]))
    assert row["cal_ap"] == pytest.approx(average_precision_score(labels[cal, 0], scores[cal, 0]))
    assert row["precision_at_prevalence"] == pytest.approx(0.1 * row["recall"] / (0.1 * row["recall"] + 0.9 * row["fpr"]))
    save_predictions(tmp_path / "p.npz", [r], splits)
    p = StagePredictions.load(tmp_path / "p.npz")
    assert np.array_equal(p.test_scores[r.method], scores[test]) and np.array_equal(p.cal_scores[r.method], scores[cal])
    assert np.array_equal(p.cal_ids, np.flatnonzero(cal))


def test_detect_config_checks() -> None:
    assert DetectConfig().fpr_targets == [0.01, 0.05] and not DetectConfig().problems()
    assert any("detect.fpr_targets" in p for p in DetectConfig(fpr_targets=[0.0, 2]).problems())
    assert any("detect.prevalence" in p for p in DetectConfig(prevalence=1.5).problems())


def test_rank_bootstrap_and_two_sided_p() -> None:
    from superactivators.stats.ranking import RankBootstrap, reverse_p, two_sided_p

    # d = [-1, 0, 1, 1]: not better (d <= 0) 2 -> 3/5; not worse (d >= 0) 3 -> 4/5; two-sided min(1, 6/5) = 1
    d = np.array([-1.0, 0.0, 1.0, 1.0])
    assert reverse_p(d) == pytest.approx(4 / 5) and two_sided_p(d) == 1.0
    assert two_sided_p(-np.ones(9)) == pytest.approx(2 / 10) and reverse_p(-np.ones(9)) == pytest.approx(1 / 10)
    rng = np.random.default_rng(5)
    n = 80
    y = rng.random((n, 2)) < 0.4
    good = y + 0.3 * rng.normal(size=(n, 2))  # a dominating score
    bad = rng.normal(size=(n, 2))
    rb = RankBootstrap.run(np.stack([bad, good, bad]), y, ["superactivator", "x", "same"], ["a", "b"], 300, 0)
    pr = rb.paired("auroc", "superactivator", "x")
    # the baseline is better on every resample: the reverse test marks it, the forward one never
    assert (pr.p_reverse == 1 / 301).all() and (pr.p == 1).all() and (pr.p_two_sided == 2 / 301).all()
    same = rb.paired("auroc", "superactivator", "same")
    assert (same.diff == 0).all() and (same.p == 1).all() and (same.p_reverse == 1).all()
    v, lo, hi = rb.per_concept("auroc")
    assert v[0, 0] == pytest.approx(roc_auc_score(y[:, 0], bad[:, 0])) and (lo <= v + 1e-12).all() and (v <= hi + 1e-12).all()
    mv, _, _ = rb.aggregate("ap", "weighted")
    w = y.sum(0)
    assert mv[1] == pytest.approx((w * [average_precision_score(y[:, c], good[:, c]) for c in range(2)]).sum() / w.sum())


def test_hard_negative_columns_by_hand() -> None:
    from superactivators.evaluate.detect import MethodResult, hard_negative_columns
    from superactivators.evaluate.metrics import Confusion

    # test samples: scores 5(+) 4(hn) 3(+) 2(hn) 1(-) 0(hn); threshold 2.5
    s = np.array([5, 4, 3, 2, 1, 0], float)[:, None]
    y = np.array([1, 0, 1, 0, 0, 0], bool)[:, None]
    hn = np.array([0, 1, 0, 1, 0, 1])
    splits = np.array(["test"] * 6)
    pred = s >= 2.5
    r = MethodResult("global", ["a"], np.array([2.5]), np.array([np.nan]), np.array([np.nan]),
                     Confusion.from_predictions(pred, y), test_pred=pred, scores=s, labels=y, splits=splits)
    out = hard_negative_columns(r, {"a": hn})
    # positives 5, 3 vs hard negatives 4, 2, 0: pairs won 3 + 2 of 6
    assert out["hn_support"][0] == 3 and out["hn_fpr"][0] == pytest.approx(1 / 3)
    assert out["hn_auroc"][0] == pytest.approx(5 / 6)
    t = results_table([r], hard_negatives={"a": hn})
    assert t.loc[t["concept"] == "a", "hn_fpr"].iloc[0] == pytest.approx(1 / 3)


def test_hard_negative_columns_are_not_concepts(tmp_path) -> None:
    import pandas as pd

    from superactivators.data.datasets import load_dataset
    from superactivators.data.errors import DatasetError

    rows = {"text": ["a cat", "a dog", "cat food", "hot dog"], "split": ["train", "cal", "test", "test"],
            "animal::cat": [1, 0, 0, 0], "animal::dog": [0, 1, 0, 0], "hard_negative::animal::dog": [0, 0, 0, 1]}
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    ds = load_dataset(tmp_path / "metadata.csv")
    assert ds.concepts == ["animal::cat", "animal::dog"]
    assert ds.hard_negatives()[:, 1].tolist() == [0, 0, 0, 1] and ds.hard_negatives()[:, 0].sum() == 0
    from superactivators.pipeline import hard_negatives_of

    hn = hard_negatives_of(ds, ["animal::dog", "animal::cat"], 4)  # store order, by name
    assert hn["animal::dog"].tolist() == [0, 0, 0, 1] and hn["animal::cat"].sum() == 0
    assert hard_negatives_of(ds, ["animal::dog"], 5) is None  # a store of other samples: left out
    bad = dict(rows, **{"hard_negative::animal::dog": [0, 1, 0, 0]})  # a positive marked hard negative
    pd.DataFrame(bad).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match="hard_negative::animal::dog"):
        load_dataset(tmp_path / "metadata.csv")
    bad = dict(rows, **{"hard_negative::bird": [0, 1, 0, 0]})
    pd.DataFrame(bad).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match="no concept 'bird'"):
        load_dataset(tmp_path / "metadata.csv")


def test_estimator_fpr_calibration_and_decision_function_auc() -> None:
    from superactivators.evaluate.estimator import SuperActivatorDetector

    # 4 samples x 2 tokens, one concept; sample scores (max token): 0.9(+) 0.7(-) 0.5(-) 0.2(-)
    acts = np.array([[0.9], [0.1], [0.7], [0.3], [0.5], [0.4], [0.2], [0.0]])
    idx = np.repeat(np.arange(4), 2)
    y = np.array([[1], [0], [0], [0]])
    # fpr_target 0.34 of 3 negatives: floor(1.02) = 1 may reach it -> just above the 2nd largest (0.5)
    det = SuperActivatorDetector(method="max_token", calibration="fpr", fpr_target=0.34).fit(acts, idx, y)
    assert det.thresholds_[0] == np.nextafter(0.5, np.inf)
    assert det.predict(acts, idx)[:, 0].tolist() == [True, True, False, False]
    sa = SuperActivatorDetector(calibration="fpr", fpr_target=0.34).fit(acts, idx, y)
    assert sa.thresholds_[0] == det.thresholds_[0]  # SuperActivator's score is the max token
    # decision_function ranks as the sample scores: sklearn's AUC on it is the scores' AUC (2 of 3 + ... = 1)
    assert roc_auc_score(y[:, 0], sa.decision_function(acts, idx)[:, 0]) == roc_auc_score(
        y[:, 0], sa.sample_scores(acts, idx)[:, 0]) == 1.0
    with pytest.raises(ValueError, match="calibration"):
        SuperActivatorDetector(calibration="quantile").fit(acts, idx, y)
    with pytest.raises(ValueError, match="fpr_target"):
        SuperActivatorDetector(calibration="fpr", fpr_target=1.5).fit(acts, idx, y)
    with pytest.raises(ValueError, match="sets the threshold itself"):
        SuperActivatorDetector(method="max_token@best_threshold", calibration="fpr").fit(acts, idx, y)
