"""k-means concepts: planted clusters recovered, exact centroids, seeding, linsep variant."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from superactivators.concepts.kmeans import (
    _finish,
    _stratified_pool,
    assign,
    fit_global_kmeans,
    fit_token_kmeans,
    global_space,
    kmeans_concepts,
    kmeans_linsep_concepts,
)
from superactivators.concepts.supervised import _split_token_mask
from superactivators.evaluate.scoring import make_scorer

from .planted import planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("planted"))


def _train_norm(planted):
    store = planted.store
    rows = np.flatnonzero(_split_token_mask(store, "train"))
    mean, scale = store.norm(1)
    return rows, (planted.x[rows] - mean) / scale


def test_token_kmeans_recovers_planted_clusters(planted):
    store = planted.store
    assert len(store.shards) > 3  # the stream really crosses shards
    fit = fit_token_kmeans(store, 1, k=5, seed=0, batch_size=64, min_steps=20)
    rows, xn = _train_norm(planted)
    np.testing.assert_array_equal(fit.rows, rows)
    assert adjusted_rand_score(planted.cluster[rows], fit.labels) == 1.0
    # each centroid is exactly the mean of its members (final exact pass)
    for j in range(fit.k):
        np.testing.assert_allclose(fit.centers[j], xn[fit.labels == j].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fit.sizes, np.bincount(fit.labels, minlength=5))
    # and sits on the planted centre (in normalised space)
    mean, scale = store.norm(1)
    planted_n = (planted.centers - mean) / scale
    for j in range(fit.k):
        g = planted.cluster[rows][fit.labels == j][0]
        assert np.linalg.norm(fit.centers[j] - planted_n[g]) < 0.1 * np.linalg.norm(planted_n[g])


def test_token_kmeans_is_seeded(planted):
    a = fit_token_kmeans(planted.store, 1, k=8, seed=3, batch_size=64, min_steps=20)
    b = fit_token_kmeans(planted.store, 1, k=8, seed=3, batch_size=64, min_steps=20)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_kmeans_rejects_k_above_points(planted):
    with pytest.raises(ValueError, match="lower k"):
        fit_token_kmeans(planted.store, 1, k=10**6)
    with pytest.raises(ValueError, match="k >= 1"):
        fit_global_kmeans(planted.store, 1, k=0)


def test_assign_in_chunks_equals_full_distance_matrix():
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(50, 3)), rng.normal(size=(6, 3))
    full = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(assign(x, c, chunk=7), full)


def test_empty_clusters_are_dropped_and_labels_renumbered():
    x = np.array([[0.0, 0], [1, 1], [3, 3]], dtype=np.float32)
    labels = np.array([0, 2, 2])
    sums = np.zeros((3, 2))
    np.add.at(sums, labels, x)
    with pytest.warns(UserWarning, match="1 of 3 clusters"):
        fit = _finish(sums, labels, np.arange(3), np.zeros(2), 1.0, "tokens")
    np.testing.assert_array_equal(fit.labels, [0, 1, 1])
    np.testing.assert_allclose(fit.centers, [[0, 0], [2, 2]])
    np.testing.assert_array_equal(fit.sizes, [1, 2])


def test_kmeans_concepts_score_cosine_to_centroid(planted):
    fit = fit_token_kmeans(planted.store, 1, k=5, seed=0, batch_size=64, min_steps=20)
    cs = kmeans_concepts(fit, 1)
    assert (cs.kind, cs.scoring, cs.space) == ("kmeans", "cosine", "tokens")
    assert cs.names[0] == "cluster_000" and len(cs.names) == 5
    x = planted.x[:20]
    xn = (x - fit.mean) / fit.scale
    want = (xn @ fit.centers.T) / np.linalg.norm(xn, axis=1)[:, None] / np.linalg.norm(fit.centers, axis=1)[None]
    np.testing.assert_allclose(make_scorer(cs)(x), want, rtol=1e-4, atol=1e-5)


def test_stratified_pool_caps_members_per_cluster():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 12)
    pick = _stratified_pool(labels, k=3, pool_size=30, rng=np.random.default_rng(0))  # cap = max(10, 10)
    np.testing.assert_array_equal(np.bincount(labels[pick]), [10, 5, 10])
    assert len(np.unique(pick)) == len(pick) and np.all(np.diff(pick) > 0)


def test_kmeans_linsep_separates_members_from_rest(planted):
    store = planted.store
    fit = fit_token_kmeans(store, 1, k=5, seed=0, batch_size=64, min_steps=20)
    cs = kmeans_linsep_concepts(store, 1, fit, pool_size=200, seed=0)
    assert (cs.kind, cs.scoring) == ("kmeans-linsep", "signed_distance")
    acts = make_scorer(cs)(planted.x[fit.rows])
    # each cluster's separator puts its members on the positive side, the rest on the negative
    pred = acts > 0
    truth = fit.labels[:, None] == np.arange(5)[None]
    assert (pred == truth).mean() > 0.99


def test_global_kmeans_centroids_are_member_means(planted):
    store = planted.store
    fit = fit_global_kmeans(store, 1, k=4, seed=0)
    gmean, gscale, x = global_space(store, 1)
    assert fit.space == "globals" and fit.k == 4
    np.testing.assert_array_equal(fit.rows, np.flatnonzero(store.splits == "train"))
    for j in range(4):
        np.testing.assert_allclose(fit.centers[j], x[fit.labels == j].mean(0), rtol=1e-5, atol=1e-5)
    cs = kmeans_linsep_concepts(store, 1, fit, seed=0)
    assert cs.space == "globals" and cs.names[0] == "gcluster_000" and cs.vectors.shape == (4, store.dim)
