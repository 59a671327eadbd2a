"""``repr`` of the detector, a detection, the estimator and a run's result: short tables in the
terminal, HTML in Jupyter; image evidence with patch row / column and pixel box."""

from __future__ import annotations

import numpy as np

from superactivators.data.masks import Placement
from superactivators.data.patchbox import patch_box
from superactivators.evaluate.methods import short_label
from superactivators.util.console import frame_text, text_table


def test_patch_box_by_hand():
    # 200 x 100 image resized to 32 x 32, patch 8: patch (1, 2) covers y 8..16 -> 25..50, x 16..24 -> 100..150
    assert patch_box(Placement(100, 200, 32, 32, 0, 0, 32, 32), 8, 1, 2) == (100, 25, 150, 50)
    # 100 x 100 resized to 40 x 40, centre crop 32 (offset -4): patch (0, 0) = resized 4..12 -> 10..30
    assert patch_box(Placement(100, 100, 40, 40, -4, -4, 32, 32), 8, 0, 0) == (10, 10, 30, 30)
    # letterboxed 50 x 100 at 16 x 32 from row 8 of a 32 x 32 canvas: row 0 is all padding
    pl = Placement(50, 100, 16, 32, 8, 0, 32, 32)
    assert patch_box(pl, 8, 0, 0) is None
    assert patch_box(pl, 8, 1, 3) == (75, 0, 100, 25)  # resized y 0..8 -> 0..25, x 24..32 -> 75..100


def test_text_table_fits_the_width_and_cuts_text_only():
    rows = [["a" * 80, "0.5"], ["b", "12345.6789"]]
    t = text_table(["concept", "τ"], rows, width=40, numeric=[False, True])
    assert max(map(len, t.splitlines())) <= 40 and "…" in t and "12345.6789" in t


def test_frame_text_wraps_to_100_columns():
    import pandas as pd

    df = pd.DataFrame(np.random.default_rng(0).random((3, 14)),
                      columns=[f"max_token@best_threshold_{i}" for i in range(14)])
    out = frame_text(df, short=short_label)
    assert max(map(len, out.splitlines())) <= 100 and "max_tok@best_threshold_0" in out


def test_estimator_repr_is_a_short_table():
    from superactivators.evaluate.estimator import SuperActivatorDetector

    acts = np.array([0.1, 0.9, 0.2, 0.4, 0.3, 0.8, 0.1], np.float32)[:, None]
    ids = [0, 0, 1, 1, 2, 2, 3]
    det = SuperActivatorDetector(grid=[20, 60], concept_names=["joy"])
    assert repr(det) == "SuperActivatorDetector(concept_names=['joy'], grid=[20, 60])"  # scikit-learn's
    det.fit(acts, ids, [[1], [0], [1], [0]], np.array([0, 1, 0, 0, 1, 1, 0], bool)[:, None])
    lines = repr(det).splitlines()
    assert lines[1].split() == ["concept", "layer", "N", "%", "τ"]
    assert lines[2].split() == ["joy", "–", "60", "0.8"]  # in-concept [0.3, 0.8, 0.9], N = 60 % -> 0.8
    assert "<table>" in det._repr_html_() and "joy" in det._repr_html_()


def test_detector_and_detection_reprs(tiny_report_run):
    from superactivators.detector import ConceptDetector

    det = ConceptDetector.from_run(tiny_report_run.run_dir, "linsep")
    text = repr(det)
    assert len(text.splitlines()) == 2 + len(det.concepts) and "array(" not in text
    assert text.startswith(f"ConceptDetector: {len(det.concepts)} linsep concepts on")
    for layer, cs in det.concept_sets.items():
        for name in cs.names:
            assert any(ln.split()[:2] == [name, str(layer)] and f"{det.thresholds[name]:.4g}" in ln
                       for ln in text.splitlines())
    det.thresholds = {n: -1e9 for n in det.thresholds}  # every concept present: evidence for each
    det.localization_thresholds = dict(det.thresholds)  # and every token is evidence
    found = det.detect(["I was so happy and grateful today", "x"])
    r = repr(found[0]).splitlines()
    assert r[0] == f"Detection: {len(det.concepts)} of {len(det.concepts)} concepts present"
    ev = found[0].evidence[det.concepts[0]][0]
    assert f"{ev.text!r} ({ev.activation:.2f})" in "\n".join(r) and max(map(len, r)) <= 100
    det.thresholds = {n: 1e9 for n in det.thresholds}
    assert "(no concept found)" in repr(det.detect(["x"])[0])


def test_image_evidence_has_patch_row_column_and_pixel_box(image_run):
    from superactivators.data.datasets import load_dataset
    from superactivators.detector import ConceptDetector

    det = ConceptDetector.from_run(image_run.run_dir, "mean", layer=2)
    det.thresholds = {n: -1e9 for n in det.thresholds}
    det.localization_thresholds = dict(det.thresholds)  # every patch is evidence
    ds = load_dataset(image_run.run_dir.parent.parent / "shapes")
    found = det.detect([ds.image_path(int(ds.split_indices("test")[0]))])[0]
    # 64 x 64 shapes images resized to the tiny ViT's 32 x 32 input, 4 x 4 patches of 8 -> 16 pixels each
    for evs in found.evidence.values():
        assert evs
        for ev in evs:
            r, c = divmod(ev.index, 4)
            assert (ev.row, ev.col, ev.box) == (r, c, (16 * c, 16 * r, 16 * c + 16, 16 * r + 16))
    ev = found.evidence[det.concepts[0]][0]
    assert f"patch r{ev.row} c{ev.col} px {ev.box[0]},{ev.box[1]}-{ev.box[2]},{ev.box[3]}" in repr(found)


def test_run_result_repr_is_short(image_run):
    text = repr(image_run)
    lines = text.splitlines()
    assert lines[0].startswith(f"RunResult: {image_run.run_dir}") and len(lines) < 12
    assert "mean" in text and max(map(len, lines)) <= 100
    assert repr(image_run.best).startswith("BestLayers (")
