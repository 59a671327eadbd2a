"""Length-bucketed embedding vs in-order batches vs a length-sorted bare ``model(**batch)`` loop.

Texts: the built-in emotions paragraphs joined 1..6 at a time (seeded), so token counts vary
5-10x across samples (printed). In one process, repeated ``--reps`` times with the three loops
interleaved (the machine is shared; the load moves):

- ``ours``     ``embed_dataset`` (bucket_window 16): tokenise, forward, store write, span truth;
- ``in_order`` the same with ``bucket_window 1`` (batches in file order, the old behaviour);
- ``bare``     the texts sorted by token count, tokenised per batch, ``model(**batch)`` with
               every layer's hidden states, nothing stored: the floor for this model.

Tokens/s counts stored (valid) tokens. Ratios are medians over repetitions of the paired
ratios. ``python benchmarks/embed_buckets.py [--model minilm --n 400 --batch-size 16 --reps 3]``;
results go to ``benchmarks/embed_buckets.json``; ``make bench`` runs it too (its numbers land in
``benchmarks/results.json`` under ``buckets``). Peak RSS is the whole process's (all three loops).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from superactivators.data.builtin import builtin_dataset_path  # noqa: E402
from superactivators.data.datasets import load_dataset  # noqa: E402
from superactivators.encoders.base import EmbedConfig  # noqa: E402
from superactivators.encoders.factory import make_encoder  # noqa: E402
from superactivators.store.embed import embed_dataset  # noqa: E402


def varied_texts(out: Path, n: int, seed: int = 0) -> Path:
    """A metadata.csv of ``n`` texts, each 1..6 emotions paragraphs joined (lengths vary 5-10x, none past 512 tokens)."""
    df = pd.read_csv(builtin_dataset_path("emotions"), dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    rows = []
    concepts = [c for c in df.columns if c.startswith("emotion::")]
    for i in range(n):
        pick = rng.choice(len(df), size=int(rng.integers(1, 7)), replace=False)
        part = df.iloc[pick]
        row = {"text": " ".join(part["text"]), "split": ["train", "cal", "test"][i % 3]}
        row.update({c: str(int((part[c] == "1").any())) for c in concepts})
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "metadata.csv", index=False)
    return out / "metadata.csv"


def bare_sorted(enc, texts: list[str], batch_size: int) -> int:
    """Length-sorted ``model(**batch)`` loop; returns the valid tokens it saw."""
    tok, model = enc.tokenizer, enc.model
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=enc.cfg.max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    n_tok = 0
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            batch = tok([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                        max_length=enc.cfg.max_length, return_tensors="pt")
            model(**batch, output_hidden_states=True)
            n_tok += int(batch["attention_mask"].sum())
    return n_tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "embed_buckets.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embed_buckets_"))
    try:
        ds = load_dataset(varied_texts(work / "data", args.n))
        cfg = EmbedConfig(model=args.model, layers="all", batch_size=args.batch_size, device="cpu",
                          dtype="float32", max_length=512)
        enc = make_encoder(cfg, "text")
        texts = ds.texts()
        lengths = np.array([len(x) for x in enc.tokenizer(texts, truncation=True, max_length=512)["input_ids"]])
        print(f"{len(texts)} texts, tokens per text: min {lengths.min()}, median {int(np.median(lengths))}, "
              f"max {lengths.max()} ({lengths.max() / lengths.min():.1f}x)", flush=True)
        runs: dict[str, list[float]] = {"ours": [], "in_order": [], "bare": []}
        n_valid = None
        for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
            for name in ("ours", "in_order", "bare"):
                t0 = time.perf_counter()
                if name == "bare":
                    bare_sorted(enc, texts, args.batch_size)
                else:
                    c = dataclasses.replace(cfg, bucket_window=16 if name == "ours" else 1)
                    store = embed_dataset(ds, c, work / f"{name}{rep}", encoder=enc, progress=False)
                    n_valid = store.n_tokens
                dt = time.perf_counter() - t0
                if name != "bare":
                    shutil.rmtree(work / f"{name}{rep}")
                if rep:
                    runs[name].append(dt)
                    print(f"rep {rep} {name:8s} {dt:7.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
        tps = {k: n_valid / min(v) for k, v in runs.items()}
        ratio_in_order = statistics.median(b / a for a, b in zip(runs["ours"], runs["in_order"]))
        ratio_bare = statistics.median(a / b for a, b in zip(runs["ours"], runs["bare"]))
        result = {
            "model": args.model, "n_texts": len(texts), "batch_size": args.batch_size, "valid_tokens": n_valid,
            "tokens_per_text": {"min": int(lengths.min()), "median": int(np.median(lengths)), "max": int(lengths.max())},
            "seconds": runs, "tokens_per_s_best": tps,
            "speedup_over_in_order": ratio_in_order, "time_vs_sorted_bare": ratio_bare,
            "targets": {"speedup_over_in_order": ">= 1.5", "time_vs_sorted_bare": "<= 1.1"},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps({k: result[k] for k in ("tokens_per_s_best", "speedup_over_in_order",
                                                  "time_vs_sorted_bare", "peak_rss_mb")}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
