"""A seed-style reference for the seed-ratio benchmark: the seed study's protocol as its code runs it.

Written for the benchmark after reading the seed repository (BrachioLab/SuperActivators:
``scripts/compute_activations.py``, ``scripts/validation_thresholds.py``,
``utils/quant_concept_evals_utils.py``, ``utils/baseline_detection_utils.py``); no code is
copied. Each step names the seed function it follows. It runs on the same store and concept
vectors as ``post`` (so the same activations up to float rounding) and is not used by the library.

1. Activations [``compute_cosine_sims`` / ``compute_signed_distances``]: the token states are
   streamed in chunks of 50,000 rows as float32 (the seed's chunked embedding files hold centred
   float32 states), scored in batches of 2,000 rows into one float32 ``[T, C]`` matrix. The seed
   scores a batch with ``F.cosine_similarity`` over broadcast ``[2000, C, d]`` tensors, written
   for a GPU; on a CPU that is ~1.7 s of CPU per batch (~29 min at 2 M tokens, as `make bench` measured it), so this reference
   normalises the rows and runs one GEMM per batch instead. ``cossim_batches`` times the seed's
   own call on a few batches so that its cost can be reported next to the ratio.
2. Ground truth [the ``GT_Samples`` files]: per concept, the Python list of its in-concept cal
   token indices.
3. SuperActivator thresholds [``compute_concept_thresholds_over_percentiles``]: a dict from token
   index to row over the cal token range, a list comprehension of rows per concept, the values
   gathered, ``pad_sequence`` with NaN, one ``torch.nanquantile`` at ``1 - N/100`` for every N.
4. Detection [``compute_detection_metrics_over_percentiles``, ``compute_detection_metrics_for_per``,
   ``find_best_detection_percentiles_cal``]: each sample's max token by a Python loop over the
   samples, once for the cal evaluation and again for the test one; per N and concept the
   detected samples of the split as a Python set, TP / FP / FN by set operations; N per concept by
   cal F1, test F1 at that N.
5. Baselines max / mean / last / random token [``compute_aggregated_activation_thresholds_over_percentiles``,
   ``compute_aggregated_detection_metrics_over_percentiles``]: per method, a dict from every
   token to its (sample, position); the concept's positive cal samples found from its in-concept
   cal tokens; their aggregates by a loop over samples (rows gathered token by token);
   ``pad_sequence`` + ``nanquantile``; detection aggregates every sample by a loop over samples for
   cal and again for test (the random token drawn anew each time), then sets as in 4.
6. ``global`` [the ``cls`` sample type]: activations of the samples' global embeddings, thresholds
   from the positive cal samples, sets as in 4.

The seed saves the activation matrix to disk and every later script loads it back (in its text
path, once per 100 samples); it also recomputes ``min()`` of the cal samples once per sample.
The reference keeps the matrix in memory and does neither: where it departs from the seed's
code it is faster, so the ratio it gives is a lower bound.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

GRID = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
CHUNK_ROWS = 50_000  # the seed's samples_per_chunk
BATCH_ROWS = 2_000  # compute_activations.py's BATCH_SIZE
BASELINES = ("max_token", "mean_token", "last_token", "random_token")


def _rows(store, layer: int, a: int, b: int) -> torch.Tensor:
    """Token states ``[a, b)`` of the layer as float32 (across shard boundaries)."""
    parts = []
    for s in store.shards:
        lo, hi = max(a, s.token_start), min(b, s.token_stop)
        if lo < hi:
            x = store.tokens(layer, s)
            parts.append(np.asarray(x[lo - s.token_start:hi - s.token_start], dtype=np.float32))
    return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])


def _score(x: torch.Tensor, cs, V: torch.Tensor) -> torch.Tensor:
    """One batch of centred states against every concept: cosine, or the separator's signed distance."""
    if cs.scoring == "cosine":
        return (x / x.norm(dim=1, keepdim=True)) @ (V / V.norm(dim=1, keepdim=True)).T
    return (x / cs.scale @ V.T + torch.from_numpy(np.asarray(cs.bias, np.float32))) / V.norm(dim=1)


