"""The one error type of the data layer (imported by the loader and by every ground-truth reader)."""

from __future__ import annotations

from ..util.errors import ValidationError


class DatasetError(ValidationError):
    """A dataset file is malformed; each line of the message names the file, row and column."""
