"""Prompting baseline: yes/no logit difference from a tiny random causal LM."""

import numpy as np
import pytest
import torch

from superactivators.data.datasets import load_dataset
from superactivators.evaluate.prompting import PromptConfig, TextPrompter, concept_phrase, prompt_scores


def test_concept_phrase():
    assert concept_phrase("color::black-c") == "black (color)"
    assert concept_phrase("traffic light") == "traffic light"
    assert concept_phrase("rhetorical_question") == "rhetorical question"


def test_score_is_yes_minus_no_logit_at_last_position(tiny_lm):
    p = TextPrompter(PromptConfig(model=str(tiny_lm), batch_size=3, device="cpu"))
    texts, concepts = ["I am thrilled today.", "The bus is late, as usual, which is fine."], ["emotion::joy", "emotion::anger"]
    scores = p.score(texts, concepts)
    assert scores.shape == (2, 2)
    # direct computation, one unpadded prompt at a time
    for i, t in enumerate(texts):
        for j, c in enumerate(concepts):
            prompt = p.cfg.text_template.format(text=t, concept=concept_phrase(c))
            ids = p.tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                logits = p.model(**ids).logits[0, -1]
            assert scores[i, j] == pytest.approx(float(logits[p.yes] - logits[p.no]), abs=1e-4)


def test_prompt_scores_cached(tiny_lm, small_emotions, tmp_path):
    ds = load_dataset(small_emotions)
    ds = ds.subset_concepts(ds.concepts[:2])
    small = type(ds)(**{**ds.__dict__, "labels": ds.labels[:4], "splits": ds.splits[:4],
                        "inline_texts": ds.inline_texts[:4], "spans": None})
    cfg = PromptConfig(model=str(tiny_lm), device="cpu")
    a = prompt_scores(small, cfg, tmp_path, progress=False)
    assert a.shape == (4, 2) and np.isfinite(a).all()
    assert len(list(tmp_path.glob("prompt_*.npy"))) == 1
    np.testing.assert_array_equal(prompt_scores(small, cfg, tmp_path, progress=False), a)


def test_prompting_needs_a_model():
    with pytest.raises(ValueError, match="needs detect.prompt.model"):
        TextPrompter(PromptConfig())


def test_prompt_method_in_pipeline(tiny_lm, tiny_bert, small_emotions, tmp_path):
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({
        "name": "p", "output_dir": str(tmp_path), "score_device": "cpu",
        "data": {"path": str(small_emotions), "concepts": ["emotion::joy", "emotion::fear"]},
        "embed": {"model": str(tiny_bert), "layers": [2]},
        "concepts": {"types": ["mean"]},
        "detect": {"methods": ["superactivator", "prompt"], "prompt_model": str(tiny_lm), "grid": [10, 50],
                   "localize": False},
    })
    t = run_pipeline(cfg, progress=False).table
    assert {"superactivator", "prompt", "prompt@best_threshold"} == set(t.method)
    assert len(list((tmp_path / "p" / "prompt").glob("prompt_*.npy"))) == 1
    with pytest.raises(ValueError, match="needs detect.prompt_model"):
        config_from_dict({"detect": {"methods": ["prompt"]}})
