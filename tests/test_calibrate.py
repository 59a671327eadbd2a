"""Quantile thresholds and free-threshold F1 against hand computations."""

import numpy as np
import pytest

from superactivators.evaluate.calibrate import best_f1_thresholds, tail_thresholds


def test_tail_thresholds_linear_quantile_by_hand():
    # population 1..5; (1-N) quantile with linear interpolation at position (n-1)*q
    pop = [np.array([5.0, 1.0, 4.0, 2.0, 3.0])]
    thr = tail_thresholds(pop, grid=[2, 20, 50, 100])
    # N=2 -> q=.98 -> pos 3.92 -> 4 + .92 = 4.92; N=20 -> pos 3.2 -> 4.2; N=50 -> pos 2 -> 3; N=100 -> min
    np.testing.assert_allclose(thr[0], [4.92, 4.2, 3.0, 1.0])


def test_tail_threshold_keeps_top_n_percent():
    pop = np.arange(1000, dtype=float)
    thr = tail_thresholds([pop], grid=[10])[0, 0]
    assert (pop >= thr).sum() == 100  # 899.1 -> 900..999


def test_empty_population_gives_nan_and_warns():
    with pytest.warns(UserWarning, match="empty calibration population"):
        thr = tail_thresholds([np.array([1.0, 2.0]), np.array([])], grid=[50])
    assert thr[0, 0] == 1.5 and np.isnan(thr[1, 0])


def test_non_finite_population_is_an_error():
    with pytest.raises(FloatingPointError):
        tail_thresholds([np.array([1.0, np.nan])], grid=[50])


def test_bad_grid():
    with pytest.raises(ValueError):
        tail_thresholds([np.array([1.0])], grid=[150])


def test_best_f1_threshold_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    truth = np.array([[1], [0], [1], [1], [0]])
    # cuts: .9 -> 2*1/(3+1)=.5; .8 -> 2/5; .7 -> 4/6; .6 -> 6/7; .5 -> 6/8
    thr, f1 = best_f1_thresholds(scores, truth)
    assert thr[0] == 0.6
    assert f1[0] == pytest.approx(6 / 7)


def test_best_f1_threshold_respects_ties_and_columns():
    scores = np.array([[0.9, 1.0], [0.9, 0.0], [0.1, 0.5]])
    truth = np.array([[1, 0], [0, 0], [0, 1]])
    thr, f1 = best_f1_thresholds(scores, truth)
    # column 0: cannot split the two 0.9s -> best cut .9 gives 2*1/(1+2) = 2/3
    assert thr[0] == 0.9 and f1[0] == pytest.approx(2 / 3)
    # column 1: cut at .5 -> tp 1 of 2 predicted -> 2/3; cut at 1.0 -> 0
    assert thr[1] == 0.5 and f1[1] == pytest.approx(2 / 3)


def test_best_f1_threshold_no_positives():
    thr, f1 = best_f1_thresholds(np.array([[0.3], [0.2]]), np.array([[0], [0]]))
    assert thr[0] == np.inf and f1[0] == 0
