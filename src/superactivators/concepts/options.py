"""The ``concepts`` section of a run config: which concept types, and their knobs (no torch).

The defaults here are the only ones: :func:`superactivators.concepts.types.concept_type` builds
each type from this dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONCEPT_TYPES = ("mean", "diffmean", "linsep", "kmeans", "kmeans-linsep", "sae")
LINSEP_SOLVERS = ("logreg", "seed")  # logistic regression with bias (ours) | the seed's bias-free Adam


@dataclass
class ConceptConfig:
    """Which concept types to learn, and their knobs."""

    types: list[str] = field(default_factory=lambda: ["mean", "linsep"])
    linsep_max_tokens_per_class: int = 4000
    linsep_c: float = 1.0
    kmeans_k_tokens: int = 1000
    kmeans_k_global: int = 50
    sae_path: str | None = None  # SAELens folder or HF repo id (type 'sae')

    def problems(self) -> list[str]:
        out: list[str] = []
        for key, lo in (("kmeans_k_tokens", 2), ("kmeans_k_global", 2), ("linsep_max_tokens_per_class", 1)):
            if getattr(self, key) < lo:
                out.append(f"concepts.{key}: must be >= {lo}, got {getattr(self, key)}")
        if self.linsep_c <= 0:
            out.append(f"concepts.linsep_c: must be > 0, got {self.linsep_c}")
        if not self.types:
            out.append("concepts.types: empty; choose from " + str(list(CONCEPT_TYPES)))
        bad = [x for x in self.types if x not in CONCEPT_TYPES]
        if bad:
            out.append(f"concepts.types: unknown concept type(s) {bad}; choose from {list(CONCEPT_TYPES)}")
        if "sae" in self.types and not self.sae_path:
            out.append("concepts.types: 'sae' needs concepts.sae_path")
        return out
