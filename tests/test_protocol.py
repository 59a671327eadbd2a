"""The seed protocol switch and the sample-label variant, on small hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from superactivators.concepts.supervised import ConceptSet, SeedAdam, fit_separators_seed
from superactivators.config import config_from_dict
from superactivators.data.masks import MaskOptions, Placement, patch_fractions
from superactivators.evaluate.detect import run_detection
from superactivators.evaluate.scoring import Scorer, summarise
from superactivators.store.tokens import StoreInfo, StoreWriter


def identity_concept() -> ConceptSet:
    """d = 1, w = 1, b = 0, no centring: every activation equals the token's value."""
    one = np.ones((1, 1), np.float32)
    return ConceptSet("linsep", ["c"], one, np.zeros(1, np.float32), "signed_distance", 1, np.zeros(1, np.float32), 1.0)


def value_store(tmp_path, samples, gt="sample"):
    """A 1-d store: ``samples`` = [(split, label, [token values])]."""
    info = StoreInfo(n_samples=len(samples), dim=1, layers=[1], concepts=["c"], modality="text", dtype="float32",
                     model={"id": "x"}, token_ground_truth=gt)
    labels = np.array([[lab] for _, lab, _ in samples], np.uint8)
    w = StoreWriter(tmp_path, info, labels, np.array([s for s, _, _ in samples]), shard_tokens=8)
    for _, _, vals in samples:
        x = np.asarray(vals, np.float32)[:, None]
        w.add({1: x}, {1: x.mean(0, keepdims=True)}, np.array([len(x)]), np.ones(len(x), bool))
    return w.close()


def test_sample_variant_threshold_by_hand(tmp_path):
    # cal positives: 10 tokens (top 10 % = 1 token: 9) and 20 tokens (top 2: 7, 6); a cal negative
    samples = [("train", 1, [1, 2]), ("train", 0, [0, 0]),
               ("cal", 1, [9] + [1] * 9), ("cal", 1, [7, 6] + [0] * 18), ("cal", 0, [5, 0, 0]),
               ("test", 1, [8, 0, 0]), ("test", 0, [6.5, 0, 0])]
    store = value_store(tmp_path / "s", samples)
    summ = summarise(store, identity_concept(), None)
    np.testing.assert_array_equal(np.sort(summ.populations["superactivator_sample"][0]), [6, 7, 9])
    res = {r.method: r for r in run_detection(summ, store.labels, store.splits,
                                              ["superactivator", "superactivator_sample"], [50], False)}
    # variant: median of {6, 7, 9} = 7 -> test: 8 fires, 6.5 does not
    assert res["superactivator_sample"].threshold[0] == pytest.approx(7.0)
    assert (res["superactivator_sample"].test.tp[0], res["superactivator_sample"].test.fp[0]) == (1, 0)
    # sample-label truth: all 30 tokens of the positives are "in concept"; their median is 0
    assert res["superactivator"].threshold[0] == pytest.approx(0.0)
    assert (res["superactivator"].test.tp[0], res["superactivator"].test.fp[0]) == (1, 1)


def test_random_token_population_is_an_independent_draw(tmp_path):
    rng = np.random.default_rng(0)
    samples = [("train", 1, [0.0])] + [("cal", int(i % 2 == 0), list(rng.normal(size=40))) for i in range(20)]
    store = value_store(tmp_path / "s", samples)
    ours = summarise(store, identity_concept(), None)
    seed = summarise(store, identity_concept(), None, independent_random=True)
    assert "random_token" not in ours.populations
    pop = seed.populations["random_token"][0]
    pos = np.flatnonzero(store.labels[:, 0] & (store.splits == "cal"))
    own = seed.sample_scores["random_token"][pos, 0]
    assert len(pop) == len(pos) == 10 and not np.array_equal(pop, own)  # another token per sample
    for v, i in zip(pop, pos):  # but still one of the sample's own tokens
        assert np.isclose(samples[i][2], v).any()
    np.testing.assert_array_equal(ours.sample_scores["random_token"], seed.sample_scores["random_token"])


