"""The SuperActivator method on activations you already have, as a scikit-learn estimator.

``SuperActivatorDetector`` takes token activations ``[T, C]`` (or token embeddings ``[T, d]``
plus concept vectors), which sample each token belongs to, and sample labels ``[N, C]``;
``fit`` calibrates per concept the tail threshold ``tau_c(N)`` on the in-concept token
activations and picks N by F1 on the samples given; ``predict`` says which samples contain
each concept (some token reaches ``tau_c``), ``predict_tokens`` which tokens are
SuperActivators. The calibrated baselines of the paper are the same class with
``method='max_token' | 'mean_token' | 'last_token' | 'random_token' | 'global'`` (and
``'<baseline>@best_threshold'``, the freely chosen threshold).

There is one implementation: the reductions (:func:`~superactivators.evaluate.scoring.segment_scores`),
the in-concept populations (:func:`~superactivators.evaluate.scoring.in_concept_values`), the
thresholds (:func:`~superactivators.evaluate.calibrate.calibrate_tail`,
:func:`~superactivators.evaluate.calibrate.best_f1_thresholds`) and the concept scoring
(:class:`~superactivators.evaluate.scoring.Scorer`) are the pipeline's own, so an estimator
fitted on a run's ``cal`` activations reproduces that run's thresholds and test metrics.

Inputs may be numpy arrays or torch tensors. CPU tensors and arrays are used without a copy
(float16 / bfloat16 are widened to float32); activations on an accelerator are copied to the
host once, while embeddings on an accelerator are scored there (the ``[T, d] x [d, C]`` GEMM
runs on the device and only ``[T, C]`` comes back).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator

from ..concepts.supervised import ConceptSet
from ..store.tokens import TokenStore
from .calibrate import DEFAULT_GRID, best_f1_thresholds, calibrate_tail, positive_populations
from .detect import BASELINES, MACRO, MethodResult, results_table
from .metrics import Confusion
from .scoring import group_by_concept, in_concept_values, make_scorer, segment_scores

ESTIMATOR_METHODS: tuple[str, ...] = ("superactivator", *BASELINES, *(f"{m}@best_threshold" for m in BASELINES))
_REDUCTION = {"superactivator": "max_token", "max_token": "max_token", "mean_token": "mean_token",
              "last_token": "last_token", "random_token": "random_token"}


def as_numpy(x, name: str, float_out: bool = False) -> np.ndarray:
    """``x`` as a numpy array, sharing memory where it can (CPU tensors, arrays)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if float_out and x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if x.device.type != "cpu":
            x = x.cpu()  # the host-side reductions need it there: one copy
        x = x.numpy()
    else:
        x = np.asarray(x)
    if float_out:
        if x.dtype == np.float16 or not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
    return x


