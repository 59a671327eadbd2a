"""Data regimes (issue 22, item 7): scarcity and label noise, their tables and the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from superactivators.benchmark import BenchmarkOptions, axbench_settings
from superactivators.benchmark_regimes import (REGIME_COLUMNS, format_summary, label_arrays, run_regime, summarize,
                                               table_at)
from superactivators.data.errors import DatasetError
from superactivators.data.regimes import (NOISE, SCARCITY, RegimePoint, apply_noise, apply_point, apply_scarcity,
                                          flip_count, regime_points, scarcity_knobs)
from superactivators.store.layout import BenchmarkLayout

from .test_axbench import make_setting


def _data(n_train_pos=(14, 20), n_cal_pos=(6, 9), n_neg=30, n_test=10):
    """Two concepts over train / cal / test rows; concept c's positives are its own rows.
    Test rows are half positive for each concept; one test label of concept 1 is unknown."""
    splits, labels = [], []
    for split, counts in (("train", n_train_pos), ("cal", n_cal_pos)):
        for c, n in enumerate(counts):
            splits += [split] * n
            labels += [[int(c == 0), int(c == 1)]] * n
        splits += [split] * n_neg
        labels += [[0, 0]] * n_neg
    splits += ["test"] * n_test
    labels += [[1, 0], [0, 1]] * (n_test // 2)
    labels = np.array(labels, np.uint8)
    known = np.ones(labels.shape, bool)
    known[-1, 1] = False
    return labels, known, np.array(splits)


def test_scarcity_keeps_exactly_k_positives_and_marks_the_rest_unknown():
    labels, known, splits = _data()
    fit = splits != "test"
    for k in (2, 4, 8, 16):
        kn = apply_scarcity(labels, known, splits, k, np.random.default_rng(1))
        for c in (0, 1):
            kept = labels[:, c].astype(bool) & kn[:, c] & fit
            assert kept.sum() == k
            # 30 % of k (at least 1) from cal: k=2 -> 1 + 1, 4 -> 3 + 1, 8 -> 6 + 2, 16 -> 11 + 5
            n_cal = {2: 1, 4: 1, 8: 2, 16: 5}[k]
            assert (kept & (splits == "cal")).sum() == n_cal and (kept & (splits == "train")).sum() == k - n_cal
            # the other positives are unknown (not negatives); negatives and test stay known
            lost = labels[:, c].astype(bool) & fit & ~kept
            assert not kn[lost, c].any() and lost.sum() == labels[fit, c].sum() - k
            assert kn[~labels[:, c].astype(bool) & fit, c].all()
            np.testing.assert_array_equal(kn[~fit, c], known[~fit, c])
        assert (labels == labels).all()


def test_scarcity_short_cal_share_moves_to_train_and_too_few_positives_refuse():
    labels, known, splits = _data(n_train_pos=(14, 20), n_cal_pos=(2, 9))
    kn = apply_scarcity(labels, known, splits, 16, np.random.default_rng(0))
    kept = labels[:, 0].astype(bool) & kn[:, 0]
    # concept 0 has 2 cal positives: its share round(4.8) = 5 shrinks to 2, train gives 14
    assert (kept & (splits == "cal")).sum() == 2 and (kept & (splits == "train")).sum() == 14
    with pytest.raises(DatasetError, match="k=20"):
        apply_scarcity(labels, known, splits, 20, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2"):
        apply_scarcity(labels, known, splits, 1, np.random.default_rng(0))


def test_repeats_differ_and_are_reproducible():
    labels, known, splits = _data()
    a = apply_point(RegimePoint(SCARCITY, 4, 0), labels, known, splits, seed=0)[1]
    assert np.array_equal(a, apply_point(RegimePoint(SCARCITY, 4, 0), labels, known, splits, seed=0)[1])
    assert not np.array_equal(a, apply_point(RegimePoint(SCARCITY, 4, 1), labels, known, splits, seed=0)[1])
    assert not np.array_equal(a, apply_point(RegimePoint(SCARCITY, 4, 0), labels, known, splits, seed=1)[1])
    n = apply_point(RegimePoint(NOISE, 0.1, 2), labels, known, splits, seed=3)[0]
    assert np.array_equal(n, apply_point(RegimePoint(NOISE, 0.1, 2), labels, known, splits, seed=3)[0])
    assert not np.array_equal(n, apply_point(RegimePoint(NOISE, 0.1, 3), labels, known, splits, seed=3)[0])


def test_noise_flips_exactly_round_p_n_labels_per_concept_and_never_test():
    labels, known, splits = _data()
    fit = splits != "test"
    n = int(fit.sum())  # 14 + 20 + 30 + 6 + 9 + 30 = 109 known train+cal labels per concept
    assert n == 109
    assert flip_count(0.1, n) == 11 and flip_count(0.2, n) == 22 and flip_count(0.5, 3) == 2  # halves round up
    for p, m in ((0.1, 11), (0.2, 22)):
        out = apply_noise(labels, known, splits, p, np.random.default_rng(0))
        changed = out != labels
        assert changed[fit].sum(axis=0).tolist() == [m, m]
        assert not changed[~fit].any()
        assert set(np.unique(out)) <= {0, 1}
    # an unknown train label is never flipped (it is not one of the n)
    known2 = known.copy()
    known2[:50, 0] = False
    out = apply_noise(labels, known2, splits, 0.2, np.random.default_rng(0))
    assert (out[:50, 0] == labels[:50, 0]).all() and (out[:, 0] != labels[:, 0]).sum() == flip_count(0.2, n - 50)


def test_points_of_each_regime():
    assert scarcity_knobs(np.array([72, 40])) == [2, 4, 8, 16, 32]
    assert scarcity_knobs(np.array([64])) == [2, 4, 8, 16, 32]  # 64 itself is the full point
    pts = regime_points(SCARCITY, np.array([20, 9]), repeats=2)
    assert [p.name for p in pts] == ["scarcity-k0002-r0", "scarcity-k0002-r1", "scarcity-k0004-r0",
                                     "scarcity-k0004-r1", "scarcity-k0008-r0", "scarcity-k0008-r1", "scarcity-all"]
    assert pts[-1].knob == 20 and pts[-1].full
    pts = regime_points(NOISE, np.array([20]), repeats=3)
    assert [p.name for p in pts] == ["noise-p00-r0"] + [f"noise-p{q}-r{r}" for q in (10, 20) for r in range(3)]
    with pytest.raises(DatasetError, match="only 2"):
        regime_points(SCARCITY, np.array([2, 10]))
    with pytest.raises(ValueError, match="regime must be"):
        regime_points("imbalance", np.array([10]))


def test_table_at_writes_blanks_and_keeps_other_columns():
    labels, known, splits = _data()
    t = pd.DataFrame({"text": [f"t{i}" for i in range(len(splits))], "split": splits,
                      "a": np.where(known[:, 0], labels[:, 0].astype(str), ""),
                      "b": np.where(known[:, 1], labels[:, 1].astype(str), ""), "hard_negative::a": "0"})
    lab, kn = label_arrays(t, ["a", "b"])
    np.testing.assert_array_equal(lab, labels * known)
    np.testing.assert_array_equal(kn, known)
    out = table_at(t, ["a", "b"], RegimePoint(SCARCITY, 4, 0), seed=0)
    assert (out.a == "1").sum() == 4 + 5 and (out.a == "").sum() == 20 - 4  # 4 kept + 5 test positives
    assert (out.b == "").sum() == 29 - 4 + 1  # and the test label that was unknown already
    assert out["text"].equals(t["text"]) and (out["hard_negative::a"] == "0").all()
    with pytest.raises(ValueError, match="not 0, 1 or blank"):
        label_arrays(t.assign(a="2"), ["a"])


def test_summary_mean_and_std_by_hand():
    rows = []
    # knob 2: repeat 0 concepts (0.2, 0.4) -> macro 0.3; repeat 1 (0.6, 0.6) -> 0.6; repeat 2 (0.9, NaN) -> 0.9
    for r, vals in enumerate([(0.2, 0.4), (0.6, 0.6), (0.9, np.nan)]):
        for c, v in zip("ab", vals):
            rows.append({"regime": SCARCITY, "knob": 2, "repeat": r, "concept_type": "mean", "method": "max_token",
                         "concept": c, "f1": v, "auroc": 1.0 - r * 0.1, "ap": 0.5, "tpr_at_fpr_1": 0.0})
    rows.append({"regime": SCARCITY, "knob": 8, "repeat": 0, "concept_type": "mean", "method": "max_token",
                 "concept": "a", "f1": 0.7, "auroc": 0.9, "ap": 0.5, "tpr_at_fpr_1": 0.0})
    s = summarize(pd.DataFrame(rows)).set_index("knob")
    assert s.loc[2, "n_repeats"] == 3 and s.loc[8, "n_repeats"] == 1
    assert s.loc[2, "f1_mean"] == pytest.approx(0.6)  # (0.3 + 0.6 + 0.9) / 3
    # sample std of 0.3, 0.6, 0.9: sqrt(((-.3)^2 + 0 + .3^2) / 2) = 0.3
    assert s.loc[2, "f1_std"] == pytest.approx(0.3)
    assert s.loc[2, "auroc_mean"] == pytest.approx(0.9) and s.loc[2, "auroc_std"] == pytest.approx(0.1)
    assert np.isnan(s.loc[8, "f1_std"]) and s.loc[8, "f1_mean"] == pytest.approx(0.7)
    text = format_summary(summarize(pd.DataFrame(rows)), "f1")
    assert "0.600 ± 0.300" in text and "k=8" in text


@pytest.mark.parametrize("regime", [SCARCITY, NOISE])
def test_regime_run_on_the_fixture(tmp_path, tiny_bert, regime, capsys):
    make_setting(tmp_path / "ax" / "prod_tiny", n_pos=12, n_neg=12)
    opts = BenchmarkOptions(path=str(tmp_path / "ax"), model=str(tiny_bert), layers=[2], types=["mean"],
                            output_dir=str(tmp_path / "out"), batch_size=8)
    metrics, summary = run_regime(opts, axbench_settings(opts), regime, repeats=2, progress=False)
    out = capsys.readouterr().out
    layout = BenchmarkLayout(tmp_path / "out")
    csv = pd.read_csv(layout.regime_metrics)
    assert list(csv.columns) == list(REGIME_COLUMNS)
    assert layout.regime_summary.exists() and layout.regime_figure.stat().st_size > 10_000
    n_methods = csv.method.nunique()
    assert {"superactivator", "max_token", "rolling_max"} <= set(csv.method)
    # 12 train+cal positives per concept: knobs 2, 4, 8 (2 repeats) + the full point; noise: 0 + 2 x (10, 20 %)
    n_points = 3 * 2 + 1 if regime == SCARCITY else 1 + 2 * 2
    assert len(csv) == n_points * n_methods * 2  # x methods x 2 concepts (one type, one setting)
    assert set(csv.setting) == {"prod_tiny"} and set(csv.concept_type) == {"mean"}
    if regime == SCARCITY:
        part = csv[csv.knob < 12]
        assert ((part.n_train_pos + part.n_cal_pos) == part.knob).all()
        assert set(part[part.knob == 2].n_cal_pos) == {1}
        assert (csv[csv.knob == 12].n_train_pos + csv[csv.knob == 12].n_cal_pos == 12).all()
    # the test set is never touched: every point judges each concept on its 4 positives and 4 negatives
    assert (csv.n_pos == 4).all() and (csv.n_neg == 4).all()
    assert len(summary) == summary.knob.nunique() * n_methods
    # the forward pass ran once: every regime run reads the one shared states entry
    assert "all " + str(n_points) + " regime runs read one shared cache entry (embedded once)" in out
    assert out.count("reusing cached hidden states") == n_points - 1


def test_cli_regime(tmp_path, tiny_bert, capsys):
    from superactivators.cli import main

    make_setting(tmp_path / "ax" / "prod_tiny", n_pos=6, n_neg=12)
    rc = main(["benchmark", "axbench", str(tmp_path / "ax"), "--model", str(tiny_bert), "--layers", "2",
               "--types", "mean", "--output-dir", str(tmp_path / "out"), "--quiet", "--regime", "scarcity",
               "--repeats", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "scarcity / mean: f1" in out and "scarcity / mean: auroc" in out and "k=4" in out
    assert BenchmarkLayout(tmp_path / "out").regime_figure.exists()


def test_saeprobes_noise_regime(tmp_path, tiny_bert):
    from superactivators.benchmark import saeprobes_settings

    from .test_saeprobes import make_data

    d = make_data(tmp_path / "data")
    (s,) = saeprobes_settings(["148"], d)
    fit = (s.table.split != "test").to_numpy()
    n = int(fit.sum())  # 200 train+cal rows (the package's rule: min(300 - 100, 1024))
    for p in (0.1, 0.2):
        t = table_at(s.table, s.concepts, RegimePoint(NOISE, p, 0), seed=0)
        changed = (t[s.concepts[0]] != s.table[s.concepts[0]]).to_numpy()
        assert changed[fit].sum() == flip_count(p, n) == round(p * 200) and not changed[~fit].any()
    opts = BenchmarkOptions(path="", model=str(tiny_bert), layers=[2], types=["mean"],
                            output_dir=str(tmp_path / "out"), batch_size=16)
    metrics, _ = run_regime(opts, [s], NOISE, repeats=1, progress=False)
    assert sorted(metrics.knob.unique()) == [0.0, 0.1, 0.2] and set(metrics.setting) == {"148_twt_emotion_worry"}
    assert (metrics.n_pos + metrics.n_neg == 100).all()  # the 100 test rows, every point


def test_regime_figure_tick_labels():
    from superactivators.report.regime import _tick_labels

    # on the log axis 64 sits too close to the full point 72: its label is left out, 72 kept
    assert _tick_labels(np.array([2, 4, 8, 16, 32, 64, 72.0]), 1.3) == ["2", "4", "8", "16", "32", "", "72"]
    assert _tick_labels(np.array([0, 10, 20.0]), 0.0) == ["0", "10", "20"]
