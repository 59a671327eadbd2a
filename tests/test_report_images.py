"""The report of an image run: synthetic shapes through a tiny random ViT, image panels per concept."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline
    from superactivators.shapes import generate_shapes

    root = tmp_path_factory.mktemp("img_report")
    generate_shapes(root / "shapes", n=48, seed=0, size=64)
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8), add_pooling_layer=False).eval().save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    cfg = config_from_dict({
        "name": "img", "output_dir": str(root / "runs"), "score_device": "cpu",
        "data": {"path": str(root / "shapes"), "concepts": ["color::red", "shape::sphere"]},
        "embed": {"model": str(root / "vit"), "layers": "all", "batch_size": 16},
        "concepts": {"types": ["mean"]}, "detect": {"grid": [5, 10, 50]},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny 4 x 4 grid: some objects cover no patch by half
        return run_pipeline(cfg, progress=False)


def test_image_report_has_heatmap_panels(image_run):
    from superactivators.report import build_report

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
