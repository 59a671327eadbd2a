"""encoders.pooling and the one global-token rule, checked by hand."""

from __future__ import annotations

import pytest
import torch

from superactivators.encoders.base import pick_global_token
from superactivators.encoders.pooling import pool_global


def test_pool_global_by_hand() -> None:
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0]]])  # one sample, 4 positions
    assert pool_global("cls", h).tolist() == [[1.0, 0.0]]
    assert pool_global("last", h, last=torch.tensor([2])).tolist() == [[5.0, 4.0]]
    # mean over the positions after one prefix token where the mask is True: (3 + 7) / 2, (2 + 6) / 2
    mask = torch.tensor([[True, False, True]])
    assert pool_global("mean", h, mask, n_prefix=1).tolist() == [[5.0, 4.0]]
    assert pool_global("mean", h).tolist() == [[4.0, 3.0]]  # no mask: every position
    with pytest.raises(ValueError, match="last position"):
        pool_global("last", h)
    with pytest.raises(ValueError, match="unknown"):
        pool_global("median", h)


def test_pick_global_token_is_one_rule() -> None:
    text = ("cls", "mean", "last")
    assert pick_global_token("auto", default="cls", has_cls=True, allowed=text) == "cls"
    assert pick_global_token("auto", default="auto", has_cls=False, allowed=text) == "mean"
    assert pick_global_token("last", default="mean", has_cls=False, allowed=text) == "last"
    assert pick_global_token("auto", default="auto", has_cls=True, allowed=("cls", "mean")) == "cls"
    with pytest.raises(ValueError, match="has no CLS token"):
        pick_global_token("cls", default="mean", has_cls=False, allowed=("cls", "mean"), model="siglip")
    with pytest.raises(ValueError, match="must be auto or one of"):
        pick_global_token("last", default="cls", has_cls=True, allowed=("cls", "mean"))
    tiles = ("tile-cls-mean", "mean")  # Mllama: "cls" is the mean of the tiles' CLS tokens
    assert pick_global_token("cls", default="tile-cls-mean", has_cls=True, allowed=tiles,
                             aliases={"cls": "tile-cls-mean"}) == "tile-cls-mean"
