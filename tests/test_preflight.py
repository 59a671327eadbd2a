"""Checks before any model loads: every bad key, column or file is one line, no traceback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from superactivators.cli import main
from superactivators.config import config_from_dict
from superactivators.data.datasets import DatasetError, load_dataset
from superactivators.data.masks import check_images
from superactivators.encoders import checks as model_checks
from superactivators.encoders import text as text_mod
from superactivators.encoders.base import ModelNotFoundError, resolve_model_path
from superactivators.preflight import check_run
from superactivators.util.errors import ValidationError


def _problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as err:
        config_from_dict(data)
    return err.value.problems


def _text_data(root: Path, rows: int = 12, header: str = "c1,text_path,split", label=None) -> Path:
    """``rows`` text files, 4 per split, concept c1 alternating (positives and negatives everywhere)."""
    (root / "t").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i in range(rows):
        (root / "t" / f"{i}.txt").write_text(f"sample number {i} says something {'happy' if i % 2 else 'flat'}")
        lab = label(i) if label else i % 2
        lines.append(f"{lab},t/{i}.txt,{('train', 'cal', 'test')[i % 3]}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root / "metadata.csv"


def _run_cfg(tmp_path, data, model, **embed):
    return config_from_dict({
        "name": "r", "output_dir": str(tmp_path / "runs"), "score_device": "cpu", "data": {"path": str(data)},
        "embed": {"model": str(model), "layers": [1], **embed}, "concepts": {"types": ["mean"]},
        "detect": {"methods": ["superactivator"], "grid": [10, 50]},
    })


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any text model starts loading."""
    monkeypatch.setattr(text_mod.TextEncoder, "__init__", lambda *a, **k: pytest.fail("model loaded"))


# ---------------------------------------------------------------------------- config keys


def test_config_types_and_ranges_are_one_line_each():
    probs = _problems({"seed": "abc", "embed": {"batch_size": "abc", "store_dtype": "float8", "max_length": -5,
                                                 "dtype": "fp8", "device": "gpu0"}})
    joined = "\n".join(probs)
    assert "seed: expected an integer, got 'abc'" in joined
    assert "embed.batch_size: expected an integer, got 'abc'" in joined
    assert "embed.store_dtype: 'float8' is not one of ['float16', 'float32']" in joined
    assert "embed.max_length: must be >= 1, got -5" in joined
    assert "embed.dtype: 'fp8'" in joined and "embed.device: 'gpu0'" in joined
    assert len(probs) == 6
    assert _problems({"embed": {"max_length": 0}}) == ["embed.max_length: must be >= 1, got 0"]
    assert any("detect.grid" in p for p in _problems({"detect": {"grid": [0, 150]}}))
    assert any("embed.layers: bad layer 'middle'" in p for p in _problems({"embed": {"layers": ["middle"]}}))


def test_config_aliases_and_lone_strings():
    cfg = config_from_dict({"embed": {"dtype": "fp16", "store_dtype": "fp32"}, "concepts": {"types": "mean"}})
    assert cfg.embed.dtype == "float16" and cfg.embed.store_dtype == "float32"
    assert cfg.concepts.types == ["mean"]  # not ['m', 'e', 'a', 'n']


def test_cli_lists_every_problem_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: abc\nembed:\n  batch_size: abc\n  store_dtype: float8\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err and "seed:" in err and "embed.batch_size" in err and "embed.store_dtype" in err
    assert "Traceback" not in err
    with pytest.raises(ValidationError):
        main(["--debug", "run", str(cfg)])


def test_device_and_device_map_checked_before_load(tmp_path, tiny_bert, monkeypatch, no_model_load):
    data = _text_data(tmp_path / "d")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(model_checks, "has_accelerate", lambda: False)
    with pytest.raises(ValidationError) as err:
        check_run(_run_cfg(tmp_path, data, tiny_bert, device="cuda", device_map="auto"))
    joined = str(err.value)
    assert "embed.device: 'cuda' but no CUDA GPU is available" in joined
    assert "embed.device_map: 'auto' needs accelerate" in joined


def test_out_of_range_layers_from_the_model_config(tmp_path, tiny_bert, no_model_load):
    data = _text_data(tmp_path / "d")
    cfg = _run_cfg(tmp_path, data, tiny_bert)
    cfg.embed.layers = [1, 7]
    with pytest.raises(ValidationError, match=r"embed.layers: layer 7 out of range for a model with 2 layers"):
        check_run(cfg)


@pytest.mark.parametrize("method", ["prompt", "prompt_seed"])
def test_missing_prompt_model_found_before_any_model_loads(tmp_path, tiny_bert, no_model_load, method):
    data = _text_data(tmp_path / "d")
    cfg = _run_cfg(tmp_path, data, tiny_bert)
    cfg.detect.methods = ["superactivator", method]
    cfg.detect.prompt_model = str(tmp_path / "no_such_lm")
    with pytest.raises(ValidationError, match=r"detect.prompt_model: model folder not found"):
        check_run(cfg)


# ---------------------------------------------------------------------------- model resolution


def test_model_not_on_disk_fails_at_once_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.time()
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("no-such-org/no-such-model")
    assert time.time() - t0 < 5
    msg = str(err.value)
    assert "no-such-org/no-such-model" in msg and str(tmp_path / "hub") in msg
    with pytest.raises(ModelNotFoundError, match="model folder not found: './models/missing'"):
        resolve_model_path("./models/missing")


