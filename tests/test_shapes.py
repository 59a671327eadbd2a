"""Tests for the synthetic CLEVR-style shapes dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from superactivators.data import shapes
from superactivators.data.shapes import CLASSES, CONCEPT_COLUMNS, generate_shapes

N = 40
SIZE = 224


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("shapes_a")
    meta = generate_shapes(out, n=N, seed=0, size=SIZE)
    with open(meta, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return out, rows


def _load(out: Path, row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(out / row["image_path"]))
    mask = np.asarray(Image.open(out / row["mask_path"]))
    return img, mask


def test_layout_and_columns(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = dataset
    assert len(rows) == N
    assert list(rows[0].keys()) == ["image_path", "mask_path", "class", *CONCEPT_COLUMNS, "split"]
    assert rows[0]["image_path"] == "images/shape_000000.png"
    assert rows[0]["mask_path"] == "masks/shape_000000.png"
    assert not list(out.rglob("*.tmp"))
    assert len(list((out / "images").glob("*.png"))) == N
    assert len(list((out / "masks").glob("*.png"))) == N


def test_concepts_match_class(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    for row in rows:
        assert row["class"] in CLASSES
        color, shape = row["class"].split("_")
        on = {c for c in CONCEPT_COLUMNS if row[c] == "1"}
        assert on == {f"color::{color}", f"shape::{shape}"}
        assert all(row[c] in ("0", "1") for c in CONCEPT_COLUMNS)


def test_splits_are_stratified(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = dataset
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "cal", "test")}
    assert sum(counts.values()) == N
    # with ~3 images per class the "every class in every split" rule wins over 60/20/20;
    # the exact proportions are checked at n=600 in test_large_split_proportions
    assert counts["train"] >= max(counts["cal"], counts["test"])
    assert 0.15 * N <= counts["cal"] <= 0.35 * N
    assert 0.15 * N <= counts["test"] <= 0.35 * N
    for cls in CLASSES:
        assert {r["split"] for r in rows if r["class"] == cls} == {"train", "cal", "test"}


def test_large_split_proportions() -> None:
    labels = np.arange(600) % len(CLASSES)
    splits = shapes._assign_splits(np.random.default_rng(0), labels)
    assert [splits.count(s) for s in ("train", "cal", "test")] == [360, 120, 120]


def test_image_and_mask_format(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = dataset
    for row in rows:
        with Image.open(out / row["image_path"]) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        with Image.open(out / row["mask_path"]) as m:
            assert m.mode == "L" and m.size == (SIZE, SIZE)
        _, mask = _load(out, row)
        assert set(np.unique(mask).tolist()) <= {0, 1}


def test_mask_is_the_object(dataset: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = dataset
    for row in rows:
        img, mask = _load(out, row)
        obj = mask.astype(bool)
        # size: object width roughly 15-45 % of the image
        cols = np.flatnonzero(obj.any(axis=0))
        width = (cols[-1] - cols[0] + 1) / SIZE
        assert 0.13 <= width <= 0.47, (row["class"], width)
        r, g, b = img[obj].astype(float).mean(axis=0)
        color = row["class"].split("_")[0]
        if color == "red":
            assert r > 1.5 * g and r > 1.5 * b
        elif color == "green":
            assert g > 1.3 * r and g > 1.3 * b
        elif color == "blue":
            assert b > 1.3 * r and b > 1.3 * g
        else:  # yellow
            assert r > 1.3 * b and g > 1.3 * b
        # the neutral background just outside the mask is far less saturated
        ring = _dilate(obj, 4) & ~_dilate(obj, 2)
        bg = img[ring].astype(float)
        sat_bg = (bg.max(axis=1) - bg.min(axis=1)).mean()
        fg = img[_erode(obj, 2)].astype(float)
        sat_fg = (fg.max(axis=1) - fg.min(axis=1)).mean()
        assert sat_fg > sat_bg + 20, (row["class"], sat_fg, sat_bg)


def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    out = m.copy()
    for _ in range(k):
        out = (
            out
            | np.roll(out, 1, 0) | np.roll(out, -1, 0)
            | np.roll(out, 1, 1) | np.roll(out, -1, 1)
        )
    return out


def _erode(m: np.ndarray, k: int) -> np.ndarray:
    return ~_dilate(~m, k)


def test_deterministic(dataset: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    out_a, _ = dataset
    meta_b = generate_shapes(tmp_path, n=N, seed=0, size=SIZE)
    assert (out_a / "metadata.csv").read_bytes() == meta_b.read_bytes()
    for i in (0, 7, N - 1):
        for sub in ("images", "masks"):
            name = f"{sub}/shape_{i:06d}.png"
            assert (out_a / name).read_bytes() == (tmp_path / name).read_bytes()


def test_seed_changes_output(dataset: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    out_a, _ = dataset
    generate_shapes(tmp_path, n=3, seed=1, size=SIZE)
    name = "images/shape_000000.png"
    assert (out_a / name).read_bytes() != (tmp_path / name).read_bytes()


def test_interrupted_run_leaves_no_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_shapes(tmp_path, n=3, seed=0, size=64)
    assert (tmp_path / "metadata.csv").exists()
    calls = {"n": 0}
    real = shapes.render_scene

    def flaky(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shapes, "render_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path, n=5, seed=0, size=64)
    assert not (tmp_path / "metadata.csv").exists()


def test_render_scene_mask_matches_image() -> None:
    rng = np.random.default_rng(3)
    for shape in shapes.SHAPES:
        img, mask = shapes.render_scene(rng, "red", shape, size=96)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == bool
        assert 0 < mask.mean() < 0.5
