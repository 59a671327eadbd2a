"""Built-in datasets shipped as package data (no download needed).

Each built-in dataset lives in ``data/<name>/metadata.csv`` next to this file.
To add one, put its files under ``data/<name>/`` and append ``name`` to
:data:`BUILTIN_DATASETS`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUILTIN_DATASETS", "builtin_dataset_dir", "builtin_dataset_path"]

#: Names of the datasets shipped with the package.
BUILTIN_DATASETS: tuple[str, ...] = ("emotions",)

#: Synthetic datasets generated deterministically on first use into the cache folder
#: (``$SUPERACTIVATORS_CACHE`` or ``~/.cache/superactivators``): name -> (n, seed).
GENERATED_DATASETS: dict[str, tuple[int, int]] = {"shapes": (600, 0)}


def cache_root() -> Path:
    """The package's cache folder (generated datasets, converted weights)."""
    return Path(os.environ.get("SUPERACTIVATORS_CACHE") or Path.home() / ".cache" / "superactivators")


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
    """Path of the ``metadata.csv`` of built-in dataset ``name`` (e.g. ``"emotions"``).

    ``"shapes"`` (600 synthetic scenes, seed 0) is generated into the cache on first use.
    """
    if name in GENERATED_DATASETS:
        from ..shapes import generate_shapes

        n, seed = GENERATED_DATASETS[name]
        folder = cache_root() / "datasets" / f"{name}-n{n}-seed{seed}"
        if not (folder / "metadata.csv").exists():
            generate_shapes(folder, n=n, seed=seed)
        return folder / "metadata.csv"
    return builtin_dataset_dir(name) / "metadata.csv"