def activations(store, cs) -> torch.Tensor:
    """Step 1: the ``[T, C]`` float32 activation matrix, chunk by chunk, batch by batch."""
    V = torch.from_numpy(np.asarray(cs.vectors, np.float32))
    center = torch.from_numpy(np.asarray(cs.center, np.float32))
    acts = torch.empty((store.n_tokens, len(cs.names)), dtype=torch.float32)
    for a in range(0, store.n_tokens, CHUNK_ROWS):
        X = _rows(store, cs.layer, a, min(a + CHUNK_ROWS, store.n_tokens)) - center
        for b in range(0, len(X), BATCH_ROWS):
            acts[a + b:a + b + BATCH_ROWS] = _score(X[b:b + BATCH_ROWS], cs, V)
    return acts


def cossim_seconds(store, cs, batches: int) -> float:
    """CPU seconds per batch of the seed's own scoring call, ``F.cosine_similarity`` on broadcast tensors."""
    V = torch.from_numpy(np.asarray(cs.vectors, np.float32))
    X = _rows(store, cs.layer, 0, batches * BATCH_ROWS) - torch.from_numpy(np.asarray(cs.center, np.float32))
    c0 = time.process_time()
    for b in range(0, len(X), BATCH_ROWS):
        F.cosine_similarity(X[b:b + BATCH_ROWS].unsqueeze(1), V.unsqueeze(0), dim=2)
    return (time.process_time() - c0) / batches


def _quantiles(values: list[torch.Tensor]) -> torch.Tensor:
    """``[G, C]``: the seed's thresholds, ``nanquantile`` at ``1 - N/100`` of NaN-padded populations."""
    padded = pad_sequence(values, batch_first=True, padding_value=float("nan"))
    return torch.nanquantile(padded, torch.tensor([1 - n / 100 for n in GRID]), dim=1)


