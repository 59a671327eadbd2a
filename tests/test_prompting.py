"""Prompting baseline: yes/no logit difference from a tiny random causal LM."""

import numpy as np
import pandas as pd
import pytest
import torch

from superactivators.data.datasets import load_dataset
from superactivators.evaluate.prompting import (
    PromptConfig, TextPrompter, concept_phrase, parse_seed_answer, prompt_scores, seed_instruction,
)


def test_concept_phrase():
    assert concept_phrase("color::black-c") == "black (color)"
    assert concept_phrase("traffic light") == "traffic light"
    assert concept_phrase("rhetorical_question") == "rhetorical question"


def test_score_is_yes_minus_no_logit_at_last_position(tiny_lm):
    p = TextPrompter(PromptConfig(model=str(tiny_lm), batch_size=3, device="cpu"))
    assert not p.chat  # the tiny GPT-2 tokenizer has no chat template: the raw prompt
    texts = ["I am thrilled today.", "The bus is late, as usual, which is fine."]
    concepts = ["emotion::joy", "emotion::anger", "emotion::surprise"]
    scores = p.score(texts, concepts)
    assert scores.shape == (2, 3)
    # direct computation, one whole unpadded prompt at a time (no shared prefix, no cache)
    for i, t in enumerate(texts):
        for j, c in enumerate(concepts):
            prompt = p.cfg.text_template.format(text=t, concept=concept_phrase(c))
            ids = p.tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                logits = p.model(**ids).logits[0, -1]
            assert scores[i, j] == pytest.approx(float(logits[p.yes] - logits[p.no]), abs=1e-4)


def test_chat_template_prompt_and_capitalised_answer_tokens(tiny_lm, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    chat_lm = tmp_path / "chat_lm"
    shutil.copytree(tiny_lm, chat_lm)
    tok = AutoTokenizer.from_pretrained(chat_lm)
    tok.chat_template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    tok.save_pretrained(chat_lm)
    p = TextPrompter(PromptConfig(model=str(chat_lm), device="cpu"))
    assert p.chat
    assert p.yes == tok("Yes", add_special_tokens=False)["input_ids"][0]
    prompt = p.margin_prompt("Thanks a lot!", "emotion::gratitude")
    assert prompt.startswith("<|endoftext|>user: Thanks a lot!") and prompt.endswith("Answer Yes or No.\nassistant:")
    score = p.score(["Thanks a lot!"], ["emotion::gratitude", "emotion::joy"])
    ids = p.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = p.model(**ids).logits[0, -1]
    assert score[0, 0] == pytest.approx(float(logits[p.yes] - logits[p.no]), abs=1e-4)
    with pytest.raises(ValueError, match="no chat template"):
        TextPrompter(PromptConfig(model=str(tiny_lm), chat="always"))


def test_seed_instruction_and_answer_parsing():
    text = seed_instruction(["emotion::joy", "emotion::anger"], "emotion::anger")
    assert "from the list ['joy', 'anger']. Examine it" in text
    assert "output just the word 'Yes' if the text contains anger, otherwise 'No' after 'FINAL ANSWER:'" in text
    assert parse_seed_answer("FINAL ANSWER: Yes") == 1
    assert parse_seed_answer("The text is calm. **FINAL ANSWER:** No") == 0
    assert parse_seed_answer("Yes, I think so. FINAL ANSWER: No") == 0  # the last marker decides
    assert parse_seed_answer("Yes") == 1 and parse_seed_answer("yes") == 0  # case-sensitive, like the seed
    assert parse_seed_answer("Final answer: Yes.") == 1


def test_seed_protocol_generates_and_parses(tiny_lm):
    p = TextPrompter(PromptConfig(model=str(tiny_lm), protocol="seed", max_new_tokens=4, batch_size=2,
                                  device="cpu"))
    texts, concepts = ["I am thrilled today.", "So angry at the bus."], ["emotion::joy", "emotion::anger"]
    dec, answers = p.answer(texts, concepts)
    assert dec.shape == (2, 2) and set(np.unique(dec)) <= {0.0, 1.0}
    # the same greedy answers, one unpadded prompt at a time
    for i, t in enumerate(texts):
        for j, c in enumerate(concepts):
            ids = p.tokenizer(p.seed_prompt(t, c, concepts), return_tensors="pt")
            with torch.no_grad():
                gen = p.model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=p.tokenizer.pad_token_id)
            expect = p.tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            assert answers[i][j] == expect and dec[i, j] == parse_seed_answer(expect)


def test_prompt_scores_cached(tiny_lm, small_emotions, tmp_path):
    ds = load_dataset(small_emotions)
    ds = ds.subset_concepts(ds.concepts[:2])
    idx = np.r_[0, 1, 60, 90]  # train, train, cal, test
    small = type(ds)(**{**ds.__dict__, "labels": ds.labels[idx], "splits": ds.splits[idx],
                        "inline_texts": [ds.inline_texts[i] for i in idx], "spans": None})
    assert list(small.splits) == ["train", "train", "cal", "test"]
    cfg = PromptConfig(model=str(tiny_lm), device="cpu")
    a = prompt_scores(small, cfg, tmp_path, progress=False)
    asked = np.isin(small.splits, ["cal", "test"])
    assert a.shape == (4, 2) and np.isfinite(a[asked]).all() and np.isnan(a[~asked]).all()
    assert len(list(tmp_path.glob("prompt_*.npy"))) == 1
    np.testing.assert_array_equal(prompt_scores(small, cfg, tmp_path, progress=False), a)


def test_prompting_needs_a_model():
    with pytest.raises(ValueError, match="needs detect.prompt.model"):
        TextPrompter(PromptConfig())


def test_prompt_methods_in_pipeline(tiny_lm, tiny_bert, small_emotions, tmp_path):
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({
        "name": "p", "output_dir": str(tmp_path), "score_device": "cpu",
        "data": {"path": str(small_emotions), "concepts": ["emotion::joy", "emotion::fear"]},
        "embed": {"model": str(tiny_bert), "layers": [2]},
        "concepts": {"types": ["mean"]},
        "detect": {"methods": ["superactivator", "prompt", "prompt_seed"], "prompt_model": str(tiny_lm),
                   "grid": [10, 50], "localize": False, "prompt_max_new_tokens": 3},
    })
    res = run_pipeline(cfg, progress=False)
    t = res.table
    assert {"superactivator", "prompt", "prompt@best_threshold", "prompt_seed"} == set(t.method)
    assert len(list((tmp_path / "p" / "prompt").glob("prompt_*.npy"))) == 2
    # the seed protocol: test samples only, its parsed answers scored as they are
    answers = pd.read_csv(next((tmp_path / "p" / "prompt").glob("prompt_*_answers.csv")), keep_default_na=False)
    test = np.flatnonzero(res.store.splits == "test")
    assert answers["sample"].tolist() == test.tolist()
    for c, concept in enumerate(["emotion::joy", "emotion::fear"]):
        pred = np.array([parse_seed_answer(a) for a in answers[concept]], bool)
        truth = res.store.labels[test, c].astype(bool)
        tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
        row = t[(t.method == "prompt_seed") & (t.concept == concept)].iloc[0]
        assert (row.tp, row.fp, row.fn) == (tp, fp, fn) and np.isnan(row.n_pct)
        assert row.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    with pytest.raises(ValueError, match="needs detect.prompt_model"):
        config_from_dict({"detect": {"methods": ["prompt_seed"]}})
