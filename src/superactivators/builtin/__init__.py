"""Built-in datasets shipped as package data (no download needed).

Each built-in dataset lives in ``data/<name>/metadata.csv`` next to this file.
To add one, put its files under ``data/<name>/`` and append ``name`` to
:data:`BUILTIN_DATASETS`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_DATASETS", "builtin_dataset_dir", "builtin_dataset_path"]

#: Names of the datasets shipped with the package.
BUILTIN_DATASETS: tuple[str, ...] = ("emotions",)

_DATA_ROOT = Path(__file__).resolve().parent / "data"


def _check_name(name: str) -> str:
    """Return ``name`` if it is a known built-in dataset, else raise ValueError."""
    if name not in BUILTIN_DATASETS:
        known = ", ".join(repr(n) for n in BUILTIN_DATASETS)
        raise ValueError(f"unknown built-in dataset {name!r}; known datasets: {known}")
    return name


def builtin_dataset_dir(name: str) -> Path:
    """Directory holding the files of built-in dataset ``name``."""
    return _DATA_ROOT / _check_name(name)


def builtin_dataset_path(name: str) -> Path:
    """Path of the ``metadata.csv`` of built-in dataset ``name`` (e.g. ``"emotions"``)."""
    return builtin_dataset_dir(name) / "metadata.csv"
