"""Quantile thresholds and free-threshold F1 against hand computations."""

import numpy as np
import pytest

from superactivators.evaluate.calibrate import (
    DEFAULT_GRID,
    best_f1_thresholds,
    column_tail_thresholds,
    tail_counts,
    tail_thresholds,
)


def test_tail_thresholds_by_hand():
    # population 1..5: N keeps k = ceil(5 N / 100) values, tau = the k-th largest
    pop = [np.array([5.0, 1.0, 4.0, 2.0, 3.0])]
    thr = tail_thresholds(pop, grid=[2, 20, 50, 100])
    # N=2: ceil(.1) = 1 -> 5; N=20: ceil(1.0) = 1 -> 5; N=50: ceil(2.5) = 3 -> 3; N=100: 5 -> 1
    np.testing.assert_array_equal(thr[0], [5.0, 5.0, 3.0, 1.0])


def test_tail_threshold_keeps_top_n_percent():
    pop = np.arange(1000, dtype=float)
    thr = tail_thresholds([pop], grid=[10])[0, 0]
    assert thr == 900.0 and (pop >= thr).sum() == 100


# k = ceil(n N / 100) for the default grid (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95), by hand
HAND_K = {
    11: [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # (n-1)(1-N/100) = 10 - N/10: whole for N = 10..90
    21: [1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19, 20],  # 20 - N/5: whole for every N but 2
    50: [1, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 48],
    100: [2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],  # k = N exactly: any float slop shows
    101: [3, 6, 11, 21, 31, 41, 51, 61, 71, 81, 91, 96],  # 100 - N: whole for every N
}


@pytest.mark.parametrize("n", sorted(HAND_K))
def test_exact_top_share_at_every_default_grid_value(n):
    assert list(tail_counts(n, DEFAULT_GRID)) == HAND_K[n]
    # distinct values that are not exact in binary (0.1 steps), shuffled
    pop = np.random.default_rng(n).permutation(np.arange(n) * 0.1 + 0.3)
    thr = tail_thresholds([pop], DEFAULT_GRID)[0]
    kept = (pop[:, None] >= thr[None, :]).sum(axis=0)
    assert list(kept) == HAND_K[n]
    np.testing.assert_array_equal(thr, np.sort(pop)[n - np.array(HAND_K[n])])  # an observed value


def test_float_quantile_rule_dropped_boundary_values():
    """The old rule, np.quantile at 1 - N/100, found by search: n = 21, N = 70 gives the whole
    rank h = 20 * 0.3 = 6, so tau should be x_(6) and 15 values should reach it, but
    1 - 0.7 = 0.30000000000000004 puts tau above x_(6) and only 14 do. The new rule keeps 15."""
    pop = np.arange(21) * 0.1 + 0.3
    old = np.quantile(pop, 1 - 70 / 100)
    assert (pop >= old).sum() == 14
    assert (pop >= tail_thresholds([pop], [70])[0, 0]).sum() == 15 == HAND_K[21][DEFAULT_GRID.index(70)]


def test_tail_counts_edges_and_decimal_grid_values():
    assert list(tail_counts(1000, [0.1, 2.5, 97.5, 0, 100])) == [1, 25, 975, 1, 1000]  # 0.1 % of 1000 is 1, not 2
    assert list(tail_counts(0, [50])) == [0]
    np.testing.assert_array_equal(tail_counts(np.array([10, 3]), [50]), [[5], [2]])


def test_ties_at_the_threshold_all_reach_it():
    thr = tail_thresholds([np.array([1.0, 2.0, 2.0, 2.0, 3.0])], [50])[0, 0]
    assert thr == 2.0  # k = 3: the third largest is a 2, and all three 2s reach it


def test_column_thresholds_equal_per_population():
    rows = np.random.default_rng(0).normal(size=(23, 4))
    np.testing.assert_array_equal(column_tail_thresholds(rows, DEFAULT_GRID),
                                  tail_thresholds([rows[:, k] for k in range(4)], DEFAULT_GRID).T)


def test_empty_population_gives_nan_and_warns():
    with pytest.warns(UserWarning, match="empty calibration population"):
        thr = tail_thresholds([np.array([1.0, 2.0]), np.array([])], grid=[50])
    assert thr[0, 0] == 2.0 and np.isnan(thr[1, 0])


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
