"""Reading the seed's ``.pt`` lists (one entry per metadata row) without loading every mask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DatasetError


def load_row_list(path: Path, n_rows: int, source: Path, what: str) -> list[Any]:
    """A ``torch.save``-d list with one entry per metadata row, memory-mapped where possible.

    Tensors stay on disk until a row is read (``mmap=True``); a missing, unreadable or truncated
    file (another length than ``metadata.csv``) is an error naming it.
    """
    import torch

    if not path.exists():
        raise DatasetError(f"{what} file not found: {os.path.abspath(path)}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # truncated zip, pickle errors, non-tensor objects
        raise DatasetError(f"cannot read {what} file {path}: {err}") from None
    if not isinstance(obj, (list, tuple)):
        raise DatasetError(f"{path}: expected a list with one {what} per row of {source}, got {type(obj).__name__}")
    if len(obj) != n_rows:
        raise DatasetError(f"{path}: {len(obj)} entries but {source} has {n_rows} rows "
                           f"({'truncated' if len(obj) < n_rows else 'extra entries'}; entry i must be row i)")
    return list(obj)
