"""DiffMean concepts and the rolling_max baseline against hand computations (issue 22, item 6)."""

from __future__ import annotations

import numpy as np
import pytest

from superactivators.concepts.diffmean import diffmean_vectors, learn_diffmean_concepts, learn_global_diffmean
from superactivators.concepts.types import DiffMeanType, concept_type
from superactivators.evaluate.methods import BY_NAME, METHODS
from superactivators.evaluate.options import DetectConfig
from superactivators.evaluate.scoring import make_scorer, rolling_max, rolling_max_t
from superactivators.store.synth import SynthSpec, build_synthetic_store


def test_diffmean_vectors_by_hand():
    x = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0]])
    pos = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=bool)
    w = diffmean_vectors(x, pos)
    # concept 0: mean(rows 0, 1) = (2, 1); mean(rows 2, 3) = (1, 3) -> (1, -2)
    # concept 1: row 2 = (0, 4); mean(rows 0, 1, 3) = (2, 4/3) -> (-2, 8/3)
    np.testing.assert_allclose(w, [[1.0, -2.0], [-2.0, 8.0 / 3.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="one positive and one negative"):
        diffmean_vectors(x, np.ones((4, 1), bool))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    spec = SynthSpec(n_tokens=4000, dim=12, n_concepts=3, min_len=20, max_len=60, label_rate=(0.2, 0.4),
                     shard_tokens=1500, seed=3)
    return build_synthetic_store(tmp_path_factory.mktemp("synth") / "s", spec)


def test_diffmean_concepts_match_raw_token_means(store):
    layer = store.layers[0]
    cs = learn_diffmean_concepts(store, layer, [0, 1, 2])
    # by hand from the raw tokens: train rows, in-concept vs every other valid train token
    X = np.concatenate([store.tokens(layer, s).astype(np.float64) for s in store.shards])
    gt = np.concatenate([store.token_labels(s) for s in store.shards]).astype(bool)
    train = store.valid & (store.splits == "train")[store.sample_of_token]
    mean, scale = store.norm(layer)
    for c in range(3):
        p, n = train & gt[:, c], train & ~gt[:, c]
        want = (X[p].mean(0) - X[n].mean(0)) / scale
        np.testing.assert_allclose(cs.vectors[c], want, rtol=1e-4, atol=1e-5)
    assert cs.kind == "diffmean" and cs.scoring == "signed_distance" and not cs.bias.any()
    # the score is the normalised dot product with the unit DiffMean direction
    s0 = store.shards[0]
    acts = make_scorer(cs)(store.tokens(layer, s0))
    x0 = (X[s0.token_start:s0.token_stop] - mean) / scale
    w = cs.vectors.astype(np.float64)
    np.testing.assert_allclose(acts, x0 @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T, rtol=1e-3, atol=1e-3)


def test_global_diffmean_matches_sample_means(store):
    layer = store.layers[0]
    g = store.globals(layer).astype(np.float64)
    train = store.splits == "train"
    y = store.labels[train].astype(bool)
    cs = learn_global_diffmean(store, layer, [0, 1, 2])
    x = g[train] - g[train].mean(0)
    scale = np.linalg.norm(x, axis=1).mean()
    for c in range(3):
        want = (x[y[:, c]].mean(0) - x[~y[:, c]].mean(0)) / scale
        np.testing.assert_allclose(cs.vectors[c], want, rtol=1e-4, atol=1e-5)
    assert cs.space == "globals"


def test_diffmean_is_a_labelled_concept_type():
    ct = concept_type("diffmean")
    assert isinstance(ct, DiffMeanType) and ct.labelled and ct.cache_key() == {}


def test_rolling_max_by_hand():
    # sample 0: 5 tokens, sample 1: 2 tokens (shorter than the window), sample 2: 4 tokens, one invalid
    a = np.array([1, 5, 0, 3, 3, 7, 1, 2, 9, 2, 4], dtype=np.float32)[:, None]
    starts = np.array([0, 5, 7])
    valid = np.ones(11, bool)
    valid[8] = False  # the 9 is padding: windows run over 2, 2, 4
    out = rolling_max(np.hstack([a, -a]), starts, valid, window=3)
    # sample 0 windows: (1+5+0)/3=2, (5+0+3)/3=8/3, (0+3+3)/3=2 -> 8/3; negated: -2, -8/3, -2 -> -2
    # sample 1: shorter than 3 -> mean (7+1)/2 = 4; negated -4
    # sample 2: valid 2, 2, 4 -> one window 8/3; negated -8/3
    np.testing.assert_allclose(out, [[8 / 3, -2.0], [4.0, -4.0], [8 / 3, -8 / 3]], rtol=1e-6)
    # window 1 is the max token, a window as long as the longest sample is the mean
    np.testing.assert_allclose(rolling_max(a, starts, valid, 1)[:, 0], [5, 7, 4])
    np.testing.assert_allclose(rolling_max(a, starts, valid, 5)[:, 0], [12 / 5, 4, 8 / 3], rtol=1e-6)
    # windows never cross samples: a window of 2 over [3, 3 | 7] must not see 3+7
    np.testing.assert_allclose(rolling_max(a, starts, None, 2)[:, 0], [3, 4, 5.5], rtol=1e-6)
    # column blocks give the same answer
    wide = np.random.default_rng(0).normal(size=(11, 7)).astype(np.float32)
    np.testing.assert_allclose(rolling_max(wide, starts, valid, 3, col_block=2),
                               rolling_max(wide, starts, valid, 3), rtol=1e-6)
    with pytest.raises(ValueError, match="window"):
        rolling_max(a, starts, None, 0)


def _rolling_by_loops(acts_t, starts, valid, w):
    """Per sample and concept: float64 running sums token by token, every window mean, the max."""
    t = acts_t.shape[1]
    bounds = list(starts) + [t]
    out = np.zeros((len(starts), acts_t.shape[0]), np.float32)
    for i in range(len(starts)):
        keep = [j for j in range(bounds[i], bounds[i + 1]) if valid is None or valid[j]]
        for c in range(acts_t.shape[0]):
            cs = [0.0]
            for j in keep:
                cs.append(cs[-1] + float(acts_t[c, j]))
            n = len(keep)
            out[i, c] = cs[n] / n if n < w else max((cs[k + w] - cs[k]) / w for k in range(n - w + 1))
    return out


def test_rolling_max_concept_major_by_hand_and_by_loops():
    a = np.array([1, 5, 0, 3, 3, 7, 1, 2, 9, 2, 4], dtype=np.float32)
    starts = np.array([0, 5, 7])
    valid = np.ones(11, bool)
    valid[8] = False
    a_t = np.stack([a, -a])  # [C, t], C-contiguous: the fused pass's blocks
    # the same hand values as test_rolling_max_by_hand: 8/3, 4, 8/3 and -2, -4, -8/3
    np.testing.assert_allclose(rolling_max_t(a_t, starts, valid, 3), [[8 / 3, -2.0], [4.0, -4.0], [8 / 3, -8 / 3]],
                               rtol=1e-6)
    # every sample shorter than the window: each scores its mean
    np.testing.assert_allclose(rolling_max_t(a_t, starts, valid, 6)[:, 0], [12 / 5, 4, 8 / 3], rtol=1e-6)
    # bit for bit against running sums written out here, ragged samples with padding, a sample
    # exactly one window long, and the [t, C] entry point on the same values
    rng = np.random.default_rng(3)
    lengths = np.array([1, 4, 9, 2, 4, 17, 3])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = int(lengths.sum())
    valid = rng.random(t) > 0.2
    valid[starts] = True
    x_t = rng.normal(size=(5, t)).astype(np.float32)
    for w in (1, 3, 4):
        for v in (valid, None):
            want = _rolling_by_loops(x_t, starts, v, w)
            np.testing.assert_array_equal(rolling_max_t(x_t, starts, v, w), want)
            np.testing.assert_array_equal(rolling_max(np.ascontiguousarray(x_t.T), starts, v, w), want)
            np.testing.assert_array_equal(rolling_max_t(x_t, starts, v, w, col_block=2), want)
    with pytest.raises(ValueError, match="window"):
        rolling_max_t(x_t, starts, None, 0)


def test_rolling_max_is_a_default_baseline():
    rec = BY_NAME["rolling_max"]
    assert rec.kind == "baseline" and rec.population == "positive_samples" and "rolling_max" in METHODS
    assert DetectConfig().rolling_window == 8
    assert any("rolling_window" in p for p in DetectConfig(rolling_window=0).problems())
