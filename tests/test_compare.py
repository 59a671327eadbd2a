"""``superactivators compare`` on two tiny runs: the table, its marks and its three file formats."""

from __future__ import annotations

import pandas as pd
import pytest

from superactivators.cli import main
from superactivators.store.layout import RunLayout
from superactivators.evaluate.methods import WEIGHTED
from superactivators.report.compare import BEST, TIED, compare_runs
from superactivators.evaluate.methods import short_label


def test_compare_two_runs_table_and_marks(tiny_run_pair):
    cmp = compare_runs(tiny_run_pair, n_resamples=200, seed=0)
    long = cmp.long
    # rows: dataset · model · concept type, for each run; plain methods only by default
    assert long["row"].nunique() == 4 and not long["method"].str.contains("@").any()
    assert (long.groupby("row")["best"].sum() == 1).all()
    for _, g in long.groupby("row"):
        assert g.loc[g["best"], "f1"].iloc[0] == g["f1"].max()
        assert g.loc[g["best"], "p_vs_best"].isna().all()
        other = g[~g["best"]]
        assert ((other["p_vs_best"] >= 0.05) == other["tied"]).all()
    # cells are the runs' weighted F1 at the per-concept best layers
    bl = pd.read_csv(RunLayout(tiny_run_pair[0]).best_layers)
    w = bl[(bl["concept"] == WEIGHTED) & (bl["method"] == "superactivator")].set_index("concept_type")["f1"]
    mine = long[(long["run"] == str(tiny_run_pair[0])) & (long["method"] == "superactivator")]
    for ct, f1 in zip(mine["concept_type"], mine["f1"]):
        assert f1 == pytest.approx(w[ct])
    text = cmp.text()
    assert BEST in text and "SA" in text and f"{mine['f1'].iloc[0]:.3f}" in text
    rows = [ln for ln in cmp.markdown().splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 4 and all(ln.count("**") == 2 for ln in rows)  # one bold best per row
    tex = cmp.latex()
    assert tex.count("\\textbf{") == 4 and "\\begin{tabular}" in tex and "max\\_token" in tex
    if long["tied"].any():
        assert TIED in text and "$^\\dagger$" in tex
    # SuperActivator against every other method, worded both ways from the two-sided test
    others = long[long["method"] != "superactivator"]
    assert others["sa_verdict"].notna().all() and long.loc[long["method"] == "superactivator", "sa_verdict"].isna().all()
    for _, r in others.iterrows():
        assert r["sa_verdict"] == ("no significant difference" if r["sa_p_two"] >= 0.05 or r["sa_diff"] == 0 else
                                   "significantly better" if r["sa_diff"] > 0 else "significantly worse")
        assert f"{short_label(r['method']):<13} {r['sa_diff']:+.3f}  {r['sa_verdict']} (p = {r['sa_p_two']:.3f})" in text


def test_compare_cli_writes_csv_markdown_latex(tiny_run_pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, tiny_run_pair), "--out", str(out), "--resamples", "100"]) == 0
    printed = capsys.readouterr().out
    assert "weighted by test positives" in printed and "SuperActivator vs" in printed
    assert all(len(line) <= 100 for line in printed.splitlines() if str(tmp_path) not in line)
    for name in ("compare.csv", "compare.md", "compare.tex"):
        assert (out / name).stat().st_size > 0
    assert set(pd.read_csv(out / "compare.csv")["concept_type"]) == {"mean", "linsep"}


def test_compare_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_compare_metrics_auroc_ap_tpr_and_sa_marks(tiny_run_pair, capsys):
    from superactivators.report.compare import BEATS_SA, SA_BEATS, parse_metric

    bl = pd.read_csv(RunLayout(tiny_run_pair[0]).best_layers)
    w = bl[bl["concept"] == WEIGHTED].set_index(["concept_type", "method"])
    auc = compare_runs(tiny_run_pair[:1], n_resamples=100, seed=0, metric="auroc").long
    assert not auc["method"].str.contains("@").any()
    for ct, m, v in auc[["concept_type", "method", "value"]].itertuples(index=False):
        assert v == pytest.approx(w.loc[(ct, m), "auroc"])
    sa = auc[auc["method"] == "superactivator"].set_index("concept_type")["value"]
    mt = auc[auc["method"] == "max_token"].set_index("concept_type")["value"]
    assert (sa == mt.loc[sa.index]).all()  # the same ranking
    best = auc.set_index(["concept_type", "method"])["best"]
    for ct in sa.index:  # an exact tie shares the best mark: neither is "below the best"
        top = auc[auc["concept_type"] == ct]["value"].max()
        assert best[(ct, "superactivator")] == best[(ct, "max_token")] == (sa[ct] == top)
    tpr = compare_runs(tiny_run_pair[:1], n_resamples=100, seed=0, metric="tpr@fpr=5%").long
    assert set(tpr["method"]) and all(m.endswith("@fpr=5%") for m in tpr["method"])
    for ct, m, v in tpr[["concept_type", "method", "value"]].itertuples(index=False):
        assert v == pytest.approx(w.loc[(ct, m), "recall"])
    # the SuperActivator marks follow the table's one-sided p-values, one per direction
    f1 = compare_runs(tiny_run_pair[:1], n_resamples=100, seed=0).long
    other = f1[f1["method"] != "superactivator"]
    assert (other["sa_worse"] == (other["sa_p_reverse"] < 0.05)).all()
    assert (other["sa_better"] == (other["sa_p"] < 0.05)).all()
    cmp = compare_runs(tiny_run_pair[:1], n_resamples=100, seed=0)
    assert SA_BEATS in cmp.text() and BEATS_SA in cmp.text()  # the legend names both marks
    with pytest.raises(ValueError, match="--metric"):
        parse_metric("precision")
    assert main(["compare", str(tiny_run_pair[0]), "--metric", "ap", "--resamples", "50"]) == 0
    assert "average precision" in capsys.readouterr().out
