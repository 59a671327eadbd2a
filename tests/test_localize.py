"""Localisation metrics against hand-computed examples, and the pipeline hook for text spans."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from superactivators.concepts.supervised import ConceptSet
from superactivators.localize.tokens import (
    LOC_METHODS,
    MACRO,
    localization_grid,
    localization_table,
    localize,
    topk_sizes,
)
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


# max valid activation per sample (s6's padding token 9.0 does not count)
SAMPLE_MAX = np.array([[m, m] for m in (1.0, 0.5, 5.0, 2.0, 6.0, 4.5, 4.1)])


def _run(store: TokenStore, det_n=(100.0, 50.0), **kw):
    cal_pop = [np.array([5.0, 4.5, 4.0]), np.array([5.0, 4.5, 4.0])]
    # detection and inversion grids [50, 100]: N = 50 keeps ceil(1.5) = 2 values -> tau 4.5,
    # N = 100 keeps all 3 -> 4.0 (the minimum)
    return {r.method: r for r in localize(store, _concepts(), SAMPLE_MAX, cal_pop, [50, 100], np.array(det_n),
                                          [50, 100], **kw)}


def _counts(r) -> tuple[list, list, list]:
    return r.test.tp.tolist(), r.test.fp.tolist(), r.test.fn.tolist()


def test_hand_computed_localisation(hand_store: TokenStore) -> None:
    res = _run(hand_store)
    # the detector: a at N = 100 (tau 4.0) flags s2 | s4 s5 s6; b at N = 50 (tau 4.5) flags s2 | s4 s5
    tail = res["superactivator"]
    # cal: tau 4.5 -> {5} of s2: F1 2/3; tau 4.0 -> {5, 4}: F1 1 -> N_inv = 100
    np.testing.assert_allclose(tail.n_pct, [100, 100])
    np.testing.assert_allclose(tail.n_det, [100, 50])
    np.testing.assert_allclose(tail.threshold, [4.0, 4.0])
    np.testing.assert_allclose(tail.cal_f1, [1.0, 1.0])
    # test a: s4 {6 (gt), 4.2}, s5 {4.5 (gt), 4.0}, s6 {4.1}; b: s4 and s5 only
    assert _counts(tail) == ([2, 2], [3, 2], [1, 1])
    np.testing.assert_allclose(tail.test.f1(), [1 / 2, 4 / 7])
    np.testing.assert_allclose(tail.test.iou(), [1 / 3, 2 / 5])

    pos = res["positive"]  # a > 0 in the detector's samples
    assert _counts(pos) == ([3, 3], [5, 2], [0, 0])
    np.testing.assert_allclose(pos.test.f1(), [6 / 11, 3 / 4])
    np.testing.assert_allclose(pos.test.iou(), [3 / 8, 3 / 5])
    np.testing.assert_allclose(pos.cal_f1, [4 / 5, 4 / 5])  # s2 {5, 4, 1}

    top = res["topk"]  # k = median in-concept count of positive cal samples = 2
    assert top.k.tolist() == [2, 2]
    # a: s4 {6, 4.2}, s5 {4.5, 4}, s6 top-2 of valid tokens {4.1, 1}
    assert _counts(top) == ([2, 2], [4, 2], [1, 1])
    np.testing.assert_allclose(top.test.f1(), [4 / 9, 4 / 7])

    allp, alln = res["always_positive"], res["always_negative"]  # 12 valid test tokens, 3 in-concept
    assert _counts(allp) == ([3, 3], [9, 9], [0, 0])
    np.testing.assert_allclose(allp.test.f1(), [0.4, 0.4])
    np.testing.assert_allclose(allp.test.iou(), [0.25, 0.25])
    assert _counts(alln) == ([0, 0], [0, 0], [3, 3]) and (alln.test.f1() == 0).all()


def test_joint_choice_of_detection_and_inversion(hand_store: TokenStore) -> None:
    """Pairs with N_inv >= N_det: (50, 50) F1 2/3, (50, 100) F1 1, (100, 100) F1 1 -> (50, 100)."""
    joint = _run(hand_store)["superactivator_joint"]
    np.testing.assert_allclose(joint.n_det, [50, 50])  # a: not the detector's own N = 100
    np.testing.assert_allclose(joint.n_pct, [100, 100])
    np.testing.assert_allclose(joint.cal_f1, [1.0, 1.0])
    # both: s4 {6, 4.2} and s5 {4.5, 4.0}: s6 (max 4.1 < 4.5) is no longer detected for a
    assert _counts(joint) == ([2, 2], [2, 2], [1, 1])
    np.testing.assert_allclose(joint.test.f1(), [4 / 7, 4 / 7])
    # the pair must respect N_inv >= N_det: with only (N_det 100, N_inv 50) possible, nothing is chosen
    cal_pop = [np.array([5.0, 4.0])] * 2
    none = {r.method: r for r in localize(hand_store, _concepts(), SAMPLE_MAX, cal_pop, [100], np.array([100, 100]),
                                          [50], twostage=False)}["superactivator_joint"]
    assert np.isnan(none.n_det).all() and _counts(none) == ([0, 0], [0, 0], [3, 3])


def test_random_baseline_is_seeded_and_at_the_in_concept_rate(hand_store: TokenStore) -> None:
    from superactivators.localize.tokens import in_concept_rate, token_uniforms

    rate = in_concept_rate(hand_store, np.array([0, 1]))
    np.testing.assert_allclose(rate, [2 / 8, 2 / 8])  # cal: 2 in-concept of 8 valid tokens
    rnd = _run(hand_store, seed=3)["random"]
    np.testing.assert_allclose(rnd.n_pct, [25.0, 25.0])
    # direct: valid test tokens whose uniform falls below the rate
    tok = np.arange(hand_store.n_tokens)
    test = hand_store.valid & (hand_store.splits == "test")[hand_store.sample_of_token]
    gt = np.concatenate([hand_store.token_labels(s) for s in hand_store.shards])
    for c in range(2):
        pick = test & (token_uniforms(tok, c, 3) < 0.25)
        assert rnd.test.tp[c] == (pick & gt[:, c]).sum() and rnd.test.fp[c] == (pick & ~gt[:, c]).sum()
    assert _counts(_run(hand_store, seed=3)["random"]) == _counts(rnd)  # seeded
    u = token_uniforms(np.arange(200_000), 0, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs((u < 0.1).mean() - 0.1) < 0.005
    assert not np.array_equal(u[:100], token_uniforms(np.arange(100), 1, 0))


def test_twostage_scores_by_hand() -> None:
    from superactivators.localize.tokens import twostage_scores

    x = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 3]], np.float32)
    acts = np.array([[2.0], [1.0], [0.0], [0.5], [0.2]], np.float32)
    sc = twostage_scores(x, acts, np.array([0, 3]), np.array([0.9]))
    # sample 0: SuperActivators are tokens 0 (a=2) and 1 (a=1); v = (e^2 x0 + e x1) / (e^2 + e)
    w0, w1 = np.e / (np.e + 1), 1 / (np.e + 1)
    nv = np.hypot(w0, w1)
    np.testing.assert_allclose(sc[:3, 0], [w0 / nv, w1 / nv, (w0 + w1) / (np.sqrt(2) * nv)], rtol=1e-5)
    assert np.isnan(sc[3:, 0]).all()  # sample 1 has no SuperActivator: never predicted
    # an invalid token neither builds the vector nor gets a score
    sc2 = twostage_scores(x, acts, np.array([0, 3]), np.array([0.9]), valid=np.array([1, 0, 1, 1, 1], bool))
    np.testing.assert_allclose(sc2[[0, 2], 0], [1.0, 1 / np.sqrt(2)], rtol=1e-6)
    assert np.isnan(sc2[1, 0])


def test_twostage_against_a_direct_computation(tmp_path: Path) -> None:
    """localize_twostage vs a per-sample loop: vectors, cal thresholds, N by cal F1, test counts."""
    from superactivators.localize.tokens import localize_twostage

    rng = np.random.default_rng(0)
    d, splits = 3, ["train"] * 4 + ["cal"] * 5 + ["test"] * 5
    lens = rng.integers(3, 7, len(splits))
    xs = [rng.normal(size=(n, d)).astype(np.float32) for n in lens]
    gts = [rng.random(n) < 0.4 for n in lens]
    info = StoreInfo(n_samples=len(splits), dim=d, layers=[1], concepts=["a"], modality="text",
                     token_ground_truth="spans")
    w = StoreWriter(tmp_path / "s", info, np.ones((len(splits), 1), np.uint8), np.array(splits), shard_tokens=9)
    for x, g in zip(xs, gts):
        w.add({1: x}, {1: x[:1]}, np.array([len(x)]), np.ones(len(x), bool), gt_bits=np.packbits(g[:, None], axis=1))
    store = w.close()
    allx = np.concatenate([store.tokens(1, sh) for sh in store.shards]).astype(np.float32)  # as stored (fp16)
    xs = [allx[store.offsets[i]:store.offsets[i + 1]] for i in range(len(splits))]
    v = rng.normal(size=(1, d)).astype(np.float32)
    cs = ConceptSet("linsep", ["a"], v, np.zeros(1, np.float32), "signed_distance", 1, np.zeros(d, np.float32), 1.0)
    mean, scale = store.norm(1)
    det, grid = 0.5, [20.0, 50.0, 80.0, 100.0]
    per = []  # (split, gt, score) of tokens of samples with SuperActivators
    for sp, x, g in zip(splits, xs, gts):
        a = x @ v[0] / np.linalg.norm(v[0])
        xn = (x - mean) / scale
        sup = a >= det
        if sp == "train" or not sup.any():
            continue
        wts = np.exp(a[sup] - a[sup].max())
        vec = (wts[:, None] * xn[sup]).sum(0)
        cos = xn @ vec / (np.linalg.norm(xn, axis=1) * np.linalg.norm(vec))
        per += [(sp, bool(gi), float(ci)) for gi, ci in zip(g, cos)]
    n_gt = {sp: sum(int(g.sum()) for s2, g in zip(splits, gts) if s2 == sp) for sp in ("cal", "test")}
    pop = np.array([c for sp, g, c in per if sp == "cal" and g])
    best, best_f1 = None, -1.0
    for n in grid:
        thr = np.sort(pop)[len(pop) - max(1, math.ceil(n * len(pop) / 100))]  # the ceil(N n / 100)-th largest
        tp = sum(1 for sp, g, c in per if sp == "cal" and g and c >= thr)
        fp = sum(1 for sp, g, c in per if sp == "cal" and not g and c >= thr)
        f1 = 2 * tp / (tp + fp + n_gt["cal"])
        if f1 > best_f1 + 1e-12:
            best, best_f1 = (n, thr), f1
    tp = sum(1 for sp, g, c in per if sp == "test" and g and c >= best[1])
    fp = sum(1 for sp, g, c in per if sp == "test" and not g and c >= best[1])
    res = localize_twostage(store, cs, np.array([det]), grid)
    assert res.n_pct[0] == best[0]
    np.testing.assert_allclose(res.threshold[0], best[1], rtol=1e-5)
    np.testing.assert_allclose(res.cal_f1[0], best_f1)
    assert (res.test.tp[0], res.test.fp[0], res.test.fn[0]) == (tp, fp, n_gt["test"] - tp)


def test_uncalibratable_concept_predicts_nothing(hand_store: TokenStore) -> None:
    with pytest.warns(UserWarning, match="empty calibration population"):
        res = {r.method: r for r in localize(hand_store, _concepts(), SAMPLE_MAX, [np.array([5.0, 4.0]), np.array([])],
                                             [50, 100], np.array([100, 100]), [50, 100])}
    for m in ("superactivator", "superactivator_joint", "twostage", "positive", "topk"):
        assert res[m].test.tp[1] == 0 and res[m].test.fp[1] == 0, m
    assert np.isnan(res["superactivator"].threshold[1])
    assert res["superactivator"].test.tp[0] > 0


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
    table = localization_table(list(_run(hand_store).values()), layer=1, concept_type="linsep")
    assert list(table.columns[:4]) == ["layer", "concept_type", "method", "concept"]
    assert set(table["method"]) == set(LOC_METHODS)
    macro = table[(table["concept"] == MACRO) & (table["method"] == "superactivator")].iloc[0]
    assert macro["f1"] == pytest.approx((1 / 2 + 4 / 7) / 2)
    assert macro["iou"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert macro["support"] == 6
    from superactivators.localize.tokens import format_localization

    text = format_localization(table)  # one narrow table per metric, the macro values in it
    assert text.startswith("f1:\n") and "\niou:\n" in text and "SA_joint" in text
    assert f"{(1 / 2 + 4 / 7) / 2:.3f}" in text and max(map(len, text.splitlines())) <= 100


def test_pipeline_writes_localisation_for_text_spans(small_emotions: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({"name": "loc", "output_dir": str(tmp_path), "data": {"path": str(small_emotions)},
                            "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 32},
                            "concepts": {"types": ["mean"]}})
    res = run_pipeline(cfg, progress=False)
    assert res.store.info.token_ground_truth == "spans"
    csv = pd.read_csv(tmp_path / "loc" / "localization_metrics.csv")
    assert set(csv["method"]) == set(LOC_METHODS)
    assert (csv["concept"] == MACRO).sum() == len(LOC_METHODS) and set(csv["layer"]) == {2}
    assert csv[["precision", "recall", "f1", "iou"]].dropna().apply(lambda c: c.between(0, 1).all()).all()
    cached = list((tmp_path / "loc" / "stages").glob("*/localization_*.csv"))
    assert len(cached) == 1
    again = run_pipeline(cfg, progress=False)  # from the stage cache: same table
    pd.testing.assert_frame_equal(again.localization, res.localization, check_dtype=False)
    off = config_from_dict({**cfg.to_dict(), "detect": {**cfg.to_dict()["detect"], "localize": False}})
    assert run_pipeline(off, progress=False, force=True).localization is None  # a changed config: replaced


def test_kmeans_concepts_localise_through_their_matched_units(small_emotions: Path, tiny_bert: Path,
                                                              tmp_path: Path) -> None:
    """Unlabelled units follow the labelled stage path: every localisation method and attributions."""
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({"name": "km", "output_dir": str(tmp_path), "data": {"path": str(small_emotions)},
                            "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 32},
                            "concepts": {"types": ["kmeans"], "kmeans_k_tokens": 16, "kmeans_k_global": 4},
                            "localize": {"attributions": ["saliency", "occlusion"], "attribution_samples": 2}})
    res = run_pipeline(cfg, progress=False)
    loc = res.localization
    assert loc is not None and set(loc["concept_type"]) == {"kmeans"} and set(loc["method"]) == set(LOC_METHODS)
    sa = loc[(loc["method"] == "superactivator") & (loc["concept"] != MACRO)]
    assert set(sa["concept"]) <= set(res.store.concepts) and len(sa) > 0  # rows named by the labelled concepts
    assert loc[["f1", "iou"]].dropna().apply(lambda c: c.between(0, 1).all()).all()
    assert {"attr:saliency", "attr:occlusion"} <= set(res.attribution["method"])
