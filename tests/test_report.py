"""The HTML report of a tiny run: files, figure references, tables, back-fill of old runs, CLI."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from superactivators.cli import main
from superactivators.report.html import build_report, choose_examples, html_table
from superactivators.store.runs import find_stages

from .report_run import CONCEPTS


def _data(page) -> dict:
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page.read_text(), re.S)
    return json.loads(m.group(1))


def test_report_files_and_views(tiny_report_run):
    page = tiny_report_run.page
    assert page == tiny_report_run.run_dir / "report" / "index.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # nothing from the network
    d = _data(page)
    figs = d["figs"]
    # every (concept type, layer, concept) has its key picture, every layer its method comparison
    assert len(figs["concept"]) == 2 * 2 * len(CONCEPTS)
    assert set(figs["methods_layer"]) == {f"{ct}|{layer}" for ct in ("mean", "linsep") for layer in (1, 2)}
    assert set(figs["methods_best"]) == {"mean", "linsep"} and set(figs["f1n_all"]) == {"mean", "linsep"}
    for view in figs.values():
        for rel in view.values():
            png = page.parent / rel
            assert png.stat().st_size > 5000 and png.with_suffix(".svg").stat().st_size > 5000
    # text examples: one fragment per (type, layer, concept), with SuperActivator-marked tokens somewhere
    ex = d["frag"]["examples"]
    assert len(ex) == 2 * 2 * len(CONCEPTS)
    assert all("class='example'" in v for v in ex.values())
    assert any('class="tok sa' in v for v in ex.values())
    # default state points at existing views, initial <img src> are set server-side
    st = d["state"]
    assert st["ct"] in ("mean", "linsep") and st["layer"] in (1, 2) and st["concept"] in CONCEPTS
    key = f"{st['ct']}|{st['layer']}|{st['concept']}"
    assert f'src="{figs["concept"][key]}"' in html
    # tables: the best-layer table lists every (type, method, concept); the layer-choice table
    assert html.count("<table id=") == 5
    assert "id='t-best'" in html and "id='t-all'" in html and "id='t-choice'" in html
    # headline: weighted F1 with its error and the paired test of the gap to the best baseline
    best = pd.read_csv(tiny_report_run.run_dir / "best_layers.csv")
    w = best[(best["concept"] == "__weighted__") & (best["method"] == "superactivator")]
    for f1, err in zip(w["f1"], w["f1_err"]):
        assert f"{f1:.3f}<span class='pm'> ± {err:.3f}</span>" in html
    assert html.count("SuperActivator test F1 weighted by test positives") == 2
    assert html.count("class='sig ") == 2 and "Which layer each concept chose" in html
    assert set(figs["best_layers"]) == {"all"}
    # issue 21: a test ROC figure per (type, layer, concept) with the calibrated points; realised FPR beside F1
    assert set(figs["roc"]) == set(figs["concept"])
    assert "its τ is a point on max token's curve" in html
    assert all("<th scope='col'>fpr</th>" in v and "<th scope='col'>auroc</th>" in v for v in d["frag"]["stage_table"].values())


def test_report_backfills_a_run_without_figure_data(tiny_report_run, tmp_path):
    """A run made before hist.npz / curves.npz / stages.json existed still gets a full report."""
    old = tmp_path / "old"
    shutil.copytree(tiny_report_run.run_dir, old, ignore=shutil.ignore_patterns("report"))
    (old / "stages.json").unlink()
    for f in list(old.glob("stages/*/hist.npz")) + list(old.glob("stages/*/curves.npz")):
        f.unlink()
    stages = find_stages(old)
    assert sorted((s.layer, s.concept_type) for s in stages) == [(1, "linsep"), (1, "mean"), (2, "linsep"), (2, "mean")]
    page = build_report(old, formats=("png",), n_examples=0)
    assert len(list(old.glob("stages/*/hist.npz"))) == 4 and len(list(old.glob("stages/*/curves.npz"))) == 4
    # back-filled histograms equal the ones the pipeline wrote during its scoring pass
    for s in stages:
        a = np.load(s.path / "hist.npz")
        b = np.load(tiny_report_run.run_dir / "stages" / s.path.name / "hist.npz")
        assert a["counts"].sum() == b["counts"].sum()
        np.testing.assert_allclose(a["vmax"], b["vmax"], rtol=1e-5)
    assert set(_data(page)["figs"]["concept"]) == set(_data(tiny_report_run.page)["figs"]["concept"])


def test_choose_examples_by_hand():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2])
    labels = np.array([1, 1, 1, 0, 1, 0, 1])
    test = np.array([0, 1, 1, 1, 1, 1, 1], bool)  # sample 0 is not test
    # test positives 1, 2, 4, 6 by score: 2 (0.5), 4 (0.3), 6 (0.2), 1 (0.1) -> strongest 2, median 6
    # test negatives 3 (0.7), 5 (0.8) -> strongest 5
    assert choose_examples(scores, labels, test, 3) == [(2, "strongest positive"), (6, "median positive"),
                                                        (5, "strongest negative")]
    assert choose_examples(scores, labels, test, 1) == [(2, "strongest positive")]


def test_html_table_formats_and_escapes():
    df = pd.DataFrame({"method": ["superactivator", "<x>"], "f1": [0.12345, np.nan], "n": [3, 4]})
    out = html_table(df, table_id="t", filter_box=True)
    assert "<td class='sa'>superactivator</td>" in out and "&lt;x&gt;" in out
    assert "data-v='0.12345'>0.123<" in out and "data-v=''>–<" in out and ">3<" in out
    assert "class='filter'" in out and "class='sortable'" in out


def test_cli_report(tiny_report_run, capsys, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(tiny_report_run.run_dir), "--out", str(out), "--formats", "png",
                 "--examples", "0"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "index.html") in printed
    assert (out / "index.html").exists() and not list(out.glob("figures/*.svg"))
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [("svg",), ()])
def test_report_formats_must_start_with_png(tiny_report_run, bad):
    with pytest.raises(ValueError, match="png"):
        build_report(tiny_report_run.run_dir, formats=bad)


def test_headline_card_words_the_gap_both_ways(tiny_report_run):
    """The card says 'significantly better / worse' or 'no significant difference' from the
    two-sided test of best_layers.csv, never the one-sided 'not significant'."""
    import re

    import pandas as pd

    from superactivators.evaluate.methods import WEIGHTED, is_baseline

    page = tiny_report_run.page.read_text()
    bl = pd.read_csv(tiny_report_run.run_dir / "best_layers.csv")
    assert "not significant," not in page
    for ct in ("mean", "linsep"):
        w = bl[(bl["concept_type"] == ct) & (bl["concept"] == WEIGHTED)].set_index("method")
        base = w[[is_baseline(m) for m in w.index]]
        r = base.loc[base["f1"].idxmax()]
        card = re.search(rf"<div class='card'><div class='card-t'>{ct} concepts</div>(.*?)</div></div>", page, re.S)
        assert card, ct
        assert f"{r['sa_verdict']}, p = {r['sa_p_two']:.3f}" in card.group(1)
