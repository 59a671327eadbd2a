"""`make bench`: post-embedding stages vs a bare GEMM pass, and our embed stage vs a bare forward loop.

What is timed (each phase runs in a fresh subprocess, so its peak RSS is its own):

- ``build``   a synthetic store (default 2,000,000 tokens x 1024 dims fp16, ragged samples of
              100-400 tokens, 80 concepts, planted in-concept signal, token-level ground truth),
              written with the project's StoreWriter and cached under ``benchmarks/_store/``.
- ``learn``   mean and linear-separator concepts (tokens and global embeddings); informative,
              not part of the target (the issue's scope is score + calibrate + detect + evaluate).
- ``post``    per concept type: open the store, ``scoring.summarise`` (one streaming pass:
              per-sample max/mean/last/random, in-concept cal activations, global scores),
              ``detect.run_detection`` (tail calibration on cal, all baselines, test metrics)
              and ``detect.results_table``.
- ``bare``    per concept type: the same memory-mapped shards through ``fp16 -> fp32 @ W``
              with the same concept matrix, and nothing else: the physical floor.
- ``boot``    the bootstrap of :mod:`superactivators.stats.bootstrap`: 1,000 resamples of the test
              samples x 80 concepts x 12 methods (per-concept intervals, the three aggregates,
              paired tests of SuperActivator against the 11 others), vs one plain F1
              evaluation of the same predictions (``Confusion.from_predictions(...).f1()``) in
              the same process: the ratio says how many plain evaluations the whole bootstrap costs.
- ``buckets`` ``benchmarks/embed_buckets.py``: length-bucketed embedding vs in-order batches
              vs a length-sorted bare loop, on texts whose token counts vary ~8x (MiniLM).
- ``embed``   ``embed.embed_dataset`` with a loaded ``TextEncoder`` on the packaged MiniLM
              (every layer) over the built-in emotions texts, vs ``model(**batch)`` over the
              same tokenised batches (``--embed-only``: this and ``buckets`` alone).
- ``seedref`` ``benchmarks/seed_style.py``: the seed's protocol as the seed's code runs it
              (streamed float32 chunks, one float32 ``[T, C]`` activation matrix, per-concept
              index lists, ``pad_sequence`` + ``nanquantile``, per-sample loops, set metrics)
              on the same store and mean concepts, paired with ``post/mean`` of the same
              repetition: the time and peak-RSS ratios, and the reference's step times.
- ``scaling`` (``--scaling``, part of the default run) post-embedding time and peak RSS of the
              mean concepts, and the bare pass, at 0.5, 1, 2, 4 M tokens (80 concepts) and at
              20, 80, 320 concepts (2 M tokens) on synthetic stores of ``--scaling-dim``
              dimensions (default 256, to keep the builds short on 2 cores), one run per point;
              the growth exponent is the least-squares slope of log time on log size.

Each of ``--reps`` repetitions runs ours and the bare reference back to back; a ratio is the
median over repetitions of these paired ratios (the machine is shared and its load moves: the
load average is recorded next to each run, best times and process CPU times are kept too).
Results go to ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORE_ROOT = HERE / "_store"
RESULTS = HERE / "results.json"
KINDS = ("mean", "linsep")
SEED_COSSIM_BATCHES = 3  # batches of the seed's F.cosine_similarity call timed to extrapolate its cost
BOOT_TEST_SAMPLES = 2000  # test samples of the bootstrap benchmark (COCO's seed test split is ~2,000 images)
EMBED_TEXTS = 320  # first 320 built-in texts = 10 batches of 32: keeps `make bench` under 15 min on 2 busy cores
TARGETS = {"post_embed_ratio_to_bare_pass": 1.3, "post_embed_peak_rss_mb": 1024.0, "embed_ratio_to_bare_forward": 1.1,
           "bootstrap_seconds": 5.0, "buckets_speedup_over_in_order": 1.5, "buckets_time_vs_sorted_bare": 1.1,
           "seed_time_ratio": 50.0, "seed_rss_ratio": 10.0}


def peak_rss_mb() -> float:
    """Peak resident set of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SCALE_TOKENS = (500_000, 1_000_000, 2_000_000, 4_000_000)  # at SCALE_BASE_CONCEPTS concepts
SCALE_CONCEPTS = (20, 80, 320)  # at SCALE_BASE_TOKENS tokens
SCALE_BASE_TOKENS, SCALE_BASE_CONCEPTS = 2_000_000, 80
QUICK_SCALE = ((30_000, 60_000), (4, 8), 60_000, 8)  # tokens, concepts, base tokens, base concepts


