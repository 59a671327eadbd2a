"""store.truth: one token-truth function for text spans and image masks, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from superactivators.data.datasets import DatasetError, load_dataset
from superactivators.data.masks import MaskOptions, Placement
from superactivators.encoders.base import EncodedBatch
from superactivators.store.truth import TokenTruth, check_content, seed_padding, token_truth, truth_kind


def _bits(packed: np.ndarray, n_concepts: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, count=n_concepts).astype(bool)


def test_text_truth_from_character_spans(tmp_path: Path) -> None:
    texts = ["I am so happy today", "Rain again", "Happy and sad"]
    pd.DataFrame({
        "text": texts, "joy": [1, 0, 1], "sad": [0, 0, 1], "split": ["train"] * 3,
        # joy: "happy" = chars 8..13 of text 0; text 2 has joy without a span: every token counts
        "spans": [json.dumps({"joy": [[8, 13]]}), "", json.dumps({"sad": [[10, 13]]})],
    }).to_csv(tmp_path / "metadata.csv", index=False)
    ds = load_dataset(tmp_path / "metadata.csv")
    assert truth_kind(ds) == "spans"
    # tokens as a whitespace tokenizer would give them (character ranges), samples 0 and 2
    spans0 = [(0, 1), (2, 4), (5, 7), (8, 13), (14, 19)]
    spans2 = [(0, 5), (6, 9), (10, 13)]
    batch = EncodedBatch(tokens={}, globals={}, lengths=np.array([5, 3]), valid=np.ones(8, bool),
                         char_spans=np.array(spans0 + spans2, dtype=np.int32))
    gt = _bits(token_truth(ds, np.array([0, 2]), batch), 2)
    expected = np.zeros((8, 2), bool)
    expected[3, 0] = True  # "happy"
    expected[5:8, 0] = True  # joy without a span in sample 2: all its tokens
    expected[7, 1] = True  # "sad"
    np.testing.assert_array_equal(gt, expected)
    assert TokenTruth(ds)(np.array([0, 2]), batch).tobytes() == token_truth(ds, np.array([0, 2]), batch).tobytes()
    with pytest.raises(ValueError, match="character span"):
        token_truth(ds, np.array([0]), EncodedBatch({}, {}, np.array([5]), np.ones(5, bool)))


def _mask_set(root: Path) -> Path:
    """Two 8 x 8 images; concept c's mask is the top-left 4 x 4 quarter of image 0, image 1 negative."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 100 + i, np.uint8)).save(root / "images" / f"{i}.png")
        m = np.zeros((8, 8), np.uint8)
        if i == 0:
            m[:4, :4] = 1
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
        rows.append({"image_path": f"images/{i}.png", "mask_path": f"masks/{i}.png", "c": 1 - i, "split": "train"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_image_truth_from_masks_and_placements(tmp_path: Path) -> None:
    ds = load_dataset(_mask_set(tmp_path))
    assert truth_kind(ds) == "masks"
    # each image placed unscaled on an 8 x 8 input, patches of 4 px: a 2 x 2 grid; patch 0 is the mask
    pl = Placement(8, 8, 8, 8, 0, 0, 8, 8)
    valid = np.ones(8, bool)
    valid[1] = False  # a patch that is not content never counts as in-concept
    batch = EncodedBatch(tokens={}, globals={}, lengths=np.array([4, 4]), valid=valid, placements=[pl, pl],
                         patch_size=4)
    np.testing.assert_array_equal(batch.patch_grids, [[2, 2], [2, 2]])
    gt = _bits(token_truth(ds, np.array([0, 1]), batch, mask_options=MaskOptions()), 1)[:, 0]
    np.testing.assert_array_equal(gt, [True, False, False, False, False, False, False, False])
    # shifted 2 px down and right: each of the 4 patches holds 2 x 2 px of the mask, a cover of 4 / 16
    shifted = Placement(8, 8, 8, 8, 2, 2, 8, 8)
    b2 = EncodedBatch({}, {}, np.array([4]), np.ones(4, bool), placements=[shifted], patch_size=4)
    gt2 = _bits(token_truth(ds, np.array([0]), b2, mask_options=MaskOptions(coverage=0.5)), 1)[:, 0]
    np.testing.assert_array_equal(gt2, [False, False, False, False])
    gt3 = _bits(token_truth(ds, np.array([0]), b2, mask_options=MaskOptions(any_pixel=True)), 1)[:, 0]
    np.testing.assert_array_equal(gt3, [True, True, True, True])


def test_content_check_and_seed_padding(tmp_path: Path) -> None:
    from superactivators.data.masks import save_padding_file

    ds = load_dataset(_mask_set(tmp_path))
    pl = Placement(8, 8, 8, 8, 0, 0, 8, 8)
    empty = EncodedBatch({}, {}, np.array([4, 4]), np.r_[np.ones(4, bool), np.zeros(4, bool)], placements=[pl, pl],
                         patch_size=4)
    with pytest.raises(DatasetError, match=r"images/1\.png has no content patch"):
        check_content(ds, np.array([0, 1]), empty)
    assert seed_padding(ds, (8, 8), 4) is None  # no file: geometric validity
    flags = np.array([[1, 1, 0, 1], [1, 1, 1, 1]])
    save_padding_file(tmp_path, (8, 8), flags)
    np.testing.assert_array_equal(seed_padding(ds, (8, 8), 4), flags.astype(bool))
    assert seed_padding(ds, None, None) is None  # tiled models have no fixed grid
