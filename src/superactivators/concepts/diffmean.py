"""DiffMean concepts: the mean of positive train tokens minus the mean of negative train tokens.

AxBench's strongest detector (Wu, Arora et al. 2025, Table 1). Positive tokens are a concept's
in-concept train tokens (with sample labels only: every valid token of a positive sample, as
:meth:`~superactivators.store.tokens.TokenStore.token_labels` gives them); negative tokens are
every other valid train token (of a sample whose label for the concept is known). The vector lives in the layer's normalised space, where the
centring cancels: ``w = (mean(h+) - mean(h-)) / scale``.

Scoring is the dot product with ``w``. It is stored as ``signed_distance`` with zero bias, i.e.
``((h - c) / s) . w / ||w||``: the dot product up to a positive per-concept factor and a
per-concept offset, so every ranking (AUROC, AP) and every calibrated tail threshold is the plain
dot product's, and the existing scorers, localisation and estimator serve it unchanged.
"""

from __future__ import annotations

import numpy as np

from ..store.tokens import TokenStore, row_blocks
from .supervised import ConceptSet, _check_counts, _split_token_mask

KIND = "diffmean"


def diffmean_vectors(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``[C, d]`` mean of the rows of ``x [n, d]`` where ``pos [n, C]`` minus the mean of the others."""
    pos = np.asarray(pos, dtype=bool)
    n_pos = pos.sum(axis=0)
    n_neg = len(x) - n_pos
    if (n_pos == 0).any() or (n_neg == 0).any():
        raise ValueError("diffmean needs at least one positive and one negative row per concept")
    x64 = np.asarray(x, dtype=np.float64)
    s_pos = pos.T.astype(np.float64) @ x64
    s_neg = x64.sum(axis=0)[None, :] - s_pos
    return (s_pos / n_pos[:, None] - s_neg / n_neg[:, None]).astype(np.float32)


def _concept_set(names: list[str], w: np.ndarray, layer: int, center: np.ndarray, scale: float,
                 space: str = "tokens") -> ConceptSet:
    return ConceptSet(KIND, names, w.astype(np.float32), np.zeros(len(names), np.float32), "signed_distance",
                      layer, np.asarray(center, np.float32), float(scale), space=space)


def learn_diffmean_concepts(store: TokenStore, layer: int, concepts: list[int]) -> ConceptSet:
    """DiffMean per concept from the train tokens: one GEMM per shard for the positive sums."""
    mean, scale = store.norm(layer)
    train = _split_token_mask(store, "train")
    pos_sum = np.zeros((len(concepts), store.dim), dtype=np.float64)
    neg_sum = np.zeros((len(concepts), store.dim), dtype=np.float64)
    pos_n = np.zeros(len(concepts), dtype=np.int64)
    neg_n = np.zeros(len(concepts), dtype=np.int64)
    for s, x in store.iter_shards(layer):
        m = train[s.token_start:s.token_stop]
        if not m.any():
            continue
        gt = store.token_labels(s, np.asarray(concepts))[m].astype(np.float32)  # [t, C]
        sid = store.sample_of_token[s.token_start:s.token_stop][m]
        # negatives: tokens of known labels outside the concept ([t, C] weights, 1 for a negative token)
        neg = (1.0 - gt) if store.known is None else (1.0 - gt) * store.known[sid][:, concepts]
        at = 0
        for xb in row_blocks(x, m):
            xb -= mean
            pos_sum += gt[at:at + len(xb)].T @ xb
            neg_sum += neg[at:at + len(xb)].T @ xb
            at += len(xb)
        pos_n += gt.sum(axis=0).astype(np.int64)
        neg_n += neg.sum(axis=0).astype(np.int64)
    _check_counts(store, concepts, pos_n, "train tokens")
    _check_counts(store, concepts, neg_n, "negative train tokens")
    w = (pos_sum / pos_n[:, None] - neg_sum / neg_n[:, None]) / scale
    return _concept_set([store.concepts[c] for c in concepts], w, layer, mean, scale)


def learn_global_diffmean(store: TokenStore, layer: int, concepts: list[int]) -> ConceptSet:
    """The global-embedding twin: positive minus negative train samples' global embeddings."""
    g = store.globals(layer)
    train = store.splits == "train"
    gmean = g[train].mean(axis=0)
    gscale = float(np.linalg.norm(g[train] - gmean, axis=1).mean()) or 1.0
    y = store.labels[train][:, concepts].astype(bool)
    known = np.ones_like(y) if store.known is None else store.known[train][:, concepts]
    x = (g[train] - gmean) / gscale
    _check_counts(store, concepts, y.sum(axis=0), "train samples")
    _check_counts(store, concepts, (~y & known).sum(axis=0), "negative train samples")
    w = np.stack([diffmean_vectors(x[known[:, c]], y[known[:, c], c:c + 1])[0] for c in range(len(concepts))])
    return _concept_set([store.concepts[c] for c in concepts], w, layer, gmean, gscale, space="globals")
