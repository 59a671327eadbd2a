"""Every artefact a run or a saved detector writes is checksummed; damage is refused by the file's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from superactivators.config import config_from_dict
from superactivators.store.artefacts import (
    SUMS,
    ArtefactError,
    file_problem,
    load_json,
    load_npz,
    record,
    recording,
    require_intact,
    verify_artefacts,
)


def _cfg(out: Path, data: Path, model: Path):
    return config_from_dict({
        "name": "r", "output_dir": str(out), "score_device": "cpu", "data": {"path": str(data)},
        "embed": {"model": str(model), "layers": [1], "max_length": 64},
        "concepts": {"types": ["mean"]}, "detect": {"methods": ["superactivator", "max_token"], "grid": [10, 50]},
    })


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, small_emotions, tiny_bert) -> Path:
    from superactivators.pipeline import run_pipeline

    return run_pipeline(_cfg(tmp_path_factory.mktemp("art") / "runs", small_emotions, tiny_bert), progress=False).run_dir


@pytest.fixture
def run(tmp_path, clean_run) -> Path:
    """A private copy of the finished run, free to damage."""
    dst = tmp_path / "runs" / clean_run.name
    shutil.copytree(clean_run, dst)
    return dst


def _stage(run: Path) -> Path:
    (stage,) = [p for p in (run / "stages").iterdir() if p.name.startswith("L01_mean_")]
    return stage


def _flip(path: Path, n: int = 64, at_end: bool = True) -> None:
    """XOR ``n`` bytes with 0xFF: at the end of the file (a safetensors' data), else at its middle."""
    raw = bytearray(path.read_bytes())
    a = len(raw) - n if at_end else len(raw) // 2 - n // 2
    raw[a:a + n] = bytes(b ^ 0xFF for b in raw[a:a + n])
    path.write_bytes(bytes(raw))


def test_a_finished_run_records_every_artefact_and_verifies(clean_run, capsys):
    from superactivators.cli import main

    stage = _stage(clean_run)
    stage_sums = json.loads((stage / SUMS).read_text())
    for name in ("summary.npz", "hist.npz", "curves.npz"):
        assert name in stage_sums, name
    assert set(json.loads((stage / "concepts" / SUMS).read_text())) == {"concepts.safetensors", "cfg.json"}
    top = json.loads((clean_run / SUMS).read_text())
    for name in ("config.yaml", "stages.json", "detection_metrics.csv", "detection_macro_f1.csv", "best_layers.csv"):
        assert name in top, name
    # the record is the token store's own: size and CRC-32 of the bytes, checked here independently
    import zlib

    raw = (stage / "summary.npz").read_bytes()
    assert stage_sums["summary.npz"]["size"] == len(raw)
    assert stage_sums["summary.npz"]["blocks"] == [f"{zlib.crc32(raw):08x}"]
    assert main(["verify", str(clean_run)]) == 0
    out = capsys.readouterr().out
    assert "artefacts with checksums" in out and "stages.json" in out and "all files match" in out


def test_64_flipped_bytes_in_concepts_are_refused_by_name_everywhere(run, small_emotions, tiny_bert, capsys):
    from superactivators.cli import main
    from superactivators.detector import ConceptDetector
    from superactivators.pipeline import run_pipeline
    from superactivators.report.compare import compare_runs
    from superactivators.report.html import build_report

    bad = _stage(run) / "concepts" / "concepts.safetensors"
    _flip(bad)
    # the flipped file still parses: only the checksum can tell
    from safetensors.numpy import load_file

    assert set(load_file(str(bad))) == {"vectors", "bias", "center"}
    assert main(["verify", str(run)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "content differs from what was written" in err
    assert f"delete {_stage(run)}" in err
    assert main(["detect", str(run), "I am so happy", "--concept-type", "mean"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "delete" in err
    with pytest.raises(ArtefactError, match="concepts.safetensors"):
        ConceptDetector.from_run(run, "mean")
    with pytest.raises(ArtefactError, match="concepts.safetensors"):
        build_report(run, n_examples=0)
    with pytest.raises(ArtefactError, match="concepts.safetensors"):
        compare_runs([run], n_resamples=10)
    # a rerun reusing the cached stage refuses it too, before using it
    with pytest.raises(ArtefactError, match=rf"concepts\.safetensors.*delete {_stage(run)}"):
        run_pipeline(_cfg(run.parent, small_emotions, tiny_bert), progress=False)


def test_deleting_the_stage_named_rebuilds_it(run, small_emotions, tiny_bert, clean_run):
    from superactivators.pipeline import run_pipeline

    stage = _stage(run)
    _flip(stage / "summary.npz", at_end=False)
    with pytest.raises(ArtefactError, match=r"summary\.npz"):
        run_pipeline(_cfg(run.parent, small_emotions, tiny_bert), progress=False)
    shutil.rmtree(stage)  # what the message says
    run_pipeline(_cfg(run.parent, small_emotions, tiny_bert), progress=False)
    assert (stage / "concepts" / "concepts.safetensors").read_bytes() == \
        (_stage(clean_run) / "concepts" / "concepts.safetensors").read_bytes()
    assert verify_artefacts(run)[1] == []


@pytest.mark.parametrize("victim", ["summary.npz", "hist.npz", "concepts/cfg.json", "../../stages.json",
                                    "../../detection_metrics.csv", "../../best_layers.csv"])
@pytest.mark.parametrize("checksums", [True, False])
def test_damaged_stage_and_run_files_name_the_file(run, victim, checksums):
    """Truncated to half: with checksums the record names it; without (an older run) the reader does."""
    from superactivators.concepts.supervised import ConceptSet
    from superactivators.evaluate.scoring import ScoreSummary
    from superactivators.report.figdata import TokenHistograms
    from superactivators.store.runs import find_stages

    f = (_stage(run) / victim).resolve()
    if not checksums:
        for s in run.rglob(SUMS):
            s.unlink()
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    name = f.name.replace(".", r"\.")
    if checksums or victim.endswith((".npz", ".json")):
        checked, bad = verify_artefacts(run)
        assert any(str(f) in line for line in bad), bad
    readers = {"summary.npz": lambda: ScoreSummary.load(f), "hist.npz": lambda: TokenHistograms.load(f),
               "concepts/cfg.json": lambda: ConceptSet.load(f.parent), "../../stages.json": lambda: find_stages(run)}
    if victim in readers:
        with pytest.raises(ArtefactError, match=name):
            readers[victim]()
    if checksums:
        with pytest.raises(ArtefactError, match=name):
            require_intact(run)


def test_truncated_store_manifest_is_named_before_anything_embeds(run, small_emotions, tiny_bert):
    from superactivators.pipeline import check_concept_types, prepare_dataset, store_dir_for

    cfg = _cfg(run.parent, small_emotions, tiny_bert)
    ds = prepare_dataset(cfg)
    sdir = store_dir_for(cfg, ds)
    m = sdir / "manifest.json"
    m.write_bytes(m.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"{m}.*delete {sdir} to rebuild the token store"):
        check_concept_types(cfg, ds, sdir)


def test_damaged_result_table_is_refused_by_report_and_compare(run, capsys):
    from superactivators.cli import main

    f = run / "detection_metrics.csv"
    text = f.read_text()
    digit = next(i for i, ch in enumerate(text) if ch.isdigit() and i > text.index("\n"))
    f.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:])  # one digit changed
    assert main(["compare", str(run)]) == 2
    assert "detection_metrics.csv: content differs" in capsys.readouterr().err
    assert main(["report", str(run), "--quiet"]) == 2
    assert "detection_metrics.csv" in capsys.readouterr().err
    assert main(["verify", str(run)]) == 1


def test_saved_detector_carries_and_checks_its_own_checksums(run, tmp_path, capsys):
    from superactivators.cli import main
    from superactivators.detector import ConceptDetector

    det = ConceptDetector.from_run(run, "mean")
    out = tmp_path / "det"
    det.save(out)
    assert json.loads((out / SUMS).read_text()).keys() == {"detector.json"}
    assert ConceptDetector.load(out).thresholds == det.thresholds
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    (layer,) = [p for p in out.iterdir() if p.is_dir()]
    _flip(layer / "concepts.safetensors")
    with pytest.raises(ArtefactError, match=rf"{layer / 'concepts.safetensors'}.*save the detector again"):
        ConceptDetector.load(out)
    assert main(["verify", str(out)]) == 1
    det.save(out)  # saving again, as the message says, repairs it
    assert ConceptDetector.load(out).thresholds == det.thresholds
    (out / "detector.json").write_text('{"embed": ')  # truncated
    with pytest.raises(ArtefactError, match="detector.json"):
        ConceptDetector.load(out)


def test_leftover_temp_files_are_removed_by_verify_and_by_a_rerun(run, small_emotions, tiny_bert, capsys):
    from superactivators.cli import main
    from superactivators.pipeline import run_pipeline

    stage = _stage(run)
    dead = [stage / ".summary.npz.tmp999999999.npz", run / ".detection_metrics.csv.tmp999999999",
            stage / "concepts" / ".concepts.safetensors.tmp999999999"]
    for p in dead:
        p.write_bytes(b"half")
    assert main(["verify", str(run)]) == 0
    assert "leftover temporary files: removed 3" in capsys.readouterr().out
    assert not any(p.exists() for p in dead)
    for p in dead:
        p.write_bytes(b"half")
    run_pipeline(_cfg(run.parent, small_emotions, tiny_bert), progress=False)
    assert not any(p.exists() for p in dead)


def test_recording_drops_the_old_record_before_a_rewrite(tmp_path):
    """A write killed between replacing the file and recording it leaves it unrecorded, never wrongly recorded."""
    f = tmp_path / "a.json"
    f.write_text("[1]")
    record(tmp_path, ["a.json"])
    assert file_problem(f) is None and load_json(f) == [1]

    class Killed(Exception):
        pass

    with pytest.raises(Killed):
        with recording(f):
            f.write_text("[2, 3]")
            raise Killed
    assert "a.json" not in json.loads((tmp_path / SUMS).read_text())
    assert load_json(f) == [2, 3]  # unrecorded: read as written
    with recording(f):
        f.write_text("[4]")
    _flip(f, n=1)
    with pytest.raises(ArtefactError, match=r"a\.json: content differs"):
        load_json(f)


def test_load_npz_names_the_file_and_reads_every_member(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.arange(3), b=np.ones(2))
    z = load_npz(p)
    assert sorted(z.files) == ["a", "b"] and z["a"].tolist() == [0, 1, 2]
    p.write_bytes(p.read_bytes()[:30])
    with pytest.raises(ArtefactError, match=r"x\.npz: damaged"):
        load_npz(p)
    (tmp_path / SUMS).write_text("{not json")
    with pytest.raises(ArtefactError, match=rf"{SUMS}: damaged checksum file"):
        load_npz(p)


def test_a_deleted_recorded_file_fails_verify_but_is_left_to_its_reader(run):
    f = _stage(run) / "hist.npz"
    f.unlink()
    assert any(line.startswith(f"{f}: missing") for line in verify_artefacts(run)[1])
    require_intact(run)  # report recomputes hist.npz; a loader names a missing file itself
    with pytest.raises(ArtefactError, match=r"hist\.npz: missing"):
        load_npz(f)


def test_verify_keeps_temp_files_while_a_run_holds_the_folder(run):
    from filelock import FileLock

    from superactivators.store.layout import RunLayout

    tmp = run / ".detection_metrics.csv.tmp999999999"
    tmp.write_bytes(b"half")
    with FileLock(str(RunLayout(run).lock), timeout=0):
        checked, bad = verify_artefacts(run)
    assert tmp.exists() and not bad
    assert any("leftover temporary files: 1 kept, a run holds" in line for line in checked)
