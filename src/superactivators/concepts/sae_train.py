"""Train a small SAE with SAELens itself on a token store's raw hidden states, saved by SAELens.

The SAE reads store layer ``L`` = Hugging Face ``hidden_states[L]``, which is the input of
block ``L`` (``blocks.L.hook_resid_pre`` in SAELens' naming), so :func:`train_sae` writes that
hook name and the result loads with :func:`superactivators.concepts.sae.load_sae` (and with
SAELens' own ``SAE.load_from_disk``). Architectures: ``standard`` (ReLU + L1), ``topk`` and
``jumprelu``; training data are the valid ``train``-split tokens (at most ``max_tokens``,
sampled uniformly without replacement), fed by SAELens' ``SAETrainer`` in random batches.
Needs the ``sae`` extra (``pip install sae-lens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from ..store.tokens import TokenStore

Architecture = Literal["standard", "topk", "jumprelu"]


@dataclass
class SAETrainOptions:
    """Size and schedule of a small SAE (defaults sized for a few thousand tokens on a CPU)."""

    architecture: Architecture = "standard"
    d_sae: int = 256
    k: int = 16  # topk
    l1_coefficient: float = 1.0  # standard
    l0_coefficient: float = 1.0  # jumprelu
    steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    max_tokens: int = 200_000
    seed: int = 0


def train_tokens(store: TokenStore, layer: int, max_tokens: int, seed: int = 0) -> np.ndarray:
    """Raw float32 hidden states of valid ``train`` tokens at ``layer`` (uniform subsample if more)."""
    mask = store.valid & (store.splits == "train")[store.sample_of_token]
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"{store.path}: no valid train tokens at layer {layer}")
    if n > max_tokens:
        keep = np.zeros(n, bool)
        keep[np.random.default_rng(seed).choice(n, max_tokens, replace=False)] = True
        rows = np.flatnonzero(mask)[keep]
        mask = np.zeros_like(mask)
        mask[rows] = True
    return np.concatenate(list(store.aligned_blocks(layer, mask)))


def _batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield x[torch.randint(0, len(x), (batch_size,), generator=gen)]


def train_sae(store: TokenStore, layer: int, out_dir: str | Path, opts: SAETrainOptions | None = None) -> Path:
    """Train with SAELens on ``store``'s layer ``layer`` and save with ``save_inference_model``."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    opts = opts or SAETrainOptions()
    if layer not in store.layers:
        raise ValueError(f"layer {layer} is not in the store (layers {store.layers})")
    kinds = {
        "standard": (StandardTrainingSAE, StandardTrainingSAEConfig, {"l1_coefficient": opts.l1_coefficient}),
        "topk": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": opts.k}),
        "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, {"l0_coefficient": opts.l0_coefficient}),
    }
    if opts.architecture not in kinds:
        raise ValueError(f"architecture must be one of {sorted(kinds)}, got {opts.architecture!r}")
    sae_cls, cfg_cls, extra = kinds[opts.architecture]
    x = torch.from_numpy(train_tokens(store, layer, opts.max_tokens, opts.seed))
    torch.manual_seed(opts.seed)
    meta = SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_pre", model_name=str(store.info.model.get("id", "")))
    sae = sae_cls(cfg_cls(d_in=store.dim, d_sae=opts.d_sae, metadata=meta, **extra))
    trainer_cfg = SAETrainerConfig(total_training_samples=opts.steps * opts.batch_size,
                                   train_batch_size_samples=opts.batch_size, lr=opts.lr, lr_end=opts.lr,
                                   device="cpu")
    sae = SAETrainer(trainer_cfg, sae, _batches(x, opts.batch_size, opts.seed)).fit()
    out = Path(out_dir)
    sae.save_inference_model(out)
    return out
