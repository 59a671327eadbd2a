"""Model families: tiny randomly initialised twins of the seed's four models, through the store.

Twins: Gemma2Model, Qwen3Model, MllamaForConditionalGeneration (text and vision sides), with
small word-level tokenizers whose special tokens follow the real ones (Gemma ``<bos>`` first,
Llama ``<|begin_of_text|>`` first, Qwen3-Embedding ``<|endoftext|>`` appended and equal to the
pad token); CLIP / ViT / DINOv2 / SigLIP vision towers for the block hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from superactivators.data.datasets import load_dataset
from superactivators.encoders.base import EmbedConfig
from superactivators.encoders.capture import LayerTap
from superactivators.encoders.factory import make_encoder
from superactivators.encoders.layers import percent_to_layer
from superactivators.encoders.mllama import MllamaImageEncoder, split_tile_tokens, tile_geometry, tiles_to_canvas
from superactivators.encoders.registry import (
    FAMILIES,
    GENERIC_TEXT,
    REFERENCE_MODELS,
    UnknownModelFamily,
    family_for,
    get_family,
    reference_table,
    store_bytes,
)
from superactivators.encoders.text import TextEncoder
from superactivators.store.embed import embed_dataset

from .conftest import write_small_emotions

SPECIALS = {
    "gemma2": ({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, "<bos> $A"),
    "mllama": ({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"},
               "<|begin_of_text|> $A"),
    "qwen3": ({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, "$A <|endoftext|>"),
}


def word_tokenizer(kind: str):
    """A word-level fast tokenizer trained on the built-in texts, special tokens as in ``kind``."""
    import pandas as pd
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from superactivators.data.builtin import builtin_dataset_path

    specials, template = SPECIALS[kind]
    names = list(dict.fromkeys(specials.values()))
    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = pd.read_csv(builtin_dataset_path("emotions"))["text"].tolist()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=300, special_tokens=["<unk>", *names]))
    tk.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tk.token_to_id(t)) for t in names if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", **specials)


def _ids(tok) -> dict:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def tiny_mllama_config(vocab: int, **tok_ids):
    from transformers import MllamaConfig, MllamaTextConfig, MllamaVisionConfig

    vc = MllamaVisionConfig(hidden_size=32, num_hidden_layers=3, num_global_layers=2, attention_heads=4,
                            intermediate_size=64, vision_output_dim=32 * 3, image_size=56, patch_size=14,
                            max_num_tiles=4, intermediate_layers_indices=[0, 2])
    tc = MllamaTextConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, cross_attention_layers=[1, 4],
                          max_position_embeddings=256, **tok_ids)
    return MllamaConfig(vision_config=vc, text_config=tc, image_token_index=vocab)


def tiny_clip_config():
    """CLIP ViT-L/14's depth (24 vision blocks) at toy width, 56-px images."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "num_hidden_layers": 24, "num_attention_heads": 2, "intermediate_size": 32,
                       "image_size": 56, "patch_size": 14},
        projection_dim=8,
    )


