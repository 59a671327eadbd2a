"""Jupyter: detections and detectors render as HTML, and the quickstart notebook runs (nbclient)."""

import base64
import io
import os
import re
from pathlib import Path

import numpy as np

from superactivators.detector import ConceptDetector

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"


def test_text_detection_html_frames_the_superactivators(tiny_report_run):
    det = ConceptDetector.from_run(tiny_report_run.run_dir, concept_type="mean")
    page = det._repr_html_()
    for name in det.concepts:
        assert name in page and f"{det.thresholds[name]:.4f}" in page
    found = det.detect(["I am so happy and grateful today, what a joy!", "The shadows outside scare me."])
    for d in found:
        html = d._repr_html_()
        shown = d.shown_concepts()
        assert shown and all(name in html for name in d.present)
        want = sum(int(np.sum(d.activations[c] >= d.thresholds[c])) for c in shown)
        assert html.count('class="tok sa') == want  # one framed token per SuperActivator
        assert html.count('<span class="tok') == len(shown) * len(d.token_spans)
        assert d.text in re.sub(r"<[^>]+>", "", html).replace("&#x27;", "'")  # the text survives, in order


def test_image_detection_html_shows_the_patches(image_run):
    from PIL import Image

    from superactivators.data.datasets import load_dataset

    det = ConceptDetector.from_run(image_run.run_dir, concept_type="mean")
    ds = load_dataset(image_run.store.info.dataset["source"])
    d = det.detect([ds.image_path(0)])[0]
    assert d.patch_grid is not None and d.image is not None
    assert len(d.activations[det.concepts[0]]) == d.patch_grid[0] * d.patch_grid[1]
    html = d._repr_html_()
    png = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(png) == len(d.shown_concepts())
    assert Image.open(io.BytesIO(base64.b64decode(png[0]))).size[0] > 100


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    import superactivators

    # the kernel (started in tmp_path) imports the very package under test
    src = str(Path(superactivators.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs if o.output_type in ("execute_result", "display_data")]
    assert sum("image/png" in d for d in data) == 1  # the method-comparison figure, inline, once
    htmls = [d["text/html"] for d in data if "text/html" in d]
    assert any("ConceptDetector" in h for h in htmls)
    assert sum('class="tok' in h for h in htmls) == 2  # the two detections, as highlighted text
    assert (tmp_path / "runs" / "quickstart" / "detection_metrics.csv").exists()
