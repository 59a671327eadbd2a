"""The one error type of the data layer (imported by the loader and by every ground-truth reader)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file, row and column."""