def sample_offsets(sample_index, n_tokens: int, n_samples: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Offsets ``[N + 1]`` (sample ``i`` owns rows ``offsets[i]:offsets[i+1]``) and a row order.

    ``sample_index`` is either the sample id of each token (``[T]`` integers in ``[0, N)``;
    unsorted ids are allowed and give the stable order that groups each sample's tokens), or
    already offsets (``[N + 1]``, from 0 to ``T``), or None (one token per sample).
    """
    if sample_index is None:
        if n_samples is not None and n_samples != n_tokens:
            raise ValueError(f"sample_index is None (one token per sample) but there are {n_tokens} token rows "
                             f"and {n_samples} samples")
        return np.arange(n_tokens + 1, dtype=np.int64), None
    idx = as_numpy(sample_index, "sample_index")
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"sample_index must be 1-d integers (sample id per token, or offsets), "
                         f"got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    order = None
    # offsets end at T; per-token ids cannot (an id T would leave a sample without tokens)
    if len(idx) >= 2 and idx[0] == 0 and idx[-1] == n_tokens and (n_samples is None or len(idx) == n_samples + 1):
        offsets = idx
        if np.any(np.diff(offsets) < 0):
            raise ValueError("sample_index looks like offsets [N + 1] but is not non-decreasing")
    else:
        if len(idx) != n_tokens:
            raise ValueError(f"sample_index has {len(idx)} entries: neither one per token ({n_tokens}) "
                             f"nor offsets [N + 1] running from 0 to {n_tokens}")
        if len(idx) and idx.min() < 0:
            raise ValueError(f"sample_index: negative sample id {int(idx.min())}")
        n = int(idx.max()) + 1 if n_samples is None and len(idx) else (n_samples or 0)
        if len(idx) and idx.max() >= n:
            raise ValueError(f"sample_index: sample id {int(idx.max())} but only {n} samples")
        if np.any(np.diff(idx) < 0):
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
        offsets = np.searchsorted(idx, np.arange(n + 1))
    if n_samples is not None and len(offsets) - 1 != n_samples:
        raise ValueError(f"sample_index describes {len(offsets) - 1} samples but there are {n_samples} sample labels")
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if empty.size:
        raise ValueError(f"sample {int(empty[0])} has no tokens")
    return offsets, order


def tokens_from_padded(hidden, attention_mask) -> tuple:
    """Flatten padded hidden states ``[B, P, d]`` to ``(tokens [T, d], sample_index [T])``.

    ``attention_mask [B, P]`` marks the positions to keep (drop special tokens by zeroing them
    in the mask). Works on torch tensors (on their device) and numpy arrays alike.
    """
    if isinstance(hidden, torch.Tensor):
        m = torch.as_tensor(attention_mask, device=hidden.device).bool()
        if m.shape != hidden.shape[:2]:
            raise ValueError(f"attention_mask has shape {tuple(m.shape)}, hidden states {tuple(hidden.shape)}")
        return hidden[m], torch.nonzero(m)[:, 0]
    hidden, m = np.asarray(hidden), np.asarray(attention_mask).astype(bool)
    if m.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask has shape {m.shape}, hidden states {hidden.shape}")
    return hidden[m], np.nonzero(m)[0]


def token_labels_from_spans(char_spans, sample_index, spans: Sequence[dict], concepts: Sequence[str]) -> np.ndarray:
    """In-concept tokens ``[T, C]`` from character spans: a token is in concept ``c`` when its
    character range ``char_spans[t] = (start, end)`` overlaps an annotated span of ``c`` in its
    sample (``spans[i] = {concept: [(start, end), ...]}``). Loops over annotations, not tokens."""
    cs = as_numpy(char_spans, "char_spans").reshape(-1, 2)
    offsets, order = sample_offsets(sample_index, len(cs), len(spans))
    if order is not None:
        raise ValueError("token_labels_from_spans needs each sample's tokens contiguous (sorted sample_index)")
    col = {c: j for j, c in enumerate(concepts)}
    gt = np.zeros((len(cs), len(concepts)), dtype=bool)
    for i, sp in enumerate(spans):
        a0, a1 = offsets[i], offsets[i + 1]
        ta, tb = cs[a0:a1, 0], cs[a0:a1, 1]
        for name, lst in (sp or {}).items():
            if name not in col:
                raise ValueError(f"spans of sample {i}: unknown concept {name!r}")
            for s, e in lst:
                gt[a0:a1, col[name]] |= (ta < e) & (tb > s) & (tb > ta)
    return gt


class SuperActivatorDetector(BaseEstimator):
    """SuperActivator detection (or a calibrated baseline) fitted on calibration activations.

    Parameters
    ----------
    grid : percentages N of in-concept tokens kept; the threshold for N is the ``(1 - N/100)``
        quantile (linear) of the in-concept token activations, N picked per concept by F1.
    method : ``'superactivator'`` or a baseline: ``'max_token'``, ``'mean_token'``,
        ``'last_token'``, ``'random_token'``, ``'global'`` (one activation row per sample, e.g. the
        CLS token), each calibrated on its positive samples' scores; ``'<baseline>@best_threshold'``
        takes the best-F1 threshold instead of the grid.
    concept_vectors : None (inputs are activations ``[T, C]``), a ``[C, d]`` array / tensor (inputs
        are token embeddings ``[T, d]``, scored as the pipeline scores them), or a
        :class:`~superactivators.concepts.supervised.ConceptSet` (e.g. a run's saved concepts).
    scoring : ``'cosine'`` or ``'signed_distance'`` (``(w.x + b) / ||w||``) for ``concept_vectors``.
    bias, center, scale : separator biases ``[C]``; the embeddings' centre ``[d]`` and scale
        (``(x - center) / scale`` before scoring); ignored with a ConceptSet, which carries its own.
    concept_names : names of the C concepts (default: the ConceptSet's, or ``0..C-1``).
    random_state : seed of the per-sample draw of ``'random_token'``.

    Fitted attributes: ``thresholds_ [C]``, ``n_pct_ [C]`` (chosen N; NaN for best-threshold),
    ``cal_f1_ [C]``, ``threshold_grid_ [C, G]`` and ``cal_f1_curve_ [C, G]`` (grid methods),
    ``concept_names_``, ``n_concepts_``, ``n_features_in_``.
    """

    def __init__(self, grid: Sequence[float] = DEFAULT_GRID, method: str = "superactivator", concept_vectors=None,
                 scoring: str = "cosine", bias=None, center=None, scale: float = 1.0,
                 concept_names: Sequence[str] | None = None, random_state: int = 0):
        self.grid = grid
        self.method = method
        self.concept_vectors = concept_vectors
        self.scoring = scoring
        self.bias = bias
        self.center = center
        self.scale = scale
        self.concept_names = concept_names
        self.random_state = random_state

    # --- inputs -----------------------------------------------------------------------------
    def _parts(self) -> tuple[str, bool]:
        if self.method not in ESTIMATOR_METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(ESTIMATOR_METHODS)}")
        base, _, free = self.method.partition("@")
        return base, bool(free)

    def _concept_set(self) -> ConceptSet | None:
        cv = self.concept_vectors
        if cv is None or isinstance(cv, ConceptSet):
            return cv
        V = as_numpy(cv, "concept_vectors", float_out=True)
        if V.ndim != 2:
            raise ValueError(f"concept_vectors must be [C, d], got shape {V.shape}")
        C, d = V.shape
        if self.scoring not in ("cosine", "signed_distance"):
            raise ValueError(f"scoring must be 'cosine' or 'signed_distance', got {self.scoring!r}")
        bias = np.zeros(C, np.float32) if self.bias is None else as_numpy(self.bias, "bias", float_out=True).reshape(C)
        center = np.zeros(d, np.float32) if self.center is None else as_numpy(self.center, "center", True).reshape(d)
        names = list(self.concept_names) if self.concept_names is not None else [str(c) for c in range(C)]
        return ConceptSet("user", names, V, bias, self.scoring, -1, center, float(self.scale))

    def _activations(self, X) -> np.ndarray:
        """Activations ``[T, C]``: ``X`` itself, or ``X`` scored against the concept vectors."""
        if not isinstance(X, (np.ndarray, torch.Tensor)):
            X = np.asarray(X)
        cs = self.concept_set_ if hasattr(self, "concept_set_") else self._concept_set()
        if cs is None:
            A = as_numpy(X, "token_activations", float_out=True)
            if A.ndim != 2:
                raise ValueError(f"token activations must be [T, C], got shape {A.shape}")
            return A
        d = cs.vectors.shape[1]
        if tuple(X.shape[1:]) != (d,):
            raise ValueError(f"token embeddings must be [T, {d}] for these concept vectors, got shape {tuple(X.shape)}")
        device = X.device if isinstance(X, torch.Tensor) else "cpu"
        if not isinstance(X, torch.Tensor):
            X = np.asarray(X)
        return make_scorer(cs, device)(X)

    @staticmethod
    def _labels(y, n_concepts: int | None = None) -> np.ndarray:
        lab = as_numpy(y, "sample_labels")
        lab = lab[:, None] if lab.ndim == 1 else lab
        if lab.ndim != 2:
            raise ValueError(f"sample_labels must be [N, C] (or [N] for one concept), got shape {lab.shape}")
        if lab.dtype != bool and not np.isin(lab, (0, 1)).all():
            raise ValueError("sample_labels must be 0/1 (or bool)")
        if n_concepts is not None and lab.shape[1] != n_concepts:
            raise ValueError(f"sample_labels have {lab.shape[1]} concept columns but the activations {n_concepts}")
        return lab.astype(bool, copy=False)

    def _prepare(self, X, sample_index, valid, n_samples: int | None, token_labels=None):
        """Activations, offsets, validity and token labels, in sample-grouped row order."""
        A = self._activations(X)
        offsets, order = sample_offsets(sample_index, A.shape[0], n_samples)
        v = None if valid is None else as_numpy(valid, "valid").astype(bool, copy=False).reshape(-1)
        if v is not None and len(v) != A.shape[0]:
            raise ValueError(f"valid has {len(v)} entries but there are {A.shape[0]} tokens")
        gt = None
        if token_labels is not None:
            gt = as_numpy(token_labels, "token_labels").astype(bool, copy=False)
            gt = gt[:, None] if gt.ndim == 1 else gt
            if gt.shape != A.shape:
                raise ValueError(f"token_labels have shape {gt.shape}, activations {A.shape}")
        if order is not None:  # group each sample's tokens (a copy; sorted ids avoid it)
            A = A[order]
            v = None if v is None else v[order]
            gt = None if gt is None else gt[order]
        return A, offsets, v, gt

    def _sample_scores(self, A: np.ndarray, offsets: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        base, _ = self._parts()
        n = len(offsets) - 1
        if base == "global":
            if len(A) != n:
                raise ValueError(f"method 'global' takes one activation row per sample (the global token); "
                                 f"got {len(A)} rows for {n} samples")
            return A
        red = _REDUCTION[base]
        u = np.random.default_rng(self.random_state).random(n) if red == "random_token" else None
        return segment_scores(A, offsets[:-1], valid, u, which=(red,))[red]

    # --- fit / predict ----------------------------------------------------------------------
    def fit(self, token_activations, sample_index, sample_labels, token_labels=None, valid=None):
        """Calibrate on these samples (the ``cal`` split).

        ``token_activations [T, C]`` (or embeddings ``[T, d]`` with ``concept_vectors``);
        ``sample_index``: sample id per token ``[T]`` or offsets ``[N + 1]`` (None for one row
        per sample); ``sample_labels [N, C]`` 0/1; ``token_labels [T, C]``: in-concept tokens
        (spans, masks). Without ``token_labels`` every token of a positive sample counts as
        in-concept: a weak regime for the method (most of that population is noise), warned
        about. ``valid [T]``: False for padding tokens, which never count.
        """
        base, free = self._parts()
        cs = self._concept_set()
        self.concept_set_ = cs
        labels = self._labels(sample_labels)
        A, offsets, v, gt = self._prepare(token_activations, sample_index, valid, labels.shape[0], token_labels)
        C = A.shape[1]
        if labels.shape[1] != C:
            raise ValueError(f"sample_labels have {labels.shape[1]} concept columns but the activations {C}")
        scores = self._sample_scores(A, offsets, v)
        if free:
            thr, f1 = best_f1_thresholds(scores, labels)
            self.thresholds_, self.n_pct_, self.cal_f1_ = thr, np.full(C, np.nan), f1
            self.threshold_grid_ = self.cal_f1_curve_ = None
        else:
            if base == "superactivator":
                if gt is None:
                    warnings.warn("no token_labels: every token of a positive sample counts as in-concept, a weak "
                                  "regime for SuperActivators (most of that population is noise)", stacklevel=2)
                    gt = np.repeat(labels, np.diff(offsets), axis=0)
                if v is not None:
                    gt = gt & v[:, None]
                pops = group_by_concept(*in_concept_values(A, gt), C)
            else:
                pops = positive_populations(scores, labels)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cb = calibrate_tail(scores, pops, labels, self.grid)
            self.thresholds_, self.n_pct_, self.cal_f1_ = cb.threshold, cb.n_pct, cb.f1
            self.threshold_grid_, self.cal_f1_curve_ = cb.thresholds, cb.f1_curve
        if self.concept_names is not None:
            names = list(self.concept_names)
        elif cs is not None:
            names = list(cs.names)
        else:
            names = [str(c) for c in range(C)]
        if len(names) != C:
            raise ValueError(f"{len(names)} concept_names for {C} concepts")
        self.concept_names_ = names
        self.n_concepts_ = C
        self.n_features_in_ = int(np.shape(token_activations)[1]) if not isinstance(token_activations, torch.Tensor) \
            else int(token_activations.shape[1])
        return self

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        """scikit-learn's parameter line, then (fitted) the short table of concepts, N and τ."""
        head = super().__repr__(N_CHAR_MAX)
        return head if not hasattr(self, "thresholds_") else head + "\n" + fitted_table(self, "text")

    def _repr_html_(self) -> str:
        return super()._repr_html_() if not hasattr(self, "thresholds_") else fitted_table(self, "html")

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this SuperActivatorDetector is not fitted yet; call fit first")

    def sample_scores(self, token_activations, sample_index=None, valid=None) -> np.ndarray:
        """The method's score per sample and concept ``[N, C]`` (SuperActivator: max token)."""
        self._check_fitted()
        A, offsets, v, _ = self._prepare(token_activations, sample_index, valid, None)
        if A.shape[1] != self.n_concepts_:
            raise ValueError(f"fitted on {self.n_concepts_} concepts, got activations for {A.shape[1]}")
        return self._sample_scores(A, offsets, v)

    def decision_function(self, token_activations, sample_index=None, valid=None) -> np.ndarray:
        """Score minus threshold ``[N, C]``: ``>= 0`` where the concept is detected."""
        return self.sample_scores(token_activations, sample_index, valid) - self.thresholds_[None, :]

    def predict(self, token_activations, sample_index=None, valid=None) -> np.ndarray:
        """``[N, C]`` bool: sample contains concept (some token reaches the tail threshold)."""
        return self.sample_scores(token_activations, sample_index, valid) >= self.thresholds_[None, :]

    def predict_tokens(self, token_activations, valid=None) -> np.ndarray:
        """``[T, C]`` bool, in the input's row order: the SuperActivators, tokens whose activation
        reaches the concept's threshold (padding never)."""
        self._check_fitted()
        base, _ = self._parts()
        if base not in ("superactivator", "max_token"):
            raise ValueError(f"predict_tokens needs a token-level threshold; method {self.method!r} thresholds "
                             "a per-sample aggregate")
        A = self._activations(token_activations)
        out = A >= self.thresholds_[None, :]
        if valid is not None:
            out &= as_numpy(valid, "valid").astype(bool).reshape(-1, 1)
        return out

    def confusion(self, token_activations, sample_index, sample_labels, valid=None) -> Confusion:
        """TP / FP / FN / TN per concept on these samples."""
        pred = self.predict(token_activations, sample_index, valid)
        return Confusion.from_predictions(pred, self._labels(sample_labels, self.n_concepts_))

    def evaluate(self, token_activations, sample_index, sample_labels, valid=None) -> pd.DataFrame:
        """Per-concept precision, recall, F1 plus macro and weighted rows (detection_metrics.csv's columns)."""
        res = MethodResult(self.method, self.concept_names_, self.thresholds_, self.n_pct_, self.cal_f1_,
                           self.confusion(token_activations, sample_index, sample_labels, valid))
        return results_table([res])

    def score(self, token_activations, sample_index, sample_labels, valid=None) -> float:
        """Macro F1 over the concepts with at least one positive sample (the ``__macro__`` row)."""
        t = self.evaluate(token_activations, sample_index, sample_labels, valid)
        return float(t.loc[t.concept == MACRO, "f1"].iloc[0])


def fitted_table(est: SuperActivatorDetector, kind: str = "text") -> str:
    """A fitted estimator's concepts with their chosen N and threshold τ (text or HTML)."""
    import html  # noqa: PLC0415

    from ..util.tables import fmt_num, html_table, limited, text_table  # noqa: PLC0415

    layer = getattr(est.concept_set_, "layer", -1) if est.concept_set_ is not None else -1
    rows = [[n, "–" if layer < 0 else str(layer), fmt_num(p), fmt_num(t)]
            for n, p, t in zip(est.concept_names_, est.n_pct_, est.thresholds_)]
    heads = ["concept", "layer", "N %", "τ"]
    if kind == "html":
        return f"<b>SuperActivatorDetector</b> ({html.escape(est.method)}), {len(rows)} concepts" + html_table(heads, rows)
    rows, more = limited(rows)
    return "\n".join([text_table(heads, rows, numeric=[False, True, True, True])] + ([more] if more else []))


@dataclass
class SplitActivations:
    """One split's token activations from a token store, ready for the estimator."""

    activations: np.ndarray  # [T, C] float32
    sample_index: np.ndarray  # [T] sample of each token, 0..n-1 within the split
    labels: np.ndarray  # [n, C] sample labels
    token_labels: np.ndarray  # [T, C] in-concept tokens (padding False)
    valid: np.ndarray  # [T] False for padding
    samples: np.ndarray  # [n] the samples' indices in the store
    names: list[str]


def store_activations(store: TokenStore, cs: ConceptSet, split: str | None = None,
                      device: str | torch.device = "cpu") -> SplitActivations:
    """Token activations of ``cs`` over the store's ``cs.layer``, shard by shard exactly as the
    pipeline's scoring pass computes them, for one split (or all samples)."""
    scorer = make_scorer(cs, device)
    cols = np.array([store.concepts.index(n) for n in cs.names])
    keep_sample = np.ones(store.n_samples, bool) if split is None else store.splits == split
    acts, gts, sids, valid = [], [], [], []
    for shard in store.shards:
        sl = slice(shard.token_start, shard.token_stop)
        rows = np.flatnonzero(keep_sample[store.sample_of_token[sl]])
        if not len(rows):
            continue
        a = scorer(store.tokens(cs.layer, shard))
        acts.append(a[rows])
        gts.append(store.token_labels(shard, cols)[rows])
        sids.append(store.sample_of_token[sl][rows])
        valid.append(store.valid[sl][rows])
    samples = np.flatnonzero(keep_sample)
    sid = np.concatenate(sids) if sids else np.empty(0, np.int64)
    C = len(cs.names)
    return SplitActivations(
        activations=np.concatenate(acts) if acts else np.empty((0, C), np.float32),
        sample_index=np.searchsorted(samples, sid), labels=store.labels[samples][:, cols],
        token_labels=np.concatenate(gts) if gts else np.empty((0, C), bool),
        valid=np.concatenate(valid) if valid else np.empty(0, bool), samples=samples, names=list(cs.names))
