"""How much the tail threshold rule changes detection: ours (``k``-th largest) vs the seed's
(linear ``1 - N/100`` quantile, ``protocol: seed``), on a synthetic store (no model needed).

Per deterministic method, over the concepts: how many get the same chosen N and the same test
F1 under both rules, the largest test-F1 difference, and how many SuperActivator grid
thresholds coincide. The numbers quoted in docs/protocol.md #6 come from the defaults:

    python benchmarks/seed_rule.py OUT_DIR
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from superactivators.concepts.supervised import learn_global_concepts, learn_mean_concepts
from superactivators.evaluate.calibrate import DEFAULT_GRID, tail_thresholds
from superactivators.evaluate.detect import run_detection
from superactivators.evaluate.scoring import summarise
from superactivators.store.synth import SynthSpec, build_synthetic_store

METHODS = ("superactivator", "superactivator_sample", "global", "max_token", "mean_token", "last_token")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path, help="where the synthetic store is built (reused when complete)")
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--concepts", type=int, default=20)
    args = ap.parse_args()
    spec = SynthSpec(n_tokens=args.tokens, dim=args.dim, n_concepts=args.concepts, min_len=50, max_len=200,
                     signal=2.0, layer=1, seed=5)
    store = build_synthetic_store(args.out_dir / f"store-{spec.key()}", spec)
    cols = list(range(args.concepts))
    summary = summarise(store, learn_mean_concepts(store, 1, cols), learn_global_concepts(store, 1, cols, "mean"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = {rule: {r.method: r for r in run_detection(summary, store.labels, store.splits, METHODS,
                                                          best_threshold=False, rule=rule)}
               for rule in ("ours", "seed")}
    C = args.concepts
    print(f"synthetic store: {store.n_tokens} tokens, {C} concepts, mean concepts, default grid")
    print(f"{'method':<24}{'same N':>8}{'same test F1':>14}{'max |dF1|':>11}")
    for m in METHODS:
        o, s = res["ours"][m], res["seed"][m]
        print(f"{m:<24}{int((o.n_pct == s.n_pct).sum()):>5}/{C:<2}{int((o.test.f1() == s.test.f1()).sum()):>11}/{C:<2}"
              f"{float(np.abs(o.test.f1() - s.test.f1()).max()):>11.4f}")
    pops = summary.cal_in_concept
    same = int((tail_thresholds(pops, DEFAULT_GRID) == tail_thresholds(pops, DEFAULT_GRID, rule="seed")).sum())
    print(f"SuperActivator grid thresholds equal under both rules: {same} of {C * len(DEFAULT_GRID)} "
          f"({sum(len(p) for p in pops)} in-concept cal values)")


if __name__ == "__main__":
    main()
