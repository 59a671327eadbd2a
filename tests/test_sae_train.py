"""Real SAEs: trained and written by SAELens itself on SmolLM2 hidden states from our store,
loaded by our SAE concept type; plus fixtures in the Gemma Scope and patchsae layouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from superactivators.concepts.sae import load_sae, sae_concept_set
from superactivators.concepts.sae_train import SAETrainOptions, train_sae
from superactivators.config import config_from_dict
from superactivators.evaluate.methods import MACRO
from superactivators.evaluate.scoring import make_scorer
from superactivators.pipeline import run_pipeline

from .conftest import write_small_emotions

pytest.importorskip("sae_lens")


def _run_cfg(tmp_path, data, types, sae_path=None):
    return config_from_dict({
        "name": "smol-sae", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
        "data": {"path": str(data), "concepts": ["emotion::gratitude", "emotion::joy", "emotion::anger"]},
        "embed": {"model": "smollm2", "layers": [10], "batch_size": 8, "max_length": 96},
        "concepts": {"types": types, "sae_path": sae_path},
        "detect": {"grid": [5, 10, 30, 60], "localize": False},
    })


@pytest.fixture(scope="module")
def smol_store(tmp_path_factory):
    """A small SmolLM2 store (layer 10) made by the pipeline itself (mean concepts)."""
    tmp = tmp_path_factory.mktemp("smolsae")
    data = write_small_emotions(tmp / "data", {"train": 40, "cal": 20, "test": 20})
    res = run_pipeline(_run_cfg(tmp, data, ["mean"]), progress=False)
    return tmp, data, res.store


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_trained_sae_loads_and_matches_saelens_encode(arch, smol_store):
    from sae_lens import SAE

    tmp, _, store = smol_store
    out = train_sae(store, 10, tmp / f"sae_{arch}", SAETrainOptions(architecture=arch, d_sae=128, k=8, steps=30,
                                                                     batch_size=128))
    assert (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file()  # SAELens' files
    ours = load_sae(out)
    assert ours.architecture == arch and ours.hook_name == "blocks.10.hook_resid_pre" and ours.d_in == 576
    cs = sae_concept_set(ours)
    assert cs.layer == 10
    x = next(iter(store.aligned_blocks(10, store.valid)))[:300]
    theirs = SAE.load_from_disk(str(out)).encode(torch.from_numpy(x)).detach().numpy()
    mine = make_scorer(cs, "cpu")(x)
    np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    assert (mine > 0).any() and (mine == 0).any()  # sparse, not dead
    if arch == "topk":
        assert ((mine > 0).sum(axis=1) <= 8).all()
        # a subset of TopK units is still ranked among all units
        units = np.array([3, 77, 5])
        np.testing.assert_allclose(make_scorer(cs.subset(units), "cpu")(x), theirs[:, units], rtol=1e-4, atol=1e-4)


def test_saelens_sae_end_to_end_on_smollm2(smol_store):
    tmp, data, store = smol_store
    out = train_sae(store, 10, tmp / "sae_e2e", SAETrainOptions(architecture="topk", d_sae=128, k=8, steps=30,
                                                                batch_size=128))
    res = run_pipeline(_run_cfg(tmp, data, ["sae"], str(out)), progress=False, force=True)  # other types: replaced
    assert res.store.path == store.path  # the same store, reused
    t = res.table
    assert set(t.concept_type) == {"sae"} and set(t.layer) == {10}
    assert t[t.concept == MACRO].f1.between(0, 1).all()
    m = pd.read_csv(next((res.run_dir / "stages").glob("L10_sae_*")) / "matches.csv")
    assert m.unit_name.str.startswith("sae_unit_").all() and m.unit.between(0, 127).all()


def _weights(d_in=8, d_sae=12, seed=0):
    g = np.random.default_rng(seed)
    return {"W_enc": g.normal(size=(d_in, d_sae)).astype(np.float32), "b_enc": g.normal(size=d_sae).astype(np.float32),
            "W_dec": g.normal(size=(d_sae, d_in)).astype(np.float32), "b_dec": g.normal(size=d_in).astype(np.float32),
            "threshold": g.uniform(0, 2, size=d_sae).astype(np.float32)}


def test_gemma_scope_params_npz(tmp_path):
    w = _weights()
    folder = tmp_path / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **w)
    sae = load_sae(folder)
    assert sae.architecture == "jumprelu" and sae.hook_name == "blocks.12.hook_resid_post"
    assert sae_concept_set(sae).layer == 13  # resid_post of block 12 = hidden_states[13]
    x = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    pre = x @ w["W_enc"] + w["b_enc"]  # Gemma Scope: no b_dec subtraction
    np.testing.assert_allclose(make_scorer(sae_concept_set(sae), "cpu")(x),
                               np.maximum(pre, 0) * (pre > w["threshold"]), rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "params.npz", **{k: v for k, v in w.items() if k != "threshold"})
    with pytest.raises(ValueError, match="missing tensor"):
        load_sae(tmp_path)


def test_patchsae_checkpoint(tmp_path):
    w = _weights(seed=2)
    sd = {k: torch.from_numpy(v) for k, v in w.items() if k != "threshold"}
    torch.save({"cfg": {"d_in": 8, "d_sae": 12, "block_layer": 4, "module_name": "resid"}, "state_dict": sd},
               tmp_path / "clip_sae.pt")
    sae = load_sae(tmp_path / "clip_sae.pt")
    assert sae.architecture == "standard" and sae.hook_name == "blocks.4.hook_resid_post"
    x = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
    want = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    np.testing.assert_allclose(make_scorer(sae_concept_set(sae), "cpu")(x), want, rtol=1e-5, atol=1e-5)
    torch.save({"cfg": {"block_layer": -2}, "state_dict": sd}, tmp_path / "neg.pt")
    with pytest.raises(ValueError, match="negative"):
        load_sae(tmp_path / "neg.pt")
