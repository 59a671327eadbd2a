"""Scale paths: synthetic stores, blocked scoring, block-wise concept learning and statistics."""

from __future__ import annotations

import numpy as np
import pytest

from superactivators.concepts.supervised import ConceptSet, gather_raw_rows, learn_mean_concepts
from superactivators.evaluate.scoring import Scorer
from superactivators.store.synth import SynthSpec, build_synthetic_store, sample_lengths, token_ground_truth

SMALL = SynthSpec(n_tokens=3000, dim=16, n_concepts=5, min_len=20, max_len=60, shard_tokens=700, layer=2)


def test_sample_lengths_sum_exactly_and_stay_in_range():
    lengths = sample_lengths(SMALL, np.random.default_rng(0))
    assert lengths.sum() == 3000 and lengths.min() >= 20 and lengths.max() <= 60
    with pytest.raises(ValueError, match="below one sample"):
        sample_lengths(SynthSpec(n_tokens=10, min_len=20), np.random.default_rng(0))


def test_token_ground_truth_by_hand():
    # two samples of 3 and 4 tokens; concept 0 on local rows [1, 3) of sample 0, concept 1 on [0, 1) of sample 1
    gt = token_ground_truth(np.array([3, 4]), np.array([[1, 0], [0, 0]]), np.array([[3, 0], [0, 1]]))
    want = np.zeros((7, 2), bool)
    want[[1, 2], 0] = True
    want[3, 1] = True
    np.testing.assert_array_equal(gt, want)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build_synthetic_store(tmp_path_factory.mktemp("synth") / "s", SMALL, batch_samples=8)


def test_synthetic_store_shape_truth_and_signal(synth):
    assert synth.n_tokens == 3000 and synth.dim == 16 and len(synth.concepts) == 5 and len(synth.shards) > 2
    labels = synth.labels.astype(bool)
    for s in synth.shards:
        gt = synth.token_labels(s)
        starts = synth.offsets[s.start:s.stop] - s.token_start
        has = np.logical_or.reduceat(gt, starts, axis=0)
        np.testing.assert_array_equal(has, labels[s.start:s.stop])  # a positive sample has its token run
    # the planted direction: in-concept tokens lie further along it than the rest
    mean, _ = synth.norm(2)
    x = np.concatenate([np.asarray(t, np.float32) for _, t in synth.iter_shards(2)]) - mean
    gt = np.concatenate([synth.token_labels(s) for s in synth.shards])
    cs = learn_mean_concepts(synth, 2, list(range(5)))
    proj = x @ (cs.vectors / np.linalg.norm(cs.vectors, axis=1, keepdims=True)).T
    assert all(proj[gt[:, c], c].mean() > proj[~gt[:, c], c].mean() + 1.0 for c in range(5))
    # a rebuild with the same spec reuses the store; another spec in the same folder is refused
    assert build_synthetic_store(synth.path, SMALL).n_tokens == 3000
    with pytest.raises(ValueError, match="different store"):
        build_synthetic_store(synth.path, SynthSpec(n_tokens=3100, dim=16, n_concepts=5, min_len=20, max_len=60))


def test_learn_mean_concepts_equals_direct_average(synth):
    mean, scale = synth.norm(2)
    x = (np.concatenate([np.asarray(t, np.float64) for _, t in synth.iter_shards(2)]) - mean) / scale
    gt = np.concatenate([synth.token_labels(s) for s in synth.shards])
    train = (synth.splits == "train")[synth.sample_of_token]
    cs = learn_mean_concepts(synth, 2, [3, 1])
    for row, c in enumerate([3, 1]):
        np.testing.assert_allclose(cs.vectors[row], x[train & gt[:, c]].mean(0), rtol=1e-5, atol=1e-6)


def test_gather_raw_rows_keeps_store_dtype(synth):
    rows = np.array([0, 5, 699, 700, 2999])
    got = gather_raw_rows(synth, 2, rows)
    allx = np.concatenate([np.asarray(t) for _, t in synth.iter_shards(2)])
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, allx[rows])


@pytest.mark.parametrize("scoring", ["cosine", "signed_distance"])
def test_blocked_scorer_equals_one_block_and_formula(scoring):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(1000, 8)) * 2 + 5).astype(np.float16)
    cs = ConceptSet("k", ["a", "b", "c"], rng.normal(size=(3, 8)).astype(np.float32),
                    rng.normal(size=3).astype(np.float32), scoring, 1, rng.normal(size=8).astype(np.float32) + 5, 1.7)
    sc = Scorer(cs)
    sc.block_rows = 64  # 16 blocks, the last one short
    got = sc(x)
    xc = x.astype(np.float64) - cs.center
    if scoring == "cosine":
        want = (xc @ cs.vectors.T) / np.linalg.norm(xc, axis=1)[:, None] / np.linalg.norm(cs.vectors, axis=1)
    else:
        want = (xc / cs.scale @ cs.vectors.T + cs.bias) / np.linalg.norm(cs.vectors, axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    one = Scorer(cs)
    one.block_rows = 4096
    np.testing.assert_allclose(got, one(x), rtol=1e-6, atol=1e-7)


def test_aligned_blocks_do_not_depend_on_shard_layout(synth):
    mask = (synth.splits == "train")[synth.sample_of_token]
    blocks = list(synth.aligned_blocks(2, mask, block=256))
    allx = np.concatenate([np.asarray(t, np.float32) for _, t in synth.iter_shards(2)])
    # block k holds exactly the masked rows of global window [256 k, 256 (k + 1))
    win = np.arange(synth.n_tokens) // 256
    want = [allx[(win == k) & mask] for k in range(win.max() + 1) if ((win == k) & mask).any()]
    assert len(blocks) == len(want)
    for b, w in zip(blocks, want):
        np.testing.assert_array_equal(b, w)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_gpu_scorer_matches_cpu_through_pinned_copies(synth):
    import torch

    rng = np.random.default_rng(5)
    cs = ConceptSet("k", ["a", "b"], rng.normal(size=(2, 16)).astype(np.float32), np.zeros(2, np.float32),
                    "cosine", 2, rng.normal(size=16).astype(np.float32), 1.0)
    gpu, cpu = Scorer(cs, "cuda"), Scorer(cs)
    for _, x in synth.iter_shards(2):  # memmapped fp16 shards, as score_store feeds them
        np.testing.assert_allclose(gpu(x), cpu(x), rtol=1e-4, atol=1e-5)
    assert gpu._pinned is not None and gpu._pinned.is_pinned()
    assert gpu._buf.device.type == "cuda" and torch.cuda.is_available()


def test_folded_centring_stays_accurate_with_a_large_mean():
    # hidden states far from the origin (||c|| ~ 100x the spread), as in LLM residual streams
    rng = np.random.default_rng(6)
    d = 64
    center = rng.normal(size=d).astype(np.float32) * 100
    x = (center + rng.normal(size=(500, d))).astype(np.float32)
    cs = ConceptSet("k", ["a", "b"], rng.normal(size=(2, d)).astype(np.float32), rng.normal(size=2).astype(np.float32),
                    "signed_distance", 1, center, 8.0)
    got = Scorer(cs)(x)
    xc = x.astype(np.float64) - center.astype(np.float64)
    want = (xc / 8.0 @ cs.vectors.T.astype(np.float64) + cs.bias) / np.linalg.norm(cs.vectors, axis=1)
    assert np.abs(want).mean() > 0.1  # distances of order 1
    np.testing.assert_allclose(got, want, atol=1e-4)
