"""Figure data: streaming histograms against np.histogram, curves round trip, sample activations."""

from __future__ import annotations

import numpy as np
import pytest

from superactivators.concepts.supervised import ConceptSet
from superactivators.evaluate.detect import MethodResult
from superactivators.evaluate.metrics import Confusion
from superactivators.evaluate.scoring import PassContext, score_store
from superactivators.report.figdata import (
    F1Curves,
    HistogramAccumulator,
    TokenHistograms,
    ensure_histograms,
    estimate_range,
    sample_token_activations,
    save_curves,
)
from superactivators.report.figures import share_above
from superactivators.store.tokens import Shard, StoreInfo, StoreWriter, TokenStore


class _FakeStore:
    """The few attributes an accumulator reads: valid, sample_of_token, token_labels."""

    def __init__(self, lengths, gt, valid):
        self.sample_of_token = np.repeat(np.arange(len(lengths)), lengths)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.gt, self.valid = gt, valid

    def token_labels(self, shard, concepts):
        return (self.gt[shard.token_start:shard.token_stop] & self.valid[shard.token_start:shard.token_stop, None])[:, concepts]


def test_histogram_by_hand():
    # one concept, 4 bins over [0, 1); 6 tokens in 3 samples, all in the split
    acts = np.array([[0.1], [0.3], [0.3], [0.9], [1.5], [-0.2]])
    gt = np.array([[1], [0], [1], [0], [1], [0]], bool)
    store = _FakeStore([2, 2, 2], gt, np.ones(6, bool))
    acc = HistogramAccumulator(["a"], np.array([0.0]), np.array([1.0]), np.ones(3, bool), bins=4)
    acc.add(Shard(0, 3, 0, 6), acts, PassContext(store, np.array([0])))
    h = acc.result()
    assert h.edges[0].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert h.counts[1, 0].tolist() == [1, 1, 0, 1]  # in: 0.1, 0.3, 1.5 (over -> last bin)
    assert h.counts[0, 0].tolist() == [1, 1, 0, 1]  # out: -0.2 (under -> first bin), 0.3, 0.9
    assert h.under.tolist() == [[1], [0]] and h.over.tolist() == [[0], [1]]
    assert h.vmin.tolist() == [[-0.2], [0.1]] and h.vmax.tolist() == [[0.9], [1.5]]
    assert h.n_tokens.tolist() == [[3], [3]]


def test_histogram_streaming_matches_numpy_and_respects_split_and_validity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, size=40)
    T, C = int(lengths.sum()), 3
    acts = rng.normal(size=(T, C)) * np.array([1.0, 0.2, 3.0])
    gt = rng.random((T, C)) < 0.3
    valid = rng.random(T) < 0.9
    split = rng.random(40) < 0.5
    store = _FakeStore(lengths, gt, valid)
    lo, hi = np.array([-2.0, -0.3, -5.0]), np.array([2.0, 0.3, 5.0])  # some values fall outside
    acc = HistogramAccumulator(list("abc"), lo, hi, split, bins=17)
    ctx = PassContext(store, np.arange(C))
    cut = int(store.offsets[17])  # two shards, split at a sample boundary
    acc.add(Shard(0, 17, 0, cut), acts[:cut], ctx)
    acc.add(Shard(17, 40, cut, T), acts[cut:], ctx)
    h = acc.result()
    keep = valid & split[store.sample_of_token]
    for c in range(C):
        for g, m in ((1, gt[:, c]), (0, ~gt[:, c])):
            v = acts[keep & m, c]
            expect, _ = np.histogram(v[(v >= lo[c]) & (v < hi[c])], bins=h.edges[c])
            expect[0] += (v < lo[c]).sum()
            expect[-1] += (v >= hi[c]).sum()
            assert h.counts[g, c].tolist() == expect.tolist()
            assert h.vmax[g, c] == pytest.approx(v.max())


def test_histogram_input_errors():
    with pytest.raises(ValueError, match="hi > lo"):
        HistogramAccumulator(["a"], np.array([1.0]), np.array([1.0]), np.ones(2, bool))
    with pytest.raises(ValueError, match="shape"):
        HistogramAccumulator(["a", "b"], np.array([0.0]), np.array([1.0]), np.ones(2, bool))


def test_share_above_splits_the_threshold_bin_linearly():
    assert share_above(np.array([0.0, 1.0, 2.0]), np.array([2, 2]), 1.5) == pytest.approx(0.25)
    assert share_above(np.array([0.0, 1.0, 2.0]), np.array([2, 2]), -1.0) == pytest.approx(1.0)
    assert np.isnan(share_above(np.array([0.0, 1.0]), np.array([0]), 0.5))