def spec_for(quick: bool, args: argparse.Namespace | None = None):
    from superactivators.store.synth import SynthSpec

    if args is not None and args.n_tokens:  # a scaling point
        return SynthSpec(n_tokens=args.n_tokens, n_concepts=args.n_concepts, dim=args.dim,
                         shard_tokens=16384 if quick else 65536)
    return SynthSpec(n_tokens=120_000, dim=256, n_concepts=16, shard_tokens=16384) if quick else SynthSpec()


def store_path(quick: bool, args: argparse.Namespace | None = None) -> Path:
    if args is not None and args.n_tokens:
        return STORE_ROOT / f"scale_{args.n_tokens}x{args.dim}_{args.n_concepts}c"
    return STORE_ROOT / ("synthetic_quick" if quick else "synthetic")


def concept_dir(quick: bool, kind: str, space: str, args: argparse.Namespace | None = None) -> Path:
    return store_path(quick, args) / "bench_concepts" / f"{kind}_{space}"


# --- phases (run in a child process) ---------------------------------------------------------

def phase_build(args: argparse.Namespace) -> dict:
    from superactivators.store.synth import build_synthetic_store

    t0 = time.perf_counter()
    store = build_synthetic_store(store_path(args.quick), spec_for(args.quick), progress=not args.quiet)
    return {"seconds": time.perf_counter() - t0, "n_tokens": store.n_tokens, "dim": store.dim,
            "n_concepts": len(store.concepts), "n_samples": store.n_samples, "n_shards": len(store.shards),
            "bytes_on_disk": sum(f.stat().st_size for f in store.path.rglob("*.npy"))}


def phase_learn(args: argparse.Namespace) -> dict:
    from superactivators.concepts.supervised import (
        ConceptSet,
        learn_global_concepts,
        learn_linsep_concepts,
        learn_mean_concepts,
    )
    from superactivators.store.tokens import TokenStore

    store = TokenStore(store_path(args.quick))
    layer, idx = store.layers[0], list(range(len(store.concepts)))
    out = {}
    for kind in KINDS:
        t0 = time.perf_counter()
        if ConceptSet.exists(concept_dir(args.quick, kind, "tokens")):
            out[kind] = {"seconds": None, "cached": True}
            continue
        # 1000 tokens per class per separator (the pipeline's default is 4000): concept learning
        # is set-up here, not a timed stage, and this keeps `make bench` short
        cs = learn_mean_concepts(store, layer, idx) if kind == "mean" else \
            learn_linsep_concepts(store, layer, idx, max_per_class=1000)
        t1 = time.perf_counter()
        gcs = learn_global_concepts(store, layer, idx, kind)
        t2 = time.perf_counter()
        cs.save(concept_dir(args.quick, kind, "tokens"))
        gcs.save(concept_dir(args.quick, kind, "globals"))
        out[kind] = {"seconds": t1 - t0, "global_seconds": t2 - t1, "cached": False}
    return out


def _best(fn, reps: int, cpu: list[float] | None = None) -> tuple[float, list[float]]:
    """Best wall time of ``reps`` calls (and, in ``cpu``, the process CPU seconds of each)."""
    times = []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return min(times), times


def phase_post(args: argparse.Namespace) -> dict:
    import numpy as np

    from superactivators.concepts.supervised import ConceptSet
    from superactivators.evaluate.detect import results_table, run_detection
    from superactivators.evaluate.scoring import summarise
    from superactivators.store.tokens import TokenStore
    from superactivators.util.device import pick_device

    cs = ConceptSet.load(concept_dir(args.quick, args.kind, "tokens", args))
    gcs = ConceptSet.load(concept_dir(args.quick, args.kind, "globals", args))
    device = pick_device(args.device)
    keep: dict = {}

    def once() -> None:
        store = TokenStore(store_path(args.quick, args))
        summary = summarise(store, cs, gcs, seed=0, device=device)
        results = run_detection(summary, store.labels, store.splits)
        keep["table"] = results_table(results, layer=cs.layer, concept_type=args.kind)

    cpu: list[float] = []
    best, times = _best(once, args.reps, cpu)
    t = keep["table"]
    macro = t[t["concept"] == "__macro__"].set_index("method")["f1"]
    return {"seconds": best, "all_seconds": times, "cpu_seconds": cpu, "device": str(device),
            "macro_f1": {k: round(float(v), 4) for k, v in macro.items()},
            "rows": int(len(t)), "finite": bool(np.isfinite(t["f1"]).all())}