def test_patch_truth_any_pixel_vs_coverage():
    # a 4 x 4 image, 2-px patches: one mask pixel in patch 0, three in patch 3 (of 4 pixels)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    mask[2, 2] = mask[2, 3] = mask[3, 2] = True
    pl = Placement(4, 4, 4, 4, 0, 0, 4, 4)
    content, cover = patch_fractions(pl, 2, mask[..., None])
    np.testing.assert_allclose(cover[:, 0], [0.25, 0, 0, 0.75])
    np.testing.assert_array_equal(MaskOptions().in_concept(cover[:, 0]), [False, False, False, True])
    np.testing.assert_array_equal(MaskOptions(any_pixel=True).in_concept(cover[:, 0]), [True, False, False, True])
    # padding: a patch with a sliver of image is valid under the seed's rule only
    assert not MaskOptions().is_content(np.array([0.1]))[0] and MaskOptions(any_pixel=True).is_content(np.array([0.1]))[0]


def test_seed_separator_is_bias_free_and_finds_the_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(float)[:, None]  # separable through the origin, along axis 0
    # the seed's settings (scripts/compute_all_concepts.py) are the defaults
    assert SeedAdam() == SeedAdam(lr=1e-3, weight_decay=1e-4, batch_size=64, max_epochs=1000, patience=20,
                                  tolerance=1e-3, lr_step=5, lr_gamma=0.8)
    fast = SeedAdam(lr=0.05, max_epochs=30)  # the same training loop, fewer steps for a small test
    w = fit_separators_seed(x, y, seed=0, opts=fast)[0]
    assert w[0] / np.linalg.norm(w) > 0.95
    np.testing.assert_array_equal(w, fit_separators_seed(x, y, seed=0, opts=fast)[0])  # seeded
    # scored as w.x / ||w|| with no bias: the seed's x.w up to one positive factor per concept
    cs = ConceptSet("linsep", ["c"], w[None], np.zeros(1, np.float32), "signed_distance", 1, np.zeros(3, np.float32), 1.0)
    pts = np.array([[1, 0, 0], [0, 2, 0]], np.float32)
    np.testing.assert_allclose(Scorer(cs)(pts)[:, 0], pts @ w / np.linalg.norm(w), rtol=1e-5)


def test_protocol_key_and_its_reach():
    assert config_from_dict({}).protocol == "ours"
    cfg = config_from_dict({"protocol": "seed"})
    assert cfg.embed.protocol == "seed"
    with pytest.raises(ValueError, match="protocol must be one of"):
        config_from_dict({"protocol": "paper"})
    with pytest.raises(ValueError, match="derived from the top-level"):
        config_from_dict({"embed": {"protocol": "seed"}})
    # ours keeps existing store hashes; seed changes them
    from superactivators.encoders.base import EmbedConfig

    assert EmbedConfig().key() == EmbedConfig(protocol="ours").key() != EmbedConfig(protocol="seed").key()


@pytest.fixture(scope="module")
def text_twins(tmp_path_factory):
    """Tiny Gemma-2 (``<bos>`` first) and Qwen3 (``<|endoftext|>`` appended) with word tokenizers."""
    import torch
    from transformers import Gemma2Config, Gemma2Model, Qwen3Config, Qwen3Model

    from .test_models import _ids, word_tokenizer

    torch.manual_seed(0)
    common = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                  intermediate_size=32, max_position_embeddings=128)
    out = {}
    for kind, cfg_cls, model_cls, extra in (("gemma2", Gemma2Config, Gemma2Model, {"sliding_window": 8}),
                                            ("qwen3", Qwen3Config, Qwen3Model, {})):
        tok = word_tokenizer(kind)
        path = tmp_path_factory.mktemp(kind)
        model_cls(cfg_cls(vocab_size=len(tok), **common, **extra, **_ids(tok))).eval().save_pretrained(path)
        tok.save_pretrained(path)
        out[kind] = path
    return out


def _enc(path, protocol, **kw):
    from superactivators.encoders.base import EmbedConfig
    from superactivators.encoders.text import TextEncoder

    return TextEncoder(EmbedConfig(model=str(path), layers=[2], device="cpu", store_dtype="float32",
                                   protocol=protocol, **kw))


