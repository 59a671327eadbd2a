"""Paths in a config file are read from the file's folder; ``--set`` values from the current
directory; "not found" names the absolute path tried (through the CLI entry point)."""

from __future__ import annotations

from pathlib import Path

from superactivators.cli import main
from superactivators.config import load_config


def _write(cfg_dir: Path, body: str) -> Path:
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "run.yaml").write_text(body)
    return cfg_dir / "run.yaml"


def test_config_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "proj" / "models" / "tiny").mkdir(parents=True)
    cfg = _write(tmp_path / "proj" / "configs", "name: r\noutput_dir: ../runs\ndata:\n  path: ../data/metadata.csv\n"
                                               "embed:\n  model: ../models/tiny\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config(Path("..") / "proj" / "configs" / "run.yaml")
    assert c.data.path == str(tmp_path / "proj" / "data" / "metadata.csv")
    assert c.output_dir == str(tmp_path / "proj" / "runs") and c.run_dir == tmp_path / "proj" / "runs" / "r"
    assert c.embed.model == str(tmp_path / "proj" / "models" / "tiny")
    # names are not paths: a hub id, a packaged name, builtin: data stay as written
    cfg.write_text("data:\n  path: builtin:emotions\nembed:\n  model: google/gemma-2-9b\n")
    c = load_config(cfg)
    assert c.data.path == "builtin:emotions" and c.embed.model == "google/gemma-2-9b"
    assert c.output_dir == "runs"  # not in the file: the default, in the current directory
    # --set values are read from the current directory (left as given)
    c = load_config(cfg, ["data.path=mydata/metadata.csv", "embed.model=minilm"])
    assert c.data.path == "mydata/metadata.csv" and c.embed.model == "minilm"


def test_not_found_names_the_absolute_path(tmp_path, monkeypatch, capsys):
    _write(tmp_path / "configs", "name: r\ndata:\n  path: ../mydata/metadata.csv\n")
    monkeypatch.chdir(tmp_path / "configs")
    assert main(["run", "nope.yaml"]) == 2
    assert f"config file not found: {tmp_path / 'configs' / 'nope.yaml'}" in capsys.readouterr().err
    assert main(["run", "run.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"metadata file not found: {tmp_path / 'mydata' / 'metadata.csv'}" in err
    assert main(["report", "no-run"]) == 2
    assert f"run folder not found: {tmp_path / 'configs' / 'no-run'}" in capsys.readouterr().err