def phase_bare(args: argparse.Namespace) -> dict:
    """fp16 memmap -> fp32 -> GEMM with the concept matrix, shard by shard, nothing else."""
    import warnings

    import numpy as np
    import torch

    from superactivators.concepts.supervised import ConceptSet

    path = store_path(args.quick, args)
    manifest = json.loads((path / "manifest.json").read_text())
    layer = manifest["layers"][0]
    files = [path / f"layer_{layer:02d}" / f"{s['start']:09d}.npy" for s in manifest["shards"]]
    W = torch.from_numpy(np.ascontiguousarray(ConceptSet.load(concept_dir(args.quick, args.kind, "tokens", args)).vectors.T))
    # the fastest plain loop we know: cache-sized blocks converted into one reused float32
    # buffer (a fresh ``.float()`` per block costs more in page faults than the conversion),
    # GEMM into one reused output. Our scorer gets no trick the floor lacks.
    block = 8192
    buf = torch.empty((block, W.shape[0]), dtype=torch.float32)
    out = torch.empty((block, W.shape[1]), dtype=torch.float32)
    sink = {}

    def once() -> None:
        total = 0.0
        for f in files:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(np.load(f, mmap_mode="r"))
            for i in range(0, x.shape[0], block):
                xb = x[i:i + block]
                n = xb.shape[0]
                buf[:n].copy_(xb)
                torch.mm(buf[:n], W, out=out[:n])
                total += float(out[0, 0])
        sink["x"] = total

    cpu: list[float] = []
    best, times = _best(once, args.reps, cpu)
    return {"seconds": best, "all_seconds": times, "cpu_seconds": cpu, "block_rows": block}


