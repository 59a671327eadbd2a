"""Learn concept vectors from train-split embeddings.

Every concept set lives in the *normalised* space of its layer: hidden states centred by the
train token mean and divided by the mean train token norm (see :mod:`superactivators.store`).

- ``mean``: the average in-concept token embedding; scored by cosine similarity.
- ``linsep``: a linear separator of in-concept vs out-of-concept tokens; scored by signed
  distance ``(w.h + b) / ||w||``.

Global-embedding variants (``learn_global_concepts``) use one vector per sample and the
sample labels; they serve the CLS / pooled-embedding baseline.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from ..store.artefacts import ArtefactError, check_file_named, load_json, rebuild_hint, recording
from ..store.tokens import TokenStore, row_blocks
from ..util.io import atomic_write_json

SCORING = {"mean": "cosine", "linsep": "signed_distance"}


@dataclass
class ConceptSet:
    """Concept vectors for one layer and how to score them.

    ``vectors [C, d]`` and ``bias [C]`` live in the normalised space ``(h - center) / scale``;
    carrying ``center`` and ``scale`` makes a saved set usable on raw hidden states alone.
    """

    kind: str
    names: list[str]
    vectors: np.ndarray
    bias: np.ndarray
    scoring: str  # "cosine" | "signed_distance" | "sae"
    layer: int
    center: np.ndarray
    scale: float
    space: str = "tokens"  # "tokens" | "globals"
    units: list[str] | None = None  # unlabelled types: the unit (cluster, SAE unit) each concept was matched to

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ConceptSet":
        """The concepts at positions ``idx``, in that order (same kind, space and normalisation)."""
        i = np.asarray(idx, dtype=np.int64)
        return dataclasses.replace(self, names=[self.names[k] for k in i], vectors=self.vectors[i], bias=self.bias[i],
                                   units=None if self.units is None else [self.units[k] for k in i])

    def save(self, path: str | Path) -> None:
        """Safetensors weights plus a ``cfg.json`` sidecar; the config is written last."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".concepts.safetensors.tmp{os.getpid()}"
        with recording(path / "concepts.safetensors"):
            save_file({"vectors": np.ascontiguousarray(self.vectors, dtype=np.float32),
                       "bias": np.ascontiguousarray(self.bias, dtype=np.float32),
                       "center": np.ascontiguousarray(self.center, dtype=np.float32)}, str(tmp))
            tmp.replace(path / "concepts.safetensors")
        cfg = {"kind": self.kind, "names": self.names, "scoring": self.scoring, "layer": self.layer,
               "space": self.space, "scale": self.scale}
        if self.units is not None:
            cfg["units"] = self.units
        with recording(path / "cfg.json"):
            atomic_write_json(path / "cfg.json", cfg)

    @classmethod
    def load(cls, path: str | Path) -> "ConceptSet":
        """A saved set, each file checked against its recorded checksum; damage names the file."""
        path = Path(path)
        cfg = load_json(path / "cfg.json")
        wpath = check_file_named(path / "concepts.safetensors")
        try:
            w = load_file(str(wpath))
            arrays = {k: w[k] for k in ("vectors", "bias", "center")}
        except Exception as err:  # SafetensorError, KeyError, ...
            raise ArtefactError(f"{wpath}: damaged concept set ({type(err).__name__}: {err}); "
                                f"{rebuild_hint(wpath)}") from None
        try:
            return cls(**arrays, **cfg)
        except TypeError as err:  # keys missing or unknown
            raise ArtefactError(f"{path / 'cfg.json'}: not a concept set's config ({err}); "
                                f"{rebuild_hint(path / 'cfg.json')}") from None

    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / "cfg.json").exists()


def normalise(x: np.ndarray, mean: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) - mean) / scale


def _split_token_mask(store: TokenStore, split: str) -> np.ndarray:
    return store.valid & (store.splits == split)[store.sample_of_token]