def test_text_seed_protocol_specials_truncation_global(text_twins):
    texts = ["i am so happy for you today", "thank you"]
    g_ours, g_seed = _enc(text_twins["gemma2"], "ours"), _enc(text_twins["gemma2"], "seed")
    a, b = g_ours.encode(texts), g_seed.encode(texts)
    # the same 7 + 2 word tokens are stored; ours ran them after <bos>, the seed without it
    np.testing.assert_array_equal(a.lengths, [7, 2])
    np.testing.assert_array_equal(b.lengths, [7, 2])
    assert not np.allclose(a.tokens[2], b.tokens[2], atol=1e-4)
    assert g_seed.describe()["special_tokens"] is False
    # Qwen3: ours pools the appended <|endoftext|> (last token), the seed mean-pools the stored tokens
    q_ours, q_seed = _enc(text_twins["qwen3"], "ours"), _enc(text_twins["qwen3"], "seed")
    assert (q_ours.global_token, q_seed.global_token) == ("last", "mean")
    s = q_seed.encode(texts)
    np.testing.assert_allclose(s.globals[2][0], s.tokens[2][:7].mean(0), rtol=1e-5, atol=1e-6)
    # truncation: ours stops at max_length (3 incl. <bos>: 2 stored), the seed keeps the whole text
    np.testing.assert_array_equal(_enc(text_twins["gemma2"], "ours", max_length=3).encode(texts).lengths, [2, 2])
    np.testing.assert_array_equal(_enc(text_twins["gemma2"], "seed", max_length=3).encode(texts).lengths, [7, 2])


def test_mllama_seed_protocol_one_tile(tmp_path):
    """A 100 x 30 image: the seed pre-resizes to 56 x 16 (tile 56), one tile, any-pixel validity."""
    import torch
    from PIL import Image
    from transformers import MllamaForConditionalGeneration, MllamaImageProcessorPil

    from superactivators.encoders.base import EmbedConfig
    from superactivators.encoders.mllama import MllamaImageEncoder

    from .test_models import _ids, tiny_mllama_config, word_tokenizer

    torch.manual_seed(0)
    tok = word_tokenizer("mllama")
    MllamaForConditionalGeneration(tiny_mllama_config(len(tok), **_ids(tok))).eval().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    MllamaImageProcessorPil(size={"height": 56, "width": 56}, max_image_tiles=4).save_pretrained(tmp_path)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 100, 3), dtype=np.uint8))
    seed = MllamaImageEncoder(EmbedConfig(model=str(tmp_path), layers=[1], device="cpu", protocol="seed"),
                              mask_options=MaskOptions(any_pixel=True))
    assert seed.seed_fit(im).size == (56, 16)  # 56 / (100 / 30) = 16.8 -> 16 (int, as the seed)
    b = seed.encode_images([im])
    geo = seed.geometries([im])[0]
    assert (geo.tiles_h, geo.tiles_w, geo.orig_h, geo.orig_w) == (1, 1, 30, 100)
    # 4 x 4 patches of 14 px; rows 0-13 and 14-15 hold image: 2 rows valid under "any pixel"
    assert b.lengths.tolist() == [16] and int(b.valid.sum()) == 8
    ours = MllamaImageEncoder(EmbedConfig(model=str(tmp_path), layers=[1], device="cpu"))
    assert ours.encode_images([im]).lengths.tolist() != [16]  # the processor tiles the 100 x 30 image itself


def test_sample_labels_only_run_says_so(tmp_path, small_emotions, tiny_bert, caplog):
    """Spans withheld: the store, dataset-info, the run log and the report all say there is no token truth."""
    import logging

    from superactivators.data.datasets import SAMPLE_LABELS_NOTE, dataset_summary, load_dataset, withhold_token_truth
    from superactivators.pipeline import run_pipeline
    from superactivators.report.html import build_report

    ds = load_dataset(small_emotions)
    assert ds.spans is not None and SAMPLE_LABELS_NOTE not in dataset_summary(ds)
    assert SAMPLE_LABELS_NOTE in dataset_summary(withhold_token_truth(ds))
    cfg = config_from_dict({"name": "nospans", "output_dir": str(tmp_path), "score_device": "cpu",
                            "data": {"path": str(small_emotions), "sample_labels_only": True},
                            "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 32},
                            "concepts": {"types": ["mean"]}, "detect": {"grid": [10, 50]}})
    with caplog.at_level(logging.WARNING, logger="superactivators.pipeline"):
        res = run_pipeline(cfg, progress=False)
    assert res.store.info.token_ground_truth == "sample" and res.localization is None
    assert any(SAMPLE_LABELS_NOTE in r.getMessage() for r in caplog.records)
    assert {"superactivator", "superactivator_sample"} <= set(res.table["method"])
    page = build_report(res.run_dir, tmp_path / "report", formats=("png",), n_examples=1, workers=1)
    assert "sample-labels-note" in page.read_text()
    # the same data with its spans: another store, token truth from the spans
    res2 = run_pipeline(config_from_dict({**cfg.to_dict(), "name": "spans",
                                          "data": {**cfg.to_dict()["data"], "sample_labels_only": False}}),
                        progress=False)
    assert res2.store.info.token_ground_truth == "spans" and res2.store.path != res.store.path