def phase_embed(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from superactivators.data.datasets import load_dataset
    from superactivators.encoders.base import EmbedConfig
    from superactivators.encoders.text import TextEncoder
    from superactivators.store.embed import embed_dataset

    ds = load_dataset("builtin:emotions")
    ds_n = 96 if args.quick else min(len(ds), EMBED_TEXTS)
    # in-order batches, the same ones the bare loop runs (length bucketing is the ``buckets`` phase)
    cfg = EmbedConfig(model="minilm", layers="all", batch_size=32, max_length=256, bucket_window=1)
    enc = TextEncoder(cfg)
    ids = np.arange(ds_n)
    texts = ds.texts(ids)
    batches = [enc.tokenizer(texts[i:i + cfg.batch_size], padding=True, truncation=True, max_length=cfg.max_length,
                             return_tensors="pt") for i in range(0, ds_n, cfg.batch_size)]
    n_tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    model = enc.model
    ds = _head(ds, ds_n)

    @torch.inference_mode()
    def bare() -> None:
        for b in batches:
            model(**b)

    tmp_root = Path(tempfile.mkdtemp(dir=STORE_ROOT))
    n_ours = [0]

    def ours() -> None:  # a fresh store folder each time; removing it is not part of the stage
        n_ours[0] += 1
        embed_dataset(ds, cfg, tmp_root / f"store{n_ours[0]}", encoder=enc, progress=False)

    bare()  # warm-up (first-call allocations, lazy kernels, lazy imports) of both
    ours()
    ours_t, bare_t, ours_cpu, bare_cpu = [], [], [], []
    try:
        for _ in range(args.reps):  # interleaved, so a load spike hits both
            ours_t.append(_best(ours, 1, ours_cpu)[0])
            bare_t.append(_best(bare, 1, bare_cpu)[0])
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return {"ours_seconds": min(ours_t), "bare_seconds": min(bare_t), "ours_all": ours_t, "bare_all": bare_t,
            "ours_cpu_seconds": ours_cpu, "bare_cpu_seconds": bare_cpu,
            # median over repetitions of ours / the bare loop run right after it
            "ratio": statistics.median(o / b_ for o, b_ in zip(ours_t, bare_t)),
            "cpu_ratio": statistics.median(o / b_ for o, b_ in zip(ours_cpu, bare_cpu)),
            "n_samples": ds_n, "n_tokens_with_specials": n_tokens,
            "layers": len(enc.layers), "torch_threads": torch.get_num_threads()}


def _head(ds, n: int):
    """The first ``n`` samples of a dataset (quick mode)."""
    import dataclasses

    return dataclasses.replace(
        ds, labels=ds.labels[:n], splits=ds.splits[:n],
        inline_texts=ds.inline_texts[:n] if ds.inline_texts is not None else None,
        text_paths=ds.text_paths[:n] if ds.text_paths is not None else None,
        spans=ds.spans[:n] if ds.spans is not None else None,
    )


def phase_boot(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from superactivators.evaluate.metrics import Confusion
    from superactivators.stats.bootstrap import Bootstrap

    n, M, C, B = (500, 12, 80, 200) if args.quick else (BOOT_TEST_SAMPLES, 12, 80, 1000)
    rng = np.random.default_rng(0)
    truth = rng.random((n, C)) < 0.05
    pred = (rng.random((M, n, C)) < 0.05) | (truth[None] & (rng.random((M, n, C)) < 0.6))
    methods = ["superactivator"] + [f"m{i}" for i in range(1, M)]
    flat_p, flat_t = pred.transpose(1, 0, 2).reshape(n, M * C), np.tile(truth, (1, M))

    def plain() -> None:
        Confusion.from_predictions(flat_p, flat_t).f1()

    out: dict = {}

    def boot() -> None:
        b = Bootstrap.run(pred, truth, methods, [f"c{i}" for i in range(C)], n_resamples=B, seed=0)
        b.per_concept()
        for kind in ("macro", "weighted", "micro"):
            b.aggregate(kind)
        for m in methods[1:]:
            b.paired("superactivator", m)
            b.paired("superactivator", m, "weighted")
        out["weighted_f1_sa"] = float(b.aggregate_point("weighted")[0])

    plain(), boot()  # warm-up
    plain_t, boot_t = [], []
    for _ in range(args.reps):  # interleaved
        plain_t.append(_best(plain, 5)[0])
        boot_t.append(_best(boot, 1)[0])
    return {"seconds": min(boot_t), "plain_f1_seconds": min(plain_t), "all_seconds": boot_t, "plain_all": plain_t,
            "ratio": statistics.median(b_ / p_ for b_, p_ in zip(boot_t, plain_t)),
            "n_test": n, "methods": M, "concepts": C, "resamples": B, "torch_threads": torch.get_num_threads(), **out}


def phase_scale_prep(args: argparse.Namespace) -> dict:
    """Build (or reuse) one scaling point's store and its mean concepts; not timed."""
    from superactivators.concepts.supervised import ConceptSet, learn_global_concepts, learn_mean_concepts
    from superactivators.store.synth import build_synthetic_store

    t0 = time.perf_counter()
    store = build_synthetic_store(store_path(args.quick, args), spec_for(args.quick, args))
    if not ConceptSet.exists(concept_dir(args.quick, "mean", "tokens", args)):
        idx = list(range(len(store.concepts)))
        gcs = learn_global_concepts(store, store.layers[0], idx, "mean")
        learn_mean_concepts(store, store.layers[0], idx).save(concept_dir(args.quick, "mean", "tokens", args))
        gcs.save(concept_dir(args.quick, "mean", "globals", args))
    return {"seconds": time.perf_counter() - t0, "n_tokens": store.n_tokens, "n_samples": store.n_samples,
            "bytes_on_disk": sum(f.stat().st_size for f in store.path.rglob("*.npy"))}


def phase_seedref(args: argparse.Namespace) -> dict:
    """``seed_style.run`` on the benchmark store with the same concept sets as ``post``."""
    from superactivators.concepts.supervised import ConceptSet
    from superactivators.store.tokens import TokenStore

    sys.path.insert(0, str(HERE))
    import seed_style  # noqa: PLC0415

    cs = ConceptSet.load(concept_dir(args.quick, args.kind, "tokens", args))
    gcs = ConceptSet.load(concept_dir(args.quick, args.kind, "globals", args))
    keep: dict = {}

    def once() -> None:
        keep["steps"] = {}
        keep["macro"] = seed_style.run(TokenStore(store_path(args.quick, args)), cs, gcs, seed=0, times=keep["steps"])

    cpu: list[float] = []
    best, times = _best(once, args.reps, cpu)
    # the seed's own scoring call (F.cosine_similarity on broadcast tensors), timed on a few
    # batches after the timed runs: what step 1 would cost as the seed writes it
    store = TokenStore(store_path(args.quick, args))
    per_batch = seed_style.cossim_seconds(store, cs, SEED_COSSIM_BATCHES)
    return {"seconds": best, "all_seconds": times, "cpu_seconds": cpu,
            "step_seconds": {k: round(v, 3) for k, v in keep["steps"].items()},
            "seed_cossim_cpu_seconds_per_batch": round(per_batch, 4),
            "seed_cossim_cpu_seconds_extrapolated": round(per_batch * -(-store.n_tokens // seed_style.BATCH_ROWS), 1),
            "macro_f1": {k: round(v, 4) for k, v in keep["macro"].items()}}


PHASES = {"build": phase_build, "learn": phase_learn, "post": phase_post, "bare": phase_bare, "embed": phase_embed,
          "boot": phase_boot,
          "scale_prep": phase_scale_prep, "seedref": phase_seedref}


# --- driver ----------------------------------------------------------------------------------

def run_child(phase: str, args: argparse.Namespace, kind: str | None = None, reps: int | None = None,
              label: str = "", point: tuple[int, int] | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--reps", str(reps or args.reps),
           "--device", args.device]
    if kind:
        cmd += ["--kind", kind]
    if point:
        cmd += ["--n-tokens", str(point[0]), "--n-concepts", str(point[1]), "--dim", str(args.scaling_dim)]
    if args.quick:
        cmd.append("--quick")
    if args.quiet:
        cmd.append("--quiet")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"benchmark phase {phase} {kind or ''} failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["phase_wall_seconds"] = time.perf_counter() - t0
    res["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    label = f"{phase}{'/' + kind if kind else ''}{label}"
    print(f"  {label:<16} done in {res['phase_wall_seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB, "
          f"load {res['load_avg_1min']}", flush=True)
    return res


def run_buckets(args: argparse.Namespace) -> dict:
    """``embed_buckets.py`` in its own process (its own peak RSS); its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "buckets.json"
        cmd = [sys.executable, str(HERE / "embed_buckets.py"), "--out", str(out), "--reps", str(args.reps)]
        if args.quick:
            cmd += ["--n", "48"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"benchmark embed_buckets failed (exit {proc.returncode})")
        res = json.loads(out.read_text())
    print(f"  {'buckets':<16} done in {time.perf_counter() - t0:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny store and 96 texts: a smoke test of the harness")
    p.add_argument("--reps", type=int, default=3, help="repetitions per timing (best is reported)")
    p.add_argument("--device", default="auto", help="scoring device: auto | cpu | cuda")
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--bootstrap-only", action="store_true", help="only the bootstrap phase (no store, no model)")
    p.add_argument("--clean", action="store_true", help="rebuild the synthetic store and concepts")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--scaling", action="store_true", help="only the scaling table (time and peak RSS vs size)")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-seed", action="store_true", help="no seed-style reference")
    p.add_argument("--seed-only", action="store_true", help="only the seed-style reference and post/mean, paired")
    p.add_argument("--embed-only", action="store_true",
                   help="only the embed stage vs the bare forward and the length buckets (no synthetic store)")
    p.add_argument("--scaling-dim", type=int, default=256, help="hidden size of the scaling stores")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--n-tokens", type=int, default=0, help=argparse.SUPPRESS)  # a scaling point (children)
    p.add_argument("--n-concepts", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:  # child: one phase, one JSON line on stdout
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        res = PHASES[args.phase](args)
        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        return 0

    t_start = time.perf_counter()
    STORE_ROOT.mkdir(exist_ok=True)
    if args.clean:
        shutil.rmtree(store_path(args.quick), ignore_errors=True)
    print(f"superactivators benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if args.bootstrap_only:
        _print_boot(run_child("boot", args))
        return 0
    if args.seed_only:
        posts, seeds = [], []
        for r in range(args.reps):
            posts.append(run_child("post", args, "mean", reps=1, label=f" #{r + 1}"))
            seeds.append(run_child("seedref", args, "mean", reps=1, label=f" #{r + 1}"))
        k = _seed_ratio(seeds, posts)
        print(json.dumps(k))
        if not args.quick and RESULTS.exists():
            results = json.loads(RESULTS.read_text())
            results["seed_style"] = k
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            print(f"wrote the seed-style ratio into {RESULTS}")
        return 0
    if args.embed_only:
        emb, buckets = run_child("embed", args), run_buckets(args)
        k = {"embed_ratio_to_bare_forward": round(emb["ratio"], 3),
             "embed_cpu_ratio": round(emb["cpu_ratio"], 3),
             "embed_paired_ratios": [round(o / b_, 3) for o, b_ in zip(emb["ours_all"], emb["bare_all"])],
             "buckets_speedup_over_in_order": round(buckets["speedup_over_in_order"], 3),
             "buckets_time_vs_sorted_bare": round(buckets["time_vs_sorted_bare"], 3)}
        print(json.dumps(k))
        if not args.quick and RESULTS.exists():  # keep the rest of the last full run
            results = json.loads(RESULTS.read_text())
            results.update({key: k[key] for key in ("embed_ratio_to_bare_forward", "buckets_speedup_over_in_order",
                                                    "buckets_time_vs_sorted_bare")})
            results.setdefault("phases", {}).update(embed=emb, buckets=buckets)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            print(f"wrote the embedding ratios into {RESULTS}")
        return 0
    if args.scaling:
        sc = run_scaling(args)
        _print_scaling(sc)
        if not args.quick and RESULTS.exists():  # keep the rest of the last full run
            results = json.loads(RESULTS.read_text())
            results["scaling"] = sc
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            print(f"wrote the scaling table into {RESULTS}")
        return 0
    out: dict = {"build": run_child("build", args)}
    out["learn"] = run_child("learn", args)
    # every timed run is a fresh process (its peak RSS is its own). Per repetition, the bare
    # pass and ours run back to back for each concept type, so a change of load on the shared
    # machine hits both; the headline ratios are the median over repetitions of these paired
    # ratios (best-of times alone can pair a lucky bare run with an unlucky one of ours).
    runs: dict[str, list[dict]] = {f"{ph}_{k}": [] for k in KINDS for ph in ("bare", "post")}
    seed_runs: list[dict] = []
    for r in range(args.reps):
        for kind in KINDS:
            for phase in ("bare", "post"):
                runs[f"{phase}_{kind}"].append(run_child(phase, args, kind, reps=1, label=f" #{r + 1}"))
            if kind == "mean" and not args.skip_seed:  # paired with the post/mean run just before it
                seed_runs.append(run_child("seedref", args, kind, reps=1, label=f" #{r + 1}"))
    for key, rs in runs.items():
        best = min(rs, key=lambda x: x["seconds"])
        out[key] = {**best, "all_seconds": [x["seconds"] for x in rs], "cpu_seconds": [x["cpu_seconds"][0] for x in rs],
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in rs), "load_avg_1min": [x["load_avg_1min"] for x in rs]}
    if not args.skip_embed:
        out["embed"] = run_child("embed", args)
        out["buckets"] = run_buckets(args)
    out["boot"] = run_child("boot", args)
    if not args.skip_scaling:
        out["scaling"] = run_scaling(args)

    def secs(phase: str, kind: str) -> list[float]:
        return out[f"{phase}_{kind}"]["all_seconds"]

    post_tot = [sum(secs("post", k)[r] for k in KINDS) for r in range(args.reps)]
    bare_tot = [sum(secs("bare", k)[r] for k in KINDS) for r in range(args.reps)]
    rep_ratio = [p_ / b_ for p_, b_ in zip(post_tot, bare_tot)]
    b = out["build"]
    results = {
        "post_embed_seconds": round(statistics.median(post_tot), 3),
        "post_embed_ratio_to_bare_pass": round(statistics.median(rep_ratio), 3),
        "post_embed_peak_rss_mb": round(max(out[f"post_{k}"]["peak_rss_mb"] for k in KINDS), 1),
        "embed_ratio_to_bare_forward": round(out["embed"]["ratio"], 3) if "embed" in out else None,
        "buckets_speedup_over_in_order": round(out["buckets"]["speedup_over_in_order"], 3) if "buckets" in out else None,
        "buckets_time_vs_sorted_bare": round(out["buckets"]["time_vs_sorted_bare"], 3) if "buckets" in out else None,
        "bootstrap_seconds": round(out["boot"]["seconds"], 3),
        "bootstrap_ratio_to_one_f1": round(out["boot"]["ratio"], 1),
        "bootstrap_peak_rss_mb": round(out["boot"]["peak_rss_mb"], 1),
        "n_tokens": b["n_tokens"], "dim": b["dim"], "n_concepts": b["n_concepts"],
        "bare_pass_seconds": round(statistics.median(bare_tot), 3),
        "ratio_per_repetition": [round(x, 3) for x in rep_ratio],
        "ratio_of_best_times": round(sum(min(secs("post", k)) for k in KINDS) / sum(min(secs("bare", k)) for k in KINDS), 3),
        "per_kind": {k: {"post_seconds_best": round(min(secs("post", k)), 3),
                         "bare_seconds_best": round(min(secs("bare", k)), 3),
                         "paired_ratios": [round(p_ / b_, 3) for p_, b_ in zip(secs("post", k), secs("bare", k))],
                         "ratio": round(statistics.median(p_ / b_ for p_, b_ in zip(secs("post", k), secs("bare", k))), 3),
                         "cpu_ratio": round(statistics.median(
                             p_ / b_ for p_, b_ in zip(out[f"post_{k}"]["cpu_seconds"], out[f"bare_{k}"]["cpu_seconds"])), 3),
                         "peak_rss_mb": round(out[f"post_{k}"]["peak_rss_mb"], 1),
                         "macro_f1": out[f"post_{k}"]["macro_f1"]} for k in KINDS},
        "seed_style": _seed_ratio(seed_runs, runs["post_mean"]) if seed_runs else None,
        "scaling": out.get("scaling"),
        "targets": TARGETS,
        "quick": args.quick, "reps": args.reps, "cpus": os.cpu_count(),
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "phases": out,
    }
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(f"store: {b['n_tokens']:,} tokens x {b['dim']} dims fp16, {b['n_concepts']} concepts, "
          f"{b['n_samples']:,} samples, {b['bytes_on_disk'] / 2**30:.2f} GiB on disk")
    for k in KINDS:
        r = results["per_kind"][k]
        print(f"  {k:<7} score+calibrate+detect+evaluate {r['post_seconds_best']:6.2f} s | bare GEMM pass "
              f"{r['bare_seconds_best']:6.2f} s (best) | ratio run by run "
              f"{', '.join(f'{x:.2f}' for x in r['paired_ratios'])}, median {r['ratio']:.2f} "
              f"(CPU time {r['cpu_ratio']:.2f}) | peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  both types: {results['post_embed_seconds']:.2f} s vs {results['bare_pass_seconds']:.2f} s (medians); "
          f"ratio per repetition {', '.join(f'{x:.2f}' for x in rep_ratio)}")
    _report("post-embedding / bare pass", results["post_embed_ratio_to_bare_pass"], "x",
            TARGETS["post_embed_ratio_to_bare_pass"])
    _report("post-embedding peak RSS", results["post_embed_peak_rss_mb"], " MB", TARGETS["post_embed_peak_rss_mb"])
    if "embed" in out:
        e = out["embed"]
        print(f"  embed: ours {e['ours_seconds']:.2f} s vs bare model(**batch) {e['bare_seconds']:.2f} s (best) "
              f"({e['n_samples']} texts, {e['layers']} layers stored); ratio run by run "
              f"{', '.join(f'{o / b_:.2f}' for o, b_ in zip(e['ours_all'], e['bare_all']))}, "
              f"CPU time {e['cpu_ratio']:.2f}")
        _report("embed / bare forward", results["embed_ratio_to_bare_forward"], "x",
                TARGETS["embed_ratio_to_bare_forward"])
    if "buckets" in out:
        k = out["buckets"]
        tps = k["tokens_per_s_best"]
        print(f"  length buckets ({k['n_texts']} texts of {k['tokens_per_text']['min']}-{k['tokens_per_text']['max']} "
              f"tokens): tokens/s ours {tps['ours']:.0f}, in-order {tps['in_order']:.0f}, sorted bare {tps['bare']:.0f}; "
              f"peak RSS {k['peak_rss_mb']:.0f} MB")
        _report("buckets: in-order time / ours", results["buckets_speedup_over_in_order"], "x",
                TARGETS["buckets_speedup_over_in_order"], higher_is_better=True)
        _report("buckets: ours / sorted bare", results["buckets_time_vs_sorted_bare"], "x",
                TARGETS["buckets_time_vs_sorted_bare"])
    if results["seed_style"]:
        k = results["seed_style"]
        print(f"  seed-style reference (mean concepts): {k['seed_seconds_median']:.2f} s vs ours "
              f"{k['ours_seconds_median']:.2f} s (medians), peak RSS {k['seed_peak_rss_mb']:.0f} MB vs "
              f"{k['ours_peak_rss_mb']:.0f} MB; time ratio run by run {', '.join(f'{x:.1f}' for x in k['time_ratios'])}")
        _report("seed-style time / ours", k["time_ratio"], "x", TARGETS["seed_time_ratio"], higher_is_better=True)
        _report("seed-style peak RSS / ours", k["rss_ratio"], "x", TARGETS["seed_rss_ratio"], higher_is_better=True)
    _print_boot(out["boot"])
    if out.get("scaling"):
        _print_scaling(out["scaling"])
    print(f"total {results['total_wall_seconds']:.0f} s" + ("" if args.quick else f"; wrote {RESULTS}"))
    return 0


def _seed_ratio(seed_runs: list[dict], post_runs: list[dict]) -> dict:
    """Time and peak-RSS ratios of the seed-style reference to ``post/mean``, paired per repetition."""
    t = [s_["seconds"] / p_["seconds"] for s_, p_ in zip(seed_runs, post_runs)]
    m = [s_["peak_rss_mb"] / p_["peak_rss_mb"] for s_, p_ in zip(seed_runs, post_runs)]
    return {"time_ratio": round(statistics.median(t), 2), "rss_ratio": round(statistics.median(m), 2),
            "time_ratios": [round(x, 2) for x in t], "rss_ratios": [round(x, 2) for x in m],
            "seed_seconds_median": round(statistics.median(s_["seconds"] for s_ in seed_runs), 3),
            "ours_seconds_median": round(statistics.median(p_["seconds"] for p_ in post_runs), 3),
            "seed_peak_rss_mb": round(max(s_["peak_rss_mb"] for s_ in seed_runs), 1),
            "ours_peak_rss_mb": round(max(p_["peak_rss_mb"] for p_ in post_runs), 1),
            "seed_macro_f1": seed_runs[0]["macro_f1"], "ours_macro_f1": post_runs[0]["macro_f1"],
            "seed_cpu_ratio": round(statistics.median(s_["cpu_seconds"][0] / p_["cpu_seconds"][0]
                                                      for s_, p_ in zip(seed_runs, post_runs)), 2),
            "seed_step_seconds": [s_.get("step_seconds") for s_ in seed_runs],
            # step 1 as the seed writes it (F.cosine_similarity on broadcast tensors), extrapolated
            # from a few batches: CPU seconds it would add over the GEMM the reference uses
            "seed_cossim_cpu_seconds_extrapolated": seed_runs[0].get("seed_cossim_cpu_seconds_extrapolated")}


def _slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y on log x (the growth exponent)."""
    import numpy as np

    return round(float(np.polyfit(np.log(x), np.log(y), 1)[0]), 3) if len(x) > 1 else None


def run_scaling(args: argparse.Namespace) -> dict:
    """Post-embedding time and peak RSS (mean concepts), and the bare pass, per store size."""
    toks, concs, base_t, base_c = QUICK_SCALE if args.quick else \
        (SCALE_TOKENS, SCALE_CONCEPTS, SCALE_BASE_TOKENS, SCALE_BASE_CONCEPTS)
    points = sorted({(t, base_c) for t in toks} | {(base_t, c) for c in concs})
    rows = []
    for pt in points:
        label = f" {pt[0] / 1e6:g}Mx{pt[1]}"
        prep = run_child("scale_prep", args, reps=1, point=pt, label=label)
        bare = run_child("bare", args, "mean", reps=1, point=pt, label=label)
        post = run_child("post", args, "mean", reps=1, point=pt, label=label)
        rows.append({"n_tokens": pt[0], "n_concepts": pt[1], "dim": args.scaling_dim, "n_samples": prep["n_samples"],
                     "post_seconds": round(post["seconds"], 3), "bare_seconds": round(bare["seconds"], 3),
                     "ratio": round(post["seconds"] / bare["seconds"], 3),
                     "post_peak_rss_mb": round(post["peak_rss_mb"], 1),
                     "load_avg_1min": [bare["load_avg_1min"], post["load_avg_1min"]]})
    by_t = [r for r in rows if r["n_concepts"] == base_c]
    by_c = [r for r in rows if r["n_tokens"] == base_t]
    return {"rows": rows, "dim": args.scaling_dim, "runs_per_point": 1,
            "exponent_time_vs_tokens": _slope([r["n_tokens"] for r in by_t], [r["post_seconds"] for r in by_t]),
            "exponent_bare_vs_tokens": _slope([r["n_tokens"] for r in by_t], [r["bare_seconds"] for r in by_t]),
            "exponent_rss_vs_tokens": _slope([r["n_tokens"] for r in by_t], [r["post_peak_rss_mb"] for r in by_t]),
            "exponent_time_vs_concepts": _slope([r["n_concepts"] for r in by_c], [r["post_seconds"] for r in by_c]),
            "exponent_rss_vs_concepts": _slope([r["n_concepts"] for r in by_c], [r["post_peak_rss_mb"] for r in by_c])}


def _print_scaling(sc: dict) -> None:
    print(f"  scaling (mean concepts, {sc['dim']} dims, one run per point):")
    print(f"    {'tokens':>9} {'concepts':>8} {'post s':>8} {'bare s':>8} {'ratio':>6} {'peak RSS MB':>11}")
    for r in sc["rows"]:
        print(f"    {r['n_tokens']:>9,} {r['n_concepts']:>8} {r['post_seconds']:>8.2f} {r['bare_seconds']:>8.2f} "
              f"{r['ratio']:>6.2f} {r['post_peak_rss_mb']:>11.0f}")
    print(f"    growth exponent of time: {sc['exponent_time_vs_tokens']} in tokens "
          f"(bare pass {sc['exponent_bare_vs_tokens']}), {sc['exponent_time_vs_concepts']} in concepts; "
          f"of peak RSS: {sc['exponent_rss_vs_tokens']} in tokens, {sc['exponent_rss_vs_concepts']} in concepts")


def _print_boot(b: dict) -> None:
    print(f"  bootstrap: {b['resamples']} resamples x {b['concepts']} concepts x {b['methods']} methods, "
          f"{b['n_test']} test samples: {b['seconds']:.2f} s (best) vs one plain F1 evaluation "
          f"{1000 * b['plain_f1_seconds']:.1f} ms: ratio run by run "
          f"{', '.join(f'{x / y:.0f}' for x, y in zip(b['all_seconds'], b['plain_all']))}, median {b['ratio']:.0f} "
          f"| peak RSS {b['peak_rss_mb']:.0f} MB")
    _report("bootstrap (all of it)", b["seconds"], " s", TARGETS["bootstrap_seconds"])


def _report(what: str, value: float, unit: str, target: float, higher_is_better: bool = False) -> None:
    ok = "MET" if (value >= target if higher_is_better else value <= target) else "MISSED"
    print(f"  {what:<28} {value:8.2f}{unit}   target {'>=' if higher_is_better else '<'} {target:g}{unit}   {ok}")


if __name__ == "__main__":
    sys.exit(main())
