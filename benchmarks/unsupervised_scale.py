"""Scale check of unsupervised concepts on a synthetic store (no model needed).

k-means with k=1000 on every train token (streamed), matching of the clusters to the planted
concepts, and a random SAE of ``--d-sae`` units (blocked scoring + candidate preselection);
a smaller store is scored on the CPU and on ``--device`` to check they agree.

    python benchmarks/unsupervised_scale.py OUT_DIR --tokens 1000000 --dim 1024 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from superactivators.concepts.kmeans import fit_token_kmeans, kmeans_concepts
from superactivators.concepts.sae import SAEWeights, sae_concept_set
from superactivators.evaluate.detect import results_table
from superactivators.evaluate.methods import MACRO
from superactivators.evaluate.matching import matched_results, summarise_units
from superactivators.store.synth import SynthSpec, build_synthetic_store

METHODS = ["superactivator", "max_token", "mean_token", "last_token", "random_token"]
GRID = [2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(label: str, log: dict, fn):
    t0 = time.time()
    out = fn()
    log[label] = round(time.time() - t0, 2)
    print(f"{label}: {log[label]:.1f} s (peak RSS {rss_gb():.1f} GB)", flush=True)
    return out


def macro(results) -> dict[str, float]:
    t = results_table(results)
    return {m: round(float(t[(t.method == m) & (t.concept == MACRO)].f1.iloc[0]), 4) for m in t.method.unique()}


def random_sae(d_in: int, d_sae: int, seed: int = 0) -> SAEWeights:
    g = np.random.default_rng(seed)
    W = g.standard_normal((d_in, d_sae)).astype(np.float32) / np.sqrt(d_in)
    return SAEWeights(W, np.full(d_sae, -0.5, np.float32), W.T.copy(), np.zeros(d_in, np.float32),
                      np.full(d_sae, 0.1, np.float32), "jumprelu", True, "none", "blocks.5.hook_resid_post", "random")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--concepts", type=int, default=20)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--small-tokens", type=int, default=100_000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    log: dict = {"device": a.device, "torch_threads": torch.get_num_threads()}
    spec = SynthSpec(n_tokens=a.tokens, dim=a.dim, n_concepts=a.concepts)
    store = timed("build_store", log, lambda: build_synthetic_store(a.out / "big", spec))
    log["n_tokens"], log["n_samples"] = store.n_tokens, store.n_samples
    fit = timed("kmeans_fit_tokens", log, lambda: fit_token_kmeans(store, spec.layer, a.k, seed=0))
    log["kmeans_k_kept"], log["kmeans_min_max_size"] = fit.k, [int(fit.sizes.min()), int(fit.sizes.max())]
    cs = kmeans_concepts(fit, spec.layer)
    summ = timed("kmeans_summarise", log, lambda: summarise_units(store, cs, device=a.device))
    log["cal_rows_kept"] = list(summ.cal_acts.shape)
    res, _ = timed("kmeans_match_and_detect", log,
                   lambda: matched_results(summ, store.labels, store.splits, store.concepts, METHODS, GRID, False))
    log["kmeans_macro_f1"] = macro(res)

    small = build_synthetic_store(a.out / "small", SynthSpec(n_tokens=a.small_tokens, dim=a.dim,
                                                             n_concepts=a.concepts, seed=1))
    sfit = fit_token_kmeans(small, spec.layer, 200, seed=0)
    scs = kmeans_concepts(sfit, spec.layer)
    s_cpu = timed("small_summarise_cpu", log, lambda: summarise_units(small, scs, device="cpu"))
    s_dev = timed("small_summarise_device", log, lambda: summarise_units(small, scs, device=a.device))
    log["cpu_vs_device_max_abs_diff"] = float(max(np.abs(s_cpu.sample_scores[k] - s_dev.sample_scores[k]).max()
                                                  for k in s_cpu.sample_scores))
    r_cpu, m_cpu = matched_results(s_cpu, small.labels, small.splits, small.concepts, METHODS, GRID, False)
    r_dev, m_dev = matched_results(s_dev, small.labels, small.splits, small.concepts, METHODS, GRID, False)
    log["cpu_vs_device_same_matches"] = bool((m_cpu.unit.to_numpy() == m_dev.unit.to_numpy()).all())

    sae_cs = sae_concept_set(random_sae(a.dim, a.d_sae), spec.layer)
    ssum = timed("sae_summarise_small", log, lambda: summarise_units(small, sae_cs, device=a.device))
    log["sae_candidate_units"] = len(ssum.cal_units)
    res, m = timed("sae_match_and_detect", log,
                   lambda: matched_results(ssum, small.labels, small.splits, small.concepts, METHODS, GRID, False))
    log["sae_exact_matches"] = f"{int(m[m.method == 'superactivator'].exact.sum())}/{small.labels.shape[1]}"
    log["sae_macro_f1"] = macro(res)
    log["peak_rss_gb"] = round(rss_gb(), 2)
    print(json.dumps(log, indent=1))
    (a.out / "unsupervised_scale.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
