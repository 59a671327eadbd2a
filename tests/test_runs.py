"""The run folder: written only by a run that passed its checks, held by one run at a time."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from superactivators.config import config_from_dict
from superactivators.pipeline import run_pipeline
from superactivators.store.layout import RunLayout
from superactivators.store.runs import RunLockedError
from superactivators.store.tokens import StoreInfo, StoreWriter
from superactivators.util.errors import ValidationError


def _cfg(tmp_path, data, model, **data_over):
    return config_from_dict({
        "name": "r", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
        "data": {"path": str(data), **data_over}, "embed": {"model": str(model), "layers": [1], "max_length": 64},
        "concepts": {"types": ["mean"]}, "detect": {"methods": ["superactivator"], "grid": [10, 50]},
    })


def test_failing_run_leaves_the_finished_run_untouched(tmp_path, small_emotions, tiny_bert):
    res = run_pipeline(_cfg(tmp_path, small_emotions, tiny_bert), progress=False)
    before = {p.name: p.read_bytes() for p in res.run_dir.iterdir() if p.is_file()}
    bad = _cfg(tmp_path, tmp_path / "nowhere" / "metadata.csv", tiny_bert)
    bad.embed.max_length = 8
    with pytest.raises(ValidationError, match="metadata file not found"):
        run_pipeline(bad, progress=False)
    after = {p.name: p.read_bytes() for p in res.run_dir.iterdir() if p.is_file()}
    assert after == before  # config.yaml still describes the results beside it


def test_never_validated_run_creates_no_folder(tmp_path, tiny_bert):
    bad = _cfg(tmp_path, tmp_path / "nowhere.csv", tiny_bert)
    with pytest.raises(ValidationError):
        run_pipeline(bad, progress=False)
    assert not (tmp_path / "runs").exists()


def test_second_run_on_a_held_folder_refuses(tmp_path, small_emotions, tiny_bert):
    cfg = _cfg(tmp_path, small_emotions, tiny_bert)
    cfg.run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         f"l = FileLock({str(RunLayout(cfg.run_dir).lock)!r}); l.acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=r"run folder .* is in use by another run"):
            run_pipeline(cfg, progress=False)
        from superactivators.pipeline import embed_command

        with pytest.raises(RunLockedError):  # the embed-only command holds the folder the same way
            embed_command(cfg, progress=False)
        assert not (cfg.run_dir / "stores").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_pipeline(cfg, progress=False).table is not None  # free again once the holder is gone


def test_writer_keeps_live_writers_temp_shards(tmp_path):
    info = StoreInfo(n_samples=2, dim=4, layers=[1], concepts=["a"], modality="text")
    (tmp_path / "layer_01").mkdir(parents=True)
    live = tmp_path / "layer_01" / f".shard.tmp{os.getppid()}.npy"  # our parent: alive
    dead = tmp_path / "layer_01" / ".shard.tmp999999999.npy"
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    StoreWriter(tmp_path, info, np.zeros((2, 1), np.uint8), np.array(["train", "cal"]))
    assert live.exists() and not dead.exists()


def test_progress_bars_on_every_long_stage_and_quiet_silences_them(tmp_path, small_emotions, tiny_bert, capsys):
    import yaml

    from superactivators.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "p", "output_dir": str(tmp_path / "runs"), "score_device": "cpu", "data": {"path": str(small_emotions)},
        "embed": {"model": str(tiny_bert), "layers": [1, 2], "max_length": 64},
        "concepts": {"types": ["mean"]}, "detect": {"methods": ["superactivator"], "grid": [10, 50]}}))
    assert main(["run", str(cfg), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err  # no tqdm bar at all
    assert main(["run", str(cfg)]) == 0  # cached store and stages: the stage bar still reports
    err = capsys.readouterr().err
    assert "stages: 100%" in err and "2/2" in err  # one step per (layer, concept type)
    run = str(tmp_path / "runs" / "p")
    assert main(["report", run, "--formats", "png", "--examples", "0", "--layers", "1", "--quiet"]) == 0
    assert "%|" not in capsys.readouterr().err
    assert main(["report", run, "--formats", "png", "--examples", "0", "--layers", "1"]) == 0
    assert "report figures: 100%" in capsys.readouterr().err
