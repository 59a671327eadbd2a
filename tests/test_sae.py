"""SAELens-layout SAEs: loading, encoding = direct matrix computation, hook layers, pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from superactivators.concepts.sae import SAEConceptSet, load_sae, resolve_sae_path, sae_concept_set, sae_store_layer
from superactivators.config import config_from_dict
from superactivators.evaluate.methods import MACRO, METHODS
from superactivators.evaluate.scoring import make_scorer
from superactivators.pipeline import run_pipeline


def write_sae(path: Path, d_in: int = 8, d_sae: int = 12, arch: str = "standard", seed: int = 0,
              dtype: torch.dtype = torch.float32, drop: tuple[str, ...] = (), **cfg) -> dict[str, np.ndarray]:
    """A random SAE in the SAELens layout; returns its float32 weights."""
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g) * 0.5,
         "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 2.0
    w = {k: v.to(dtype) for k, v in w.items() if k not in drop}
    path.mkdir(parents=True, exist_ok=True)
    save_file(w, str(path / "sae_weights.safetensors"))
    conf = {"d_in": d_in, "d_sae": d_sae, "architecture": arch, "hook_name": "blocks.3.hook_resid_pre",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32"}
    conf.update(cfg)
    (path / "cfg.json").write_text(json.dumps(conf))
    return {k: v.float().numpy() for k, v in w.items()}


def _x(n: int = 30, d: int = 8) -> np.ndarray:
    return (np.random.default_rng(1).normal(size=(n, d)) * 3 + 1).astype(np.float32)


def test_standard_sae_equals_direct_computation(tmp_path):
    w = write_sae(tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    cs = sae_concept_set(sae)
    assert (cs.kind, cs.scoring, cs.layer, len(cs.names)) == ("sae", "sae", 3, 12)
    x = _x()
    want = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    got = make_scorer(cs)(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got == 0).any() and (got > 0).any()


def test_jumprelu_sae_equals_direct_computation(tmp_path):
    w = write_sae(tmp_path / "sae", arch="jumprelu")
    cs = sae_concept_set(load_sae(tmp_path / "sae"))
    x = _x()
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    want = np.maximum(pre, 0) * (pre > w["threshold"])
    got = make_scorer(cs)(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ((pre > 0) & (pre <= w["threshold"])).any()  # the jump really zeroes some units


def test_raw_input_without_b_dec_and_input_norms(tmp_path):
    x = _x()
    w = write_sae(tmp_path / "a", apply_b_dec_to_input=False)
    got = make_scorer(sae_concept_set(load_sae(tmp_path / "a")))(x)
    np.testing.assert_allclose(got, np.maximum(x @ w["W_enc"] + w["b_enc"], 0), rtol=1e-5, atol=1e-5)

    w = write_sae(tmp_path / "b", normalize_activations="constant_norm_rescale")
    xr = x * np.sqrt(8) / np.linalg.norm(x, axis=1, keepdims=True)
    got = make_scorer(sae_concept_set(load_sae(tmp_path / "b")))(x)
    np.testing.assert_allclose(got, np.maximum((xr - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0), rtol=1e-4, atol=1e-5)

    w = write_sae(tmp_path / "c", normalize_activations="layer_norm")
    xc = x - x.mean(1, keepdims=True)
    xl = xc / (xc.std(1, ddof=1, keepdims=True) + 1e-5)  # SAELens: torch.std (unbiased) + eps
    got = make_scorer(sae_concept_set(load_sae(tmp_path / "c")))(x)
    np.testing.assert_allclose(got, np.maximum((xl - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0), rtol=1e-4, atol=1e-5)


def test_bf16_weights_and_nested_hook_name(tmp_path):
    w = write_sae(tmp_path / "s", dtype=torch.bfloat16, hook_name=None,
                  metadata={"hook_name": "blocks.1.hook_resid_post"})
    sae = load_sae(tmp_path / "s")
    assert sae.W_enc.dtype == np.float32 and sae.hook_name == "blocks.1.hook_resid_post"
    np.testing.assert_array_equal(sae.W_enc, w["W_enc"])
    assert sae_concept_set(sae).layer == 2


def test_hook_to_store_layer():
    assert sae_store_layer("blocks.0.hook_resid_pre") == 0
    assert sae_store_layer("blocks.5.hook_resid_pre") == 5
    assert sae_store_layer("blocks.5.hook_resid_post") == 6
    with pytest.raises(ValueError, match="residual-stream"):
        sae_store_layer("blocks.5.hook_mlp_out")


def test_bad_sae_folders_are_named(tmp_path):
    write_sae(tmp_path / "j", arch="jumprelu", drop=("threshold",))
    with pytest.raises(ValueError, match="threshold"):
        load_sae(tmp_path / "j")
    write_sae(tmp_path / "t", arch="topk")
    with pytest.raises(ValueError, match="topk"):
        load_sae(tmp_path / "t")
    write_sae(tmp_path / "d", d_in=8)
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    (tmp_path / "d" / "cfg.json").write_text(json.dumps({**cfg, "d_in": 9}))
    with pytest.raises(ValueError, match="W_enc"):
        load_sae(tmp_path / "d")
    write_sae(tmp_path / "n", normalize_activations="whatever")
    with pytest.raises(ValueError, match="whatever"):
        load_sae(tmp_path / "n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sae(str(tmp_path / "missing"))


def test_repo_ids_go_to_snapshot_download_only_when_not_local(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(repo_id, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert resolve_sae_path("org/repo/blocks.3.hook_resid_pre") == tmp_path / "blocks.3.hook_resid_pre"
    assert resolve_sae_path("hf://org/repo") == tmp_path
    assert calls == [("org/repo", ["blocks.3.hook_resid_pre/*"]), ("org/repo", None)]
    assert resolve_sae_path(str(tmp_path)) == tmp_path and len(calls) == 2


def test_subset_and_round_trip(tmp_path):
    write_sae(tmp_path / "sae", arch="jumprelu")
    cs = sae_concept_set(load_sae(tmp_path / "sae"))
    x = _x()
    full = make_scorer(cs)(x)
    units = np.array([1, 5, 7])
    np.testing.assert_allclose(make_scorer(cs.subset(units))(x), full[:, units], rtol=1e-6, atol=1e-6)
    cs.save(tmp_path / "saved")
    back = SAEConceptSet.load(tmp_path / "saved")
    assert back.architecture == "jumprelu" and back.names == cs.names
    np.testing.assert_allclose(make_scorer(back)(x), full, rtol=1e-6, atol=1e-6)


def test_pipeline_with_sae_units(tmp_path, small_emotions, tiny_bert):
    # tiny BERT: hidden 32, 2 layers; the SAE reads the output of block 0 = store layer 1
    write_sae(tmp_path / "sae", d_in=32, d_sae=48, arch="jumprelu", hook_name="blocks.0.hook_resid_post")
    cfg = config_from_dict({
        "name": "sae", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
        "data": {"path": str(small_emotions)},
        "embed": {"model": str(tiny_bert), "layers": "all", "batch_size": 16, "max_length": 256},
        "concepts": {"types": ["sae"], "sae_path": str(tmp_path / "sae")},
        "detect": {"grid": [5, 10, 50, 90]},
    })
    res = run_pipeline(cfg, progress=False)
    t = res.table
    assert set(t.layer) == {1} and set(t.concept_type) == {"sae"}  # only the SAE's layer
    assert set(METHODS) <= set(t.method)
    assert t[t.concept == MACRO].f1.between(0, 1).all()
    m = pd.read_csv(next((res.run_dir / "stages").glob("L01_sae_*")) / "matches.csv")
    assert m.unit_name.str.startswith("sae_unit_").all() and m.unit.between(0, 47).all()
    from superactivators.localize.tokens import LOC_METHODS

    loc = res.localization  # SAE units localise through their matched units too (two-stage included)
    assert loc is not None and set(loc.method) == set(LOC_METHODS) and set(loc.concept_type) == {"sae"}
    assert loc[["f1", "iou"]].dropna().apply(lambda c: c.between(0, 1).all()).all()
    bad = config_from_dict({**cfg.to_dict(), "embed": {**cfg.to_dict()["embed"], "layers": [2]}, "name": "b"})
    with pytest.raises(ValueError, match="store layer 1"):
        run_pipeline(bad, progress=False)
