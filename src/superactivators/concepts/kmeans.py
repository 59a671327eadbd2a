"""Unsupervised concepts: k-means clusters of train token (or global) embeddings.

Each cluster centroid becomes a cosine concept (kind ``kmeans``); the ``kmeans-linsep``
variant fits one linear separator per cluster (members vs the rest) and scores by signed
distance. Clusters carry no label: :mod:`superactivators.evaluate.matching` pairs each labelled
concept with the cluster that detects it best on ``cal``.

Why scikit-learn's ``MiniBatchKMeans`` for tokens: it is a well-kept, seeded implementation
whose ``partial_fit`` consumes one mini-batch at a time, so memory stays at
``batch x k`` distances plus ``k x d`` centres whatever the number of tokens (millions of
tokens never become an ``N x k`` matrix, nor an ``N x d`` array in RAM); it runs on the CPU
with no extra dependency (faiss would be faster on a GPU but is not installable everywhere).
The protocol, all seeded by ``seed``:

1. **init**: k-means++ on a uniform random sample of train tokens drawn across the whole
   store (the first shard alone could be biased: sample order may follow the labels);
2. **epochs**: shards in a random order, each shard's train tokens shuffled, fed in
   mini-batches; enough epochs for ``min_steps`` mini-batch updates (capped);
3. **exact Lloyd passes** (two by default): every train token is assigned to its nearest
   centre (chunked GEMM, ``[chunk, k]`` distances) and each centre is replaced by the mean of
   its members, so a centroid is exactly the ``mean`` concept of an unsupervised label. Clusters left
   empty are dropped (with a warning), so ``k`` is an upper bound.

Global embeddings (one per sample) are already in memory: they use scikit-learn's exact
Lloyd ``KMeans`` (``n_init=3``), then the same cluster bookkeeping.

All clustering happens in the layer's normalised space (``(h - mean) / scale``, the space
of every concept set), so a k-means centroid and a ``mean`` concept are directly comparable.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..store.artefacts import load_npz, recording
from ..store.tokens import TokenStore
from ..util.io import atomic_save_npz
from .supervised import ConceptSet, _fit_separators, _split_token_mask, gather_rows, normalise

ASSIGN_CHUNK = 16384  # rows per chunk when assigning points to centres


@dataclass
class KMeansFit:
    """A clustering of train points (token rows or sample indices) in normalised space."""

    centers: np.ndarray  # [k, d] normalised space
    rows: np.ndarray  # [n] token rows (space "tokens") or sample indices ("globals"), sorted
    labels: np.ndarray  # [n] cluster of each row
    sizes: np.ndarray  # [k] members per cluster (all > 0)
    mean: np.ndarray  # [d] centring vector of the space
    scale: float  # scaling of the space
    space: str  # "tokens" | "globals"

    @property
    def k(self) -> int:
        return len(self.centers)

    def save(self, path: Path) -> None:
        with recording(Path(path)):
            atomic_save_npz(Path(path), centers=self.centers, rows=self.rows, labels=self.labels, sizes=self.sizes,
                            mean=self.mean, scale=np.float64(self.scale), space=np.array(self.space))

    @classmethod
    def load(cls, path: Path) -> "KMeansFit":
        z = load_npz(path)
        return cls(z["centers"], z["rows"], z["labels"], z["sizes"], z["mean"], float(z["scale"]), str(z["space"]))


def cluster_names(k: int, prefix: str = "cluster") -> list[str]:
    width = max(3, len(str(k - 1)))
    return [f"{prefix}_{j:0{width}d}" for j in range(k)]


def assign(x: np.ndarray, centers: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """Nearest centre (squared Euclidean) of each row of ``x``, ``[chunk, k]`` distances at a time."""
    c = np.asarray(centers, dtype=np.float32)
    c_sq = (c * c).sum(axis=1)
    out = np.empty(len(x), dtype=np.int64)
    for a in range(0, len(x), chunk):
        xb = np.asarray(x[a:a + chunk], dtype=np.float32)
        out[a:a + chunk] = np.argmin(c_sq[None, :] - 2.0 * (xb @ c.T), axis=1)
    return out


def _check_k(k: int, n: int, what: str) -> None:
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got {k}")
    if n < k:
        raise ValueError(f"k-means with k={k} needs at least {k} {what}, the train split has {n}; lower k")


def _epochs_for(n: int, batch_size: int, min_steps: int, max_epochs: int) -> int:
    return int(min(max_epochs, max(1, math.ceil(min_steps * batch_size / max(n, 1)))))


def fit_token_kmeans(
    store: TokenStore,
    layer: int,
    k: int,
    seed: int = 0,
    batch_size: int | None = None,
    min_steps: int = 100,
    max_epochs: int = 10,
    init_points: int | None = None,
    lloyd_passes: int = 2,
) -> KMeansFit:
    """Stream the train tokens of ``layer`` through ``MiniBatchKMeans.partial_fit`` (see module doc).

    ``batch_size`` defaults to ``max(1024, 2k)`` (each update sees every centre twice on
    average); ``init_points`` (the k-means++ sample) to ``max(3 * batch_size, 10 k)``.
    ``lloyd_passes`` exact streaming Lloyd passes (assign, then centre = mean of members)
    polish the mini-batch centres; the last one gives the returned labels and centres.
    """
    from sklearn.cluster import MiniBatchKMeans

    rows = np.flatnonzero(_split_token_mask(store, "train"))
    _check_k(k, len(rows), "train tokens")
    mean, scale = store.norm(layer)
    rng = np.random.default_rng(seed)
    batch_size = batch_size or max(1024, 2 * k)
    n_init = min(len(rows), init_points or max(3 * batch_size, 10 * k))
    init_rows = np.sort(rng.choice(rows, n_init, replace=False))
    km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, random_state=seed, n_init=1,
                         init_size=n_init, compute_labels=False)
    km.partial_fit(gather_rows(store, layer, init_rows, mean, scale))
    for _ in range(_epochs_for(len(rows), batch_size, min_steps, max_epochs)):
        for _, x in _train_chunks(store, layer, rows, mean, scale, rng.permutation(len(store.shards))):
            x = x[rng.permutation(len(x))]
            for a in range(0, len(x), batch_size):
                if len(x) - a >= k:  # a tail shorter than k adds noise, not signal
                    km.partial_fit(x[a:a + batch_size])
    centers = km.cluster_centers_
    labels = np.empty(len(rows), dtype=np.int64)
    for _ in range(max(1, lloyd_passes)):  # exact passes: assign every train token, centre = member mean
        sums = np.zeros((k, store.dim), dtype=np.float64)
        for lo, x in _train_chunks(store, layer, rows, mean, scale, range(len(store.shards))):
            labels[lo:lo + len(x)] = assign(x, centers)
            _add_by_label(sums, labels[lo:lo + len(x)], x)
        sizes = np.bincount(labels, minlength=k)
        centers = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centers).astype(np.float32)
    return _finish(sums, labels, rows, mean, scale, "tokens")


def _train_chunks(store: TokenStore, layer: int, rows: np.ndarray, mean: np.ndarray, scale: float,
                  shard_order, chunk: int = ASSIGN_CHUNK):
    """Yield ``(position in rows, normalised hidden states)`` for sorted token ``rows``, shard by shard."""
    for si in shard_order:
        s = store.shards[si]
        lo, hi = np.searchsorted(rows, [s.token_start, s.token_stop])
        tok = store.tokens(layer, s)
        for a in range(lo, hi, chunk):
            b = min(hi, a + chunk)
            yield a, normalise(tok[rows[a:b] - s.token_start], mean, scale)


def _add_by_label(sums: np.ndarray, labels: np.ndarray, x: np.ndarray) -> None:
    """``sums[j] += x[labels == j].sum(0)`` for every cluster j (sort + segment sums)."""
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sums[lab[starts]] += np.add.reduceat(x[order].astype(np.float64), starts, axis=0)


def _finish(sums: np.ndarray, labels: np.ndarray, rows: np.ndarray, mean: np.ndarray, scale: float,
            space: str) -> KMeansFit:
    sizes = np.bincount(labels, minlength=len(sums))
    keep = sizes > 0
    if not keep.all():
        warnings.warn(f"k-means: {int((~keep).sum())} of {len(sums)} clusters ended empty and were dropped",
                      stacklevel=3)
    remap = np.cumsum(keep) - 1
    centers = (sums[keep] / sizes[keep, None]).astype(np.float32)
    return KMeansFit(centers, rows, remap[labels], sizes[keep], np.asarray(mean, np.float32), float(scale), space)


def global_space(store: TokenStore, layer: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Train mean and mean norm of global embeddings, and the normalised train globals.

    Same statistics as :func:`superactivators.concepts.learn_global_concepts`.
    """
    g = store.globals(layer)
    train = store.splits == "train"
    gmean = g[train].mean(axis=0).astype(np.float32)
    gscale = float(np.linalg.norm(g[train] - gmean, axis=1).mean()) or 1.0
    return gmean, gscale, ((g[train] - gmean) / gscale).astype(np.float32)


