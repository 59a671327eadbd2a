"""Prompting baseline: yes/no logit difference from a tiny random causal LM."""

import numpy as np
import pandas as pd
import pytest
import torch

from superactivators.data.datasets import load_dataset
from superactivators.prompting.lm import (
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
    # the margin is a pooled score: calibrated like a baseline, with its free and 1 % / 5 % FPR references
    assert {"superactivator", "prompt", "prompt@best_threshold", "prompt@fpr=1%", "prompt@fpr=5%",
            "prompt_seed"} == set(t.method)
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


# ---- image prompting: tiny Mllama and Qwen2.5-VL twins -------------------------------------------------

IMAGE_WORDS = ("Is there a in this image ? Answer yes or no . Yes No FINAL ANSWER : The input is an which may "
               "contain concepts from the list [ ] , Examine it and then output just word if contains otherwise "
               "after unsure of try to choose best option ( ) red sphere color shape user assistant").split()


def _word_tokenizer(specials: list[str]):
    """A case-keeping word-level tokenizer over the prompts' words (``Yes`` and ``No`` distinct tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator([" ".join(IMAGE_WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", *specials]))
    return tk


@pytest.fixture(scope="module")
def tiny_mllama_vlm(tmp_path_factory):
    """Mllama with a 4-tile vision tower, 2 cross-attention layers whose gates are opened (zero at init)."""
    from transformers import (
        MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor, MllamaTextConfig,
        MllamaVisionConfig, PreTrainedTokenizerFast,
    )

    tk = _word_tokenizer(["<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"])
    vocab = tk.get_vocab_size()
    tk.add_special_tokens(["<|image|>"])  # id == text vocab size, as in the real checkpoint (128256)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    vc = MllamaVisionConfig(hidden_size=32, num_hidden_layers=3, num_global_layers=2, attention_heads=4,
                            intermediate_size=64, vision_output_dim=96, image_size=56, patch_size=14,
                            max_num_tiles=4, intermediate_layers_indices=[0, 2])
    tc = MllamaTextConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, cross_attention_layers=[1, 3],
                          max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vc, text_config=tc, image_token_index=vocab))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cross_attn" in name and "gate" in name:
                p.fill_(1.0)
    template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} :{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<|image|>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
                "<|eot_id|>{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    proc = MllamaProcessor(MllamaImageProcessorPil(size={"height": 56, "width": 56}, max_image_tiles=4), tok,
                           chat_template=template)
    out = tmp_path_factory.mktemp("mllama_vlm")
    model.eval().save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_qwen_vlm(tmp_path_factory):
    """Qwen2.5-VL: a 2-block windowed vision tower (merge 2 x 2) and a 2-block M-RoPE text model."""
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(specials), unk_token="<unk>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                         "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
                         "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen_vlm")
    Qwen2_5_VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                             temporal_patch_size=2).save_pretrained(out)
    return out


def _images(n: int):
    from PIL import Image

    return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 80, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("twin", ["tiny_mllama_vlm", "tiny_qwen_vlm"])
def test_image_prompter_margin_is_yes_minus_no_after_the_question(twin, request):
    from superactivators.prompting.lm import ImagePrompter

    p = ImagePrompter(PromptConfig(model=str(request.getfixturevalue(twin)), device="cpu"))
    tok = p.processor.tokenizer
    assert (p.yes, p.no) == (tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")) and p.yes != p.no
    concepts = ["color::red", "shape::sphere"]
    imgs = _images(2)
    scores = p.score(imgs, concepts)
    assert scores.shape == (2, 2) and np.isfinite(scores).all()
    for i, img in enumerate(imgs):
        for j, c in enumerate(concepts):
            enc = p._inputs(img, c, concepts)
            text = tok.decode(enc["input_ids"][0])
            question = tok(p.cfg.image_template.format(concept=concept_phrase(c)), add_special_tokens=False)
            assert tok.decode(question["input_ids"]) in text and "assistant" in text[-12:]
            image_id = p.model.config.image_token_id if twin == "tiny_qwen_vlm" else p.model.config.image_token_index
            n_image = int((enc["input_ids"][0] == image_id).sum())
            if twin == "tiny_qwen_vlm":  # one token per merged 2 x 2 patch group
                assert n_image == int(enc["image_grid_thw"][0].prod()) // 4 > 1
            else:
                assert n_image == 1 and enc["pixel_values"].shape[2] == 4  # one <|image|>, 4 tiles
            with torch.no_grad():
                logits = p.model(**enc).logits[0, -1]
            assert scores[i, j] == pytest.approx(float(logits[p.yes] - logits[p.no]), abs=1e-5)
    # the image reaches the answer: two images, two margins
    assert not np.allclose(scores[0], scores[1])


@pytest.mark.parametrize("twin", ["tiny_mllama_vlm", "tiny_qwen_vlm"])
def test_image_prompter_seed_protocol_generates_and_parses(twin, request):
    from superactivators.prompting.lm import ImagePrompter

    p = ImagePrompter(PromptConfig(model=str(request.getfixturevalue(twin)), device="cpu", protocol="seed",
                                   max_new_tokens=3))
    concepts = ["color::red", "shape::sphere"]
    msgs = p.messages("shape::sphere", concepts)[0]["content"]
    assert [m["type"] for m in msgs] == ["text", "image", "text"]  # the seed puts the image first
    assert "'Yes' if the image contains sphere" in msgs[2]["text"] and "['red', 'sphere']" in msgs[2]["text"]
    imgs = _images(2)
    dec, answers = p.answer(imgs, concepts)
    assert dec.shape == (2, 2) and set(np.unique(dec)) <= {0.0, 1.0}
    tok = p.processor.tokenizer
    for i, img in enumerate(imgs):
        for j, c in enumerate(concepts):
            enc = p._inputs(img, c, concepts)
            with torch.no_grad():
                gen = p.model.generate(**enc, max_new_tokens=3, do_sample=False)
            expect = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            assert answers[i][j] == expect and dec[i, j] == parse_seed_answer(expect)


def test_qwen_vl_without_torchvision_uses_tokenizer_and_image_processor(tiny_qwen_vlm):
    from transformers import AutoTokenizer
    from transformers.utils import is_torchvision_available

    from superactivators.prompting.lm import ImageTokenProcessor, load_image_processor

    proc = load_image_processor(tiny_qwen_vlm)
    assert isinstance(proc, ImageTokenProcessor) != is_torchvision_available()
    with pytest.raises(ValueError, match="must hold one"):
        ImageTokenProcessor(proc.tokenizer, proc.image_processor)(_images(1)[0], "no image token here")
    plain = AutoTokenizer.from_pretrained(tiny_qwen_vlm)
    with pytest.raises(ValueError, match="has no '<\\|vision_pad\\|>' token"):
        ImageTokenProcessor(plain, proc.image_processor, image_token="<|vision_pad|>")


def test_prompt_scores_on_an_image_dataset(tiny_qwen_vlm, tmp_path):
    from superactivators.data.shapes import generate_shapes

    generate_shapes(tmp_path / "shapes", n=36, seed=0, size=64)  # every split
    ds = load_dataset(tmp_path / "shapes")
    ds = ds.subset_concepts(ds.concepts[:2])
    cfg = PromptConfig(model=str(tiny_qwen_vlm), device="cpu")
    a = prompt_scores(ds, cfg, tmp_path / "cache", progress=False)
    asked = np.isin(ds.splits, ["cal", "test"])
    assert asked.any() and (~asked).any()
    assert np.isfinite(a[asked]).all() and np.isnan(a[~asked]).all()
    np.testing.assert_array_equal(prompt_scores(ds, cfg, tmp_path / "cache", progress=False), a)
