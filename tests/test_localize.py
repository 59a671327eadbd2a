"""Localisation metrics against hand-computed examples, and the pipeline hook for text spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from superactivators.concepts.supervised import ConceptSet
from superactivators.evaluate.localize import MACRO, localization_grid, localization_table, localize, topk_sizes
from superactivators.store.tokens import StoreInfo, StoreWriter, TokenStore

# Activation of concept "a" is a token's first coordinate, of "b" its second (signed distance,
# centre 0, scale 1, unit vectors). Both concepts see the same activations and ground truth;
# only the detected samples differ.
SAMPLES = [  # (split, label, activations, in-concept, valid)
    ("train", 1, [1.0, 0.0], [1, 0], [1, 1]),
    ("train", 0, [0.0, 0.5], [0, 0], [1, 1]),
    ("cal", 1, [5.0, 4.0, 1.0, -1.0], [1, 1, 0, 0], [1, 1, 1, 1]),  # s2
    ("cal", 0, [2.0, 0.5, -2.0, -3.0], [0, 0, 0, 0], [1, 1, 1, 1]),  # s3
    ("test", 1, [6.0, 3.0, 4.2, -1.0], [1, 1, 0, 0], [1, 1, 1, 1]),  # s4
    ("test", 1, [4.5, 4.0, 0.0, 0.0], [1, 0, 0, 0], [1, 1, 1, 1]),  # s5, never detected
    ("test", 0, [4.1, 1.0, 0.5, -2.0, 9.0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]),  # s6, last token padding
]


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory) -> TokenStore:
    path = tmp_path_factory.mktemp("loc_store")
    labels = np.array([[s[1], s[1]] for s in SAMPLES], np.uint8)
    splits = np.array([s[0] for s in SAMPLES])
    info = StoreInfo(n_samples=len(SAMPLES), dim=2, layers=[1], concepts=["a", "b"], modality="image",
                     token_ground_truth="masks")
    w = StoreWriter(path, info, labels, splits, shard_tokens=5)  # several shards
    for split, lab, acts, gt, valid in SAMPLES:
        x = np.stack([acts, acts], axis=1).astype(np.float32)
        g = np.array(gt, bool) & np.array(valid, bool)
        w.add({1: x}, {1: x.mean(0, keepdims=True)}, np.array([len(acts)]), np.array(valid, bool),
              gt_bits=np.packbits(np.stack([g, g], axis=1), axis=1))
    store = w.close()
    assert len(store.shards) > 2
    return store


def _concepts() -> ConceptSet:
    return ConceptSet("linsep", ["a", "b"], np.eye(2, dtype=np.float32), np.zeros(2, np.float32),
                      "signed_distance", 1, np.zeros(2, np.float32), 1.0)


def test_hand_computed_localisation(hand_store: TokenStore) -> None:
    detected = np.zeros((len(SAMPLES), 2), bool)
    detected[[2, 3, 4, 6], 0] = True  # a: s5 missed, s3 and s6 false detections
    detected[[2, 4], 1] = True  # b: only s2 (cal) and s4 (test)
    cal_pop = [np.array([5.0, 4.0]), np.array([5.0, 4.0])]
    grid = [50, 100]  # thresholds 4.5 (median of 4, 5) and 4.0 (minimum)
    res = {r.method: r for r in localize(hand_store, _concepts(), detected, cal_pop, grid)}

    tail = res["superactivator"]
    # cal, concept a: tau 4.5 -> {5} of s2: F1 2/3; tau 4.0 -> {5, 4}: F1 1 -> N = 100
    np.testing.assert_allclose(tail.n_pct, [100, 100])
    np.testing.assert_allclose(tail.threshold, [4.0, 4.0])
    np.testing.assert_allclose(tail.cal_f1, [1.0, 1.0])
    # test a: s4 -> {6 (gt), 4.2}; s5 undetected; s6 -> {4.1} (the padding 9.0 never counts)
    t = tail.test
    assert (t.tp.tolist(), t.fp.tolist(), t.fn.tolist()) == ([1, 1], [2, 1], [2, 2])
    np.testing.assert_allclose(t.precision(), [1 / 3, 1 / 2])
    np.testing.assert_allclose(t.recall(), [1 / 3, 1 / 3])
    np.testing.assert_allclose(t.f1(), [1 / 3, 2 / 5])
    np.testing.assert_allclose(t.iou(), [1 / 5, 1 / 4])

    pos = res["positive"]  # a > 0 in detected samples
    assert (pos.test.tp.tolist(), pos.test.fp.tolist(), pos.test.fn.tolist()) == ([2, 2], [4, 1], [1, 1])
    np.testing.assert_allclose(pos.test.f1(), [4 / 9, 4 / 6])
    np.testing.assert_allclose(pos.test.iou(), [2 / 7, 2 / 4])
    np.testing.assert_allclose(pos.cal_f1, [4 / 7, 4 / 5])  # a: s2 {5,4,1}, s3 {2,.5}; b: s2 only

    top = res["topk"]  # k = median in-concept count of positive cal samples = 2
    assert top.k.tolist() == [2, 2]
    # a: s4 top-2 {6, 4.2}: 1 tp 1 fp; s6 top-2 of valid tokens {4.1, 1}: 2 fp
    assert (top.test.tp.tolist(), top.test.fp.tolist(), top.test.fn.tolist()) == ([1, 1], [3, 1], [2, 2])
    np.testing.assert_allclose(top.test.f1(), [2 / 7, 2 / 5])
    np.testing.assert_allclose(top.test.iou(), [1 / 6, 1 / 4])


def test_uncalibratable_concept_predicts_nothing(hand_store: TokenStore) -> None:
    detected = np.ones((len(SAMPLES), 2), bool)
    with pytest.warns(UserWarning, match="empty calibration population"):
        res = localize(hand_store, _concepts(), detected, [np.array([5.0, 4.0]), np.array([])], [50, 100])
    tail = res[0]
    assert tail.test.tp[1] == 0 and tail.test.fp[1] == 0 and np.isnan(tail.threshold[1])
    assert tail.test.tp[0] > 0


def test_localisation_grid_extends_to_the_minimum() -> None:
    assert localization_grid([2, 5, 95, 50]) == [2.0, 5.0, 50.0, 95.0, 97.5, 99.0, 100.0]
    # N = 100 is the minimum of the in-concept population: every in-concept cal token is kept
    from superactivators.evaluate.calibrate import tail_thresholds

    assert tail_thresholds([np.array([3.0, 1.0, 2.0])], [100])[0, 0] == 1.0


def test_topk_sizes_median() -> None:
    counts = np.array([[3, 0], [4, 1], [10, 2], [7, 9]])
    labels = np.array([[1, 0], [1, 1], [1, 1], [0, 1]])
    cal = np.array([True, True, True, False])
    # a: median(3, 4, 10) = 4; b: positives in cal are rows 1, 2 -> median(1, 2) = 1.5 -> 2
    assert topk_sizes(counts, labels, cal).tolist() == [4, 2]
    assert topk_sizes(counts, np.zeros_like(labels), cal).tolist() == [1, 1]


def test_table_macro_row(hand_store: TokenStore) -> None:
    detected = np.zeros((len(SAMPLES), 2), bool)
    detected[[2, 3, 4, 6], 0] = True
    detected[[2, 4], 1] = True
    res = localize(hand_store, _concepts(), detected, [np.array([5.0, 4.0])] * 2, [50, 100])
    table = localization_table(res, layer=1, concept_type="linsep")
    assert list(table.columns[:4]) == ["layer", "concept_type", "method", "concept"]
    assert set(table["method"]) == {"superactivator", "positive", "topk"}
    macro = table[(table["concept"] == MACRO) & (table["method"] == "superactivator")].iloc[0]
    assert macro["f1"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert macro["iou"] == pytest.approx((1 / 5 + 1 / 4) / 2)
    assert macro["support"] == 6


def test_pipeline_writes_localisation_for_text_spans(small_emotions: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({"name": "loc", "output_dir": str(tmp_path), "data": {"path": str(small_emotions)},
                            "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 32},
                            "concepts": {"types": ["mean"]}})
    res = run_pipeline(cfg, progress=False)
    assert res.store.info.token_ground_truth == "spans"
    csv = pd.read_csv(tmp_path / "loc" / "localization_metrics.csv")
    assert set(csv["method"]) == {"superactivator", "positive", "topk"}
    assert (csv["concept"] == MACRO).sum() == 3 and set(csv["layer"]) == {2}
    assert csv[["precision", "recall", "f1", "iou"]].dropna().apply(lambda c: c.between(0, 1).all()).all()
    cached = list((tmp_path / "loc" / "stages").glob("*/localization_*.csv"))
    assert len(cached) == 1
    again = run_pipeline(cfg, progress=False)  # from the stage cache: same table
    pd.testing.assert_frame_equal(again.localization, res.localization, check_dtype=False)
    off = config_from_dict({**cfg.to_dict(), "detect": {**cfg.to_dict()["detect"], "localize": False}})
    assert run_pipeline(off, progress=False).localization is None
