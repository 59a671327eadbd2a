"""The report of an image run: synthetic shapes through a tiny random ViT, image panels per concept."""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image


def test_image_report_has_heatmap_panels(image_run):
    from superactivators.report.html import build_report

    page = build_report(image_run.run_dir, formats=("png",), n_examples=2, workers=1)
    html = page.read_text()
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S).group(1))
    panels = data["figs"]["image_examples"]
    assert set(panels) == {f"mean|{layer}|{c}" for layer in (1, 2) for c in ("color::red", "shape::sphere")}
    assert 'data-view="image_examples"' in html and not data["frag"]["examples"]  # no text fragments
    for rel in panels.values():
        with Image.open(page.parent / rel) as im:
            # two samples -> two rows of (heatmap, SuperActivators) panels
            assert im.height > im.width * 0.8 and np.asarray(im.convert("L")).std() > 10


def test_report_layers_restrict_per_layer_figures(image_run, tmp_path):
    from superactivators.report.html import build_report

    page = build_report(image_run.run_dir, tmp_path / "r", formats=("png",), n_examples=1, workers=1, layers=[2])
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>',
                                page.read_text(), re.S).group(1))
    assert {k.split("|")[1] for k in data["figs"]["concept"]} == {"2"}