def _f1_over_grid(scores: torch.Tensor, thr: torch.Tensor, split: np.ndarray, gt: list[set]) -> np.ndarray:
    """``[G, C]`` F1 on one split: detected samples as Python sets against the positive samples."""
    mask = torch.from_numpy(split)
    f1 = np.zeros((len(GRID), scores.shape[1]))
    for g in range(len(GRID)):
        for c in range(scores.shape[1]):
            hit = set(torch.where((scores[:, c] >= thr[g, c]) & mask)[0].tolist())
            tp, fp, fn = len(gt[c] & hit), len(hit - gt[c]), len(gt[c] - hit)
            f1[g, c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return f1


def _aggregate_all(acts: torch.Tensor, offsets: np.ndarray, how: str, g: torch.Generator) -> torch.Tensor:
    """Every sample's aggregate ``[N, C]``, one sample at a time."""
    out = torch.zeros((len(offsets) - 1, acts.shape[1]))
    for i in range(len(offsets) - 1):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if how == "max_token":
            out[i] = acts[a:b].max(dim=0)[0]
        elif how == "mean_token":
            out[i] = acts[a:b].mean(dim=0)
        elif how == "last_token":
            out[i] = acts[b - 1]
        else:
            out[i] = acts[a + int(torch.randint(b - a, (1,), generator=g))]
    return out


def _baseline_thresholds(acts: torch.Tensor, offsets: np.ndarray, cal: np.ndarray, gt_cal: list[list[int]],
                         how: str, g: torch.Generator) -> torch.Tensor:
    """Step 5, calibration: aggregates of each concept's positive cal samples, then ``_quantiles``."""
    token_to_sample = {}
    for i in range(len(offsets) - 1):  # every token of the dataset
        for j in range(int(offsets[i + 1] - offsets[i])):
            token_to_sample[int(offsets[i]) + j] = (i, j)
    per_concept = []
    for toks in gt_cal:
        samples = set()
        for t in toks:
            i, _ = token_to_sample[t]
            if cal[i]:
                samples.add(i)
        per_concept.append(sorted(samples))
    lo, hi = int(offsets[np.flatnonzero(cal)[0]]), int(offsets[np.flatnonzero(cal)[-1] + 1])
    pos = {t: t - lo for t in range(lo, hi)}
    cal_acts = acts[lo:hi]
    agg = {}
    for i in sorted(set().union(*map(set, per_concept))):
        rows = [pos[int(offsets[i]) + j] for j in range(int(offsets[i + 1] - offsets[i]))]
        x = cal_acts[torch.tensor(rows)]
        agg[i] = (x.max(dim=0)[0] if how == "max_token" else x.mean(dim=0) if how == "mean_token"
                  else x[-1] if how == "last_token" else x[int(torch.randint(len(x), (1,), generator=g))])
    return _quantiles([torch.stack([agg[i][c] for i in s]) if s else torch.empty(0)
                       for c, s in enumerate(per_concept)])


def _pick(scores_cal: torch.Tensor, scores_test: torch.Tensor, thr: torch.Tensor, splits: np.ndarray,
          gt_cal: list[set], gt_test: list[set]) -> float:
    """N per concept by cal F1 (first best), macro test F1 at it."""
    f1_cal = _f1_over_grid(scores_cal, thr, splits == "cal", gt_cal)
    f1_test = _f1_over_grid(scores_test, thr, splits == "test", gt_test)
    best = np.argmax(f1_cal, axis=0)
    return float(np.mean(f1_test[best, np.arange(thr.shape[1])]))


def run(store, cs, gcs, seed: int = 0, times: dict | None = None) -> dict[str, float]:
    """The seed-style pass over ``store`` with concepts ``cs`` (and global ``gcs``): macro test F1
    per method. ``times`` (if given) receives the wall seconds of each step."""
    times = {} if times is None else times
    t0 = time.perf_counter()
    idx = [store.concepts.index(n) for n in cs.names]
    acts = activations(store, cs)
    t1 = time.perf_counter()
    times["activations"] = t1 - t0
    splits = np.asarray(store.splits)
    offsets = np.asarray(store.offsets)
    labels = np.asarray(store.labels)[:, idx].astype(bool)
    tok_cal = (splits == "cal")[np.asarray(store.sample_of_token)] & np.asarray(store.valid)
    gt = np.concatenate([store.token_labels(s) for s in store.shards])[:, idx]
    gt_cal_tokens = [np.flatnonzero(gt[:, c] & tok_cal).tolist() for c in range(len(idx))]
    gt_samples = {sp: [set(np.flatnonzero(labels[:, c] & (splits == sp)).tolist()) for c in range(len(idx))]
                  for sp in ("cal", "test")}
    t2 = time.perf_counter()
    times["ground_truth"] = t2 - t1
    # 3. SuperActivator thresholds over the cal token range
    everything = sorted(set().union(*map(set, gt_cal_tokens)))
    lo, hi = everything[0], everything[-1]
    idx_to_position = {t: p for p, t in enumerate(range(lo, hi + 1))}
    cal_acts = acts[lo:hi + 1]
    thr = _quantiles([cal_acts[[idx_to_position[t] for t in toks if t in idx_to_position], c]
                      for c, toks in enumerate(gt_cal_tokens)])
    t3 = time.perf_counter()
    times["thresholds"] = t3 - t2
    # 4. detection: per-sample max, once for the cal evaluation and once for the test one
    g = torch.Generator().manual_seed(seed)
    macro = {"superactivator": _pick(_aggregate_all(acts, offsets, "max_token", g),
                                     _aggregate_all(acts, offsets, "max_token", g), thr, splits,
                                     gt_samples["cal"], gt_samples["test"])}
    t4 = time.perf_counter()
    times["superactivator_detection"] = t4 - t3
    # 5. baselines
    cal = splits == "cal"
    for how in BASELINES:
        bthr = _baseline_thresholds(acts, offsets, cal, gt_cal_tokens, how, g)
        macro[how] = _pick(_aggregate_all(acts, offsets, how, g), _aggregate_all(acts, offsets, how, g), bthr,
                           splits, gt_samples["cal"], gt_samples["test"])
    t5 = time.perf_counter()
    times["baselines"] = t5 - t4
    # 6. global
    if gcs is not None:
        G = torch.from_numpy(np.asarray(store.globals(gcs.layer), np.float32))
        gv = torch.from_numpy(np.asarray(gcs.vectors, np.float32))
        gscore = _score(G - torch.from_numpy(np.asarray(gcs.center, np.float32)), gcs, gv)
        gthr = _quantiles([gscore[torch.from_numpy(labels[:, c] & cal), c] for c in range(len(idx))])
        macro["global"] = _pick(gscore, gscore, gthr, splits, gt_samples["cal"], gt_samples["test"])
    times["global"] = time.perf_counter() - t5
    return macro
