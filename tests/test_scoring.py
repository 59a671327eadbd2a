"""Scorers and streaming reductions against direct per-sample computations."""

import numpy as np
import pytest

from superactivators.concepts.supervised import ConceptSet
from superactivators.evaluate.scoring import InConceptCollector, PassContext, SampleReducer, Scorer, score_store
from superactivators.store.tokens import StoreInfo, StoreWriter


def _cs(scoring, rng, d=4, c=3):
    return ConceptSet("x", [f"c{i}" for i in range(c)], rng.normal(size=(c, d)).astype(np.float32),
                      rng.normal(size=c).astype(np.float32), scoring, 1, rng.normal(size=d).astype(np.float32), 2.5)


def test_cosine_and_signed_distance_by_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    cs = _cs("cosine", rng)
    xc = x - cs.center
    want = (xc @ cs.vectors.T) / np.linalg.norm(xc, axis=1)[:, None] / np.linalg.norm(cs.vectors, axis=1)[None]
    np.testing.assert_allclose(Scorer(cs)(x), want, rtol=1e-5, atol=1e-6)
    cs = _cs("signed_distance", rng)
    xn = (x - cs.center) / cs.scale
    want = (xn @ cs.vectors.T + cs.bias) / np.linalg.norm(cs.vectors, axis=1)
    np.testing.assert_allclose(Scorer(cs)(x), want, rtol=1e-5, atol=1e-6)


@pytest.fixture
def ragged_store(tmp_path):
    rng = np.random.default_rng(3)
    lengths = np.array([3, 1, 5, 2, 4, 6, 2])
    t = int(lengths.sum())
    x = rng.normal(size=(t, 4)).astype(np.float32)
    valid = np.ones(t, bool)
    valid[[1, 9, 12]] = False  # padding-like tokens inside samples 0, 3 and 4
    labels = rng.integers(0, 2, size=(7, 3)).astype(np.uint8)
    splits = np.array(["train", "cal", "cal", "test", "cal", "train", "cal"])
    info = StoreInfo(n_samples=7, dim=4, layers=[1], concepts=["c0", "c1", "c2"], modality="text", dtype="float32",
                     model={"id": "x"})
    w = StoreWriter(tmp_path, info, labels, splits, shard_tokens=6)
    off = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(7):
        sl = slice(off[i], off[i + 1])
        w.add({1: x[sl]}, {1: x[sl].mean(0, keepdims=True)}, lengths[i:i + 1], valid[sl])
    return w.close(), x, valid, off


def test_sample_reductions_match_direct_loops(ragged_store):
    store, x, valid, off = ragged_store
    rng = np.random.default_rng(1)
    cs = _cs("signed_distance", rng)
    red = SampleReducer(store.n_samples, 3, seed=5)
    score_store(store, cs, [red])
    acts = Scorer(cs)(x)
    u = np.random.default_rng(5).random(7)
    for i in range(7):
        a = acts[off[i]:off[i + 1]][valid[off[i]:off[i + 1]]]
        np.testing.assert_allclose(red.max[i], a.max(0), rtol=1e-6)
        np.testing.assert_allclose(red.mean[i], a.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(red.last[i], a[-1], rtol=1e-6)
        np.testing.assert_allclose(red.random[i], a[min(int(u[i] * len(a)), len(a) - 1)], rtol=1e-6)


def test_in_concept_collector_groups_cal_tokens(ragged_store):
    store, x, valid, off = ragged_store
    cs = _cs("cosine", np.random.default_rng(2))
    col = InConceptCollector(store.splits == "cal", 3)
    score_store(store, cs, [col])
    acts = Scorer(cs)(x)
    sample = np.repeat(np.arange(7), np.diff(off))
    for c, got in enumerate(col.per_concept()):
        m = valid & (store.splits[sample] == "cal") & (store.labels[sample, c] > 0)
        np.testing.assert_allclose(np.sort(got), np.sort(acts[m, c]), rtol=1e-6)


def test_pass_context_rejects_sample_without_valid_tokens(tmp_path):
    info = StoreInfo(n_samples=2, dim=2, layers=[1], concepts=["a"], modality="image", dtype="float32",
                     model={"id": "x"})
    w = StoreWriter(tmp_path, info, np.ones((2, 1)), np.array(["train", "train"]))
    w.add({1: np.ones((3, 2), np.float32)}, {1: np.ones((2, 2), np.float32)}, np.array([1, 2]),
          np.array([True, False, False]))
    store = w.close()
    red = SampleReducer(2, 1)
    shard = store.shards[0]
    with pytest.raises(ValueError, match="sample 1 has no valid tokens"):
        red.add(shard, np.zeros((3, 1), np.float32), PassContext(store, np.array([0])))


def test_blocked_transpose_equals_transpose_across_block_edges():
    from superactivators.evaluate.scoring import _transposed

    a = np.arange(5001 * 3, dtype=np.float32).reshape(5001, 3)
    t = _transposed(a, block=2048)
    assert t.flags.c_contiguous and t.shape == (3, 5001)
    np.testing.assert_array_equal(t, a.T)
    f = np.asfortranarray(a)
    assert np.shares_memory(_transposed(f), f)  # already column-major: a view, no copy
