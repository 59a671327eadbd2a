"""``superactivators detect`` through the CLI entry point: options anywhere, --file, --json,
an explicit "no concept found", and one-line errors for no input or a wrong run folder."""

from __future__ import annotations

import json

import pytest

from superactivators.cli import main


@pytest.fixture(scope="module")
def run_dir(tiny_report_run):
    return str(tiny_report_run.run_dir)



def _every_concept_present(monkeypatch) -> None:
    """Detectors built from a run call every concept present and every token / patch evidence."""
    from superactivators.detector import ConceptDetector

    real = ConceptDetector.from_run

    def always(*a, **k):
        det = real(*a, **k)
        det.thresholds = {n: -1e9 for n in det.thresholds}
        det.localization_thresholds = dict(det.thresholds)
        return det

    monkeypatch.setattr(ConceptDetector, "from_run", staticmethod(always))

def test_options_anywhere_file_and_json(run_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("I am so grateful for your help\n\n  \nWhat a terrible, frightening night\n")
    # options between and after the positionals, texts from the command line and the file
    assert main(["detect", run_dir, "--layer", "2", "a first text", "--file", str(texts), "--json",
                 "--concept-type", "mean"]) == 0
    out = capsys.readouterr().out
    recs = json.loads(out)  # stdout is the JSON document alone
    assert [r["input"] for r in recs] == ["a first text", "I am so grateful for your help",
                                          "What a terrible, frightening night"]
    for r in recs:
        assert set(r["concepts"]) == {"emotion::joy", "emotion::fear"}
        for name, c in r["concepts"].items():
            assert c["present"] == (c["max_activation"] >= c["threshold"]) == (name in r["found"])
            assert all(e["activation"] >= c["evidence_threshold"] and "text" in e for e in c["evidence"])


def test_no_concept_found_is_said(run_dir, capsys, monkeypatch):
    from superactivators.detector import ConceptDetector

    real = ConceptDetector.from_run

    def never(*a, **k):  # thresholds out of reach: nothing is present
        det = real(*a, **k)
        det.thresholds = {n: 1e9 for n in det.thresholds}
        return det

    monkeypatch.setattr(ConceptDetector, "from_run", staticmethod(never))
    assert main(["detect", run_dir, "nothing here"]) == 0
    out = capsys.readouterr().out
    assert "'nothing here'" in out and "  no concept found (closest: emotion::" in out


def test_present_concepts_are_listed_with_tokens(run_dir, capsys, monkeypatch):
    _every_concept_present(monkeypatch)
    assert main(["detect", "--layer", "1", run_dir, "joy and fear"]) == 0
    out = capsys.readouterr().out
    assert "emotion::joy: present" in out and "emotion::fear: present" in out and "tokens: '" in out


def test_errors_are_one_line(run_dir, tmp_path, capsys):
    assert main(["detect", run_dir]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing to detect")
    assert main(["detect", str(tmp_path / "nope"), "a text"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: not a finished run folder: {(tmp_path / 'nope').resolve()} "
                   "(no config.yaml and detection_metrics.csv)"]
    assert main(["detect", run_dir, "--file", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --file: not found: {(tmp_path / 'missing.txt').resolve()}"
    assert main(["detect", run_dir, "--images", "x.png"]) == 2
    assert "is a text run" in capsys.readouterr().err


def test_images_from_a_file_with_json_patch_boxes(image_run, tmp_path, capsys, monkeypatch):
    from superactivators.data.datasets import load_dataset
    _every_concept_present(monkeypatch)
    ds = load_dataset(image_run.run_dir.parent.parent / "shapes")
    paths = [str(ds.image_path(int(i))) for i in ds.split_indices("test")[:2]]
    lst = tmp_path / "images.txt"
    lst.write_text("\n".join(paths) + "\n")
    assert main(["detect", str(image_run.run_dir), "--file", str(lst), "--images", "--concept-type", "mean",
                 "--layer", "2", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in recs] == paths
    ev = recs[0]["concepts"]["color::red"]["evidence"][0]
    r, c = divmod(ev["index"], 4)  # 4 x 4 patches over a 64 x 64 image: 16 pixels each
    assert (ev["row"], ev["col"], ev["box"]) == (r, c, [16 * c, 16 * r, 16 * c + 16, 16 * r + 16])
    assert main(["detect", str(image_run.run_dir), "--images", str(tmp_path / "missing.png"),
                 "--concept-type", "mean"]) == 2
    assert capsys.readouterr().err.strip() == f"error: image not found: {tmp_path / 'missing.png'}"
