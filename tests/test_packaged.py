"""Packaged decoders: GGUF files from PyPI converted once into HF folders that match the GGUF load.

The conversions are cached (``$SUPERACTIVATORS_CACHE`` or ``~/.cache/superactivators``), so
only the first run pays for them (SmolLM2 ~30 s, Gemma-3 ~90 s, Qwen2.5 ~65 s on 2 cores);
Gemma-3 and Qwen2.5 carry the ``packaged_full`` marker (``-m "not packaged_full"`` skips them
locally; ``make test`` runs them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from superactivators.encoders import packaged
from superactivators.encoders.base import EmbedConfig, resolve_model_path
from superactivators.encoders.registry import family_for

EXPECTED = {  # name -> (family, blocks, hidden size)
    "smollm2": ("llama", 30, 576),
    "gemma3-270m": ("gemma3-text", 18, 640),
    "qwen2.5-0.5b": ("qwen2", 24, 896),
}
FULL = pytest.mark.packaged_full


def _check_folder(name: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    import torch

    folder = resolve_model_path(name)
    info = packaged.packaged_info(folder)
    spec = packaged.PACKAGED_DECODERS[name]
    assert info["sha256"] == packaged.expected_sha256(spec) and info["format"] == packaged.CONVERT_FORMAT
    config = AutoConfig.from_pretrained(folder)
    family, blocks, hidden = EXPECTED[name]
    assert family_for(config, "text").name == family
    assert (config.num_hidden_layers, config.hidden_size) == (blocks, hidden)
    assert getattr(config, "quantization_config", None) is None
    ref = np.load(f"{folder}/reference.npz")["hidden_states"]
    assert ref.shape[0] == blocks + 1 and ref.shape[2] == hidden
    # recorded from the GGUF load: layers differ from each other (not a constant or a copy)
    assert np.abs(ref[blocks] - ref[blocks // 2]).max() > 1e-2
    assert packaged.check_reference(folder) <= 1e-5
    # real weights: the reloaded model predicts English far better than chance (a randomly
    # initialised one scores about log(vocab) ~ 11-12 nats per token)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok("The capital of France is Paris, and the capital of Italy is Rome.", return_tensors="pt")
    with torch.inference_mode():
        loss = float(model(**enc, labels=enc["input_ids"]).loss)
    assert loss < 0.5 * np.log(config.vocab_size), (loss, np.log(config.vocab_size))


def test_smollm2_folder_reproduces_the_gguf_load():
    _check_folder("smollm2")


@FULL
def test_gemma3_folder_reproduces_the_gguf_load():
    _check_folder("gemma3-270m")


@FULL
def test_qwen25_folder_reproduces_the_gguf_load():
    _check_folder("qwen2.5-0.5b")


def test_names_and_aliases_resolve():
    assert packaged.packaged_decoder("SmolLM2").name == "smollm2"
    assert packaged.packaged_decoder("google/gemma-3-270m").name == "gemma3-270m"
    assert packaged.packaged_decoder("qwen2.5-coder-0.5b-instruct").name == "qwen2.5-0.5b"
    assert packaged.packaged_decoder("gpt2") is None
    assert packaged.packaged_decoder("minilm") is None


def test_gemma_digest_comes_from_its_checksum_file():
    spec = packaged.PACKAGED_DECODERS["gemma3-270m"]
    assert spec.sha256 is None
    assert packaged.expected_sha256(spec) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    parts = packaged.gguf_parts(spec)
    assert [p.name for p in parts] == [f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]


def test_a_wrong_digest_or_missing_package_is_a_clear_error(tmp_path):
    bad = dataclasses.replace(packaged.PACKAGED_DECODERS["smollm2"], sha256="0" * 64)
    with pytest.raises(ValueError, match="expected 0000"):
        packaged.assemble_gguf(bad, tmp_path)
    missing = dataclasses.replace(bad, name="nothing", parts=(("no-such-distribution-xyz", "x.gguf"),))
    with pytest.raises(ImportError, match="no-such-distribution-xyz is not installed"):
        packaged.gguf_parts(missing)
    wrong_version = dataclasses.replace(packaged.PACKAGED_DECODERS["smollm2"], version="9.9.9")
    with pytest.raises(ImportError, match="9.9.9 is needed"):
        packaged.gguf_parts(wrong_version)


def test_split_gguf_is_concatenated_in_order(tmp_path):
    spec = packaged.PACKAGED_DECODERS["qwen2.5-0.5b"]
    out = packaged.assemble_gguf(spec, tmp_path)
    parts = packaged.gguf_parts(spec)
    assert out.stat().st_size == sum(p.stat().st_size for p in parts)
    with open(out, "rb") as f:
        assert f.read(4) == b"GGUF"  # the first part carries the GGUF magic
        f.seek(parts[0].stat().st_size)
        assert f.read(64) == parts[1].read_bytes()[:64]


def test_sweep_layers_of_the_packaged_families():
    from transformers import AutoConfig

    folder = resolve_model_path("smollm2")
    fam = family_for(AutoConfig.from_pretrained(folder), "text")
    assert fam.sweep == (3, 19, 34, 50, 66, 81, 97, 100)
    layers = fam.resolve("sweep", AutoConfig.from_pretrained(folder))
    assert layers[-1] == 30 and len(set(layers)) == len(layers) and layers == sorted(layers)
    assert EmbedConfig(model="smollm2").model == "smollm2"


def test_smollm2_end_to_end_with_its_own_prompting(tmp_path):
    """The real SmolLM2 through the whole pipeline: two layers, every baseline, SmolLM2-Instruct prompted."""
    from superactivators.config import config_from_dict
    from superactivators.evaluate.methods import METHODS
    from superactivators.pipeline import run_pipeline

    from .conftest import write_small_emotions

    data = write_small_emotions(tmp_path / "data", {"train": 30, "cal": 15, "test": 15})
    concepts = ["emotion::gratitude", "emotion::joy", "emotion::anger"]
    cfg = config_from_dict({
        "name": "smol", "output_dir": str(tmp_path), "score_device": "cpu",
        "data": {"path": str(data), "concepts": concepts},
        "embed": {"model": "smollm2", "layers": ["34%", "66%"], "batch_size": 8, "max_length": 128},
        "concepts": {"types": ["mean", "linsep"]},
        "detect": {"methods": [*METHODS, "prompt"], "prompt_model": "smollm2", "grid": [5, 10, 30, 60],
                   "localize": False},
    })
    res = run_pipeline(cfg, progress=False)
    assert res.store.layers == [10, 19] and res.store.info.model["family"] == "llama"  # floor(p * 30 / 100)
    t = res.table
    assert {*METHODS, "prompt", "prompt@best_threshold"} <= set(t.method)
    assert set(t.concept_type) == {"mean", "linsep"} and set(t.layer) == {10, 19}
    macro = t[t.concept == "__macro__"]
    assert macro.f1.between(0, 1).all() and macro.f1.notna().all()
    scores = np.load(next((tmp_path / "smol" / "prompt").glob("prompt_*.npy")))
    asked = np.isin(res.store.splits, ["cal", "test"])
    assert np.isfinite(scores[asked]).all() and np.isnan(scores[~asked]).all()
    assert np.std(scores[asked]) > 0  # a real model's margins vary with the text