def fit_global_kmeans(store: TokenStore, layer: int, k: int, seed: int = 0) -> KMeansFit:
    """Exact Lloyd k-means (``n_init=3``, seeded) on the normalised train global embeddings."""
    from sklearn.cluster import KMeans

    gmean, gscale, x = global_space(store, layer)
    _check_k(k, len(x), "train samples")
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
    labels = km.labels_.astype(np.int64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    _add_by_label(sums, labels, x)
    return _finish(sums, labels, np.flatnonzero(store.splits == "train"), gmean, gscale, "globals")


def kmeans_concepts(fit: KMeansFit, layer: int) -> ConceptSet:
    """Centroids as cosine concepts (kind ``kmeans``)."""
    prefix = "cluster" if fit.space == "tokens" else "gcluster"
    return ConceptSet("kmeans", cluster_names(fit.k, prefix), fit.centers.astype(np.float32),
                      np.zeros(fit.k, np.float32), "cosine", layer, fit.mean, fit.scale, space=fit.space)


def _stratified_pool(labels: np.ndarray, k: int, pool_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into ``labels``: up to ``ceil(pool_size / k)`` (at least 10) members of every cluster."""
    cap = max(10, math.ceil(pool_size / k))
    order = rng.permutation(len(labels))
    lab = labels[order]
    srt = np.argsort(lab, kind="stable")  # random order within each cluster
    lab_s = lab[srt]
    first = np.searchsorted(lab_s, lab_s)  # first position of each row's cluster
    rank = np.arange(len(lab_s)) - first
    return np.sort(order[srt[rank < cap]])


def kmeans_linsep_concepts(
    store: TokenStore, layer: int, fit: KMeansFit, pool_size: int = 8000, c_reg: float = 1.0, seed: int = 0,
    min_negatives: int = 1000,
) -> ConceptSet:
    """One linear separator per cluster, members vs the rest (kind ``kmeans-linsep``).

    A seeded pool stratified by cluster (up to ``ceil(pool_size / k)``, at least 10, members
    of every cluster; in global space all train samples) is gathered once, so memory stays
    bounded whatever the store size. Cluster j's separator is a balanced logistic regression
    (the solver of ``linsep`` concepts) of its pooled members vs a seeded sample of the other
    pooled points, ``max(min_negatives, 4 x members)`` of them: the rest of the pool adds
    cost (k fits) more than information, since classes are balanced by weight anyway.
    """
    rng = np.random.default_rng(seed)
    if fit.space == "tokens":
        pick = _stratified_pool(fit.labels, fit.k, pool_size, rng)
        x = gather_rows(store, layer, fit.rows[pick], fit.mean, fit.scale)
        lab = fit.labels[pick]
    else:
        _, _, x = global_space(store, layer)
        lab = fit.labels
    W = np.zeros((fit.k, x.shape[1]), dtype=np.float32)
    b = np.zeros(fit.k, dtype=np.float32)
    for j in range(fit.k):
        pos, neg = np.flatnonzero(lab == j), np.flatnonzero(lab != j)
        neg = np.sort(rng.choice(neg, min(len(neg), max(min_negatives, 4 * len(pos))), replace=False))
        rows = np.concatenate([pos, neg])
        Wj, bj = _fit_separators(x[rows], (lab[rows] == j)[:, None], c_reg, seed)
        W[j], b[j] = Wj[0], bj[0]
    prefix = "cluster" if fit.space == "tokens" else "gcluster"
    return ConceptSet("kmeans-linsep", cluster_names(fit.k, prefix), W, b, "signed_distance", layer,
                      fit.mean, fit.scale, space=fit.space)