def learn_mean_concepts(store: TokenStore, layer: int, concepts: list[int]) -> ConceptSet:
    """Average normalised in-concept train token per concept: one GEMM per shard."""
    mean, scale = store.norm(layer)
    train = _split_token_mask(store, "train")
    sums = np.zeros((len(concepts), store.dim), dtype=np.float64)
    counts = np.zeros(len(concepts), dtype=np.int64)
    for s, x in store.iter_shards(layer):
        m = train[s.token_start:s.token_stop]
        if not m.any():
            continue
        gt = store.token_labels(s, np.asarray(concepts))[m].astype(np.float32)  # [t, C]
        pos = 0
        for xb in row_blocks(x, m):  # float32 blocks of the train rows, in order
            xb -= mean
            sums += gt[pos:pos + len(xb)].T @ xb
            pos += len(xb)
        counts += gt.sum(axis=0).astype(np.int64)
    _check_counts(store, concepts, counts, "train tokens")
    vec = (sums / scale / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return ConceptSet("mean", [store.concepts[c] for c in concepts], vec, np.zeros(len(concepts), np.float32),
                      "cosine", layer, mean, scale)


def _check_counts(store: TokenStore, concepts: list[int], counts: np.ndarray, what: str) -> None:
    empty = [store.concepts[c] for c, n in zip(concepts, counts) if n == 0]
    if empty:
        raise ValueError(f"no in-concept {what} for {empty}; drop these concepts (datasets.usable_concepts)")


def _fit_separators(x: np.ndarray, y: np.ndarray, c_reg: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One balanced L2 logistic regression per concept column of ``y``.

    Why this solver: logistic regression gives a calibrated-free, well-posed separator even when
    the classes overlap (they do, heavily, for tokens); L2 with C=1 on unit-scale inputs keeps
    ``w`` small and stable for the few-thousand-sample fits here; ``class_weight='balanced'``
    equalises in- and out-of-concept tokens, as the method asks; lbfgs converges fast on dense
    features of a few hundred to a few thousand dims.
    """
    from sklearn.linear_model import LogisticRegression

    W = np.zeros((y.shape[1], x.shape[1]), dtype=np.float32)
    b = np.zeros(y.shape[1], dtype=np.float32)
    for c in range(y.shape[1]):
        yc = y[:, c]
        clf = LogisticRegression(C=c_reg, class_weight="balanced", max_iter=300, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*did not converge.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            clf.fit(x, yc)
        W[c] = clf.coef_[0]
        b[c] = clf.intercept_[0]
    return W, b


@dataclass(frozen=True)
class SeedAdam:
    """The seed study's separator training (``utils/compute_concepts_utils.py``, ``train_model``,
    with the settings of ``scripts/compute_all_concepts.py``): a bias-free ``nn.Linear(d, 1)``,
    BCE-with-logits, Adam, step-decayed learning rate, early stop on train F1 or a stalled loss."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 1000
    patience: int = 20
    tolerance: float = 1e-3
    lr_step: int = 5
    lr_gamma: float = 0.8


def fit_separators_seed(x: np.ndarray, y: np.ndarray, seed: int = 0, opts: SeedAdam = SeedAdam()) -> np.ndarray:
    """``protocol: seed``: one bias-free separator ``w`` per column of ``y``, scored ``x . w``.

    Each concept's rows are balanced first, as the seed does (``balance_dataset``: as many
    out-of-concept rows as in-concept ones, drawn without replacement). Returns ``W [C, d]``.
    """
    import torch

    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    W = np.zeros((y.shape[1], x.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for c in range(y.shape[1]):
        pos, neg = np.flatnonzero(y[:, c] > 0), np.flatnonzero(y[:, c] <= 0)
        k = min(len(pos), len(neg))
        gen = torch.Generator().manual_seed(seed + c)
        model = torch.nn.Linear(x.shape[1], 1, bias=False)
        with torch.no_grad():  # nn.Linear's default init, from our own generator
            bound = 1.0 / np.sqrt(x.shape[1])
            model.weight.uniform_(-bound, bound, generator=gen)
        if k == 0:  # as the seed (compute_a_linear_separator): an untrained random vector
            warnings.warn(f"separator #{c}: {len(pos)} in- and {len(neg)} out-of-concept rows; "
                          "keeping its random initial vector, as the seed does", stacklevel=2)
            W[c] = model.weight.detach().numpy()[0]
            continue
        rows = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
        xb, yb = x_t[rows], torch.from_numpy(np.r_[np.ones(k), np.zeros(k)].astype(np.float32))
        optim = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(optim, step_size=opts.lr_step, gamma=opts.lr_gamma)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        best, stall = float("inf"), 0
        for epoch in range(opts.max_epochs):
            for idx in torch.randperm(len(rows), generator=gen).split(opts.batch_size):
                optim.zero_grad()
                loss_fn(model(xb[idx]).view(-1), yb[idx]).backward()
                optim.step()
            with torch.no_grad():
                logits = model(xb).view(-1)
                loss = float(loss_fn(logits, yb))
                pred = logits > 0
                tp = float((pred & (yb > 0)).sum())
                f1 = 2 * tp / max(float(pred.sum()) + k, 1.0)
            if f1 >= 0.99:
                break
            if epoch > 0 and best - loss < opts.tolerance:
                stall += 1
                if stall >= opts.patience:
                    break
            else:
                stall = 0
            best = min(best, loss)
            sched.step()
        W[c] = model.weight.detach().numpy()[0]
    return W


def learn_linsep_concepts(
    store: TokenStore, layer: int, concepts: list[int], max_per_class: int = 4000, c_reg: float = 1.0, seed: int = 0,
    solver: str = "logreg",
) -> ConceptSet:
    """Linear separator per concept on a balanced sample of train tokens.

    For each concept, up to ``max_per_class`` in-concept and as many out-of-concept train
    tokens are drawn (seeded); the union of drawn rows is gathered in one pass over the store.
    ``solver``: ``"logreg"`` (ours: logistic regression with bias, scored ``(w.h + b)/||w||``)
    or ``"seed"`` (:func:`fit_separators_seed`: bias-free, Adam; scored ``w.h/||w||``, which
    ranks every token exactly as the seed's ``x . w`` does).
    """
    if solver not in ("logreg", "seed"):
        raise ValueError(f"linsep solver must be 'logreg' or 'seed', got {solver!r}")
    rng = np.random.default_rng(seed)
    mean, scale = store.norm(layer)
    train_idx = np.flatnonzero(_split_token_mask(store, "train"))
    gt_train = np.zeros((len(train_idx), len(concepts)), dtype=bool)
    pos = 0
    for s in store.shards:  # token labels only (no hidden states): cheap
        sel = train_idx[(train_idx >= s.token_start) & (train_idx < s.token_stop)]
        gt_train[pos:pos + len(sel)] = store.token_labels(s, np.asarray(concepts))[sel - s.token_start]
        pos += len(sel)
    _check_counts(store, concepts, gt_train.sum(axis=0), "train tokens")
    picks: list[np.ndarray] = []
    for c in range(len(concepts)):
        p = np.flatnonzero(gt_train[:, c])
        n_ok = ~gt_train[:, c]
        if store.known is not None:  # unknown labels (data.missing_labels: allow) are no negatives
            n_ok &= store.known[store.sample_of_token[train_idx], concepts[c]]
        n = np.flatnonzero(n_ok)
        k = min(max_per_class, len(p))
        picks.append((rng.choice(p, k, replace=False), rng.choice(n, min(len(n), max_per_class), replace=False)))
    rows = np.unique(np.concatenate([np.concatenate(pn) for pn in picks]))
    x = gather_raw_rows(store, layer, train_idx[rows])  # store dtype: half the memory of float32
    W = np.zeros((len(concepts), store.dim), dtype=np.float32)
    b = np.zeros(len(concepts), dtype=np.float32)
    for c, (p, n) in enumerate(picks):
        sel = np.searchsorted(rows, np.concatenate([p, n]))
        y = np.concatenate([np.ones(len(p)), np.zeros(len(n))])[:, None]
        if solver == "seed":
            W[c] = fit_separators_seed(normalise(x[sel], mean, scale), y, seed + c)[0]
            continue
        Wc, bc = _fit_separators(normalise(x[sel], mean, scale), y, c_reg, seed)
        W[c], b[c] = Wc[0], bc[0]
    return ConceptSet("linsep", [store.concepts[c] for c in concepts], W, b, "signed_distance", layer, mean, scale)


def gather_raw_rows(store: TokenStore, layer: int, token_rows: np.ndarray) -> np.ndarray:
    """Raw hidden states (store dtype) of sorted global ``token_rows``, read shard by shard."""
    out = np.empty((len(token_rows), store.dim), dtype=np.dtype(store.info.dtype))
    for s in store.shards:
        lo, hi = np.searchsorted(token_rows, [s.token_start, s.token_stop])
        if hi > lo:
            out[lo:hi] = store.tokens(layer, s)[token_rows[lo:hi] - s.token_start]
    return out


def gather_rows(store: TokenStore, layer: int, token_rows: np.ndarray, mean: np.ndarray, scale: float) -> np.ndarray:
    """Normalised hidden states of sorted global ``token_rows``, read shard by shard."""
    out = np.empty((len(token_rows), store.dim), dtype=np.float32)
    for s in store.shards:
        lo, hi = np.searchsorted(token_rows, [s.token_start, s.token_stop])
        if hi > lo:
            out[lo:hi] = normalise(store.tokens(layer, s)[token_rows[lo:hi] - s.token_start], mean, scale)
    return out


def learn_global_concepts(store: TokenStore, layer: int, concepts: list[int], kind: str, c_reg: float = 1.0,
                          seed: int = 0, solver: str = "logreg") -> ConceptSet:
    """Concept vectors on global embeddings (one per sample) with sample labels.

    ``solver`` as in :func:`learn_linsep_concepts` (``"seed"``: bias-free, Adam)."""
    g = store.globals(layer)
    train = store.splits == "train"
    gmean = g[train].mean(axis=0)
    gscale = float(np.linalg.norm(g[train] - gmean, axis=1).mean()) or 1.0
    x = (g[train] - gmean) / gscale
    y = store.labels[train][:, concepts].astype(bool)
    _check_counts(store, concepts, y.sum(axis=0), "train samples")
    names = [store.concepts[c] for c in concepts]
    if kind == "mean":
        vec = (y.T.astype(np.float32) @ x) / y.sum(axis=0)[:, None]
        return ConceptSet("mean", names, vec.astype(np.float32), np.zeros(len(concepts), np.float32), "cosine",
                          layer, gmean.astype(np.float32), gscale, space="globals")
    if kind == "linsep":
        kn = None if store.known is None else store.known[train][:, concepts]
        if kn is not None and not kn.all():  # unknown labels: each concept fitted on its known samples only
            W, b = np.zeros((len(concepts), x.shape[1]), np.float32), np.zeros(len(concepts), np.float32)
            for c in range(len(concepts)):
                r = kn[:, c]
                if solver == "seed":
                    W[c] = fit_separators_seed(x[r], y[r, c:c + 1], seed + c)[0]
                else:
                    Wc, bc = _fit_separators(x[r], y[r, c:c + 1], c_reg, seed)
                    W[c], b[c] = Wc[0], bc[0]
        elif solver == "seed":
            W, b = fit_separators_seed(x, y, seed), np.zeros(len(concepts), np.float32)
        else:
            W, b = _fit_separators(x, y, c_reg, seed)
        return ConceptSet("linsep", names, W, b, "signed_distance", layer, gmean.astype(np.float32), gscale,
                          space="globals")
    raise ValueError(f"no global variant for concept kind {kind!r}")
