"""superactivators: concept detection from the tail of token activations.

The public API, imported lazily (``import superactivators`` loads no model library)::

    from superactivators import load_config, run_pipeline, ConceptDetector
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "RunConfig": "config", "load_config": "config", "config_from_dict": "config",
    "run_pipeline": "pipeline", "RunResult": "pipeline",
    "ConceptDetector": "detector", "Detection": "detector",
    "load_dataset": "data.datasets", "Dataset": "data.datasets", "DatasetError": "data.datasets",
    "TokenStore": "store.tokens", "ConceptSet": "concepts.supervised", "EmbedConfig": "encoders.base",
    "build_report": "report.html",
    "SuperActivatorDetector": "evaluate.estimator", "tokens_from_padded": "evaluate.estimator",
    "token_labels_from_spans": "evaluate.estimator", "store_activations": "evaluate.estimator",
    "ConceptType": "concepts.types", "load_concepts": "concepts.types",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
