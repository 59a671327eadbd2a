"""Per-concept label masks: ``data.missing_labels: allow`` (issue 22, item 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from superactivators.config import config_from_dict
from superactivators.data.datasets import load_dataset
from superactivators.data.errors import DatasetError
from superactivators.data.options import DataConfig
from superactivators.evaluate.detect import run_detection
from superactivators.evaluate.metrics import Confusion
from superactivators.evaluate.scoring import ScoreSummary
from superactivators.pipeline import run_pipeline


def _csv(tmp_path):
    df = pd.DataFrame({
        "text": [f"sample {i}" for i in range(6)],
        "split": ["train", "train", "cal", "cal", "test", "test"],
        "a": ["1", "0", "1", "", "0", "1"],
        "b": ["0", "1", "", "1", "", "0"],
    })
    p = tmp_path / "metadata.csv"
    df.to_csv(p, index=False)
    return p


def test_blank_cells_are_an_error_unless_allowed(tmp_path):
    p = _csv(tmp_path)
    with pytest.raises(DatasetError, match="column 'a': blank label"):
        load_dataset(p)
    ds = load_dataset(p, missing_labels="allow")
    assert ds.concepts == ["a", "b"]
    np.testing.assert_array_equal(ds.known, [[1, 1], [1, 1], [1, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(ds.labels, [[1, 0], [0, 1], [1, 0], [0, 1], [0, 0], [1, 0]])
    assert ds.subset_concepts(["b"]).known[:, 0].tolist() == [1, 1, 0, 1, 0, 1]
    assert load_dataset(_full(tmp_path), missing_labels="allow").known is None  # nothing missing: no mask


def _full(tmp_path):
    p = tmp_path / "full" / "metadata.csv"
    p.parent.mkdir()
    pd.DataFrame({"text": ["x", "y"], "split": ["train", "test"], "a": ["1", "0"]}).to_csv(p, index=False)
    return p


def test_parquet_nulls_are_unknown_labels(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a b", "c d", "e f", "g h"], "split": ["train", "cal", "test", "test"],
                  "a": [1.0, 0.0, None, 1.0], "b": [0, 1, 1, 0]}).to_parquet(p)
    with pytest.raises(DatasetError, match="column 'a': blank label"):
        load_dataset(p, concepts=["a", "b"])
    ds = load_dataset(p, concepts=["a", "b"], missing_labels="allow")
    np.testing.assert_array_equal(ds.known, [[1, 1], [1, 1], [0, 1], [1, 1]])
    np.testing.assert_array_equal(ds.labels[:, 0], [1, 0, 0, 1])


def test_option_is_validated():
    assert DataConfig(missing_labels="allow").problems() == []
    assert DataConfig(missing_labels="zero").problems()[0].startswith("data.missing_labels: must be one of")


def test_confusion_leaves_unknown_labels_out():
    pred = np.array([[1], [1], [0], [0], [1]], bool)
    truth = np.array([[1], [0], [1], [0], [0]], bool)
    known = np.array([[1], [1], [1], [1], [0]], bool)
    c = Confusion.from_predictions(pred, truth, known)
    # by hand over the 4 known rows: tp 1, fp 1, fn 1, tn 1 (the 5th, an unknown predicted 1, counts nowhere)
    assert (int(c.tp[0]), int(c.fp[0]), int(c.fn[0]), int(c.tn[0])) == (1, 1, 1, 1)


def test_detection_with_unknown_labels_equals_detection_without_those_samples():
    rng = np.random.default_rng(0)
    n = 80
    splits = np.array(["cal"] * 40 + ["test"] * 40)
    labels = (rng.random((n, 1)) < 0.4).astype(np.uint8)
    scores = (labels[:, 0] * 1.0 + rng.normal(size=n)).astype(np.float32)[:, None]
    known = rng.random((n, 1)) < 0.7
    labels[~known] = 0  # an unknown label is read as 0
    s = ScoreSummary(["a"], {"max_token": scores}, [np.sort(scores[(splits == "cal") & known[:, 0] & (labels[:, 0] > 0), 0])])
    got = {r.method: r for r in run_detection(s, labels, splits, methods=["max_token"], grid=[10, 50, 90], known=known)}
    k = known[:, 0]
    s2 = ScoreSummary(["a"], {"max_token": scores[k]}, s.cal_in_concept)
    want = {r.method: r for r in run_detection(s2, labels[k], splits[k], methods=["max_token"], grid=[10, 50, 90])}
    for m in ("max_token", "max_token@best_threshold"):
        assert got[m].threshold[0] == want[m].threshold[0]
        for f in ("tp", "fp", "fn", "tn"):
            assert getattr(got[m].test, f)[0] == getattr(want[m].test, f)[0], (m, f)
        assert got[m].cal_f1[0] == pytest.approx(want[m].cal_f1[0])
    with pytest.raises(ValueError, match="known labels"):
        run_detection(s, labels, splits, methods=["max_token"], known=known[:3])


def test_pipeline_with_missing_labels(tmp_path, small_emotions, tiny_bert):
    df = pd.read_csv(small_emotions, dtype=str, keep_default_na=False)
    col = "emotion::joy"
    test_rows = np.flatnonzero(df["split"].to_numpy() == "test")
    blank = test_rows[:10]
    df.loc[blank, col] = ""
    df.loc[blank, "spans"] = [_drop_concept(s, col) for s in df.loc[blank, "spans"]]
    (tmp_path / "d").mkdir()
    df.to_csv(tmp_path / "d" / "metadata.csv", index=False)
    cfg = {"name": "m", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
           "data": {"path": str(tmp_path / "d"), "missing_labels": "allow", "concepts": [col, "emotion::anger"]},
           "embed": {"model": str(tiny_bert), "layers": [1], "batch_size": 8, "max_length": 128},
           "concepts": {"types": ["mean"]}, "detect": {"grid": [10, 50], "methods": ["superactivator", "max_token"]}}
    res = run_pipeline(config_from_dict(cfg), progress=False)
    assert res.store.known is not None and (~res.store.known).sum() == 10
    t = res.table
    row = t[(t.concept == col) & (t.method == "max_token")].iloc[0]
    n_known_test = len(test_rows) - 10
    assert row.tp + row.fp + row.fn + row.tn == n_known_test  # the 10 unknown test samples count nowhere
    other = t[(t.concept == "emotion::anger") & (t.method == "max_token")].iloc[0]
    assert other.tp + other.fp + other.fn + other.tn == len(test_rows)  # ... and still count for the others


def _drop_concept(spans: str, concept: str) -> str:
    import json

    if not spans:
        return spans
    d = json.loads(spans)
    if isinstance(d, dict):
        d.pop(concept, None)
        return json.dumps(d) if d else ""
    return spans


def _unit_summary():
    """8 cal samples: s0, s1 positive, s2, s3 unknown (label read as 0), s4-s7 negative; two units.

    Unit 0 (max token [5, 2, 0, 0, 3, 0, 0, 0]): best cal F1 0.8 (threshold 2: s0, s1, s4 -> tp 2, fp 1),
    whatever s2 and s3 are. Unit 1 ([5, 5, 9, 9, 0, 0, 0, 0]): threshold 5 flags s0-s3, so F1 is 1.0
    when s2, s3 are left out and 2 * 2 / (2 * 2 + 2) = 0.667 when they count as negatives."""
    from superactivators.evaluate.matching import UnitSummary

    mx = np.array([[5, 5], [2, 5], [0, 9], [0, 9], [3, 0], [0, 0], [0, 0], [0, 0]], np.float32)
    labels = np.array([[1], [1], [0], [0], [0], [0], [0], [0]], np.uint8)
    known = np.array([[1], [1], [0], [0], [1], [1], [1], [1]], bool)
    return (UnitSummary(["u0", "u1"], {"max_token": mx}, [], np.arange(2), np.empty((0, 2), np.float32),
                        np.empty((0, 1), bool)), labels, known, np.array(["cal"] * 8))


def test_unit_matching_leaves_unknown_labels_out():
    from superactivators.evaluate.matching import match_units, preselect_units

    us, labels, known, splits = _unit_summary()
    # the tail threshold of max_token is the k-th largest positive score (k = ceil(N * 2 / 100)):
    # N = 50 -> 5, N = 90 -> 2 (unit 0) and 5 (unit 1), so the grid reaches the free optimum above
    for kn, unit, f1 in ((None, 0, 0.8), (known, 1, 1.0)):
        got = {m.method: m for m in match_units(us, labels, splits, ["max_token"], grid=[50, 90], known=kn)}
        for m in ("max_token", "max_token@best_threshold"):
            assert got[m].unit[0] == unit and got[m].cal_f1[0] == pytest.approx(f1)
    assert preselect_units(us.sample_scores["max_token"], labels, splits, 1).tolist() == [0]
    assert preselect_units(us.sample_scores["max_token"], labels, splits, 1, known).tolist() == [1]


def test_prompt_seed_decisions_leave_unknown_labels_out():
    from superactivators.evaluate.detect import decision_result

    # 4 cal + 4 test samples, one concept; the seed's Yes (1) / No (0) answers
    dec = np.array([[1], [1], [0], [1], [1], [1], [0], [0]], float)
    labels = np.array([[1], [0], [0], [0], [1], [0], [1], [0]], bool)
    known = np.array([[1], [1], [1], [0], [1], [0], [1], [1]], bool)
    splits = np.array(["cal"] * 4 + ["test"] * 4)
    r = decision_result("prompt_seed", dec, labels, splits, ["a"], known)
    # cal, known s0-s2: tp 1 (s0), fp 1 (s1), tn 1 -> F1 2 / (2 + 1) (s3, unknown and answered Yes, counts nowhere)
    assert r.cal_f1[0] == pytest.approx(2 / 3)
    # test, known s4, s6, s7: tp 1 (s4), fn 1 (s6), tn 1 (s7); s5 (unknown, Yes) is no false positive
    assert (int(r.test.tp[0]), int(r.test.fp[0]), int(r.test.fn[0]), int(r.test.tn[0])) == (1, 0, 1, 1)
    r0 = decision_result("prompt_seed", dec, labels, splits, ["a"])  # without the mask both Yes count as fp
    assert int(r0.test.fp[0]) == 1 and r0.cal_f1[0] == pytest.approx(2 / 4)


def test_global_linsep_fits_each_concept_on_its_known_samples():
    from types import SimpleNamespace

    from sklearn.linear_model import LogisticRegression

    from superactivators.concepts.supervised import learn_global_concepts

    # 1-d globals: concept a positive at +1 (3 samples), negative at -1 (3); 4 samples at +1.2 whose
    # a-label is unknown (stored 0). Concept b (every label known) is positive on the first 5 samples.
    g = np.array([[1.0], [1.0], [1.0], [-1.0], [-1.0], [-1.0], [1.2], [1.2], [1.2], [1.2], [0.0]], np.float32)
    labels = np.zeros((11, 2), np.uint8)
    labels[:3, 0] = 1
    labels[:5, 1] = 1
    known = np.ones((11, 2), bool)
    known[6:10, 0] = False
    splits = np.array(["train"] * 10 + ["cal"])
    store = SimpleNamespace(globals=lambda layer: g, splits=splits, labels=labels, known=known, concepts=["a", "b"])
    cs = learn_global_concepts(store, 0, [0, 1], "linsep")
    # by hand: the normalisation is over every train sample (labels do not enter it)
    x = (g[:10] - g[:10].mean(0)) / np.abs(g[:10] - g[:10].mean(0)).mean()
    for c, rows in ((0, np.r_[0:6]), (1, np.r_[0:10])):
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=300).fit(x[rows], labels[rows, c])
        assert cs.vectors[c, 0] == pytest.approx(clf.coef_[0, 0], rel=1e-5)
        assert cs.bias[c] == pytest.approx(clf.intercept_[0], rel=1e-5, abs=1e-6)
    assert cs.vectors[0, 0] > 0  # a's positives sit on the + side; read as negatives the 1.2s would pull it down
