"""The run-folder layout: every path named once, stage names parsed back exactly."""

from __future__ import annotations

from superactivators.store.layout import RunLayout, StageFolder, cached, parse_stage_name, stage_name
from superactivators.store.tokens import store_is_complete


def test_stage_names_round_trip():
    assert stage_name(3, "linsep", "0123456789ab") == "L03_linsep_0123456789ab"
    assert parse_stage_name("L03_linsep_0123456789ab") == (3, "linsep", "0123456789ab")
    assert parse_stage_name("L12_kmeans_linsep_0123456789ab") == (12, "kmeans_linsep", "0123456789ab")
    for bad in ("units", "L3_linsep", "Lx_linsep_0123456789ab", "L03_linsep_NOTHEX"):
        assert parse_stage_name(bad) is None


def test_stage_folders_lists_only_stage_names(tmp_path):
    run = RunLayout(tmp_path)
    a = run.stage(1, "mean", "aaaaaaaaaaaa")
    a.path.mkdir(parents=True)
    run.units.mkdir()
    (run.stages / "L02_mean_bbbbbbbbbbbb").write_text("a file, not a stage")
    assert [(k, s.path.name) for k, s in run.stage_folders()] == [((1, "mean"), "L01_mean_aaaaaaaaaaaa")]
    assert not a.done
    a.summary.write_bytes(b"")
    assert a.done
    assert StageFolder(a.path).predictions == a.path / "predictions.npz"
    assert run.relative(a.path) == "stages/L01_mean_aaaaaaaaaaaa"


def test_cached_computes_once(tmp_path):
    calls = []

    def compute() -> str:
        calls.append(1)
        return "value"

    path = tmp_path / "x.txt"
    args = (lambda p: p.exists(), lambda p: p.read_text(), compute, lambda v, p: p.write_text(v))
    assert cached(path, *args) == "value"
    assert cached(path, *args) == "value"
    assert len(calls) == 1


def test_store_is_complete(tmp_path):
    assert not store_is_complete(tmp_path)
    (tmp_path / "manifest.json").write_text('{"complete": false}')
    assert not store_is_complete(tmp_path)
    (tmp_path / "manifest.json").write_text('{"complete": true}')
    assert store_is_complete(tmp_path)
    (tmp_path / "manifest.json").write_text('{"comp')  # truncated: not complete, no traceback
    assert not store_is_complete(tmp_path)
