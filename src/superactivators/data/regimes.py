"""Data regimes for the benchmarks (issue 22, item 7): few positives, or noisy labels.

A regime *point* (:class:`RegimePoint`) is one setting of the regime's knob and one repeat. It
changes only the ``train`` and ``cal`` labels of a dataset's concepts; ``test`` is never touched,
so every point is judged on the same test labels, and the texts (hence the hidden states) are
the same for every point.

- ``scarcity`` (knob ``k``): per concept, ``k`` of its train+cal positives are kept, drawn at
  random; the other positives become *unknown* for that concept (the per-concept label mask of
  ``data.missing_labels: allow``: left out of its calibration and concept fitting, never turned
  into negatives). Negatives stay. Of the ``k``, ``max(1, round(0.3 k))`` come from ``cal`` and
  the rest from ``train`` (the benchmarks' own 70 / 30 split, at least one in each, since
  calibration needs a ``cal`` positive and fitting a ``train`` one); when a split has fewer
  positives than its share, the other split makes up the difference. ``k`` runs over 2, 4, 8, ...
  below the fewest positives any concept has, plus one point with every positive (the full data).
- ``noise`` (knob ``p``): per concept, ``round(p n)`` of its ``n`` known train+cal labels, drawn
  at random, are flipped (0 <-> 1; symmetric noise, so at a low positive rate most flips make
  false positives). ``p`` = 0, 0.1, 0.2; 0 is the unchanged data.

Each repeat draws with its own generator, seeded from the base seed, the regime, the knob and the
repeat (:meth:`RegimePoint.rng`): repeats differ, and a point is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DatasetError

SCARCITY, NOISE = "scarcity", "noise"
REGIMES = (SCARCITY, NOISE)
REPEATS = 5
NOISE_RATES = (0.0, 0.1, 0.2)
SCARCITY_CAL_SHARE = 0.3  # of the k kept positives, this share (at least 1) comes from cal
FIT_SPLITS = ("train", "cal")  # the splits a regime changes; test never


@dataclass(frozen=True)
class RegimePoint:
    """One knob value and repeat of a regime."""

    regime: str
    knob: float  # k (scarcity: positives kept per concept) or p (noise: share of labels flipped)
    repeat: int = 0
    full: bool = False  # scarcity: every positive kept (the unchanged data)

    @property
    def name(self) -> str:
        """A folder-safe name: ``scarcity-k0004-r2``, ``scarcity-all``, ``noise-p10-r0``."""
        if self.regime == SCARCITY:
            return f"{SCARCITY}-all" if self.full else f"{SCARCITY}-k{int(self.knob):04d}-r{self.repeat}"
        return f"{NOISE}-p{int(round(self.knob * 100)):02d}-r{self.repeat}"

    def rng(self, seed: int) -> np.random.Generator:
        """This point's generator: from the base seed, the regime, the knob and the repeat."""
        knob = int(self.knob) if self.regime == SCARCITY else int(round(self.knob * 1000))
        return np.random.default_rng(np.random.SeedSequence([int(seed), REGIMES.index(self.regime), knob,
                                                             int(self.repeat)]))


def _fit_rows(splits: np.ndarray) -> np.ndarray:
    return np.isin(np.asarray(splits, dtype=str), FIT_SPLITS)