def save_text_twin(kind: str, path, width: int, depth: int, heads: int, kv_heads: int):
    """A tiny Gemma2Model or Qwen3Model with its word tokenizer, saved at ``path``."""
    from transformers import Gemma2Config, Gemma2Model, Qwen3Config, Qwen3Model

    cfg_cls, model_cls, extra = {"gemma2": (Gemma2Config, Gemma2Model, {"sliding_window": 8}),
                                 "qwen3": (Qwen3Config, Qwen3Model, {})}[kind]
    tok = word_tokenizer(kind)
    cfg = cfg_cls(vocab_size=len(tok), hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=8, intermediate_size=2 * width,
                  max_position_embeddings=256, **extra, **_ids(tok))
    model_cls(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_mllama_twin(path):
    """A full tiny Mllama checkpoint (model, tokenizer, 4-tile image processor) at ``path``."""
    from transformers import MllamaForConditionalGeneration, MllamaImageProcessorPil

    tok = word_tokenizer("mllama")
    MllamaForConditionalGeneration(tiny_mllama_config(len(tok), **_ids(tok))).eval().save_pretrained(path)
    tok.save_pretrained(path)
    MllamaImageProcessorPil(size={"height": 56, "width": 56}, max_image_tiles=4).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict:
    """Saved tiny twins: gemma2, qwen3 and a full Mllama checkpoint (tokenizer + image processor)."""
    torch.manual_seed(0)
    out = {kind: save_text_twin(kind, tmp_path_factory.mktemp(kind), width=32, depth=4, heads=4, kv_heads=2)
           for kind in ("gemma2", "qwen3")}
    out["mllama"] = save_mllama_twin(tmp_path_factory.mktemp("mllama"))
    return out


@pytest.fixture(scope="module")
def tiny_texts(tmp_path_factory):
    return load_dataset(write_small_emotions(tmp_path_factory.mktemp("em"), {"train": 4, "cal": 2, "test": 2}))


# --------------------------------------------------------------------------- registry and layers


def test_seed_sweeps_map_to_hand_computed_blocks():
    # the seed's rule: layer = floor(p n / 100) clamped to [1, n]; e.g. Gemma 75 % of 42 = 31.5 -> 31
    expected = {
        ("openai/clip-vit-large-patch14", "clip-vision"): (24, 1024, (1, 6, 11, 16, 21, 24)),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-vision"): (40, 1280, (1, 6, 11, 16, 20, 26, 31, 36, 40)),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-text"): (32, 4096, (1, 6, 10, 16, 21, 25, 31, 32)),
        ("google/gemma-2-9b", "gemma2"): (42, 3584, (1, 8, 16, 23, 31, 39, 42)),
        ("Qwen/Qwen3-Embedding-4B", "qwen3"): (36, 2560, (1, 6, 12, 18, 23, 29, 34, 36)),
    }
    got = {(r.hub_id, r.family): (r.n_layers, r.hidden_size, r.layers) for r in reference_table()}
    assert got == expected
    assert percent_to_layer(75, 42) == 31 and percent_to_layer(4, 42) == 1 and percent_to_layer(2, 40) == 1
    assert get_family("clip-vision").sweep == (4, 25, 46, 67, 88, 100)
    assert get_family("mllama-vision").sweep == (2, 15, 28, 40, 52, 65, 78, 90, 100)
    assert get_family("mllama-text").sweep == get_family("qwen3").sweep == (3, 19, 34, 50, 66, 81, 97, 100)
    assert get_family("gemma2").sweep == (4, 21, 39, 57, 75, 93, 100)


def test_store_size_estimates_by_hand():
    rows = {(r.hub_id, r.family): r for r in reference_table()}
    assert store_bytes(5000, 256, 1024) == 2_621_440_000  # CLIP: 5000 * 256 * 1024 * 2 B
    assert rows[("openai/clip-vit-large-patch14", "clip-vision")].store_gb_5000 == pytest.approx(2.62144)
    assert rows[("google/gemma-2-9b", "gemma2")].store_gb_5000 == pytest.approx(5000 * 200 * 3584 * 2 / 1e9)
    assert rows[("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-vision")].store_gb_5000 == pytest.approx(40.96)


def test_family_for_ids_configs_and_errors():
    from transformers import BertConfig, CLIPVisionConfig, Gemma2Config, Qwen3Config

    assert family_for("openai/clip-vit-large-patch14").name == "clip-vision"
    assert family_for("google/gemma-2-9b").name == "gemma2"
    assert family_for("qwen/qwen3-embedding-4b").name == "qwen3"  # ids are case-insensitive
    assert family_for("meta-llama/Llama-3.2-11B-Vision-Instruct", "image").name == "mllama-vision"
    assert family_for("meta-llama/Llama-3.2-11B-Vision-Instruct", "text").name == "mllama-text"
    with pytest.raises(UnknownModelFamily, match="modality"):
        family_for("meta-llama/Llama-3.2-11B-Vision-Instruct")
    mll = tiny_mllama_config(50)
    assert family_for(mll, "text").name == "mllama-text" and family_for(mll.vision_config).name == "mllama-vision"
    assert family_for(CLIPVisionConfig()).name == "clip-vision"
    assert family_for(Gemma2Config()).name == "gemma2" and family_for(Qwen3Config()).name == "qwen3"
    assert family_for(BertConfig()).name == "bert-like"

    class Odd:
        model_type = "something_new"

    assert family_for(Odd(), "text") is GENERIC_TEXT
    with pytest.raises(UnknownModelFamily):
        family_for(Odd(), "image")
    # every seed checkpoint is selectable by id and builds its reference config
    for ref in REFERENCE_MODELS:
        fam = family_for(ref.hub_id, get_family(ref.family).modality)
        assert fam.name == ref.family and fam.n_layers(ref.build_config()) > 0


