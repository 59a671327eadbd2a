"""Concept columns -> the label matrix, shared by the metadata.csv and the Arrow / Parquet readers."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import DatasetError


def select_labels(label_cols: dict[str, np.ndarray], concepts: Sequence[str] | None, where: str,
                  hint: str = "") -> tuple[list[str], np.ndarray]:
    """The chosen concepts (all 0/1 columns when ``concepts`` is None) and their ``[N, C]`` labels."""
    if concepts is not None:
        missing = [c for c in concepts if c not in label_cols]
        if missing:
            raise DatasetError(f"{where}: missing concept column(s) {missing}")
        names = list(concepts)
    else:
        names = list(label_cols)
    if not names:
        raise DatasetError(f"{where}: no 0/1 concept columns found{hint}")
    return names, np.stack([label_cols[c] for c in names], axis=1)
