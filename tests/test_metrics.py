"""Confusion counts, precision, recall, F1, IoU against hand computations."""

import numpy as np
import pytest

from superactivators.evaluate.metrics import Confusion, f1_grid


def test_confusion_by_hand():
    pred = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=bool)
    truth = np.array([[1, 1], [0, 1], [0, 0], [1, 1]], dtype=bool)
    c = Confusion.from_predictions(pred, truth)
    assert c.tp.tolist() == [2, 1] and c.fp.tolist() == [1, 0]
    assert c.fn.tolist() == [0, 2] and c.tn.tolist() == [1, 1]
    np.testing.assert_allclose(c.precision(), [2 / 3, 1.0])
    np.testing.assert_allclose(c.recall(), [1.0, 1 / 3])
    np.testing.assert_allclose(c.f1(), [0.8, 0.5])  # 2*2/(4+1+0), 2*1/(2+0+2)
    np.testing.assert_allclose(c.iou(), [2 / 3, 1 / 3])


def test_zero_division_is_zero():
    c = Confusion.from_predictions(np.zeros((3, 1), bool), np.zeros((3, 1), bool))
    assert c.precision()[0] == 0 and c.recall()[0] == 0 and c.f1()[0] == 0


def test_f1_grid_matches_confusion():
    rng = np.random.default_rng(0)
    pred = rng.random((4, 50, 3)) > 0.5
    truth = rng.random((50, 3)) > 0.6
    grid = f1_grid(pred, truth)
    for g in range(4):
        np.testing.assert_allclose(grid[g], Confusion.from_predictions(pred[g], truth).f1())


def test_confusion_add():
    a = Confusion(np.array([1]), np.array([2]), np.array([3]), np.array([4]))
    s = a + a
    assert s.tp[0] == 2 and s.tn[0] == 8 and s.support[0] == 8
    assert s.f1()[0] == pytest.approx(4 / (4 + 4 + 6))


def test_accuracy_and_error_rates_by_hand():
    pred = np.array([[1, 0], [1, 0], [0, 0], [0, 1], [1, 0]], bool)
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0]], bool)
    r = Confusion.from_predictions(pred, truth).rates()
    # column 0: tp 2, fp 1, fn 1, tn 1; column 1: tp 0, fp 1, fn 0, tn 4 (no positives)
    np.testing.assert_allclose(r["accuracy"], [3 / 5, 4 / 5])
    np.testing.assert_allclose(r["fpr"], [1 / 2, 1 / 5])
    np.testing.assert_allclose(r["tnr"], [1 / 2, 4 / 5])
    np.testing.assert_allclose(r["fnr"], [1 / 3, 0.0])  # no positives: 0, not NaN
    np.testing.assert_allclose(r["fpr"] + r["tnr"], 1.0)
