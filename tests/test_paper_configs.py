"""configs/paper/: every config of the paper's grid loads with exactly the expected keys, and runs
end to end with its model swapped for a tiny twin (installed in a Hub cache under the real id, so
the config's model id is used as written) on seed-layout fixture data."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from superactivators.config import load_config
from superactivators.pipeline import run_pipeline

from . import seed_fixtures as fx
from .conftest import REFERENCE_DATA

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
DATASETS = {  # slug -> (seed folder, fixture builder)
    "clevr": ("CLEVR", lambda b: fx.clevr_folder(b, per_split=3)),
    "coco": ("Coco", lambda b: fx.coco_folder(b, per_split=3)),
    "broden-pascal": ("Broden-Pascal", lambda b: fx.broden_folder(b, "Broden-Pascal", per_split=3)),
    "broden-opensurfaces": ("Broden-OpenSurfaces",
                            lambda b: fx.broden_folder(b, "Broden-OpenSurfaces", per_split=3, raw=False, pt=True)),
    "sarcasm": ("Sarcasm", lambda b: fx.text_folder(b, "Sarcasm", per_split=6)),
    "isarcasm": ("Augmented_iSarcasm", lambda b: fx.text_folder(b, "Augmented_iSarcasm", per_split=6)),
    "goemotions": ("Augmented_GoEmotions", lambda b: fx.text_folder(b, "Augmented_GoEmotions", per_split=6,
                                                                    kind="emotion")),
}
MODELS = {  # slug -> (hub id, batch size, datasets)
    "clip": ("openai/clip-vit-large-patch14", 32, ("clevr", "coco", "broden-pascal", "broden-opensurfaces")),
    "llama-vision": ("meta-llama/Llama-3.2-11B-Vision-Instruct", 8,
                     ("clevr", "coco", "broden-pascal", "broden-opensurfaces")),
    "llama-text": ("meta-llama/Llama-3.2-11B-Vision-Instruct", 8, ("sarcasm", "isarcasm", "goemotions")),
    "gemma": ("google/gemma-2-9b", 8, ("sarcasm", "isarcasm", "goemotions")),
    "qwen": ("Qwen/Qwen3-Embedding-4B", 16, ("sarcasm", "isarcasm", "goemotions")),
}
GRID = [(d, m) for m, (_, _, ds) in MODELS.items() for d in ds]


def expected(dataset: str, model: str) -> dict:
    hub, bs, _ = MODELS[model]
    return {
        "name": f"{dataset}-{model}", "output_dir": "../../runs/paper", "protocol": "seed",
        "data": {"path": f"../../Data/{DATASETS[dataset][0]}/metadata.csv", "concepts": "seed"},
        "embed": {"model": hub, "layers": "sweep", "batch_size": bs, "dtype": "auto"},
        "concepts": {"types": ["mean", "linsep"]},
    }


def test_the_grid_is_complete():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(f"{d}-{m}" for d, m in GRID)
    assert len(GRID) == 17  # 2 image models x 4 image sets + 3 text models x 3 text sets


@pytest.mark.parametrize("dataset,model", GRID)
def test_config_keys_and_values(dataset, model):
    path = CONFIGS / f"{dataset}-{model}.yaml"
    assert yaml.safe_load(path.read_text()) == expected(dataset, model)  # every key, nothing else
    cfg = load_config(path)  # and it validates as a run config
    root = CONFIGS.parents[1]  # its paths are read from its own folder: the repository's Data/ and runs/
    assert cfg.data.path == str(root / "Data" / DATASETS[dataset][0] / "metadata.csv")
    assert cfg.output_dir == str(root / "runs" / "paper") and cfg.embed.model == MODELS[model][0]
    assert cfg.protocol == "seed" and cfg.embed.protocol == "seed" and cfg.detect.methods[:2] == [
        "superactivator", "superactivator_sample"]


# --------------------------------------------------------------------------- run with tiny twins


@pytest.fixture(scope="module")
def twin_cache(tmp_path_factory):
    """A Hub cache holding tiny twins under the four real ids."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel

    from .test_models import install_in_hub_cache, save_mllama_twin, save_text_twin, tiny_clip_config

    base = tmp_path_factory.mktemp("twins")
    cache = base / "hub"
    cache.mkdir()
    torch.manual_seed(0)
    for hub, kind in (("google/gemma-2-9b", "gemma2"), ("Qwen/Qwen3-Embedding-4B", "qwen3")):
        install_in_hub_cache(cache, hub, save_text_twin(kind, base / kind, width=16, depth=2, heads=2, kv_heads=1))
    install_in_hub_cache(cache, "meta-llama/Llama-3.2-11B-Vision-Instruct", save_mllama_twin(base / "mllama"))
    clip = tiny_clip_config()
    CLIPModel(clip).eval().save_pretrained(base / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(base / "clip")
    install_in_hub_cache(cache, "openai/clip-vit-large-patch14", base / "clip")
    return cache


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    """Each dataset's seed-layout folder, built once (``Data/<Dataset>/`` under one base)."""
    base = tmp_path_factory.mktemp("Data")
    return {slug: build(base)[0] for slug, (_, build) in DATASETS.items()}


@pytest.mark.skipif(not REFERENCE_DATA.exists(), reason=f"the fixtures need the reference metadata at {REFERENCE_DATA}")
@pytest.mark.parametrize("dataset,model", GRID)
def test_config_runs_with_tiny_twin(dataset, model, twin_cache, fixture_data, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(twin_cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    root = fixture_data[dataset]
    # only what cannot stay: where the data and runs are, one layer, CPU in fp32
    cfg = load_config(CONFIGS / f"{dataset}-{model}.yaml", [
        f"data.path={root / 'metadata.csv'}", f"output_dir={tmp_path}", "embed.layers=[-1]",
        "embed.device=cpu", "embed.dtype=float32", "score_device=cpu", "detect.grid=[10, 50]"])
    if (dataset, model) == ("coco", "clip"):
        # CLIP's centre crop cuts a 40 x 30 fixture image's left margin, where the fixture draws each
        # image's first box (here always 'person' in train): no person patch remains to learn from
        from superactivators.data.datasets import load_dataset

        cfg.data.concepts = [c for c in load_dataset(root, concepts="seed").concepts if c != "person"]
    assert cfg.embed.model == MODELS[model][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny fixtures: concepts without enough positives are dropped
        res = run_pipeline(cfg, progress=False)
    info = res.store.info
    assert info.model["id"] == MODELS[model][0] and info.token_ground_truth != "sample"
    assert set(res.table["method"]) >= {"superactivator", "superactivator_sample", "global", "max_token"}
    assert set(res.table["concept_type"]) == {"mean", "linsep"}
    if model == "llama-vision":  # protocol seed: one 56-px tile per image (the twin's tile)
        assert set(res.store.lengths.tolist()) == {16}
    if model in ("gemma", "qwen", "llama-text"):
        assert info.model["global_token"] == "mean" and info.model["special_tokens"] is False