def test_models_cli_lists_families_and_sweeps(capsys):
    from superactivators.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for fam in FAMILIES:
        assert fam.name in out
    assert "4, 25, 46, 67, 88, 100 %" in out and "1,8,16,23,31,39,42" in out


# --------------------------------------------------------------------------- hooks and early stop


def _counting(blocks):
    calls = [0] * len(blocks)
    hs = [b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(blocks)]
    return calls, hs


@pytest.mark.parametrize("kind", ["clip", "vit", "dinov2", "siglip"])
def test_vision_block_hooks_equal_hidden_states_and_stop_early(kind):
    import transformers as T

    kw = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=56, patch_size=14)
    cfg, cls = {"clip": (T.CLIPVisionConfig, T.CLIPVisionModel), "vit": (T.ViTConfig, T.ViTModel),
                "dinov2": (T.Dinov2Config, T.Dinov2Model), "siglip": (T.SiglipVisionConfig, T.SiglipVisionModel)}[kind]
    torch.manual_seed(0)
    model = cls(cfg(**kw)).eval()
    fam = family_for(model.config, "image")
    blocks = fam.blocks(model)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model(pixel_values=x, output_hidden_states=True).hidden_states
        full = LayerTap(blocks, [0, 1, 2, 3, 4]).run(lambda: model(pixel_values=x))
        calls, handles = _counting(blocks)
        part = LayerTap(blocks, [2]).run(lambda: model(pixel_values=x))
    for h in handles:
        h.remove()
    for layer in range(5):
        torch.testing.assert_close(full.states[layer], ref[layer], rtol=0, atol=0)
    assert part.stopped_early and part.output is None and calls == [1, 1, 0, 0]
    torch.testing.assert_close(part.states[2], ref[2], rtol=0, atol=0)
    assert fam.n_prefix_tokens(model.config) == (0 if kind == "siglip" else 1)


def test_layertap_rejects_bad_layers_and_removes_hooks():
    blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    with pytest.raises(ValueError, match="out of range"):
        LayerTap(blocks, [4])
    tap = LayerTap(blocks, [1])

    def fwd():
        x = torch.zeros(1, 2)
        for b in blocks:
            x = b(x)
        return x

    cap = tap.run(fwd)
    assert cap.stopped_early and all(not b._forward_hooks for b in blocks)

    class Block(torch.nn.Module):  # called with a keyword, as some transformers versions do
        def forward(self, hidden_state):
            return (hidden_state + 1,)

    kw_blocks = [Block(), Block()]

    def kw_fwd():
        x = torch.zeros(1, 2)
        for blk in kw_blocks:
            x = blk(hidden_state=x)[0]
        return x

    cap = LayerTap(kw_blocks, [0, 1]).run(kw_fwd)
    assert cap.stopped_early and cap.states[0].sum() == 0 and cap.states[1].sum() == 2
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in kw_blocks)


# --------------------------------------------------------------------------- text twins


def _direct(path, kind):
    """The twin loaded without our code: (model, tokenizer)."""
    from transformers import AutoModel, AutoTokenizer, MllamaForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(path)
    if kind == "mllama":
        return MllamaForConditionalGeneration.from_pretrained(path).model.language_model.eval(), tok
    return AutoModel.from_pretrained(path).eval(), tok


