"""Length-bucketed embedding (store/embed.py): batches of similar length, the store equal to in-order batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from superactivators.data.datasets import load_dataset
from superactivators.encoders.base import EmbedConfig, EncodedBatch
from superactivators.encoders.factory import make_encoder
from superactivators.store.embed import embed_dataset, length_batches, window_chunks
from superactivators.store.tokens import TokenStore

from .conftest import write_small_emotions


def test_length_batches_sort_stably_within_the_window():
    groups = length_batches(np.array([5, 1, 3, 1, 9]), 2)
    assert [g.tolist() for g in groups] == [[1, 3], [2, 0], [4]]


def test_window_chunks_by_hand():
    # window positions 0, 1, 2 with lengths 2, 1, 3; encoded as batches [2, 0] and [1]
    def tok(rows):
        return np.array(rows, dtype=np.float32)[:, None]

    b1 = EncodedBatch(tokens={3: tok([20, 21, 22, 0, 1])}, globals={3: tok([2.0, 0.0])}, lengths=np.array([3, 2]),
                      valid=np.array([1, 1, 0, 1, 1], bool), char_spans=np.arange(10).reshape(5, 2))
    b2 = EncodedBatch(tokens={3: tok([10])}, globals={3: tok([1.0])}, lengths=np.array([1]),
                      valid=np.array([1], bool), char_spans=np.array([[100, 101]]))
    m = next(window_chunks([b1, b2], [np.array([2, 0]), np.array([1])], 3))  # the whole window in one chunk
    assert m.lengths.tolist() == [2, 1, 3]
    assert m.tokens[3][:, 0].tolist() == [0, 1, 10, 20, 21, 22]
    assert m.globals[3][:, 0].tolist() == [0, 1, 2]
    assert m.valid.tolist() == [True, True, True, True, True, False]
    assert m.char_spans.tolist() == [[6, 7], [8, 9], [100, 101], [0, 1], [2, 3], [4, 5]]
    # two samples at a time: window positions (0, 1), then (2,), each gathered from both batches as needed
    c1, c2 = window_chunks([b1, b2], [np.array([2, 0]), np.array([1])], 2)
    assert c1.lengths.tolist() == [2, 1] and c1.tokens[3][:, 0].tolist() == [0, 1, 10]
    assert c1.globals[3][:, 0].tolist() == [0, 1] and c1.char_spans.tolist() == [[6, 7], [8, 9], [100, 101]]
    assert c2.lengths.tolist() == [3] and c2.tokens[3][:, 0].tolist() == [20, 21, 22]
    assert c2.valid.tolist() == [True, True, False] and c2.globals[3][:, 0].tolist() == [2]


STRUCTURE = ("offsets", "valid", "char_spans", "_gt_bits", "labels", "splits")


def _values(store: TokenStore) -> dict[str, np.ndarray]:
    out = {}
    for layer in store.layers:
        out[f"tokens{layer}"] = np.concatenate([np.asarray(x) for _, x in store.iter_shards(layer)]).astype(np.float32)
        out[f"globals{layer}"] = store.globals(layer)
    return out


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_bert"])
def test_bucketed_store_equals_in_order_batches(model_fixture, request, tmp_path):
    """Same samples, same order, same token rows, spans and truth bits, bit for bit; values equal
    up to the float reassociation that a batch's padded length causes in the in-order loop itself
    (MKL picks GEMM kernels by matrix height: one sample padded to 9 or to 30 tokens differs by
    ~1e-7 relative in float32), i.e. the same up to the last bit of the float16 store."""
    model = request.getfixturevalue(model_fixture)
    data = write_small_emotions(tmp_path / "data", {"train": 24, "cal": 8, "test": 8})
    ds = load_dataset(data)
    base = EmbedConfig(model=str(model), layers="all", batch_size=4, device="cpu", dtype="float32",
                       global_token="last", shard_tokens=300)
    stores = {}
    for window in (1, 5):
        cfg = dataclasses.replace(base, bucket_window=window)
        stores[window] = embed_dataset(ds, cfg, tmp_path / f"w{window}", encoder=make_encoder(cfg, "text"),
                                       progress=False)
    a, b = stores[1], stores[5]
    lengths = np.diff(a.offsets)
    assert lengths.max() >= 2 * lengths.min()  # lengths vary, so bucketing changes the batches
    for k in STRUCTURE:
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes(), k
    va, vb = _values(a), _values(b)
    for k in va:
        assert va[k].shape == vb[k].shape
        if k.startswith("tokens"):  # float16: at most one unit in the last place apart, almost always equal
            np.testing.assert_allclose(vb[k], va[k], rtol=2.0 ** -10, atol=1e-6, err_msg=k)
            assert np.mean(va[k] != vb[k]) < 0.01, k
        else:  # float32 globals
            np.testing.assert_allclose(vb[k], va[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert base.key() == dataclasses.replace(base, bucket_window=5).key()  # same cache key
