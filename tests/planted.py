"""A small token store with planted clusters, for k-means and matching tests.

Tokens come from ``n_concepts + 1`` well-separated Gaussian clusters (the last one is
background). Sample i contains 1-2 concept clusters and background tokens; concept c is
present in a sample iff it holds tokens of cluster c, and exactly those tokens are in-concept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from superactivators.store.tokens import StoreInfo, StoreWriter, TokenStore


@dataclass
class Planted:
    store: TokenStore
    x: np.ndarray  # [T, d] raw token states
    cluster: np.ndarray  # [T] planted cluster of each token (n_concepts = background)
    centers: np.ndarray  # [n_concepts + 1, d]


def planted_store(path: Path, n_samples: int = 240, n_concepts: int = 4, d: int = 16, seed: int = 0,
                  shard_tokens: int = 400, spread: float = 10.0, noise: float = 0.5) -> Planted:
    rng = np.random.default_rng(seed)
    G = n_concepts + 1
    centers = rng.normal(size=(G, d))
    centers *= spread / np.linalg.norm(centers, axis=1, keepdims=True)
    centers += 3.0  # a shared offset, so that centring matters
    lengths = rng.integers(4, 11, size=n_samples)
    labels = np.zeros((n_samples, n_concepts), np.uint8)
    cluster_parts = []
    for i, n in enumerate(lengths):
        present = rng.choice(n_concepts, size=rng.integers(1, 3), replace=False)
        labels[i, present] = 1
        cl = np.full(n, n_concepts)
        cl[: len(present) * 2] = np.repeat(present, 2)  # two tokens per present concept
        cluster_parts.append(rng.permutation(cl))
    cluster = np.concatenate(cluster_parts)
    x = (centers[cluster] + noise * rng.normal(size=(len(cluster), d))).astype(np.float32)
    gt = cluster[:, None] == np.arange(n_concepts)[None, :]
    splits = rng.choice(np.array(["train", "cal", "test"]), size=n_samples, p=[0.5, 0.25, 0.25])
    info = StoreInfo(n_samples=n_samples, dim=d, layers=[1], concepts=[f"c{c}" for c in range(n_concepts)],
                     modality="text", dtype="float32", model={"id": "planted", "n_layers": 2},
                     token_ground_truth="spans")
    w = StoreWriter(path, info, labels, splits, shard_tokens=shard_tokens)
    off = np.concatenate([[0], np.cumsum(lengths)])
    for a in range(0, n_samples, 16):
        b = min(n_samples, a + 16)
        sl = slice(off[a], off[b])
        glob = np.stack([x[off[i]:off[i + 1]].mean(0) for i in range(a, b)])
        w.add({1: x[sl]}, {1: glob}, lengths[a:b], np.ones(off[b] - off[a], bool),
              gt_bits=np.packbits(gt[sl], axis=1))
    return Planted(w.close(), x, cluster, centers)
