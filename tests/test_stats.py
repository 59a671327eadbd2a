"""Bootstrap uncertainty: against a slow reference loop, hand-computed aggregates, paired tests."""

from __future__ import annotations

import numpy as np
import pytest

from superactivators.stats.bootstrap import (
    Bootstrap,
    bootstrap_counts,
    one_sided_p,
    resample_indices,
    significance_words,
    two_sided_p,
    resample_weights,
)


def _case(seed: int = 0, n: int = 17, M: int = 2, C: int = 3):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, C)) < 0.4
    truth[0] = True  # every concept has positives
    pred = (rng.random((M, n, C)) < 0.3) | (truth[None] & (rng.random((M, n, C)) < 0.7))
    return pred, truth


def _f1(tp: int, fp: int, fn: int) -> float:
    return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def test_resample_weights_count_indices():
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(resample_weights(idx, 3), [[2, 0, 1], [0, 1, 2]])
    # chunked draws are the same resamples whatever the caller does with them
    np.testing.assert_array_equal(resample_indices(7, 50, seed=3), resample_indices(7, 50, seed=3))
    assert not np.array_equal(resample_indices(7, 50, seed=3), resample_indices(7, 50, seed=4))


def test_intervals_equal_a_slow_reference_loop():
    pred, truth = _case()
    M, n, C = pred.shape
    B, seed = 300, 11
    boot = Bootstrap.run(pred, truth, ["a", "b"], ["x", "y", "z"], n_resamples=B, seed=seed)
    idx = resample_indices(n, B, seed)  # the same resamples, redrawn
    ref = np.zeros((B, M, C))
    ref_w = np.zeros((B, M))
    for b in range(B):  # obviously correct: index the samples, count in Python
        for m in range(M):
            num = den = 0.0
            for c in range(C):
                tp = fp = fn = 0
                for i in idx[b]:
                    p, t = bool(pred[m, i, c]), bool(truth[i, c])
                    tp += p and t
                    fp += p and not t
                    fn += t and not p
                ref[b, m, c] = _f1(tp, fp, fn)
                num += (tp + fn) * ref[b, m, c]
                den += tp + fn
            ref_w[b, m] = num / den if den else 0.0
    np.testing.assert_allclose(boot.f1(), ref)
    pc = boot.per_concept()
    np.testing.assert_allclose(pc.lo, np.percentile(ref, 2.5, axis=0))
    np.testing.assert_allclose(pc.hi, np.percentile(ref, 97.5, axis=0))
    np.testing.assert_allclose(pc.err, (pc.hi - pc.lo) / 2)
    np.testing.assert_allclose(boot.aggregate_samples("weighted"), ref_w)
    assert np.all((pc.lo <= pc.value + 1e-12) | (pc.value == 0))


def test_weighted_macro_micro_and_seed_error_by_hand():
    # one method, two concepts, 6 test samples
    truth = np.array([[1, 0], [1, 0], [1, 1], [0, 0], [0, 0], [0, 0]], bool)
    pred = np.array([[[1, 0], [0, 0], [1, 1], [1, 1], [0, 0], [0, 0]]], bool)
    boot = Bootstrap.run(pred, truth, ["m"], ["a", "b"], n_resamples=50, seed=0)
    # a: tp 2 fp 1 fn 1 -> F1 4/6; b: tp 1 fp 1 fn 0 -> 2/3; supports 3 and 1
    np.testing.assert_allclose(boot.point_f1()[0], [2 / 3, 2 / 3])
    truth2 = truth.copy()
    truth2[3, 1] = True  # b: tp 2 fp 0 fn 0 -> 1; support 2
    boot2 = Bootstrap.run(pred, truth2, ["m"], ["a", "b"], n_resamples=50, seed=0)
    assert boot2.aggregate_point("macro")[0] == pytest.approx((2 / 3 + 1) / 2)
    assert boot2.aggregate_point("weighted")[0] == pytest.approx((3 * 2 / 3 + 2 * 1) / 5)
    # micro: pooled tp 4, fp 1, fn 1 -> 8 / 10
    assert boot2.aggregate_point("micro")[0] == pytest.approx(0.8)
    err = boot2.per_concept().err[0]
    w = np.array([3, 2]) / 5
    assert boot2.aggregate("weighted").err[0] == pytest.approx(np.sqrt(((w * err) ** 2).sum()))
    assert boot2.aggregate("macro").err[0] == pytest.approx(np.sqrt(((err / 2) ** 2).sum()))