def positives_to_spare(labels: np.ndarray, known: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """``[C]``: each concept's known train+cal positives."""
    fit = _fit_rows(splits)
    return ((labels.astype(bool) & known) & fit[:, None]).sum(axis=0)


def scarcity_knobs(n_positives: np.ndarray) -> list[int]:
    """2, 4, 8, ... below the fewest train+cal positives of any concept."""
    lo = int(np.min(n_positives)) if len(n_positives) else 0
    out, k = [], 2
    while k < lo:
        out.append(k)
        k *= 2
    return out


def regime_points(regime: str, n_positives: np.ndarray, repeats: int = REPEATS) -> list[RegimePoint]:
    """Every point of ``regime`` for concepts with ``n_positives`` train+cal positives each.

    The unchanged data is one point (scarcity ``full``, noise ``p = 0``): it has no randomness."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {list(REGIMES)}, got {regime!r}")
    if repeats < 1:
        raise ValueError(f"regime repeats must be at least 1, got {repeats}")
    if regime == SCARCITY:
        knobs = scarcity_knobs(n_positives)
        if not knobs:
            raise DatasetError(f"scarcity: a concept has only {int(np.min(n_positives))} train+cal positives; "
                               "the smallest point keeps 2 (one in train, one in cal) and needs more than that")
        pts = [RegimePoint(SCARCITY, k, r) for k in knobs for r in range(repeats)]
        return pts + [RegimePoint(SCARCITY, int(np.max(n_positives)), 0, full=True)]
    return [RegimePoint(NOISE, p, r) for p in NOISE_RATES for r in (range(repeats) if p > 0 else [0])]


def _split_k(k: int, n_train: int, n_cal: int) -> tuple[int, int]:
    """``(from train, from cal)`` for ``k`` kept positives (module docstring)."""
    if k < 2:
        raise ValueError(f"scarcity keeps at least 2 positives (one in train, one in cal), got k={k}")
    if n_train < 1 or n_cal < 1 or n_train + n_cal < k:
        raise DatasetError(f"scarcity k={k}: a concept has {n_train} train and {n_cal} cal positives; "
                           "it needs at least one in each and k in all")
    k_cal = min(n_cal, max(1, int(np.floor(SCARCITY_CAL_SHARE * k + 0.5))))
    k_train = k - k_cal
    if k_train > n_train:
        k_train, k_cal = n_train, k - n_train
    return k_train, k_cal


def apply_scarcity(labels: np.ndarray, known: np.ndarray, splits: np.ndarray, k: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The ``known [N, C]`` mask with all but ``k`` train+cal positives per concept unknown.

    ``labels`` are unchanged (an unknown label's value is never read); concepts are drawn in
    column order from ``rng``."""
    labels = np.asarray(labels).astype(bool)
    known = np.asarray(known, dtype=bool).copy()
    splits = np.asarray(splits, dtype=str)
    for c in range(labels.shape[1]):  # one draw per concept (a few), not a loop per sample
        pos = labels[:, c] & known[:, c]
        tr, ca = np.flatnonzero(pos & (splits == "train")), np.flatnonzero(pos & (splits == "cal"))
        k_train, k_cal = _split_k(int(k), len(tr), len(ca))
        drop = np.r_[rng.permutation(tr)[k_train:], rng.permutation(ca)[k_cal:]].astype(np.int64)
        known[drop, c] = False
    return known


def flip_count(p: float, n: int) -> int:
    """``round(p n)``, halves rounded up: how many of ``n`` labels noise ``p`` flips."""
    return int(np.floor(p * n + 0.5))


def apply_noise(labels: np.ndarray, known: np.ndarray, splits: np.ndarray, p: float,
                rng: np.random.Generator) -> np.ndarray:
    """``labels [N, C]`` (uint8) with ``round(p n)`` of each concept's ``n`` known train+cal labels flipped."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {p}")
    out = np.asarray(labels).astype(np.uint8).copy()
    fit = _fit_rows(splits)
    known = np.asarray(known, dtype=bool)
    for c in range(out.shape[1]):
        rows = np.flatnonzero(fit & known[:, c])
        flip = rng.choice(rows, size=flip_count(p, len(rows)), replace=False)
        out[flip, c] = 1 - out[flip, c]
    return out


def apply_point(point: RegimePoint, labels: np.ndarray, known: np.ndarray, splits: np.ndarray,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, known)`` of the dataset at ``point`` (the unchanged data for the full / p = 0 point)."""
    labels = np.asarray(labels).astype(np.uint8)
    known = np.asarray(known, dtype=bool)
    if point.full or (point.regime == NOISE and point.knob == 0):
        return labels.copy(), known.copy()
    rng = point.rng(seed)
    if point.regime == SCARCITY:
        return labels.copy(), apply_scarcity(labels, known, splits, int(point.knob), rng)
    return apply_noise(labels, known, splits, float(point.knob), rng), known.copy()
