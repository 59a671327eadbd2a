"""The estimator's input checks, sklearn-style, in one place (:class:`~superactivators.evaluate.estimator.SuperActivatorDetector`).

Every argument is checked at the edge, before any computation, and refused with one line naming
it: sparse matrices and tensors, complex and non-numeric dtypes, wrong ranks, shapes that do not
agree with each other (token rows, samples, concepts, features seen in ``fit``), labels that are
not 0/1, and grids that are empty, non-finite or outside ``(0, 100]``.

NaN policy: every activation of a *valid* token (``valid`` True, or no ``valid`` given) must be
finite. A NaN would make its sample's max NaN, and ``NaN >= tau`` is False: the sample would
never be detected, silently. Padding tokens (``valid`` False) may hold anything (NaN, -inf):
they never count.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import numpy as np
import torch


def _is_sparse(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.layout != torch.strided
    try:
        import scipy.sparse as sp  # noqa: PLC0415 - sklearn's dependency
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(x)


def dense_real(x: Any, name: str) -> np.ndarray | torch.Tensor:
    """``x`` as a dense real array (a torch tensor stays a tensor, on its device).

    Refused: sparse input, complex dtypes (the imaginary part would be dropped), non-numeric
    dtypes (strings, objects) and ragged nested lists.
    """
    if _is_sparse(x):
        raise TypeError(f"{name}: sparse input ({type(x).__name__}) is not supported; pass a dense array "
                        "(e.g. .toarray() / .to_dense())")
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name}: complex dtype {x.dtype} is not supported (activations are real)")
        return x
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name}: not an array ({err})") from None
    if a.dtype.kind == "c":
        raise TypeError(f"{name}: complex dtype {a.dtype} is not supported (activations are real)")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: dtype {a.dtype} is not numeric")
    return a


def check_finite_valid(A: np.ndarray, valid: np.ndarray | None, name: str = "token_activations") -> None:
    """Every value of a valid row of ``A [T, C]`` is finite (see the module's NaN policy)."""
    rows = A if valid is None else A[valid]
    bad = ~np.isfinite(rows)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        r = int(r) if valid is None else int(np.flatnonzero(valid)[r])
        raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) on valid tokens (first at row {r}, "
                         f"column {int(c)}); a NaN would hide its sample from detection. Mark such tokens "
                         "invalid with valid=... (they then never count), or fix the activations")


def check_zero_one(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` (bool or numbers) as bool, refusing any value other than 0 / 1 (NaN included)."""
    if x.dtype == bool:
        return x
    ok = (x == 0) | (x == 1)
    if not ok.all():
        bad = np.asarray(x)[~ok].ravel()[:3]
        raise ValueError(f"{name} must be 0/1 (or bool); found {', '.join(repr(v.item()) for v in bad)}")
    return x.astype(bool)


def check_valid(valid: Any, n_tokens: int) -> np.ndarray | None:
    """``valid`` as ``[T]`` bool: one 0/1 (or bool) entry per token row."""
    if valid is None:
        return None
    v = dense_real(valid, "valid")
    v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"valid must be [T] (one entry per token row), got shape {v.shape}")
    if len(v) != n_tokens:
        raise ValueError(f"valid has {len(v)} entries but there are {n_tokens} token rows")
    return check_zero_one(v, "valid")


def check_token_labels(token_labels: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """``token_labels`` as ``[T, C]`` bool, matching the activations' shape, 0/1 only."""
    if token_labels is None:
        return None
    t = dense_real(token_labels, "token_labels")
    t = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    t = t[:, None] if t.ndim == 1 else t
    if t.shape != tuple(shape):
        raise ValueError(f"token_labels have shape {t.shape}, activations {tuple(shape)}")
    return check_zero_one(t, "token_labels")


def check_sample_labels(y: Any, n_samples: int | None = None, n_concepts: int | None = None) -> np.ndarray:
    """``sample_labels`` as ``[N, C]`` bool (``[N]`` for one concept), 0/1 only, rows and columns checked."""
    lab = dense_real(y, "sample_labels")
    lab = lab.detach().cpu().numpy() if isinstance(lab, torch.Tensor) else lab
    lab = lab[:, None] if lab.ndim == 1 else lab
    if lab.ndim != 2:
        raise ValueError(f"sample_labels must be [N, C] (or [N] for one concept), got shape {lab.shape}")
    lab = check_zero_one(lab, "sample_labels")
    if n_concepts is not None and lab.shape[1] != n_concepts:
        raise ValueError(f"sample_labels have {lab.shape[1]} concept columns but the activations {n_concepts}")
    if n_samples is not None and lab.shape[0] != n_samples:
        raise ValueError(f"sample_labels have {lab.shape[0]} rows but the activations describe {n_samples} samples")
    return lab


def check_grid(grid: Any) -> tuple[float, ...]:
    """A non-empty sequence of finite percentages N, each in ``(0, 100]``."""
    if isinstance(grid, (str, bytes)) or not isinstance(grid, (Sequence, np.ndarray, torch.Tensor)):
        raise ValueError(f"grid must be a sequence of percentages in (0, 100], got {grid!r}")
    vals = list(np.asarray(grid, dtype=object).ravel())
    if not vals:
        raise ValueError("grid is empty; give at least one percentage N in (0, 100]")
    out = []
    for g in vals:
        if isinstance(g, (bool, np.bool_)) or not isinstance(g, (Real, np.number)) or isinstance(g, complex):
            raise ValueError(f"grid values must be numbers in (0, 100], got {g!r}")
        g = float(g)
        if not math.isfinite(g) or not 0 < g <= 100:
            raise ValueError(f"grid values must be finite and in (0, 100], got {g!r}")
        out.append(g)
    return tuple(out)


def check_features(n: int, n_features_in: int, what: str) -> None:
    """The second dimension of a predict-time input against the one seen in ``fit`` (sklearn's rule)."""
    if n != n_features_in:
        raise ValueError(f"X has {n} features ({what}), but SuperActivatorDetector was fitted with "
                         f"{n_features_in} features")