def _tiny_store(path, seed=0) -> tuple[TokenStore, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([3, 4, 2, 5, 3, 4])
    x = rng.normal(size=(int(lengths.sum()), 4)).astype(np.float32)
    gt = rng.random((len(x), 2)) < 0.4
    labels = np.zeros((6, 2), np.uint8)
    off = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(6):
        labels[i] = gt[off[i]:off[i + 1]].any(axis=0)
    info = StoreInfo(n_samples=6, dim=4, layers=[1], concepts=["a", "b"], modality="text", dtype="float32",
                     model={"id": "toy"}, token_ground_truth="spans")
    w = StoreWriter(path, info, labels, np.array(["train", "train", "cal", "test", "test", "test"]), shard_tokens=8)
    for a, b in ((0, 2), (2, 4), (4, 6)):
        sl = slice(off[a], off[b])
        w.add({1: x[sl]}, {1: x[sl][:b - a]}, lengths[a:b], np.ones(off[b] - off[a], bool),
              gt_bits=np.packbits(gt[sl], axis=1))
    return w.close(), x


def _cosine_set(store: TokenStore, V: np.ndarray) -> ConceptSet:
    return ConceptSet("mean", ["a", "b"], V.astype(np.float32), np.zeros(2, np.float32), "cosine", 1,
                      np.zeros(4, np.float32), 1.0)


def test_sample_token_activations_are_hand_cosines_in_request_order(tmp_path):
    store, x = _tiny_store(tmp_path / "s")
    V = np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0]])
    out = sample_token_activations(store, _cosine_set(store, V), [3, 0])
    for i, a in zip([3, 0], out):
        xs = x[store.offsets[i]:store.offsets[i + 1]]
        expect = (xs @ V.T) / np.linalg.norm(xs, axis=1, keepdims=True) / np.linalg.norm(V, axis=1)
        assert a.shape == (store.lengths[i], 2)
        np.testing.assert_allclose(a, expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sample ids"):
        sample_token_activations(store, _cosine_set(store, V), [6])


def test_ensure_histograms_backfills_a_stage_and_matches_a_direct_count(tmp_path):
    store, x = _tiny_store(tmp_path / "s")
    V = np.array([[1, 0, 0, 0], [0, 1, 1, 0]])
    cs = _cosine_set(store, V)
    stage = tmp_path / "stage"
    cs.save(stage / "concepts")
    h = ensure_histograms(stage, store, bins=10)
    assert (stage / "hist.npz").exists()
    test_tok = (store.splits == "test")[store.sample_of_token]
    acts = (x @ V.T) / np.linalg.norm(x, axis=1, keepdims=True) / np.linalg.norm(V, axis=1)
    gt = np.concatenate([store.token_labels(s) for s in store.shards])
    for c in range(2):
        assert h.n_tokens[1, c] == (test_tok & gt[:, c]).sum()
        assert h.n_tokens[0, c] == (test_tok & ~gt[:, c]).sum()
        assert h.vmax[1, c] == pytest.approx(acts[test_tok & gt[:, c], c].max(), rel=1e-5)
    # cosine range is clipped to [-1, 1] and covers every test activation (nothing outside)
    lo, hi = estimate_range(store, cs, test_tok)
    assert (lo >= -1).all() and (hi <= 1).all()
    assert h.under.sum() == 0 and h.over.sum() == 0
    h2 = TokenHistograms.load(stage / "hist.npz")  # second call loads, no recompute
    assert ensure_histograms(stage, store).counts.tolist() == h2.counts.tolist()


def test_accumulator_inside_score_store_equals_backfill(tmp_path):
    store, _ = _tiny_store(tmp_path / "s")
    cs = _cosine_set(store, np.array([[1, 0, 0, 0], [0, 0, 1, 1]]))
    acc = HistogramAccumulator(cs.names, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), store.splits == "test", 8)
    score_store(store, cs, [acc])
    assert acc.result().n_tokens.sum() == int(((store.splits == "test")[store.sample_of_token]).sum()) * 2


def test_curves_round_trip(tmp_path):
    conf = Confusion(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2))
    cal = np.array([[0.1, 0.5, 0.2], [0.3, 0.3, 0.9]])
    res = [MethodResult("superactivator", ["a", "b"], np.zeros(2), np.array([5.0, 20.0]), np.zeros(2), conf,
                        cal, cal / 2),
           MethodResult("max_token@best_threshold", ["a", "b"], np.zeros(2), np.full(2, np.nan), np.zeros(2), conf)]
    save_curves(tmp_path / "curves.npz", res, [2, 5, 20])
    cv = F1Curves.load(tmp_path / "curves.npz")
    assert cv.grid.tolist() == [2, 5, 20] and cv.names == ["a", "b"]
    assert list(cv.cal) == ["superactivator"]  # free-threshold methods have no curve
    np.testing.assert_array_equal(cv.test["superactivator"], cal / 2)