def test_model_in_local_hf_cache_resolves_to_its_snapshot(tmp_path, monkeypatch, tiny_bert):
    hub = tmp_path / "hub"
    snap = hub / "models--acme--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text((tiny_bert / "config.json").read_text())
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert Path(resolve_model_path("acme/tiny")) == snap


# ---------------------------------------------------------------------------- dataset files and columns


def test_missing_and_non_utf8_text_files_before_model_loads(tmp_path, tiny_bert, no_model_load):
    data = _text_data(tmp_path / "d")
    (tmp_path / "d" / "t" / "3.txt").unlink()
    (tmp_path / "d" / "t" / "5.txt").write_bytes("caf\xe9 latin-1".encode("latin-1"))
    with pytest.raises(ValidationError) as err:
        check_run(_run_cfg(tmp_path, data, tiny_bert))
    probs = err.value.problems
    assert any(p.startswith("text file not found:") and "t/3.txt" in p and "row 5" in p for p in probs)
    assert any(p.startswith("text file is not UTF-8:") and "t/5.txt" in p for p in probs)


def test_empty_test_split(tmp_path, tiny_bert, no_model_load):
    data = _text_data(tmp_path / "d")
    data.write_text(data.read_text().replace(",test\n", ",cal\n"))
    with pytest.raises(ValidationError, match=r"split 'test' has no samples"):
        check_run(_run_cfg(tmp_path, data, tiny_bert))


def test_concept_positive_in_every_row_is_named(tmp_path, tiny_bert, no_model_load):
    data = _text_data(tmp_path / "d", header="c1,c2,text_path,split", label=lambda i: f"1,{i % 2}")
    with pytest.warns(UserWarning, match=r"concept 'c1' skipped: positive in every train sample"):
        ds = load_dataset(data)
        from superactivators.data.datasets import usable_concepts

        assert usable_concepts(ds) == ["c2"]
    only = _text_data(tmp_path / "e", label=lambda i: "1")
    with pytest.warns(UserWarning, match="'c1'"), pytest.raises(ValidationError, match="no concept has positives"):
        check_run(_run_cfg(tmp_path, only, tiny_bert))


def test_yes_no_true_false_columns_are_binary(tmp_path):
    p = tmp_path / "metadata.csv"
    p.write_text("a,b,text,split\nyes,True,x,train\nno,false,y,cal\nYes,FALSE,z,test\n")
    ds = load_dataset(p)
    assert ds.concepts == ["a", "b"]
    np.testing.assert_array_equal(ds.labels, [[1, 1], [0, 0], [1, 0]])


def test_duplicate_and_reserved_concept_columns_refused(tmp_path):
    p = tmp_path / "metadata.csv"
    p.write_text("a,a,text,split\n1,0,x,train\n0,1,y,cal\n")
    with pytest.raises(DatasetError, match=r"duplicate column name\(s\) \['a'\]"):
        load_dataset(p)
    p.write_text("__macro__,b,text,split\n1,0,x,train\n0,1,y,cal\n")
    with pytest.raises(DatasetError, match=r"\['__macro__'\] are reserved"):
        load_dataset(p)


def test_spans_cell_holding_a_json_list(tmp_path):
    p = tmp_path / "metadata.csv"
    p.write_text('a,text,split,spans\n1,hello there,train,"[[0, 5]]"\n')
    with pytest.raises(DatasetError, match=r"row 2, column 'spans': expected a JSON object"):
        load_dataset(p)


def test_paths_confined_to_the_dataset_folder(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (tmp_path / "secret.txt").write_text("password")
    p = d / "metadata.csv"
    p.write_text("a,text_path,split\n1,/etc/passwd,train\n0,../secret.txt,cal\n1,../../etc/os-release,test\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(p)
    msg = str(err.value)
    for row, name in ((2, "/etc/passwd"), (3, "../secret.txt"), (4, "../../etc/os-release")):
        assert f"row {row}, column 'text_path': '{name}' lies outside the dataset folder" in msg
    assert "data.allow_outside_paths" in msg
    ds = load_dataset(p, allow_outside_paths=True)
    assert ds.text(1) == "password"
    p.write_text(f"a,image_path,split\n1,{tmp_path / 'x.png'},train\n")
    with pytest.raises(DatasetError, match=r"column 'image_path': .*x.png' lies outside"):
        load_dataset(p)


def test_mask_size_mismatch_found_from_headers(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, msize in enumerate([(16, 24), (5, 7)]):
        Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.ones(msize, np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    (tmp_path / "metadata.csv").write_text(
        "image_path,mask_path,a,split\nimages/0.png,masks/0.png,1,train\nimages/1.png,masks/1.png,1,cal\n")
    with pytest.raises(DatasetError, match=r"mask .*masks/1.png is 7x5 but its image .*images/1.png is 24x16 \(row 3"):
        check_images(load_dataset(tmp_path / "metadata.csv"))


def test_make_dataset_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "shapes"
    out.mkdir()
    (out / "metadata.csv").write_text("mine")
    assert main(["make-dataset", "shapes", str(out), "--n", "12", "--size", "32"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "metadata.csv").read_text() == "mine"
    assert main(["make-dataset", "shapes", str(out), "--n", "12", "--size", "32", "--force"]) == 0
    assert (out / "metadata.csv").read_text().startswith("image_path")


def test_disk_full_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import superactivators.pipeline as pipeline_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "r" / "manifest.json"))

    monkeypatch.setattr(pipeline_mod, "run_pipeline", full)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: r\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "manifest.json" in err and "Traceback" not in err
