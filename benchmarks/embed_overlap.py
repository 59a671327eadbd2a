"""How long the embed loop waits for the store: the forward pass replaced by a sleep.

The first 320 built-in emotion texts are encoded once with MiniLM (every layer, batches of 32,
as the ``embed`` phase of ``run.py``); ``embed_dataset`` then replays those batches through an
encoder whose forward pass is ``--sleep`` seconds of ``time.sleep`` per batch (the GIL released,
as inside torch's kernels or while a GPU computes). Wall time minus the sleeps is the store work
(conversion, writes, checksums, flushes, statistics) that the loop waits for: what overlapping
the writes with the forward pass removes, without the noise of a shared CPU's forward timings.

``python benchmarks/embed_overlap.py [--sleep 0.5 --reps 7]``; prints the median and every repetition.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from run import EMBED_TEXTS, _head  # noqa: E402

from superactivators.data.datasets import load_dataset  # noqa: E402
from superactivators.encoders.base import EmbedConfig, EncodedBatch  # noqa: E402
from superactivators.encoders.text import TextEncoder  # noqa: E402
from superactivators.store.embed import embed_dataset  # noqa: E402


class Replay:
    """An encoder that returns pre-computed batches after sleeping as long as a forward pass."""

    modality = "text"

    def __init__(self, enc: TextEncoder, batches: list[EncodedBatch], sleep: float) -> None:
        self.enc, self.batches, self.sleep, self.i = enc, batches, sleep, 0
        self.hidden_size, self.layers, self.cfg = enc.hidden_size, enc.layers, enc.cfg

    def describe(self) -> dict:
        return self.enc.describe()

    def encode_inputs(self, texts, context_chars=None) -> EncodedBatch:
        time.sleep(self.sleep)
        self.i += 1
        return self.batches[self.i - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sleep", type=float, default=0.5, help="seconds per batch standing for the forward pass")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    ds = _head(load_dataset("builtin:emotions"), EMBED_TEXTS)
    cfg = EmbedConfig(model="minilm", layers="all", batch_size=32, max_length=256, bucket_window=1)
    enc = TextEncoder(cfg)
    texts = ds.texts(np.arange(len(ds)))
    batches = [enc.encode(texts[i:i + cfg.batch_size]) for i in range(0, len(texts), cfg.batch_size)]
    root = Path(tempfile.mkdtemp(prefix="embed_overlap_"))
    waits = []
    try:
        for r in range(args.reps):
            t0 = time.perf_counter()
            embed_dataset(ds, cfg, root / f"s{r}", encoder=Replay(enc, batches, args.sleep), progress=False)
            waits.append(time.perf_counter() - t0 - args.sleep * len(batches))
            shutil.rmtree(root / f"s{r}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"forward (sleep) {args.sleep * len(batches):.2f} s over {len(batches)} batches; store work the loop "
          f"waits for: median {statistics.median(waits):.3f} s (all {[round(x, 3) for x in waits]}), "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
