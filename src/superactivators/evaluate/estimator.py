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
from .calibrate import DEFAULT_GRID, TAIL_RULES, best_f1_thresholds, calibrate_tail, positive_populations
from .detect import MethodResult, results_table
from .methods import BY_NAME, DETECTION, GLOBAL, MACRO, SA, Method, split, variant
from .metrics import Confusion
from .ranking import fpr_thresholds
from .scoring import group_by_concept, in_concept_values, make_scorer, segment_scores
from .validation import (
    check_features,
    check_finite_valid,
    check_grid,
    check_sample_labels,
    check_token_labels,
    check_valid,
    dense_real,
)

#: ``SuperActivatorDetector(calibration=...)``: the grid's tail rule, or a target FPR on the negatives
CALIBRATIONS = ("tail", "fpr")
ESTIMATOR_METHODS: tuple[str, ...] = (
    *(m.name for m in DETECTION if m.in_estimator),
    *(variant(m.name) for m in DETECTION if m.in_estimator and m.free_reference),
)


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
            raise ValueError(f"sample_index: sample id {int(idx.max())} but only {n} samples"
                             + ("" if n_samples is None else " (rows of sample_labels)"))
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
    grid : percentages N of in-concept tokens kept (non-empty, finite, each in ``(0, 100]``); the
        threshold for N is the ``k``-th largest in-concept token activation of the ``n`` on
        calibration, ``k = max(1, ceil(N * n / 100))`` (exactly the top ``k`` reach it, ties
        aside; no interpolation) under ``protocol='ours'``, or their linear ``(1 - N/100)``
        quantile under ``protocol='seed'``; N picked per concept by F1.
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
    protocol : ``'ours'`` (default) or ``'seed'``: the tail threshold rule, as the run config's
        ``protocol`` sets it for the pipeline (docs/protocol.md); it is the only seed choice the
        estimator switches (embedding and separators are the caller's).
    calibration : ``'tail'`` (default: the grid rule above) or ``'fpr'``: the threshold is the
        smallest one whose false-positive rate on the calibration negatives is ``<= fpr_target``
        (:func:`~superactivators.evaluate.ranking.fpr_thresholds`: the field's rule for monitors,
        "alert at <= 1 % false alarms"); labels only, no grid, no token labels. With
        ``'superactivator'`` it is ``'max_token'`` at that threshold (the same score).
    fpr_target : the target false-positive rate of ``calibration='fpr'`` (default 0.01), in (0, 1).

    ``decision_function`` is the sample score minus the threshold, a per-concept shift of
    ``sample_scores``: ``sklearn.metrics.roc_auc_score(y[:, c], det.decision_function(...)[:, c])``
    is the ROC AUC of the method's ranking (SuperActivator's equals max-token pooling's).

    Fitted attributes: ``thresholds_ [C]``, ``n_pct_ [C]`` (chosen N; NaN for best-threshold),
    ``cal_f1_ [C]``, ``threshold_grid_ [C, G]`` and ``cal_f1_curve_ [C, G]`` (grid methods),
    ``concept_names_``, ``n_concepts_``, ``n_features_in_``. A concept that cannot be calibrated
    (no in-concept calibration token, or no positive sample) gets NaN for both ``thresholds_``
    and ``n_pct_``: it is never detected (``score >= NaN`` is False) and its
    ``decision_function`` is NaN.

    Inputs are checked first, sklearn-style (:mod:`superactivators.evaluate.validation`): dense,
    real, numeric arrays or tensors of the right rank; every shape against the others and
    against ``fit`` (concepts, ``n_features_in_``, token rows of ``valid`` / ``token_labels``,
    label rows against the samples); labels and ``valid`` 0/1; activations finite on every valid
    token (padding, ``valid`` False, may hold NaN); methods of an unfitted detector raise
    ``NotFittedError``.
    """

    def __init__(self, grid: Sequence[float] = DEFAULT_GRID, method: str = SA, concept_vectors=None,
                 scoring: str = "cosine", bias=None, center=None, scale: float = 1.0,
                 concept_names: Sequence[str] | None = None, random_state: int = 0, protocol: str = "ours",
                 calibration: str = "tail", fpr_target: float = 0.01):
        self.grid = grid
        self.method = method
        self.concept_vectors = concept_vectors
        self.scoring = scoring
        self.bias = bias
        self.center = center
        self.scale = scale
        self.concept_names = concept_names
        self.random_state = random_state
        self.protocol = protocol
        self.calibration = calibration
        self.fpr_target = fpr_target

    # --- inputs -----------------------------------------------------------------------------
    def _parts(self) -> tuple[Method, bool]:
        """The method's record, and whether its threshold is chosen freely (``@best_threshold``)."""
        if self.method not in ESTIMATOR_METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(ESTIMATOR_METHODS)}")
        if self.protocol not in TAIL_RULES:
            raise ValueError(f"protocol must be one of {list(TAIL_RULES)}, got {self.protocol!r}")
        base, free = split(self.method)
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {list(CALIBRATIONS)}, got {self.calibration!r}")
        if self.calibration == "fpr":
            a = self.fpr_target
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
                raise ValueError(f"fpr_target must be a false-positive rate in (0, 1), got {a!r}")
            if free:
                raise ValueError(f"calibration='fpr' sets the threshold itself; use method {base!r}, "
                                 f"not {self.method!r}")
        return BY_NAME[base], bool(free)

    def _concept_set(self) -> ConceptSet | None:
        cv = self.concept_vectors
        if cv is None or isinstance(cv, ConceptSet):
            return cv
        V = as_numpy(dense_real(cv, "concept_vectors"), "concept_vectors", float_out=True)
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
        X = dense_real(X, "token_activations")  # sparse, complex, non-numeric refused
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
        return check_sample_labels(y, n_concepts=n_concepts)

    def _prepare(self, X, sample_index, valid, n_samples: int | None, token_labels=None):
        """Activations, offsets, validity and token labels, in sample-grouped row order."""
        A = self._activations(X)
        if A.shape[0] == 0:
            raise ValueError("token_activations: no token rows")
        offsets, order = sample_offsets(sample_index, A.shape[0], n_samples)
        v = check_valid(valid, A.shape[0])
        gt = check_token_labels(token_labels, A.shape)
        check_finite_valid(A, None if self._parts()[0] == "global" else v)  # the NaN policy
        if order is not None:  # group each sample's tokens (a copy; sorted ids avoid it)
            A = A[order]
            v = None if v is None else v[order]
            gt = None if gt is None else gt[order]
        return A, offsets, v, gt

    def _sample_scores(self, A: np.ndarray, offsets: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        rec, _ = self._parts()
        n = len(offsets) - 1
        if rec.score == GLOBAL.score:
            if len(A) != n:
                raise ValueError(f"method 'global' takes one activation row per sample (the global token); "
                                 f"got {len(A)} rows for {n} samples")
            return A
        red = rec.score
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
        rec, free = self._parts()
        grid = check_grid(self.grid)
        cs = self._concept_set()
        self.concept_set_ = cs
        labels = self._labels(sample_labels)
        A, offsets, v, gt = self._prepare(token_activations, sample_index, valid, labels.shape[0], token_labels)
        C = A.shape[1]
        if labels.shape[1] != C:
            raise ValueError(f"sample_labels have {labels.shape[1]} concept columns but the activations {C}")
        scores = self._sample_scores(A, offsets, v)
        by_fpr = self.calibration == "fpr"
        if by_fpr:
            thr = fpr_thresholds(scores, labels.astype(bool), float(self.fpr_target))
            f1 = Confusion.from_predictions(scores >= thr[None, :], labels).f1()
            self.thresholds_, self.n_pct_, self.cal_f1_ = thr, np.full(C, np.nan), f1
            self.threshold_grid_ = self.cal_f1_curve_ = None
        elif free:
            thr, f1 = best_f1_thresholds(scores, labels)
            self.thresholds_, self.n_pct_, self.cal_f1_ = thr, np.full(C, np.nan), f1
            self.threshold_grid_ = self.cal_f1_curve_ = None
        else:
            if rec.population == "in_concept_tokens":
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
                cb = calibrate_tail(scores, pops, labels, grid, self.protocol)
            self.thresholds_, self.n_pct_, self.cal_f1_ = cb.threshold, cb.n_pct.astype(float), cb.f1
            self.threshold_grid_, self.cal_f1_curve_ = cb.thresholds, cb.f1_curve
        # uncalibratable (no population / no positive): NaN for N and tau, not grid[0] or +inf
        if by_fpr:  # no calibration negative: nothing to set a false-positive rate on
            uncal = labels.astype(bool).all(axis=0)
        else:
            uncal = np.isnan(self.threshold_grid_).all(axis=1) if not free else ~labels.any(axis=0)
        self.thresholds_ = np.where(uncal, np.nan, self.thresholds_)
        self.n_pct_ = np.where(uncal, np.nan, self.n_pct_)
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

    def _fitted_input(self, X):
        """``X`` checked (dense, real) and its width against ``n_features_in_``, on a fitted detector."""
        self._check_fitted()
        X = dense_real(X, "token_activations")
        if X.ndim == 2 and self.concept_set_ is None:  # embeddings: their width is checked where they are scored
            check_features(int(X.shape[1]), self.n_features_in_, "activation columns, one per concept")
        return X

    def _scores(self, X, sample_index, valid, n_samples: int | None = None) -> np.ndarray:
        A, offsets, v, _ = self._prepare(self._fitted_input(X), sample_index, valid, n_samples)
        if A.shape[1] != self.n_concepts_:
            raise ValueError(f"fitted on {self.n_concepts_} concepts, got activations for {A.shape[1]}")
        return self._sample_scores(A, offsets, v)

    def sample_scores(self, token_activations, sample_index=None, valid=None) -> np.ndarray:
        """The method's score per sample and concept ``[N, C]`` (SuperActivator: max token)."""
        return self._scores(token_activations, sample_index, valid)

    def decision_function(self, token_activations, sample_index=None, valid=None) -> np.ndarray:
        """Score minus threshold ``[N, C]``: ``>= 0`` where the concept is detected."""
        return self.sample_scores(token_activations, sample_index, valid) - self.thresholds_[None, :]

    def predict(self, token_activations, sample_index=None, valid=None) -> np.ndarray:
        """``[N, C]`` bool: sample contains concept (some token reaches the tail threshold)."""
        return self.sample_scores(token_activations, sample_index, valid) >= self.thresholds_[None, :]

    def predict_tokens(self, token_activations, valid=None) -> np.ndarray:
        """``[T, C]`` bool, in the input's row order: the SuperActivators, tokens whose activation
        reaches the concept's threshold (padding never)."""
        X = self._fitted_input(token_activations)
        rec, _ = self._parts()
        if not rec.token_threshold:
            raise ValueError(f"predict_tokens needs a token-level threshold; method {self.method!r} thresholds "
                             "a per-sample aggregate")
        A = self._activations(X)
        if A.shape[1] != self.n_concepts_:
            raise ValueError(f"fitted on {self.n_concepts_} concepts, got activations for {A.shape[1]}")
        v = check_valid(valid, A.shape[0])
        check_finite_valid(A, v)
        out = A >= self.thresholds_[None, :]
        if v is not None:
            out &= v[:, None]
        return out

    def confusion(self, token_activations, sample_index, sample_labels, valid=None) -> Confusion:
        """TP / FP / FN / TN per concept on these samples (one label row per sample)."""
        self._check_fitted()
        lab = self._labels(sample_labels, self.n_concepts_)
        pred = self._scores(token_activations, sample_index, valid, n_samples=lab.shape[0]) >= self.thresholds_[None, :]
        return Confusion.from_predictions(pred, lab)

    def evaluate(self, token_activations, sample_index, sample_labels, valid=None) -> pd.DataFrame:
        """Per-concept precision, recall, F1 plus macro and weighted rows (detection_metrics.csv's columns)."""
        self._check_fitted()
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

    from ..util.console import fmt_num, html_table, limited, text_table  # noqa: PLC0415

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
