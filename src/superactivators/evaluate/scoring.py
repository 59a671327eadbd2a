"""Token activations, streamed over the store: one GEMM per shard, segment reductions per sample.

``score_store`` reads each shard once and hands the activations to a list of accumulators,
in the style of streaming statistics: per-sample reductions, in-concept activation collection
for quantiles, histograms for figures, localisation counts. No per-token Python code runs.

The pass is fused: as the scorer's GEMM moves down a shard in blocks of rows, the samples it
has finished form a block (:func:`sample_blocks`), copied concept-major ``[C, rows]`` while it
is in cache; accumulators with ``add_block(block, ctx)`` (the per-sample reductions, the
in-concept and top-token populations, the second random draw) consume it there, so no
transposed copy of a shard exists. The others (``add(shard, acts, ctx)``) get the shard's
``[t, C]`` activations, in one buffer the scorer reuses from shard to shard. The values are
bit-identical to scoring the whole shard with ``Scorer.__call__`` and reducing it afterwards:
the GEMM runs over the same row blocks (``tests/test_scoring_fused.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..concepts.sae import SAEScorer
from ..concepts.supervised import ConceptSet
from ..store.tokens import Shard, TokenStore
from ..store.artefacts import load_npz, recording
from ..util.io import atomic_save_npz
from .methods import RANDOM_TOKEN, ROLLING_MAX, SUPERACTIVATOR_SAMPLE
from .quantiles import StreamingQuantiles, float_keys, keys_to_floats, pack_populations, unpack_populations


class Scorer:
    """Turns raw hidden states into concept activations for one :class:`ConceptSet`."""

    def __init__(self, cs: ConceptSet, device: str | torch.device = "cpu"):
        self.cs = cs
        self.device = torch.device(device)
        V = torch.from_numpy(np.asarray(cs.vectors, dtype=np.float32))
        self.center = torch.from_numpy(np.asarray(cs.center, dtype=np.float32)).to(self.device)
        if cs.scoring == "cosine":
            W = V / V.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.bias = torch.zeros(len(cs.names))
        elif cs.scoring == "signed_distance":
            # (w.(x-c)/s + b) / ||w||  ==  (x-c) @ (w / (s ||w||)) + b / ||w||
            wn = V.norm(dim=1).clamp_min(1e-12)
            W = V / (cs.scale * wn[:, None])
            self.bias = torch.from_numpy(np.asarray(cs.bias, dtype=np.float32)) / wn
        else:
            raise ValueError(f"Scorer does not handle scoring {cs.scoring!r}")
        self.Wt = W.T.contiguous().to(self.device)
        self.bias = self.bias.to(self.device)
        # signed distances are affine in x: the centring folds into the bias, (x - c) @ W' + b'
        # == x @ W' + (b' - c @ W'), saving one pass over every block (computed in float64;
        # the fp32 GEMM error grows only like ||x|| / ||x - c||, harmless for hidden states)
        self._folded_bias = (self.bias.double() - self.center.double() @ self.Wt.double()).float() \
            if cs.scoring == "signed_distance" else None

    #: rows converted and scored at a time on CPU: a float32 block stays cache-sized, so the
    #: fp16->fp32 conversion and centring cost little next to the GEMM (whole-shard float32
    #: temporaries cost more than the GEMM itself)
    block_rows: int = 8192
    _pinned: torch.Tensor | None = None
    _buf: torch.Tensor | None = None

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Activations ``[t, C]`` float32 for raw hidden states ``x [t, d]``."""
        if not isinstance(x, torch.Tensor):
            with warnings.catch_warnings():  # read-only memmaps: we never write through X
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(np.asarray(x))
        if self.device.type != "cpu":
            return self._score_block(self._to_device(x)).cpu().numpy()
        A = torch.empty((x.shape[0], self.Wt.shape[1]), dtype=torch.float32)
        for i in range(0, x.shape[0], self.block_rows):
            self._score_block(x[i:i + self.block_rows], out=A[i:i + self.block_rows])
        return A.numpy()

    def _score_block(self, xb: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Centre a block, one GEMM, then the per-row scaling.

        The block is converted into a reused float32 buffer and centred in place: a fresh
        float32 tensor per block (``.float()``) costs more in page faults than the conversion
        itself, and a mixed-dtype ``x - center`` takes a slow, unvectorised path.
        """
        n = xb.shape[0]
        if self._buf is None or self._buf.shape[0] < n or self._buf.device != xb.device:
            self._buf = torch.empty((max(n, self.block_rows), xb.shape[1]), dtype=torch.float32, device=xb.device)
        X = self._buf[:n]
        X.copy_(xb)
        if self._folded_bias is not None:  # signed distance: centring is in the bias
            A = torch.mm(X, self.Wt, out=out) if out is not None else X @ self.Wt
            A += self._folded_bias
            return A
        X -= self.center
        A = torch.mm(X, self.Wt, out=out) if out is not None else X @ self.Wt
        A /= torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min_(1e-12)
        return A

    _rows: torch.Tensor | None = None  # reused [t, C] activations of one shard (flat)
    _blk_t: torch.Tensor | None = None  # reused [C, rows] concept-major copy of one block (flat)

    def score_blocks(self, x: np.ndarray, cuts: np.ndarray, on_block=None) -> np.ndarray:
        """Score ``x [t, d]`` (CPU) and hand blocks of it concept-major to ``on_block`` on the way.

        The GEMM runs over the same fixed ``block_rows`` blocks as :meth:`__call__` (so the
        values are the same bits) into one ``[t, C]`` buffer reused from call to call; as soon as
        the GEMM has passed a boundary of ``cuts`` (``0 = cuts[0] < ... < cuts[-1] = t``), rows
        ``[a, b)`` up to it are copied, while still in cache, into a reused C-contiguous
        ``[C, b - a]`` array and passed as ``on_block(a, b, acts_t)``. Returns the shard's
        ``[t, C]`` activations: a view that the next call overwrites.
        """
        if not isinstance(x, torch.Tensor):
            with warnings.catch_warnings():  # read-only memmaps: we never write through X
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(np.asarray(x))
        t, C = x.shape[0], self.Wt.shape[1]
        if self._rows is None or self._rows.numel() < t * C:
            self._rows = torch.empty(t * C, dtype=torch.float32)
        rows = self._rows[:t * C].view(t, C)
        widest = int(np.diff(cuts).max()) if on_block is not None and len(cuts) > 1 else 0
        if self._blk_t is None or self._blk_t.numel() < widest * C:
            self._blk_t = torch.empty(widest * C, dtype=torch.float32)
        cut = cuts.tolist()
        j = 1  # the next boundary to hand over
        for i in range(0, t, self.block_rows):
            e = min(t, i + self.block_rows)
            self._score_block(x[i:e], out=rows[i:e])
            while on_block is not None and j < len(cut) and cut[j] <= e:
                a, b = cut[j - 1], cut[j]
                acts_t = self._blk_t[:(b - a) * C].view(C, b - a)
                acts_t.copy_(rows[a:b].T)
                on_block(a, b, acts_t.numpy())
                j += 1
        return rows.numpy()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host -> accelerator copy through a reused pinned buffer, so the copy is asynchronous."""
        if x.device == self.device:
            return x
        if self.device.type != "cuda" or x.device.type != "cpu":
            return x.to(self.device)
        n = x.numel()
        if self._pinned is None or self._pinned.numel() < n or self._pinned.dtype != x.dtype:
            self._pinned = torch.empty(n, dtype=x.dtype, pin_memory=True)
        buf = self._pinned[:n].view(x.shape)
        buf.copy_(x)  # pages the memmap in, in host memory that the GPU can DMA from
        return buf.to(self.device, non_blocking=True)


def make_scorer(cs: ConceptSet, device: str | torch.device = "cpu"):
    """Scorer for any concept kind (SAE units bring their own encoder)."""
    if cs.scoring == "sae":
        return SAEScorer(cs, device)
    return Scorer(cs, device)


@dataclass
class PassContext:
    """What accumulators may need about the shard being scored."""

    store: TokenStore
    concepts: np.ndarray  # store concept index of each activation column
    _gt_cache: dict = field(default_factory=dict)

    def token_labels(self, shard: Shard) -> np.ndarray:
        if shard.start not in self._gt_cache:
            self._gt_cache.clear()
            self._gt_cache[shard.start] = self.store.token_labels(shard, self.concepts)
        return self._gt_cache[shard.start]

    def local_starts(self, shard: Shard) -> np.ndarray:
        return self.store.offsets[shard.start:shard.stop] - shard.token_start

    def valid(self, shard: Shard) -> np.ndarray:
        return self.store.valid[shard.token_start:shard.token_stop]


class Accumulator(Protocol):
    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None: ...


@dataclass
class Block:
    """Rows ``[a, b)`` of a shard holding whole samples ``[i0, i1)`` (both local to the shard).

    ``acts_t [C, b - a]`` are the rows' activations concept-major (C-contiguous), valid only
    during the ``add_block`` call; ``starts`` are the samples' first rows local to the block.
    """

    shard: Shard
    a: int
    b: int
    i0: int
    i1: int
    starts: np.ndarray
    acts_t: np.ndarray

    @property
    def samples(self) -> slice:
        """The block's samples as global sample indices."""
        return slice(self.shard.start + self.i0, self.shard.start + self.i1)

    @property
    def tokens(self) -> slice:
        """The block's rows as global token indices."""
        return slice(self.shard.token_start + self.a, self.shard.token_start + self.b)


class BlockAccumulator(Protocol):
    def add_block(self, block: Block, ctx: PassContext) -> None: ...


def sample_blocks(starts: np.ndarray, t: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of whole samples that follow a GEMM run in blocks of ``rows`` rows.

    ``starts`` are the samples' first rows (``starts[0] == 0``, ascending). After the GEMM has
    covered rows up to ``min(t, k * rows)``, the samples it has finished form the next block:
    each block ends at the last sample boundary within each GEMM block (a sample that spans a
    whole GEMM block joins the next one). Returns ``(cuts, sample_cuts)``: row boundaries
    ``[0, ..., t]`` and the index of each block's first sample (plus the sample count).
    """
    bounds = np.append(np.asarray(starts, dtype=np.int64), t)
    if len(bounds) < 2 or bounds[0] != 0:
        raise ValueError("sample_blocks needs sample starts beginning at row 0")
    frontier = np.minimum(np.arange(1, -(-t // rows) + 1, dtype=np.int64) * rows, t)
    sc = np.unique(np.concatenate([[0], np.searchsorted(bounds, frontier, side="right") - 1]))
    return bounds[sc], sc


TOKEN_REDUCTIONS = ("max_token", "mean_token", "last_token", "random_token")
#: tokens per window of the ``rolling_max`` baseline (``detect.rolling_window``)
ROLLING_WINDOW = 8


def _transposed(a: np.ndarray, block: int = 2048) -> np.ndarray:
    """``a.T`` as a C-contiguous copy, written ``block`` rows at a time (cache-sized strided
    reads: 2-3x faster than one ``np.ascontiguousarray(a.T)`` over a whole shard)."""
    if a.flags.f_contiguous:
        return a.T
    out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    for i in range(0, a.shape[0], block):  # a handful of blocks per shard, not a loop per token
        out[:, i:i + block] = a[i:i + block].T
    return out


def segment_scores(acts: np.ndarray, starts: np.ndarray, valid: np.ndarray | None, u: np.ndarray | None = None,
                   which: Sequence[str] = TOKEN_REDUCTIONS, first_sample: int = 0) -> dict[str, np.ndarray]:
    """Per-sample reductions of token activations ``acts [t, C]`` over valid tokens.

    Sample ``i`` owns rows ``starts[i]:starts[i+1]`` (the last one runs to the end); ``valid``
    ``[t]`` marks real tokens (None: all). ``max_token`` / ``mean_token`` / ``last_token`` are
    the max, mean and last valid activation; ``random_token`` is the valid token at rank
    ``floor(u_i * n_valid_i)`` for the uniform draws ``u [n]``. The pipeline's scoring pass and
    the estimator both reduce through this function. ``first_sample`` only names the sample in
    the error raised when one has no valid token.
    """
    starts = np.asarray(starts, dtype=np.int64)
    t = acts.shape[0]
    all_valid = valid is None or bool(np.all(valid))
    if all_valid:
        n_valid = np.diff(np.append(starts, t))
    else:
        n_valid = np.add.reduceat(valid.astype(np.int64), starts)
    if (n_valid <= 0).any():
        bad = first_sample + int(np.flatnonzero(n_valid <= 0)[0])
        raise ValueError(f"sample {bad} has no valid tokens")
    out: dict[str, np.ndarray] = {}
    if "max_token" in which or "mean_token" in which:
        # segment reductions run along a contiguous axis: one transposed copy of the
        # activations, then reduceat along rows of [C, t] is ~5x faster than down columns
        acts_t = _transposed(acts)
        if all_valid:  # the common case (text stores keep no padding): no masked copies
            masked = zeroed = acts_t
        else:
            masked = np.where(valid[None, :], acts_t, -np.inf)
            zeroed = np.where(valid[None, :], acts_t, 0.0)
        if "max_token" in which:
            out["max_token"] = np.maximum.reduceat(masked, starts, axis=1).T
        if "mean_token" in which:
            # in the activations' dtype (float32 from the scorer): the pipeline stores it so
            out["mean_token"] = (np.add.reduceat(zeroed, starts, axis=1) / n_valid).T.astype(acts.dtype, copy=False)
    if "last_token" in which:
        if all_valid:
            last_idx = starts + n_valid - 1
        else:
            last_idx = np.maximum.reduceat(np.where(valid, np.arange(t), -1), starts)
        out["last_token"] = acts[last_idx]
    if "random_token" in which:
        if u is None:
            raise ValueError("random_token needs one uniform draw per sample (u)")
        valid_pos = np.arange(t) if all_valid else np.flatnonzero(valid)
        first_rank = np.concatenate([[0], np.cumsum(n_valid)[:-1]])
        k = np.minimum((np.asarray(u) * n_valid).astype(np.int64), n_valid - 1)
        out["random_token"] = acts[valid_pos[first_rank + k]]
    return out


def rolling_max(acts: np.ndarray, starts: np.ndarray, valid: np.ndarray | None, window: int,
                col_block: int = 256) -> np.ndarray:
    """Per sample ``[n, C]``: the max over windows of ``window`` consecutive valid tokens of the window mean.

    Windows never cross samples; a sample with fewer valid tokens than ``window`` scores its
    mean. ``acts [t, C]``; the work runs concept-major on ``acts.T`` (:func:`rolling_max_t`), so
    the fused pass hands its ``[C, rows]`` blocks over without a copy.
    """
    return rolling_max_t(acts.T, starts, valid, window, col_block)


def rolling_max_t(acts_t: np.ndarray, starts: np.ndarray, valid: np.ndarray | None, window: int,
                  col_block: int = 256) -> np.ndarray:
    """:func:`rolling_max` of concept-major activations ``acts_t [C, t]``: ``[n, C]`` float32.

    Vectorised along each concept's row of tokens (contiguous when ``acts_t`` is C-contiguous):
    one float64 cumulative sum, window sums as its differences, one ``maximum.reduceat`` per
    block of ``col_block`` concepts over the windows that stay inside their sample. The window
    mean is divided by ``window`` after the max: rounding is monotone, so ``max(s / w)`` and
    ``max(s) / w`` are the same float64 (and the same bits as dividing every window first).
    """
    if window < 1:
        raise ValueError(f"rolling window must be >= 1, got {window}")
    starts = np.asarray(starts, dtype=np.int64)
    t = acts_t.shape[1]
    if valid is not None and not bool(np.all(valid)):
        n_valid = np.add.reduceat(valid.astype(np.int64), starts)
        acts_t = acts_t[:, np.asarray(valid, dtype=bool)]
    else:
        n_valid = np.diff(np.append(starts, t))
    vstarts = np.concatenate([[0], np.cumsum(n_valid)[:-1]]).astype(np.int64)
    ends = vstarts + n_valid
    n_tok = acts_t.shape[1]
    short = n_valid < window
    long_ = ~short
    # window sums d[j] = cs[j + w] - cs[j] for j in [0, n_tok - w]; sample i's windows start in
    # [vstarts[i], ends[i] - w]: one reduceat over (start, stop) pairs, every other result kept
    # (the ones in between span gaps between samples and are dropped)
    n_win = max(n_tok - window + 1, 0)
    pairs = np.stack([vstarts[long_], ends[long_] - window + 1], axis=1).ravel()
    out = np.empty((len(n_valid), acts_t.shape[0]), dtype=np.float32)
    for c0 in range(0, acts_t.shape[0], col_block):  # blocks of concepts bound the float64 memory
        a = acts_t[c0:c0 + col_block]
        cs = np.empty((a.shape[0], n_tok + 1), dtype=np.float64)
        cs[:, 0] = 0.0
        cs[:, 1:] = a  # exact widening first: a float64 accumulate is faster than one that casts
        np.cumsum(cs[:, 1:], axis=1, out=cs[:, 1:])  # starting at a_1 itself (0 + -0.0 would be +0.0)
        res = np.empty((a.shape[0], len(n_valid)), dtype=np.float64)
        if len(pairs):
            # one spare column so that the last stop (== n_win) is a valid reduceat index
            d = np.empty((a.shape[0], n_win + 1), dtype=np.float64)
            np.subtract(cs[:, window:], cs[:, :n_win], out=d[:, :n_win])
            d[:, n_win] = -np.inf
            res[:, long_] = np.maximum.reduceat(d, pairs, axis=1)[:, ::2] / window
        res[:, short] = (cs[:, ends[short]] - cs[:, vstarts[short]]) / n_valid[short]
        out[:, c0:c0 + col_block] = res.T
    return out


def in_concept_values(acts: np.ndarray, token_labels: np.ndarray, rows: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Activations of in-concept tokens and their concept column: ``(values, columns)``.

    ``token_labels [t, C]`` (bool); ``rows`` restricts to some token rows (a split's)."""
    gt = token_labels if rows is None else token_labels[rows]
    flat = np.flatnonzero(gt)  # flat + divmod beats 2-d nonzero
    r, cols = np.divmod(flat, gt.shape[1])
    r = r if rows is None else rows[r]
    return acts[r, cols], cols.astype(np.int32)


def group_by_concept(vals: np.ndarray, cols: np.ndarray, n_concepts: int) -> list[np.ndarray]:
    """Split ``vals`` into one array per concept column (stable order within each)."""
    order = np.argsort(cols, kind="stable")
    bounds = np.searchsorted(cols[order], np.arange(n_concepts + 1))
    v = vals[order]
    return [v[bounds[c]:bounds[c + 1]] for c in range(n_concepts)]


class SampleReducer:
    """Per-sample max, mean, last, random valid-token activation and max of rolling means, ``[N, C]`` each."""

    def __init__(self, n_samples: int, n_concepts: int, seed: int = 0, rolling_window: int = ROLLING_WINDOW):
        self.max = np.full((n_samples, n_concepts), -np.inf, dtype=np.float32)
        self.mean = np.zeros((n_samples, n_concepts), dtype=np.float32)
        self.last = np.zeros((n_samples, n_concepts), dtype=np.float32)
        self.random = np.zeros((n_samples, n_concepts), dtype=np.float32)
        self.rolling = np.zeros((n_samples, n_concepts), dtype=np.float32)
        self.rolling_window = int(rolling_window)
        # one uniform draw per sample, so the choice does not depend on shard layout
        self._u = np.random.default_rng(seed).random(n_samples)

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        sl = slice(shard.start, shard.stop)
        red = segment_scores(acts, ctx.local_starts(shard), ctx.valid(shard), self._u[sl], first_sample=shard.start)
        self.max[sl], self.mean[sl] = red["max_token"], red["mean_token"]
        self.last[sl], self.random[sl] = red["last_token"], red["random_token"]
        self.rolling[sl] = rolling_max(acts, ctx.local_starts(shard), ctx.valid(shard), self.rolling_window)

    def add_block(self, blk: Block, ctx: PassContext) -> None:
        """The same reductions on one block of whole samples, concept-major (no transposed copy)."""
        sl = blk.samples
        valid = ctx.valid(blk.shard)[blk.a:blk.b]
        red = segment_scores(blk.acts_t.T, blk.starts, valid, self._u[sl], first_sample=sl.start)
        self.max[sl], self.mean[sl] = red["max_token"], red["mean_token"]
        self.last[sl], self.random[sl] = red["last_token"], red["random_token"]
        self.rolling[sl] = rolling_max_t(blk.acts_t, blk.starts, valid, self.rolling_window)

    def scores(self) -> dict[str, np.ndarray]:
        return {"max_token": self.max, "mean_token": self.mean, "last_token": self.last,
                "random_token": self.random, ROLLING_MAX.score: self.rolling}


class InConceptCollector:
    """Activations of in-concept tokens of one split, grouped by concept (for quantiles).

    Up to ``max_values`` activations are kept (8 bytes each with their concept index) and
    quantiles are exact; past that, everything is folded into a fixed-memory
    :class:`~superactivators.evaluate.quantiles.StreamingQuantiles` histogram and ``per_concept``
    returns populations whose quantiles carry that module's proven error bound.
    """

    def __init__(self, split_mask: np.ndarray, n_concepts: int, max_values: int | None = 25_000_000):
        self.split_mask = split_mask  # [N] bool over samples
        self.n_concepts = n_concepts
        self.max_values = max_values
        self._vals: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._n = 0
        self.hist = None  # StreamingQuantiles once the population outgrew max_values

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        tok_split = self.split_mask[ctx.store.sample_of_token[shard.token_start:shard.token_stop]]
        if not tok_split.any():
            return
        rows = np.flatnonzero(tok_split)  # the split's tokens, then their in-concept entries
        gt = ctx.token_labels(shard)
        vals, cols = in_concept_values(acts, gt, rows if len(rows) < len(tok_split) else None)
        self._keep(vals, cols)

    def add_block(self, blk: Block, ctx: PassContext) -> None:
        """In-concept activations of the block's split tokens, gathered from the concept-major block.

        Row-major order within the block, blocks in order: the same values in the same order as
        :meth:`add` over the whole shard."""
        tok_split = self.split_mask[ctx.store.sample_of_token[blk.tokens]]
        if not tok_split.any():
            return
        gt = ctx.token_labels(blk.shard)[blk.a:blk.b]
        rows = None if tok_split.all() else np.flatnonzero(tok_split)
        sub = gt if rows is None else gt[rows]
        r, cols = np.divmod(np.flatnonzero(sub), sub.shape[1])
        r = r if rows is None else rows[r]
        self._keep(blk.acts_t[cols, r], cols.astype(np.int32))

    def _keep(self, vals: np.ndarray, cols: np.ndarray) -> None:
        if self.hist is not None:
            self.hist.add(vals, cols)
            return
        self._vals.append(vals)
        self._cols.append(cols)
        self._n += len(vals)
        if self.max_values is not None and self._n > self.max_values:
            self.hist = StreamingQuantiles(self.n_concepts)
            for v, c in zip(self._vals, self._cols):
                self.hist.add(v, c)
            self._vals, self._cols = [], []

    def per_concept(self) -> list:
        if self.hist is not None:
            return [self.hist.population(c) for c in range(self.n_concepts)]
        if not self._vals:
            return [np.empty(0, np.float32) for _ in range(self.n_concepts)]
        return group_by_concept(np.concatenate(self._vals), np.concatenate(self._cols), self.n_concepts)


#: the sample-label variant's share of each positive sample's tokens taken as its top tokens
SAMPLE_DELTA: float = 10.0


class TopTokenCollector:
    """Per concept, the top ``delta`` % valid token activations of each positive sample of a split.

    The population of the sample-label SuperActivator variant (``superactivator_sample``): with
    sample labels only, which tokens of a positive sample carry the concept is unknown, so the
    ``ceil(delta / 100 * n_valid)`` (at least one) highest-activating tokens of every positive
    ``cal`` sample stand in for its in-concept tokens. One sort per block covers every concept:
    uint64 keys (concept and sample, then activation descending); no per-token or per-concept
    Python.
    """

    def __init__(self, split_mask: np.ndarray, labels: np.ndarray, delta: float = SAMPLE_DELTA):
        if not 0 < delta <= 100:
            raise ValueError(f"delta must be in (0, 100], got {delta}")
        self.split_mask = split_mask
        self.labels = np.asarray(labels, dtype=bool)  # [N, C] sample labels, columns = activation columns
        self.delta = float(delta)
        self._vals: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        """A whole shard's ``[t, C]`` activations: one block of all its samples."""
        starts = ctx.local_starts(shard)
        self.add_block(Block(shard, 0, shard.n_tokens, 0, len(starts), starts, np.ascontiguousarray(acts.T)), ctx)

    def add_block(self, blk: Block, ctx: PassContext) -> None:
        sid = ctx.store.sample_of_token[blk.tokens]
        keep = self.split_mask[sid] & ctx.valid(blk.shard)[blk.a:blk.b]
        if not keep.any():
            return
        rows = np.flatnonzero(keep)
        s_loc = sid[rows] - blk.samples.start  # sample within the block, ascending with the rows
        ns = blk.i1 - blk.i0
        n_valid = np.bincount(s_loc, minlength=ns)
        k = np.maximum(1, np.ceil(self.delta / 100.0 * n_valid - 1e-9).astype(np.int64))  # per sample
        C = self.labels.shape[1]
        pos = self.labels[sid[rows]]  # [r, C]: the token's sample is positive for the concept
        step = max(1, (2**32 - 1) // ns)  # concepts per sort, so that (concept, sample) fits 32 bits
        for c0 in range(0, C, step):  # one iteration unless C * samples-per-block >= 2^32
            r, c = np.divmod(np.flatnonzero(pos[:, c0:c0 + step]), min(step, C - c0))
            if not len(r):
                continue
            a = blk.acts_t[c + c0, rows[r]]
            group = c.astype(np.uint64) * np.uint64(ns) + s_loc[r].astype(np.uint64)
            # (concept, sample) above, the activation's order-preserving bits inverted below:
            # ascending keys run concept by concept, sample by sample, activation high to low
            key = (group << np.uint64(32)) | (~float_keys(a)).astype(np.uint64)
            key.sort()
            g = (key >> np.uint64(32)).astype(np.int64)
            a_sorted = keys_to_floats(~key.astype(np.uint32))  # the low 32 bits
            first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # each group's first position
            rank = np.arange(len(g)) - np.repeat(first, np.diff(np.r_[first, len(g)]))
            sel = rank < k[g % ns]
            self._vals.append(a_sorted[sel])
            self._cols.append((g[sel] // ns + c0).astype(np.int32))

    def per_concept(self) -> list[np.ndarray]:
        """Per concept, its kept activations: sample by sample in store order, each sample's high to low."""
        if not self._vals:
            return [np.empty(0, np.float32) for _ in range(self.labels.shape[1])]
        return group_by_concept(np.concatenate(self._vals).astype(np.float32, copy=False),
                                np.concatenate(self._cols), self.labels.shape[1])


class RandomTokenDraw:
    """One more random valid token per sample, drawn independently of :class:`SampleReducer`'s.

    The seed study draws the random token anew in each pass (once for the calibration
    population, again when scoring samples; ``protocol: seed``); this is that second draw.
    """

    def __init__(self, n_samples: int, n_concepts: int, seed: int = 0):
        self.random = np.zeros((n_samples, n_concepts), dtype=np.float32)
        self._u = np.random.default_rng([seed, 1]).random(n_samples)

    def add(self, shard: Shard, acts: np.ndarray, ctx: PassContext) -> None:
        sl = slice(shard.start, shard.stop)
        valid = ctx.valid(shard)
        n_valid = np.add.reduceat(valid.astype(np.int64), ctx.local_starts(shard))
        first_rank = np.concatenate([[0], np.cumsum(n_valid)[:-1]])
        k = np.minimum((self._u[sl] * n_valid).astype(np.int64), n_valid - 1)
        self.random[sl] = acts[np.flatnonzero(valid)[first_rank + k]]

    def add_block(self, blk: Block, ctx: PassContext) -> None:
        sl = blk.samples
        valid = ctx.valid(blk.shard)[blk.a:blk.b]
        n_valid = np.add.reduceat(valid.astype(np.int64), blk.starts)
        first_rank = np.concatenate([[0], np.cumsum(n_valid)[:-1]])
        k = np.minimum((self._u[sl] * n_valid).astype(np.int64), n_valid - 1)
        self.random[sl] = blk.acts_t[:, np.flatnonzero(valid)[first_rank + k]].T


def score_store(
    store: TokenStore,
    cs: ConceptSet,
    accumulators: Sequence[Accumulator],
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> None:
    """Stream every shard of ``cs.layer`` once through the scorer and the accumulators."""
    from tqdm.auto import tqdm

    scorer = make_scorer(cs, device)
    concept_idx = np.array([store.concepts.index(n) for n in cs.names])
    ctx = PassContext(store, concept_idx)
    blockwise = [a for a in accumulators if hasattr(a, "add_block")]
    whole = [a for a in accumulators if not hasattr(a, "add_block")]
    fused = isinstance(scorer, Scorer) and scorer.device.type == "cpu"
    rows = scorer.block_rows if isinstance(scorer, Scorer) else Scorer.block_rows
    for shard in tqdm(store.shards, desc=f"score L{cs.layer} {cs.kind}", disable=not progress):
        x = store.tokens(cs.layer, shard)
        starts = ctx.local_starts(shard)
        cuts, sample_cuts = sample_blocks(starts, shard.n_tokens, rows)
        first_block = {int(a): j for j, a in enumerate(cuts[:-1])}

        def on_block(a: int, b: int, acts_t: np.ndarray, shard: Shard = shard) -> None:
            j = first_block[a]
            i0, i1 = int(sample_cuts[j]), int(sample_cuts[j + 1])
            blk = Block(shard, a, b, i0, i1, starts[i0:i1] - a, acts_t)
            for acc in blockwise:
                acc.add_block(blk, ctx)

        if fused:
            acts = scorer.score_blocks(x, cuts, on_block if blockwise else None)
        else:  # accelerator or SAE scorer: [t, C] first, then the same blocks from it
            acts = scorer(x)
            for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
                if blockwise:
                    on_block(a, b, np.ascontiguousarray(acts[a:b].T))
        for acc in whole:
            acc.add(shard, acts, ctx)


def score_globals(store: TokenStore, cs: ConceptSet) -> np.ndarray:
    """Activations ``[N, C]`` of each sample's global embedding."""
    return make_scorer(cs)(store.globals(cs.layer))


@dataclass
class ScoreSummary:
    """Everything detection needs from one scoring pass, small enough to cache.

    ``method_scores`` overrides, for one method (``max_token``, ``global@best_threshold``...),
    the score it is calibrated and evaluated on; empty for labelled concepts, it carries each
    baseline's own matched unit for unlabelled ones (:mod:`superactivators.evaluate.matching`).
    """

    names: list[str]
    sample_scores: dict[str, np.ndarray]  # method -> [N, C]
    cal_in_concept: list[np.ndarray]  # per concept, in-concept token activations on cal
    # method -> per concept cal population replacing the method's default one
    # ("superactivator_sample": top tokens of positive samples; "random_token" under protocol seed)
    populations: dict[str, list[np.ndarray]] = field(default_factory=dict)
    method_scores: dict[str, np.ndarray] = field(default_factory=dict)  # method -> [N, C]

    def save(self, path: Path) -> None:
        arrays = {f"score__{k}": v for k, v in self.sample_scores.items()}
        arrays.update({f"method__{k}": v for k, v in self.method_scores.items()})

        arrays.update(pack_populations(self.cal_in_concept))
        for m, pops in self.populations.items():
            arrays[f"pop__{m}__lengths"] = np.array([len(v) for v in pops], dtype=np.int64)
            arrays[f"pop__{m}__values"] = (np.concatenate([np.asarray(v, np.float32) for v in pops])
                                           if pops else np.empty(0, np.float32))
        arrays["names"] = np.array(self.names)
        with recording(Path(path)):
            atomic_save_npz(Path(path), **arrays)

    @classmethod
    def load(cls, path: Path) -> "ScoreSummary":
        z = load_npz(path)  # checked against its recorded checksum; damage names the file
        pops = {}
        for k in z.files:
            if k.startswith("pop__") and k.endswith("__lengths"):
                m = k[5:-9]
                bounds = np.concatenate([[0], np.cumsum(z[k])]).astype(np.int64)
                vals = z[f"pop__{m}__values"]
                pops[m] = [vals[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        return cls(
            names=[str(n) for n in z["names"]],
            sample_scores={k[7:]: z[k] for k in z.files if k.startswith("score__")},
            cal_in_concept=unpack_populations(z),
            populations=pops,
            method_scores={k[8:]: z[k] for k in z.files if k.startswith("method__")},
        )


def summarise(store: TokenStore, cs: ConceptSet, global_cs: ConceptSet | None, seed: int = 0,
              device: str | torch.device = "cpu", extra: Sequence[Accumulator] = (),
              max_cal_values: int | None = 25_000_000, sample_delta: float | None = SAMPLE_DELTA,
              independent_random: bool = False, rolling_window: int = ROLLING_WINDOW) -> ScoreSummary:
    """One pass: per-sample reductions, cal in-concept activations, and global scores.

    Past ``max_cal_values`` in-concept cal activations, their quantiles are streamed (see
    :class:`InConceptCollector`). ``sample_delta`` (percent; None: off) also collects the
    sample-label variant's population (:class:`TopTokenCollector`); ``independent_random``
    (``protocol: seed``) calibrates ``random_token`` on a second, independent draw."""
    reducer = SampleReducer(store.n_samples, len(cs.names), seed=seed, rolling_window=rolling_window)
    cal_mask = store.splits == "cal"
    cal = InConceptCollector(cal_mask, len(cs.names), max_values=max_cal_values)
    concept_idx = [store.concepts.index(n) for n in cs.names]
    top = TopTokenCollector(cal_mask, store.labels[:, concept_idx], sample_delta) if sample_delta else None
    draw = RandomTokenDraw(store.n_samples, len(cs.names), seed) if independent_random else None
    score_store(store, cs, [reducer, cal, *[a for a in (top, draw) if a is not None], *extra], device=device)
    scores = reducer.scores()
    if global_cs is not None:
        scores["global"] = score_globals(store, global_cs)
    pops: dict[str, list[np.ndarray]] = {}
    if top is not None:
        pops[SUPERACTIVATOR_SAMPLE.name] = top.per_concept()
    if draw is not None:
        pos = store.labels[:, concept_idx].astype(bool) & cal_mask[:, None]
        pops[RANDOM_TOKEN.name] = [draw.random[pos[:, c], c] for c in range(len(cs.names))]
    return ScoreSummary(list(cs.names), scores, cal.per_concept(), pops)
