"""``benchmark axbench`` on the small fixture setting through a tiny BERT (issue 22, item 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from superactivators.benchmark import ALL, COLUMNS, BenchmarkOptions, headline, ranking_metrics, run_axbench, tpr_at_fpr
from superactivators.evaluate.methods import MACRO

from .test_axbench import make_setting


def test_tpr_at_fpr_by_hand():
    # 100 negatives 0..99 (scores), 4 positives; at most 1 negative above the threshold: 1 % FPR
    y = np.r_[np.zeros(100), np.ones(4)].astype(bool)
    s = np.r_[np.arange(100.0), [150.0, 120.0, 98.5, 10.0]]
    # thresholds: >= 120 -> TPR 2/4, FPR 0; >= 99 -> one negative (99): FPR 1 %, TPR 2/4; >= 98.5 -> FPR 1 %, TPR 3/4
    assert tpr_at_fpr(y, s) == pytest.approx(0.75)
    m = ranking_metrics(y, s)
    # AUROC by hand: 150, 120 beat all 100 negatives; 98.5 beats 99 (0..98); 10 beats 10 (0..9) and ties 1 (half)
    assert m["auroc"] == pytest.approx((100 + 100 + 99 + 10.5) / 400)
    assert np.isnan(ranking_metrics(np.ones(3, bool), np.arange(3.0))["auroc"])


@pytest.mark.parametrize("view", ["scoped", "multilabel"])
def test_benchmark_table_on_the_fixture(tmp_path, tiny_bert, view):
    make_setting(tmp_path / "ax" / "prod_tiny", n_pos=12, n_neg=12)
    opts = BenchmarkOptions(path=str(tmp_path / "ax"), view=view, model=str(tiny_bert), layers=[2],
                            types=["mean", "diffmean"], output_dir=str(tmp_path / "out"), batch_size=8)
    table = run_axbench(opts, progress=False, formatter=None)
    csv = pd.read_csv(tmp_path / "out" / "benchmark_metrics.csv")
    assert list(csv.columns) == list(COLUMNS)
    rows = csv[csv.concept != MACRO]
    assert set(rows.method) >= {"superactivator", "max_token", "mean_token", "rolling_max", "global"}
    assert set(rows.concept_type) == {"mean", "diffmean"} and set(rows.setting) == {"prod_tiny"}
    assert len(rows) == 2 * rows.method.nunique() * 2  # types x methods x concepts
    # scoped and multilabel: concept 0's AUROC set is its own 4 positives vs 4 negatives (scoped) or
    # vs every other non-hard-negative eval row (multilabel); hard negatives never enter it
    n_neg = 4 if view == "scoped" else 4 + 10
    assert (rows.n_pos == 4).all() and (rows.n_neg == n_neg).all() and (rows.n_hard_negative == 2).all()
    assert rows.auroc.between(0, 1).all() and rows.hard_negative_fpr.between(0, 1).all()
    # the tail methods share the max-token score: identical AUROC
    a = rows.set_index(["concept_type", "concept", "method"]).auroc
    for ct in ("mean", "diffmean"):
        for c in rows.concept.unique():
            assert a[(ct, c, "superactivator")] == a[(ct, c, "max_token")]
    agg = csv[(csv.setting == ALL) & (csv.concept == MACRO)]
    assert len(agg) == 2 * rows.method.nunique()
    assert "AUROC" in headline(table)


def test_cli_prints_the_headline(tmp_path, tiny_bert, capsys):
    from superactivators.cli import main

    make_setting(tmp_path / "ax" / "prod_tiny", n_pos=12, n_neg=12)
    rc = main(["benchmark", "axbench", str(tmp_path / "ax"), "--model", str(tiny_bert), "--layers", "1,2",
               "--types", "mean", "--output-dir", str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "AUROC" in out and "rolling_max" in out
    csv = pd.read_csv(tmp_path / "out" / "benchmark_metrics.csv")
    assert set(csv.layer.dropna()) <= {1, 2}