def test_concepts_without_test_positives_stay_out_of_macro_and_weighted():
    truth = np.array([[1, 0], [0, 0], [1, 0]], bool)
    pred = np.array([[[1, 1], [0, 1], [1, 0]]], bool)  # perfect on a, two false alarms on b
    boot = Bootstrap.run(pred, truth, ["m"], ["a", "b"], n_resamples=20, seed=0)
    assert boot.aggregate_point("macro")[0] == 1.0 and boot.aggregate_point("weighted")[0] == 1.0
    assert boot.aggregate_point("micro")[0] == pytest.approx(4 / 6)  # tp 2, fp 2: false alarms count


def test_paired_identical_methods_are_not_significant():
    pred, truth = _case(seed=1)
    same = np.stack([pred[0], pred[0]])
    boot = Bootstrap.run(same, truth, ["superactivator", "copy"], ["x", "y", "z"], n_resamples=400, seed=2)
    for kind in (None, "weighted", "macro", "micro"):
        pr = boot.paired("superactivator", "copy", kind)
        np.testing.assert_array_equal(pr.diff, 0)
        np.testing.assert_array_equal(pr.lo, 0)
        np.testing.assert_array_equal(pr.hi, 0)
        np.testing.assert_array_equal(pr.p, 1.0)
        np.testing.assert_array_equal(pr.p_two, 1.0)
        assert not np.any(pr.significant())
    assert boot.paired("superactivator", "copy", "weighted").words() == "no significant difference"


def test_paired_dominating_method_is_significant():
    rng = np.random.default_rng(5)
    n, C = 60, 4
    truth = rng.random((n, C)) < 0.3
    truth[:2] = True
    perfect = truth.copy()
    noisy = rng.random((n, C)) < 0.5
    boot = Bootstrap.run(np.stack([perfect, noisy]), truth, ["superactivator", "noisy"], list("abcd"), 500, seed=0)
    pr = boot.paired("superactivator", "noisy", "weighted")
    assert pr.diff > 0.3 and pr.lo > 0
    assert pr.p == pytest.approx(1 / 501) and pr.significant()
    back = boot.paired("noisy", "superactivator", "weighted")  # the other direction: p = 1
    assert back.p == 1.0 and not back.significant()
    # two-sided: 2 / (B + 1) both ways, so the loss is told from a tie
    assert pr.p_two == pytest.approx(2 / 501) and back.p_two == pytest.approx(2 / 501)
    assert pr.words() == "significantly better" and back.words() == "significantly worse"


def test_one_sided_p_by_hand():
    d = np.array([0.1, -0.2, 0.0, 0.3])[:, None]
    np.testing.assert_allclose(one_sided_p(d), [(1 + 2) / 5])


def test_two_sided_p_by_hand():
    # B = 9: #{d <= 0} = 2 (-0.1, 0.0), #{d >= 0} = 8 -> min(3, 9) / 10 doubled = 0.6
    d = np.array([-0.1, 0.2, 0.3, 0.0, 0.5, 0.1, 0.2, 0.4, 0.3])
    assert two_sided_p(d) == pytest.approx(0.6)
    # B = 4 all negative: #{d >= 0} = 0 -> 2 * 1 / 5 = 0.4; mirrored the same; capped at 1
    assert two_sided_p(np.full(4, -0.2)) == pytest.approx(0.4) == two_sided_p(np.full(4, 0.2))
    assert two_sided_p(np.zeros(7)) == 1.0
    # per column
    np.testing.assert_allclose(two_sided_p(np.array([[0.1, -0.1], [0.2, 0.3]])), [2 / 3, 1.0])


def test_significance_words_both_ways():
    assert significance_words(0.1, 0.01) == "significantly better"
    assert significance_words(-0.012, 0.02) == "significantly worse"
    assert significance_words(-0.012, 0.05) == "no significant difference"  # p must be below alpha
    assert significance_words(0.3, float("nan")) == "no significant difference"


def test_bootstrap_counts_are_exact_and_checked():
    pred, truth = _case(seed=4, n=9, M=1, C=2)
    tp, fp, fn, pos = bootstrap_counts(pred[0], truth, n_resamples=5, seed=1)
    W = resample_weights(resample_indices(9, 5, 1), 9)
    np.testing.assert_array_equal(tp, W @ (pred[0] & truth))
    np.testing.assert_array_equal(fp, W @ (pred[0] & ~truth))
    np.testing.assert_array_equal(fn, W @ (~pred[0] & truth))
    np.testing.assert_array_equal(pos, W @ truth)
    with pytest.raises(ValueError, match="shapes"):
        bootstrap_counts(pred[0], truth[:, :1])
    with pytest.raises(ValueError, match="empty"):
        resample_indices(0, 3, 0)
