"""The AxBench reader on a small fixture built here (issue 22, items 2 and 3)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from superactivators.data.axbench import (axbench_table, chat_formatter, plain_format, settings_in, slug,
                                          write_axbench_dataset)
from superactivators.data.datasets import load_dataset
from superactivators.data.errors import DatasetError


def make_setting(root, n_pos=10, n_neg=10, n_eval=4, n_hard=2):
    """Two concepts: ``n_pos`` train positives each, ``n_neg`` shared negatives, per concept
    ``n_eval`` eval positives, ``n_eval`` eval negatives and ``n_hard`` hard negatives."""
    root.mkdir(parents=True, exist_ok=True)
    tr = []
    for c in (0, 1):
        tr += [{"input": f"ask {c}.{i}", "output": f"answer about topic{c} number {i}", "category": "positive",
                "concept_id": c} for i in range(n_pos)]
    tr += [{"input": f"ask n{i}", "output": f"plain answer {i}", "category": "negative", "concept_id": -1}
           for i in range(n_neg)]
    ev = []
    for c in (0, 1):
        for cat, k in (("positive", n_eval), ("negative", n_eval), ("hard negative", n_hard)):
            ev += [{"input": f"q {c} {cat} {i}", "output": f"{cat} reply topic{c} {i}", "category": cat,
                    "concept_id": c} for i in range(k)]
    for df, name in ((tr, "train_data.parquet"), (ev, "latent_eval_data.parquet")):
        d = pd.DataFrame(df)
        d["output_concept"] = "x"
        d.to_parquet(root / name)
    (root / "metadata.jsonl").write_text("\n".join(json.dumps({"concept_id": c, "concept": d}) for c, d in
                                                   ((0, "Topic Zero, things!"), (1, "topic one"))) + "\n")
    return root


def test_scoped_view_labels_splits_and_hard_negatives(tmp_path):
    t, concepts = axbench_table(make_setting(tmp_path / "s"), "scoped", seed=0)
    assert concepts == ["topic_zero_things", "topic_one"]
    train = t[t.axbench_source == "train"]
    # 20 positives + 10 shared negatives; per group round(0.3 n) to cal: 3 + 3 + 3 = 9
    assert len(train) == 30 and (train.split == "cal").sum() == 9
    for cid in ("0", "1", "-1"):
        g = train[train.axbench_concept_id == cid]
        assert (g.split == "cal").sum() == 3
    # every train row is labelled for every concept: own positives 1, the rest 0
    assert (train["topic_zero_things"] == np.where(train.axbench_concept_id == "0", "1", "0")).all()
    assert set(train["hard_negative::topic_one"]) == {"0"}
    ev = t[t.axbench_source == "eval"]
    assert (ev.split == "test").all() and len(ev) == 20
    own0 = ev[ev.axbench_concept_id == "0"]
    assert list(own0["topic_zero_things"]) == ["1"] * 4 + ["0"] * 4 + ["0"] * 2  # hard negatives are negatives
    assert list(own0["hard_negative::topic_zero_things"]) == ["0"] * 8 + ["1"] * 2
    other = ev[ev.axbench_concept_id == "1"]
    assert set(other["topic_zero_things"]) == {""} and set(other["hard_negative::topic_zero_things"]) == {""}


def test_multilabel_view_labels_every_eval_row(tmp_path):
    t, _ = axbench_table(make_setting(tmp_path / "s"), "multilabel")
    ev = t[t.axbench_source == "eval"]
    assert "" not in set(ev["topic_zero_things"])
    assert list(ev[ev.axbench_concept_id == "1"]["topic_zero_things"]) == ["0"] * 10  # others' positives: 0
    with pytest.raises(ValueError, match="view"):
        axbench_table(tmp_path / "s", "both")


def test_split_is_seeded(tmp_path):
    s = make_setting(tmp_path / "s")
    a, _ = axbench_table(s, seed=1)
    b, _ = axbench_table(s, seed=1)
    c, _ = axbench_table(s, seed=2)
    assert (a.split == b.split).all() and not (a.split == c.split).all()


def test_plain_text_marks_the_instruction_as_context(tmp_path):
    text, n = plain_format("Why?", "Because.")
    assert text == "Why?\n\nBecause." and text[n:] == "Because."
    t, _ = axbench_table(make_setting(tmp_path / "s"))
    r = t.iloc[0]
    assert r.text[int(r.context_chars):] == "answer about topic0 number 0"


def test_written_dataset_loads_with_missing_labels(tmp_path):
    path, concepts = write_axbench_dataset(make_setting(tmp_path / "s"), tmp_path / "out", "scoped")
    with pytest.raises(DatasetError, match="blank label"):
        load_dataset(path, concepts=concepts)
    ds = load_dataset(path, concepts=concepts, missing_labels="allow")
    assert ds.concepts == concepts and ds.context_chars is not None
    test = ds.splits == "test"
    # scoped: each concept known on its own 10 eval rows only, and on every train/cal row
    assert ds.known[test].sum(axis=0).tolist() == [10, 10] and ds.known[~test].all()
    assert ds.text(0)[ds.context_chars[0]:] == "answer about topic0 number 0"


def test_settings_and_errors(tmp_path):
    s = make_setting(tmp_path / "root" / "a")
    make_setting(tmp_path / "root" / "b")
    assert settings_in(tmp_path / "root") == [tmp_path / "root" / "a", tmp_path / "root" / "b"]
    assert settings_in(s) == [s]
    with pytest.raises(DatasetError, match="no AxBench setting"):
        settings_in(tmp_path)
    (s / "metadata.jsonl").write_text(json.dumps({"concept_id": 0, "concept": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"concept_id\(s\) \[1\] are not in metadata.jsonl"):
        axbench_table(s)
    assert slug("  Hello, World!! ") == "hello_world"


def test_chat_template_prefix_is_context(tiny_gpt2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert chat_formatter(tok) is None  # no template: the plain format is used
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    text, n = chat_formatter(tok)("Why?", "Because.")
    assert text == "<|user|>Why?\n<|assistant|>Because." and text[n:] == "Because."
    # a template that writes the BOS itself: GPT-2's tokenizer adds none, so the template's stays ...
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    text, n = chat_formatter(tok)("Why?", "Because.")
    assert text == "<|endoftext|><|user|>Why?\n<|assistant|>Because." and text[n:] == "Because."

    class AddsBos:  # ... a tokenizer that adds its own BOS (Gemma's) gets it once, from itself
        chat_template, bos_token, bos_token_id = "t", "<bos>", 2

        def __call__(self, text):
            return {"input_ids": [2, 7]}

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<bos><user>{messages[0]['content']}<model>"

    text, n = chat_formatter(AddsBos())("Why?", "Because.")
    assert text == "<user>Why?<model>Because." and text[n:] == "Because."


def test_context_tokens_are_embedded_but_not_stored(tmp_path, tiny_gpt2):
    """A decoder with a chat template: the template and instruction tokens change the response's
    hidden states (they are in the forward pass) but are never stored."""
    from transformers import AutoTokenizer

    from superactivators.encoders.base import EmbedConfig
    from superactivators.encoders.text import TextEncoder

    import shutil

    model = tmp_path / "lm"
    shutil.copytree(tiny_gpt2, model)  # the session's model stays without a template
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    tok.save_pretrained(model)
    text, n = chat_formatter(AutoTokenizer.from_pretrained(model))("I feel happy today", "I am so glad to hear that")
    enc = TextEncoder(EmbedConfig(model=str(model), layers=[2], batch_size=2))
    full = enc.encode([text])
    ctx = enc.encode([text], context_chars=[n])
    resp = enc.encode([text[n:]])
    # stored tokens: exactly those ending after the context; all of them lie in the response
    keep = full.char_spans[:, 1] > n
    assert ctx.lengths[0] == keep.sum() < full.lengths[0]
    assert (ctx.char_spans[:, 1] > n).all()
    np.testing.assert_array_equal(ctx.tokens[2], full.tokens[2][keep])
    # the context was in the forward pass: the response alone gives other hidden states
    assert ctx.lengths[0] != resp.lengths[0] or not np.allclose(ctx.tokens[2], resp.tokens[2])