@pytest.mark.parametrize("kind,family,n_layers", [("gemma2", "gemma2", 4), ("qwen3", "qwen3", 4), ("mllama", "mllama-text", 4)])
def test_text_twin_hooks_equal_hidden_states_and_stop_early(twins, kind, family, n_layers):
    enc = TextEncoder(EmbedConfig(model=str(twins[kind]), layers="all", device="cpu"))
    assert enc.family.name == family and enc.n_layers == n_layers and enc.layers == [1, 2, 3, 4]
    ref_model, tok = _direct(twins[kind], kind)
    texts = ["i am so happy today", "what a sad and lonely evening it was"]
    batch = dict(tok(texts, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        ref = ref_model(**batch, output_hidden_states=True).hidden_states
        states = enc._layer_states(batch)
    assert len(ref) == n_layers + 1  # Mllama: cross-attention blocks skipped without an image
    for layer in enc.layers:
        torch.testing.assert_close(states[layer], ref[layer], rtol=1e-5, atol=1e-5)
    # early stop: only blocks up to the deepest requested one run
    enc.layers = [1, 2]
    calls, handles = _counting(enc.model.layers)
    with torch.no_grad():
        part = enc._layer_states(batch)
    for h in handles:
        h.remove()
    ran = [i for i, c in enumerate(calls) if c]
    expect = [0, 1] if kind != "mllama" else [0, 2]  # Mllama block 1 is a cross-attention block (never runs)
    assert ran == expect
    for layer in (1, 2):
        torch.testing.assert_close(part[layer], ref[layer], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gemma2", "qwen3", "mllama"])
def test_text_twin_into_store_specials_globals_batch_sizes(tmp_path, twins, tiny_texts, kind):
    ds = tiny_texts
    stores = {}
    for bs in (1, 3):
        cfg = EmbedConfig(model=str(twins[kind]), layers="sweep", batch_size=bs, store_dtype="float32", device="cpu")
        stores[bs] = embed_dataset(ds, cfg, tmp_path / f"s{bs}", encoder=make_encoder(cfg, "text"), progress=False)
    a, b = stores[1], stores[3]
    assert a.layers == [1, 2, 3, 4] and a.dim == 32  # every tiny sweep covers all 4 blocks
    ref_model, tok = _direct(twins[kind], kind)
    # one special token per text (BOS first, or Qwen's appended <|endoftext|>), none stored
    n_words = np.array([len(tok(t)["input_ids"]) - 1 for t in ds.texts()])
    np.testing.assert_array_equal(a.lengths, n_words)
    assert a.valid.all()
    expected_global = {"gemma2": "mean", "qwen3": "last", "mllama": "mean"}[kind]
    assert a.info.model["global_token"] == expected_global and a.info.model["family"] in ("gemma2", "qwen3", "mllama-text")
    for layer in a.layers:
        xa = np.concatenate([a.tokens(layer, s) for s in a.shards])
        xb = np.concatenate([b.tokens(layer, s) for s in b.shards])
        np.testing.assert_allclose(xa, xb, atol=2e-5)
        np.testing.assert_allclose(a.globals(layer), b.globals(layer), atol=2e-5)
    # tokens and the global by hand for sample 0 at the last layer (after the final norm)
    enc = tok(ds.text(0), return_tensors="pt")
    with torch.no_grad():
        hs = ref_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states[4][0]
    words = hs[:-1] if kind == "qwen3" else hs[1:]
    np.testing.assert_allclose(a.tokens(4, a.shards[0])[: a.lengths[0]], words.numpy(), atol=2e-5)
    g = hs[-1] if kind == "qwen3" else words.mean(0)
    np.testing.assert_allclose(a.globals(4)[0], g.numpy(), atol=2e-5)
    if kind == "qwen3":  # the pooled token is the appended <|endoftext|>, which is not stored
        assert enc["input_ids"][0, -1].item() == tok.eos_token_id


def test_existing_text_models_keep_their_behaviour(tiny_bert, tiny_gpt2):
    for path, family, gt in ((tiny_bert, "bert-like", "cls"), (tiny_gpt2, "decoder-lm", "mean")):
        enc = TextEncoder(EmbedConfig(model=str(path), layers="all", device="cpu"))
        assert enc.family.name == family and enc.global_token == gt and enc.blocks is not None
        batch = {k: v for k, v in enc.tokenizer(["hello there friend", "ok"], padding=True, return_tensors="pt").items()}
        with torch.no_grad():
            ref = enc.model(**batch, output_hidden_states=True).hidden_states
            got = enc._layer_states(batch)
        for layer in enc.layers:
            torch.testing.assert_close(got[layer], ref[layer], rtol=1e-6, atol=1e-6)


def test_missing_weights_and_device_map_errors(tmp_path, twins):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(twins["qwen3"], broken)
    sd = load_file(broken / "model.safetensors")
    sd.pop(next(k for k in sd if "layers.1.mlp" in k))
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not in the checkpoint"):
        TextEncoder(EmbedConfig(model=str(broken), device="cpu"))
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        with pytest.raises(ImportError, match="accelerate"):
            TextEncoder(EmbedConfig(model=str(twins["qwen3"]), device_map="auto"))
    else:
        enc = TextEncoder(EmbedConfig(model=str(twins["qwen3"]), device_map="auto", dtype="float32"))
        ref = TextEncoder(EmbedConfig(model=str(twins["qwen3"]), device="cpu"))
        assert enc.describe()["device_map"] == "auto"
        texts = ["i am so happy today", "what a sad and lonely evening it was"]
        a, b = enc.encode(texts), ref.encode(texts)
        for layer in b.tokens:
            np.testing.assert_allclose(a.tokens[layer], b.tokens[layer], atol=1e-4)
            np.testing.assert_allclose(a.globals[layer], b.globals[layer], atol=1e-4)


# --------------------------------------------------------------------------- Mllama vision


def test_tile_geometry_by_hand():
    # 48x64 (h x w), tile 56, patch 14: canvas 1x2 tiles (smallest upscale 56/48), kept at 48x64;
    # rows 0-2 full, row 3 has 6/14 px of image (< half): invalid; cols 0-3 full, col 4 8/14 px: valid
    g = tile_geometry(48, 64, tile_size=56, patch_size=14)
    assert (g.tiles_h, g.tiles_w, g.resized_h, g.resized_w, g.grid) == (1, 2, 48, 64, (4, 8))
    v = g.valid().reshape(4, 8)
    expect = np.zeros((4, 8), bool)
    expect[:3, :5] = True
    np.testing.assert_array_equal(v, expect)
    # tall 100x30: 2x1 tiles, kept at 100x30: 7 rows x 2 cols valid
    g = tile_geometry(100, 30, tile_size=56, patch_size=14)
    assert (g.tiles_h, g.tiles_w, g.resized_h, g.resized_w) == (2, 1, 100, 30)
    assert g.valid().reshape(8, 4)[:7, :2].all() and g.valid().sum() == 14
    # large 300x500: no canvas fits without downscaling; 2x2 (scale 112/500) -> 67x112; 5 of 8 rows valid
    g = tile_geometry(300, 500, tile_size=56, patch_size=14)
    assert (g.tiles_h, g.tiles_w, g.resized_h, g.resized_w) == (2, 2, 67, 112)
    assert g.valid().sum() == 5 * 8
    # the seed's tile size: a 640x480 photo gets 1x2 tiles of 560, stays 480x640: 34 x 46 valid of 40 x 80
    g = tile_geometry(480, 640)
    assert (g.tiles_h, g.tiles_w, g.resized_h, g.resized_w, g.n_patches) == (1, 2, 480, 640, 3200)
    assert g.valid().sum() == 34 * 46
    assert tile_geometry(560, 560).n_patches == 1600 and tile_geometry(560, 560).valid().all()


def test_tiles_to_canvas_and_split_tile_tokens_layout():
    g = tile_geometry(48, 64, tile_size=56, patch_size=14)  # 1 x 2 tiles of 4 x 4 patches
    # value = tile * 100 + row_in_tile * 10 + col_in_tile
    t = torch.tensor([[[tile * 100 + r * 10 + c] for r in range(4) for c in range(4)] for tile in range(4)], dtype=torch.float32)
    canvas = tiles_to_canvas(t, g).reshape(4, 8)
    assert canvas[0, 0] == 0 and canvas[0, 4] == 100 and canvas[3, 7] == 133 and canvas[2, 5] == 121
    # a block output [B, tiles * 24, d]: per tile CLS, 16 patches, 7 padding positions
    x = torch.arange(2 * 4 * 24, dtype=torch.float32).reshape(2, 4 * 24, 1)
    cls, patches = split_tile_tokens(x, 4, 4)
    assert cls.shape == (2, 4, 1) and patches.shape == (2, 4, 16, 1)
    assert cls[1, 2, 0] == 96 + 48 and patches[0, 1, 0, 0] == 25 and patches[0, 1, 15, 0] == 40


def _images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((48, 64), (100, 30), (56, 56))]


def test_mllama_vision_matches_model_output_and_stops_early(twins):
    from transformers import MllamaForConditionalGeneration

    enc = MllamaImageEncoder(EmbedConfig(model=str(twins["mllama"]), layers="all", device="cpu"))
    assert enc.n_layers == 5 and enc.hidden_size == 32 and enc.layers == [1, 2, 3, 4, 5]
    ims = _images()
    batch = enc.encode_images(ims)
    np.testing.assert_array_equal(batch.lengths, [32, 32, 16])
    geos = enc.geometries(ims)
    assert batch.placements == [g.placement() for g in geos] and batch.patch_size == 14
    np.testing.assert_array_equal(batch.valid, np.concatenate([g.valid() for g in geos]))
    assert batch.valid.sum() == 15 + 14 + 16
    # independent reference: the model's own output = [final global block | local blocks 1 and 3]
    vis = MllamaForConditionalGeneration.from_pretrained(twins["mllama"]).model.vision_model.eval()
    starts = np.concatenate([[0], np.cumsum(batch.lengths)])
    for i, im in enumerate(ims):
        inp = enc.processor(images=[[im]], return_tensors="pt")
        with torch.no_grad():
            out = vis(**{k: inp[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}).last_hidden_state
        geo = geos[i]
        # intermediate features are stacked on a last axis then flattened: local block j at 32 + j :: 2
        for layer, sl in ((5, slice(0, 32)), (1, slice(32, None, 2)), (3, slice(33, None, 2))):
            ref = tiles_to_canvas(out[0, 0, :, 1:, sl], geo)
            np.testing.assert_allclose(batch.tokens[layer][starts[i]:starts[i + 1]], ref.numpy(), atol=1e-5)
        cls5 = out[0, 0, : geo.n_tiles, 0, :32].mean(0)
        np.testing.assert_allclose(batch.globals[5][i], cls5.numpy(), atol=1e-5)
    # early stop at local block 2: block 3 and the global blocks never run; same values
    enc.layers = [2]
    calls, handles = _counting(enc.blocks)
    part = enc.encode_images(ims)
    for h in handles:
        h.remove()
    assert calls == [1, 1, 0, 0, 0]
    np.testing.assert_array_equal(part.tokens[2], batch.tokens[2])
    # layer 0 (the input of block 1) through the pre-hook; nothing runs past it
    enc.layers = [0]
    zero = enc.encode_images(ims)
    assert zero.tokens[0].shape == (80, 32) and np.isfinite(zero.tokens[0]).all()
    assert not np.allclose(zero.tokens[0], batch.tokens[1])


def test_mllama_vision_into_store_masks_and_batch_sizes(tmp_path, twins):
    from PIL import Image

    pytest.importorskip("superactivators.data.masks")  # mask -> patch truth lives there

    root = tmp_path / "imgs"
    root.mkdir()
    rows = []
    sizes = [(48, 64), (100, 30), (56, 56)] * 2
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[:28, :28] = 1  # exactly the top-left 2 x 2 patches (no resize for these sizes)
        Image.fromarray(mask).save(root / f"m{i}.png")
        rows.append(f"im{i}.png,m{i}.png,{i % 2},{['train', 'cal', 'test'][i % 3]}")
    (root / "metadata.csv").write_text("image_path,mask_path,box,split\n" + "\n".join(rows) + "\n")
    ds = load_dataset(root)
    stores = []
    for bs in (1, 3):
        cfg = EmbedConfig(model=str(twins["mllama"]), layers="sweep", batch_size=bs, store_dtype="float32", device="cpu")
        enc = make_encoder(cfg, "image")
        assert isinstance(enc, MllamaImageEncoder)
        stores.append(embed_dataset(ds, cfg, tmp_path / f"s{bs}", encoder=enc, progress=False))
    a, b = stores
    assert a.layers == [1, 2, 3, 4, 5] and a.info.token_ground_truth == "masks"
    np.testing.assert_array_equal(a.lengths, [32, 32, 16] * 2)
    np.testing.assert_array_equal(np.add.reduceat(a.valid.astype(int), a.offsets[:-1]), [15, 14, 16] * 2)
    gt = np.concatenate([a.token_labels(s) for s in a.shards])[:, 0]
    for i, (h, w) in enumerate(sizes):
        cols = tile_geometry(h, w, 56, 4, 14).grid[1]
        want = np.zeros(a.lengths[i], bool)
        if i % 2:
            want[[0, 1, cols, cols + 1]] = True
        np.testing.assert_array_equal(gt[a.offsets[i]:a.offsets[i + 1]], want)
    for layer in a.layers:
        xa = np.concatenate([a.tokens(layer, s) for s in a.shards])
        xb = np.concatenate([b.tokens(layer, s) for s in b.shards])
        np.testing.assert_allclose(xa, xb, atol=1e-5)
        np.testing.assert_allclose(a.globals(layer), b.globals(layer), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_twins_on_gpu_in_bf16_match_cpu_fp32(twins, tiny_texts):
    """The GPU path: bf16 by default, inputs and kept states on the device, close to fp32 on CPU."""
    for kind in ("gemma2", "qwen3", "mllama"):
        gpu = TextEncoder(EmbedConfig(model=str(twins[kind]), layers="sweep", device="cuda"))
        cpu = TextEncoder(EmbedConfig(model=str(twins[kind]), layers="sweep", device="cpu"))
        assert gpu.describe()["compute_dtype"] == "bfloat16" and cpu.describe()["compute_dtype"] == "float32"
        a, b = gpu.encode(tiny_texts.texts()), cpu.encode(tiny_texts.texts())
        np.testing.assert_array_equal(a.lengths, b.lengths)
        for layer in b.tokens:
            scale = np.abs(b.tokens[layer]).max()
            assert np.abs(a.tokens[layer] - b.tokens[layer]).max() < 0.05 * scale, (kind, layer)
    ims = _images()
    g = MllamaImageEncoder(EmbedConfig(model=str(twins["mllama"]), layers="sweep", device="cuda")).encode_images(ims)
    c = MllamaImageEncoder(EmbedConfig(model=str(twins["mllama"]), layers="sweep", device="cpu")).encode_images(ims)
    np.testing.assert_array_equal(g.valid, c.valid)
    for layer in c.tokens:
        assert np.abs(g.tokens[layer] - c.tokens[layer]).max() < 0.05 * np.abs(c.tokens[layer]).max()


# --------------------------------------------------------------------------- by Hub id


def install_in_hub_cache(cache, repo_id: str, folder) -> None:
    """Lay ``folder`` out as the cached snapshot of ``repo_id`` (what a download would leave)."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return cache


def test_seed_models_selectable_by_hub_id(hub_cache, twins, tiny_texts):
    """Each seed id, with its tiny twin in the Hub cache, embeds through make_encoder by name."""
    install_in_hub_cache(hub_cache, "google/gemma-2-9b", twins["gemma2"])
    install_in_hub_cache(hub_cache, "Qwen/Qwen3-Embedding-4B", twins["qwen3"])
    install_in_hub_cache(hub_cache, "meta-llama/Llama-3.2-11B-Vision-Instruct", twins["mllama"])
    texts = tiny_texts.texts()[:2]
    for hub_id, family, gt in (("google/gemma-2-9b", "gemma2", "mean"), ("Qwen/Qwen3-Embedding-4B", "qwen3", "last"),
                               ("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-text", "mean")):
        enc = make_encoder(EmbedConfig(model=hub_id, layers="sweep", device="cpu"), "text")
        assert enc.family.name == family and enc.global_token == gt and enc.describe()["id"] == hub_id
        batch = enc.encode(texts)
        assert set(batch.tokens) == {1, 2, 3, 4} and batch.tokens[4].shape == (batch.lengths.sum(), 32)
    enc = make_encoder(EmbedConfig(model="meta-llama/Llama-3.2-11B-Vision-Instruct", layers="sweep", device="cpu"), "image")
    assert isinstance(enc, MllamaImageEncoder) and enc.layers == [1, 2, 3, 4, 5]
    assert enc.encode_images(_images()[:1]).tokens[5].shape == (32, 32)


def test_clip_by_hub_id_with_sweep_into_store(hub_cache, tmp_path):
    """CLIP ViT-L/14's twin (a full CLIPModel checkpoint, 24 vision blocks) by id, layers: sweep."""
    pytest.importorskip("superactivators.encoders.vision")
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel

    from superactivators.encoders.registry import expand_sweep

    torch.manual_seed(0)
    cfg = tiny_clip_config()
    twin = tmp_path / "clip"
    CLIPModel(cfg).eval().save_pretrained(twin)
    CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(twin)
    install_in_hub_cache(hub_cache, "openai/clip-vit-large-patch14", twin)
    ecfg = EmbedConfig(model="openai/clip-vit-large-patch14", layers="sweep", device="cpu", store_dtype="float32")
    assert expand_sweep(ecfg, "image").layers == ["4%", "25%", "46%", "67%", "88%", "100%"]
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "metadata.csv").write_text("image_path,c,split\n" + "\n".join(
        f"{i}.png,{i % 2},{['train', 'cal', 'test'][i % 3]}" for i in range(6)) + "\n")
    store = embed_dataset(load_dataset(root), ecfg, tmp_path / "store", progress=False)
    assert store.layers == [1, 6, 11, 16, 21, 24] and store.dim == 16
    # the pipeline's own route to the image encoder accepts "sweep" too
    from superactivators.config import config_from_dict
    from superactivators.pipeline import image_encoder_for_run

    run = config_from_dict({"data": {"path": str(root)}, "embed": {"model": "openai/clip-vit-large-patch14",
                                                                    "layers": "sweep", "device": "cpu"}})
    assert image_encoder_for_run(run, load_dataset(root), tmp_path / "s2").layers == [1, 6, 11, 16, 21, 24]
    np.testing.assert_array_equal(store.lengths, [16] * 6)  # 4 x 4 patches, CLS kept as the global


def test_model_shape_from_config_and_encode_inputs(twins, tmp_path):
    """The shape the concept checks read from a config alone equals the built encoder's; every
    encoder embeds the detector's inputs through ``encode_inputs`` (images: PIL or paths)."""
    from superactivators.encoders.base import Encoder
    from superactivators.encoders.factory import model_shape

    for kind, modality, layers in (("gemma2", "text", [1, 3]), ("qwen3", "text", "sweep"),
                                   ("mllama", "text", "all"), ("mllama", "image", "sweep")):
        cfg = EmbedConfig(model=str(twins[kind]), layers=layers, device="cpu")
        enc = make_encoder(cfg, modality)
        assert isinstance(enc, Encoder)
        shape = model_shape(cfg, modality)
        assert shape.layers == tuple(enc.layers) and shape.hidden_size == enc.hidden_size == 32
    ims = _images()[:2]
    paths = [tmp_path / f"im{i}.png" for i in range(2)]
    for im, p in zip(ims, paths):
        im.save(p)
    a, b = enc.encode_inputs(paths), enc.encode_images(ims)
    for layer in enc.layers:
        np.testing.assert_array_equal(a.tokens[layer], b.tokens[layer])
    text = make_encoder(EmbedConfig(model=str(twins["qwen3"]), layers=[2], device="cpu"), "text")
    np.testing.assert_array_equal(text.encode_inputs(["a b c"]).tokens[2], text.encode(["a b c"]).tokens[2])
