"""Synthetic token stores with planted concept signal, for benchmarks and scale tests.

Why: the post-embedding stages must be timed at realistic sizes (millions of tokens, d=1024)
without a model. This writes a genuine :class:`~superactivators.store.TokenStore` through
:class:`~superactivators.store.StoreWriter`, shard by shard, never holding the whole store.

The generative model, per sample ``i`` of ``L_i`` tokens (``L_i`` uniform in
``[min_len, max_len]``):

- each concept ``c`` is present with probability ``p_c`` (uniform in ``label_rate``); a
  present concept covers one contiguous run of ``ceil(frac * L_i)`` tokens (``frac`` uniform in
  ``span_frac``), which is the token-level ground truth;
- a token's hidden state is ``offset + noise + a_t * signal * sum_c gt[t, c] u_c``, with
  ``noise ~ N(0, I_d)``, unit concept directions ``u_c``, a shared offset of norm
  ``offset_norm`` (so that centring matters) and ``a_t ~ |N(0, 1)|`` per token: most
  in-concept tokens carry a weak signal and a few a strong one (the SuperActivator tail).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..util.io import stable_hash
from .tokens import StoreInfo, StoreWriter, TokenStore


@dataclass(frozen=True)
class SynthSpec:
    """Size and signal of a synthetic store; its hash names the cached build."""

    n_tokens: int = 2_000_000
    dim: int = 1024
    n_concepts: int = 80
    min_len: int = 100
    max_len: int = 400
    label_rate: tuple[float, float] = (0.05, 0.2)
    span_frac: tuple[float, float] = (0.05, 0.3)
    signal: float = 4.0
    offset_norm: float = 30.0
    split_frac: tuple[float, float, float] = (0.5, 0.25, 0.25)  # train, cal, test
    shard_tokens: int = 65536
    layer: int = 6
    seed: int = 0

    def key(self) -> str:
        return stable_hash(asdict(self))


def sample_lengths(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Ragged lengths in ``[min_len, max_len]`` summing to exactly ``n_tokens``."""
    if spec.n_tokens < spec.min_len:
        raise ValueError(f"n_tokens={spec.n_tokens} is below one sample of min_len={spec.min_len}")
    n = spec.n_tokens // spec.min_len + 1  # enough samples in the worst case
    lengths = rng.integers(spec.min_len, spec.max_len + 1, size=n)
    total = np.cumsum(lengths)
    k = int(np.searchsorted(total, spec.n_tokens))  # sample k brings the total to >= n_tokens
    lengths = lengths[:k + 1].copy()
    excess = int(lengths.sum()) - spec.n_tokens
    # shave the excess off the last samples, never below min_len
    for j in range(len(lengths) - 1, -1, -1):
        if excess == 0:
            break
        cut = min(excess, int(lengths[j]) - spec.min_len)
        lengths[j] -= cut
        excess -= cut
    if excess:  # every sample at min_len and still too long: drop samples (n_tokens < 2 min_len case)
        raise ValueError(f"cannot split {spec.n_tokens} tokens into samples of {spec.min_len}..{spec.max_len}")
    return lengths.astype(np.int64)


def _sample_spans(spec: SynthSpec, rng: np.random.Generator, lengths: np.ndarray,
                  labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (sample, concept) the token run ``[start, stop)`` local to the sample (0, 0 if absent)."""
    frac = rng.uniform(*spec.span_frac, size=labels.shape)
    run = np.maximum(1, np.ceil(frac * lengths[:, None])).astype(np.int64)
    start = (rng.random(labels.shape) * (lengths[:, None] - run + 1)).astype(np.int64)
    start = np.where(labels > 0, start, 0)
    stop = np.where(labels > 0, start + run, 0)
    return start, stop


def token_ground_truth(lengths: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """In-concept bits ``[sum(lengths), C]`` from per-sample local runs, vectorised."""
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    sample = np.repeat(np.arange(len(lengths)), lengths)
    return (pos[:, None] >= start[sample]) & (pos[:, None] < stop[sample])


def build_synthetic_store(path: str | Path, spec: SynthSpec = SynthSpec(), batch_samples: int = 64,
                          progress: bool = False) -> TokenStore:
    """Write (or reuse, when complete and built from the same spec) a synthetic store at ``path``."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        if info.get("complete") and info.get("dataset", {}).get("spec_key") == spec.key():
            return TokenStore(path)
        if info.get("dataset", {}).get("spec_key") != spec.key():
            raise ValueError(f"{path} holds a different store; remove it or choose another folder")
    rng = np.random.default_rng(spec.seed)
    lengths = sample_lengths(spec, rng)
    n = len(lengths)
    C, d = spec.n_concepts, spec.dim
    rates = rng.uniform(*spec.label_rate, size=C)
    labels = (rng.random((n, C)) < rates).astype(np.uint8)
    start, stop = _sample_spans(spec, rng, lengths, labels)
    split_p = np.asarray(spec.split_frac, dtype=np.float64)
    splits = rng.choice(np.array(["train", "cal", "test"]), size=n, p=split_p / split_p.sum())
    dirs = rng.standard_normal((C, d)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    offset = rng.standard_normal(d).astype(np.float32)
    offset *= spec.offset_norm / np.linalg.norm(offset)
    info = StoreInfo(
        n_samples=n, dim=d, layers=[spec.layer], concepts=[f"concept_{c:02d}" for c in range(C)], modality="text",
        model={"id": "synthetic", "n_layers": spec.layer, "hidden_size": d},
        dataset={"name": "synthetic", "source": "superactivators.store.synth", "spec_key": spec.key(),
                 "spec": asdict(spec)},
        token_ground_truth="spans",
    )
    dirs_t, offset_t = torch.from_numpy(dirs), torch.from_numpy(offset)
    writer = StoreWriter(path, info, labels, splits, shard_tokens=spec.shard_tokens)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=writer.next_sample, desc="synthetic store", unit="sample", disable=not progress)
    for b0 in range(writer.next_sample, n, batch_samples):
        b1 = min(n, b0 + batch_samples)
        # a per-batch generator: the values do not depend on where a resumed build starts
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + b0)
        lens = lengths[b0:b1]
        gt = token_ground_truth(lens, start[b0:b1], stop[b0:b1])
        t = int(lens.sum())
        x = torch.randn(t, d, generator=gen)
        x += offset_t
        strength = torch.randn(t, 1, generator=gen).abs_() * spec.signal
        x.addmm_(torch.from_numpy(gt).float() * strength, dirs_t)
        glob = torch.segment_reduce(x, "sum", lengths=torch.from_numpy(lens), axis=0) / torch.from_numpy(lens)[:, None]
        x, glob = x.half().numpy(), glob.numpy()
        writer.add({spec.layer: x}, {spec.layer: glob}, lens,
                   np.ones(t, dtype=bool), gt_bits=np.packbits(gt, axis=1))
        bar.update(b1 - b0)
    bar.close()
    return writer.close()
