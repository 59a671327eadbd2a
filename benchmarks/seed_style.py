"""A straightforward torch implementation of the seed study's protocol, for the seed-ratio benchmark.

Written for the benchmark from the method description (``/work/shared/design.md``), in the
style of research code: everything in memory, per-concept ``torch.quantile``, per-sample loops.
It is the reference that ``benchmarks/run.py`` times the project against on the same store,
the same concept vectors and therefore the same activations; it is not used by the library.

1. Load every token hidden state of the layer into one float32 tensor ``[T, d]`` (the seed keeps
   a dataset's embeddings in memory), filled shard by shard into one allocation (a
   ``torch.cat`` of the shards, the obvious way, peaks at twice that: 15.9 GB at 2 M x 1024),
   and the token ground truth ``[T, C]``.
2. Activations ``[T, C]``: cosine with the concept vectors after centring (signed distance for
   separators), one matmul per 65,536-row chunk (a single one would double the memory again).
3. Per-sample max / mean / last / random token: a Python loop over samples.
4. Calibration, per concept: ``torch.quantile`` of the in-concept ``cal`` token activations
   (SuperActivator) or of the positive ``cal`` samples' scores (baselines) at ``1 - N/100`` for
   every N of the grid; N picked by ``cal`` F1; F1 on ``test``.
"""

from __future__ import annotations

import numpy as np
import torch

GRID = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def _f1(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """F1 of each column of ``pred [n, G]`` against ``truth [n]`` (0 where undefined)."""
    t = truth[:, None]
    tp = (pred & t).sum(0).double()
    fp = (pred & ~t).sum(0).double()
    fn = (~pred & t).sum(0).double()
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.zeros_like(den))


def run(store, cs, gcs, seed: int = 0) -> dict:
    """The seed-style pass over ``store`` with concept set ``cs`` (and global ``gcs``): macro test F1 per method."""
    layer = cs.layer
    X = torch.empty((store.n_tokens, store.dim), dtype=torch.float32)  # filled in place: no second copy
    for s in store.shards:
        X[s.token_start:s.token_stop] = torch.from_numpy(np.asarray(store.tokens(layer, s), dtype=np.float32))
    gt = torch.from_numpy(np.concatenate([store.token_labels(s) for s in store.shards]))
    idx = [store.concepts.index(n) for n in cs.names]
    gt = gt[:, idx]
    V = torch.from_numpy(np.asarray(cs.vectors, np.float32))
    center = torch.from_numpy(np.asarray(cs.center, np.float32))
    acts = torch.empty((X.shape[0], len(idx)), dtype=torch.float32)
    for a in range(0, X.shape[0], 65536):
        xc = X[a:a + 65536] - center
        if cs.scoring == "cosine":
            acts[a:a + 65536] = (xc / xc.norm(dim=1, keepdim=True)) @ (V / V.norm(dim=1, keepdim=True)).T
        else:
            wn = V.norm(dim=1)
            acts[a:a + 65536] = (xc / cs.scale @ V.T + torch.from_numpy(np.asarray(cs.bias, np.float32))) / wn
    offsets = store.offsets
    n = store.n_samples
    valid = torch.from_numpy(np.asarray(store.valid))
    g = torch.Generator().manual_seed(seed)
    scores = {m: torch.empty((n, len(idx))) for m in ("max_token", "mean_token", "last_token", "random_token")}
    for i in range(n):  # per-sample reductions, one sample at a time
        a = acts[int(offsets[i]):int(offsets[i + 1])][valid[int(offsets[i]):int(offsets[i + 1])]]
        scores["max_token"][i] = a.max(0).values
        scores["mean_token"][i] = a.mean(0)
        scores["last_token"][i] = a[-1]
        scores["random_token"][i] = a[int(torch.randint(len(a), (1,), generator=g))]
    if gcs is not None:
        G = torch.from_numpy(np.asarray(store.globals(layer), np.float32))
        gv = torch.from_numpy(np.asarray(gcs.vectors, np.float32))
        gc = G - torch.from_numpy(np.asarray(gcs.center, np.float32))
        if gcs.scoring == "cosine":
            scores["global"] = (gc / gc.norm(dim=1, keepdim=True)) @ (gv / gv.norm(dim=1, keepdim=True)).T
        else:
            scores["global"] = (gc / gcs.scale @ gv.T + torch.from_numpy(np.asarray(gcs.bias, np.float32))) / gv.norm(dim=1)
    splits = np.asarray(store.splits)
    cal, test = torch.from_numpy(splits == "cal"), torch.from_numpy(splits == "test")
    tok_cal = cal[torch.from_numpy(np.asarray(store.sample_of_token))] & valid
    labels = torch.from_numpy(np.asarray(store.labels)[:, idx].astype(bool))
    q = torch.tensor([1 - N / 100 for N in GRID], dtype=torch.float32)
    macro = {}
    for method in ("superactivator", *scores):
        f1s = []
        for c in range(len(idx)):  # one concept at a time
            if method == "superactivator":
                pop, s = acts[tok_cal & gt[:, c], c], scores["max_token"][:, c]
            else:
                s = scores[method][:, c]
                pop = s[cal & labels[:, c]]
            if len(pop) == 0:
                f1s.append(0.0)
                continue
            thr = torch.quantile(pop, q)  # [G]
            pred = s[:, None] >= thr[None, :]
            best = int(torch.argmax(_f1(pred[cal], labels[cal, c])))
            f1s.append(float(_f1(pred[test][:, best:best + 1], labels[test, c])[0]))
        macro[method] = float(np.mean(f1s))
    return macro
