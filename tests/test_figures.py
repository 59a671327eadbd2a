"""Figures: every function writes non-empty PNG and SVG files; the HTML token view by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from superactivators.report import figures as F


def _check_written(paths: dict, min_px: int = 300) -> None:
    assert set(paths) == {"png", "svg"}
    with Image.open(paths["png"]) as im:
        assert im.width >= min_px and im.height >= 200
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    svg = paths["svg"].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and len(svg) > 2000


def test_concept_figure_and_f1_vs_n(tmp_path):
    rng = np.random.default_rng(0)
    edges = np.linspace(-1, 1, 201)
    out_c, _ = np.histogram(rng.normal(-0.2, 0.2, 5000), edges)
    in_c, _ = np.histogram(rng.normal(0.2, 0.2, 300), edges)
    grid = np.array([2, 5, 10, 20, 50, 95.0])
    fig = F.concept_figure(edges, out_c, in_c, 0.45, 10.0, grid, np.array([.4, .6, .7, .6, .4, .3]),
                           np.array([.5, .6, .65, .6, .4, .3]), "joy · mean · layer 3")
    _check_written(F.save_figure(fig, tmp_path / "concept"))
    fig = F.f1_vs_n_figure(grid, rng.random((3, 6)), ["a", "b", "c"], "F1 vs N")
    _check_written(F.save_figure(fig, tmp_path / "f1n"))
    fig = F.f1_vs_n_figure(grid, rng.random((20, 6)), [f"c{i}" for i in range(20)], "many concepts, unlabelled")
    _check_written(F.save_figure(fig, tmp_path / "f1n_many"))


def test_method_and_sweep_figures(tmp_path):
    rows = [{"concept_type": ct, "method": m, "concept": c, "layer": layer, "f1": f}
            for ct in ("mean", "linsep") for m, f in (("superactivator", .7), ("max_token", .6), ("global", .5))
            for c in "abc" for layer in (1, 2, 3)]
    df = pd.DataFrame(rows)
    _check_written(F.save_figure(F.method_comparison_figure(df[df.concept_type == "mean"], "methods"), tmp_path / "m"))
    summ = pd.DataFrame({"f1": [.71, .6, .52], "f1_err": [.04, .05, .05], "sa_p": [np.nan, .3, .001],
                         "sa_diff": [np.nan, .11, .19]}, index=["superactivator", "max_token", "global"])
    _check_written(F.save_figure(F.method_comparison_figure(df[df.concept_type == "mean"], "weighted", summary=summ),
                                 tmp_path / "mw"))
    best = df[df.layer == 1].assign(best_layer=[1, 2, 3] * (len(df[df.layer == 1]) // 3))
    _check_written(F.save_figure(F.best_layer_histogram_figure(best, ["mean", "linsep"], [1, 2, 3]), tmp_path / "bl"))
    swept = df.groupby(["concept_type", "method"], as_index=False)["f1"].mean()
    _check_written(F.save_figure(F.layer_sweep_figure(df, ["mean", "linsep"], swept), tmp_path / "s"))


def test_image_figure_with_synthetic_patch_grid(tmp_path):
    rng = np.random.default_rng(1)
    img = (rng.random((112, 84, 3)) * 255).astype(np.uint8)  # non-square image over a 4 x 3 grid
    acts = np.arange(12, dtype=float).reshape(4, 3) / 11
    valid = np.ones((4, 3), bool)
    valid[3, 2] = False
    gt = acts > 0.6
    fig = F.image_activation_figure(img, acts, 0.8, valid, gt, "red · mean · layer 2")
    # patches >= 0.8 among valid ones: values 9/11, 10/11 (11/11 is padding) -> 2 outlined
    assert "2 patches" in fig.axes[1].get_title(loc="left")
    _check_written(F.save_figure(fig, tmp_path / "img"))
    panels = [F.ImagePanel(img, acts, valid, gt, "pos"), F.ImagePanel(img, -acts, None, None, "neg")]
    _check_written(F.save_figure(F.image_samples_figure(panels, 0.8, "two samples"), tmp_path / "img2"))
    with pytest.raises(ValueError, match="rows, cols"):
        F.ImagePanel(img, acts.ravel())
    with pytest.raises(ValueError, match="valid has shape"):
        F.ImagePanel(img, acts, np.ones((3, 4), bool))


def test_display_bins_trims_and_merges():
    edges = np.arange(11.0)  # 10 unit bins
    counts = np.array([[0, 0, 1, 2, 3, 4, 5, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1, 1, 0, 0]])
    e, c = F.display_bins(edges, counts, max_bins=3)
    # occupied bins 2..7 (6 bins) -> merged by 2 -> 3 bins
    assert e.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert c.tolist() == [[3, 7, 5], [1, 0, 2]]


def test_text_tokens_html_by_hand():
    text = "I <b>love</b> it, really"
    #        0123456789...
    spans = np.array([[0, 1], [2, 5], [5, 9], [9, 13], [14, 16], [16, 17], [18, 24]])
    acts = np.array([0.0, 0.1, 0.9, 0.2, 0.5, 0.0, 0.7])
    gt = np.array([0, 0, 1, 0, 0, 0, 1], bool)
    out = F.text_tokens_html(text, spans, acts, threshold=0.7, in_concept=gt, vmin=0.0)
    assert out.count('class="tok sa') == 2  # 0.9 and 0.7 reach the threshold
    assert 'class="tok sa gt" style="background:rgba(0,114,178,0.80);color:#fff;" title="0.900">love<' in out
    assert 'title="0.200">&lt;/b&gt;<' in out  # markup in the text is escaped
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert 'rgba(0,114,178,0.57)' in out  # alpha = (0.5 - vmin) / (tau - vmin) * 0.8
    assert 'rgba(0,114,178,0.11)' in out  # 0.1 / 0.7 * 0.8
    assert 'title="0.000">,</span> <span' in out  # the space between tokens is kept
    assert out.startswith('<p class="tok-text"><span') and out.endswith("really</span></p>")
    with pytest.raises(ValueError, match="spans"):
        F.text_tokens_html(text, spans[:3], acts, 0.5)


def test_hist_quantile_by_hand():
    edges, counts = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1, 2, 1])
    assert F.hist_quantile(edges, counts, 0.5) == pytest.approx(1.5)  # 2 of 4 tokens: half-way through bin 1
    assert F.hist_quantile(edges, counts, 1.0) == pytest.approx(3.0)
    assert F.hist_quantile(edges, counts, 0.125) == pytest.approx(0.5)
    assert np.isnan(F.hist_quantile(edges, np.zeros(3), 0.5))


def test_image_samples_title_clears_the_row_titles():
    """The bold figure title sits above the first row's two-line titles for 1 and 3 rows (a
    figure-fraction position drifted into them as rows were added)."""
    from superactivators.report.figures import ImagePanel, image_samples_figure

    rng = np.random.default_rng(0)
    for n in (1, 3):
        panels = [ImagePanel(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.normal(size=(4, 4)),
                             np.ones((4, 4), bool), None, f"sample {i} · strongest positive · positive")
                  for i in range(n)]
        fig = image_samples_figure(panels, 0.5, "color::red  ·  mean concept  ·  layer 2")
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        r = FigureCanvasAgg(fig).get_renderer()
        sup = fig._suptitle.get_window_extent(r)
        for ax in fig.axes[:2]:
            t = ax._left_title.get_window_extent(r)  # set_title(loc="left")
            assert sup.y0 > t.y1, (n, sup, t)  # title strictly above the row titles (pixel y grows upwards)
        assert sup.y1 <= fig.bbox.y1  # and inside the figure
