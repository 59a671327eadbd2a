"""Every concept type behind one interface, so the pipeline has one stage path for all of them.

A :class:`ConceptType` says whether its concepts carry labels (``mean``, ``diffmean``, ``linsep``) or are
unlabelled units (``kmeans``, ``kmeans-linsep``, ``sae``) that the pipeline matches to the
labelled concepts on ``cal``; checks what it needs of the model *before* anything is embedded
(:meth:`ConceptType.check`, from the layers the run will store and the model's hidden size);
fits token-level and global-embedding concept sets; and gives a cache key holding only the
options that change its fit (so ``mean`` stages are shared by runs that differ only in k-means
options). :func:`concept_type` builds one from the run's concept options.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol

from ..encoders.base import ModelShape
from ..store.tokens import TokenStore
from ..util.io import stable_hash
from .options import CONCEPT_TYPES, ConceptConfig
from .diffmean import learn_diffmean_concepts, learn_global_diffmean
from .kmeans import KMeansFit, fit_global_kmeans, fit_token_kmeans, kmeans_concepts, kmeans_linsep_concepts
from .sae import GEMMA_SCOPE_FILE, SAE_CFG, SAEConceptSet, hook_name_of, load_sae, resolve_sae_path, sae_concept_set, sae_store_layer
from .supervised import ConceptSet, learn_global_concepts, learn_linsep_concepts, learn_mean_concepts



class ConceptType(Protocol):
    """What the pipeline needs of a concept type (see the module doc)."""

    name: str
    labelled: ClassVar[bool]

    def check(self, shape: ModelShape | None) -> None:
        """Raise a clear error before embedding when the model or its layers cannot serve."""

    def runs_at(self, layer: int) -> bool:
        """Whether this type has concepts at store ``layer``."""

    def fit(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        """Token-level concepts (labelled) or units (unlabelled); ``cache`` may hold shared fits."""

    def fit_global(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        """The global-embedding twin (CLS / pooled baseline)."""

    def cache_key(self) -> dict:
        """The options that change :meth:`fit` / :meth:`fit_global`, nothing else."""


def _all(store: TokenStore) -> list[int]:
    return list(range(len(store.concepts)))


@dataclass
class MeanType:
    """Average in-concept train token (cosine)."""

    name: str = "mean"
    labelled: ClassVar[bool] = True

    def check(self, shape: ModelShape | None) -> None:
        pass

    def runs_at(self, layer: int) -> bool:
        return True

    def fit(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        return learn_mean_concepts(store, layer, _all(store))

    def fit_global(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        return learn_global_concepts(store, layer, _all(store), "mean")

    def cache_key(self) -> dict:
        return {}


@dataclass
class DiffMeanType(MeanType):
    """Mean of positive minus mean of negative train tokens (AxBench's DiffMean; dot product)."""

    name: str = "diffmean"

    def fit(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        return learn_diffmean_concepts(store, layer, _all(store))

    def fit_global(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        return learn_global_diffmean(store, layer, _all(store))


@dataclass
class LinsepType(MeanType):
    """Balanced logistic-regression separator per concept (signed distance)."""

    name: str = "linsep"
    max_per_class: int = ConceptConfig.linsep_max_tokens_per_class
    c_reg: float = ConceptConfig.linsep_c
    seed: int = 0
    solver: str = "logreg"  # "logreg" (ours) | "seed" (the seed study's bias-free Adam)

    def fit(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        return learn_linsep_concepts(store, layer, _all(store), self.max_per_class, self.c_reg, self.seed,
                                     solver=self.solver)

    def fit_global(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        return learn_global_concepts(store, layer, _all(store), "linsep", self.c_reg, self.seed, solver=self.solver)

    def cache_key(self) -> dict:
        return {"max_per_class": self.max_per_class, "c": self.c_reg, "solver": self.solver}


@dataclass
class KMeansType(MeanType):
    """k-means clusters of train tokens (and of global embeddings): centroids, or one separator per cluster.

    ``kmeans`` and ``kmeans-linsep`` share one clustering per (store, layer, k, seed), cached
    under ``cache`` as ``L{layer}_kmeansfit_{key}/{tokens,globals}.npz``.
    """

    name: str = "kmeans"
    labelled: ClassVar[bool] = False
    k_tokens: int = ConceptConfig.kmeans_k_tokens
    k_global: int = ConceptConfig.kmeans_k_global
    separator: bool = False  # kmeans-linsep
    max_per_class: int = ConceptConfig.linsep_max_tokens_per_class
    c_reg: float = ConceptConfig.linsep_c
    seed: int = 0

    def _fit(self, store: TokenStore, layer: int, cache: Path, which: str, fn) -> KMeansFit:
        key = stable_hash([store.path.name, self.k_tokens, self.k_global, self.seed])
        path = Path(cache) / f"L{layer:02d}_kmeansfit_{key}" / f"{which}.npz"
        if path.exists():
            return KMeansFit.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fit = fn()
        fit.save(path)
        return fit

    def fit(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        fit = self._fit(store, layer, cache, "tokens", lambda: fit_token_kmeans(store, layer, self.k_tokens, self.seed))
        if not self.separator:
            return kmeans_concepts(fit, layer)
        return kmeans_linsep_concepts(store, layer, fit, 2 * self.max_per_class, self.c_reg, self.seed)

    def fit_global(self, store: TokenStore, layer: int, cache: Path) -> ConceptSet:
        fit = self._fit(store, layer, cache, "globals", lambda: fit_global_kmeans(store, layer, self.k_global, self.seed))
        if not self.separator:
            return kmeans_concepts(fit, layer)
        return kmeans_linsep_concepts(store, layer, fit, c_reg=self.c_reg, seed=self.seed)

    def cache_key(self) -> dict:
        key = {"k_tokens": self.k_tokens, "k_global": self.k_global}
        if self.separator:
            key.update(max_per_class=self.max_per_class, c=self.c_reg)
        return key


@dataclass
class SAEType(MeanType):
    """Units of a pretrained SAELens sparse autoencoder, at the store layer its hook reads."""

    name: str = "sae"
    labelled: ClassVar[bool] = False
    path: str = ""

    def _cfg(self) -> dict:
        folder = resolve_sae_path(self.path)
        if (folder / SAE_CFG).is_file():
            return json.loads((folder / SAE_CFG).read_text())
        sae = load_sae(folder)  # Gemma Scope params.npz or a patchsae checkpoint: no cfg.json
        return {"hook_name": sae.hook_name, "d_in": sae.d_in}

    def layer(self) -> int:
        """Store layer of the SAE's hook (reads its config only)."""
        return sae_store_layer(hook_name_of(self._cfg()))

    def check(self, shape: ModelShape | None) -> None:
        if not self.path:
            raise ValueError("concept type 'sae' needs concepts.sae_path")
        folder = resolve_sae_path(self.path)
        if not ((folder / SAE_CFG).exists() or (folder / GEMMA_SCOPE_FILE).exists()
                or (folder.is_file() and folder.suffix in (".pt", ".npz"))):
            raise FileNotFoundError(f"{self.path}: missing {SAE_CFG} (not a SAELens SAE folder, a Gemma Scope "
                                    f"{GEMMA_SCOPE_FILE} or a patchsae .pt checkpoint)")
        if shape is None:
            return
        layer = self.layer()
        if layer not in shape.layers:
            raise ValueError(f"the SAE {self.path} reads store layer {layer}, which the run does not embed "
                             f"(layers {list(shape.layers)}); add it to embed.layers")
        d_in = self._cfg().get("d_in")
        if d_in is not None and shape.hidden_size is not None and int(d_in) != shape.hidden_size:
            raise ValueError(f"the SAE {self.path} expects d_in={d_in}, the model's hidden size is {shape.hidden_size}")

    def runs_at(self, layer: int) -> bool:
        return layer == self.layer()

    def fit(self, store: TokenStore, layer: int, cache: Path) -> SAEConceptSet:
        sae = load_sae(self.path)
        if sae.d_in != store.dim:  # a store embedded before this check existed
            raise ValueError(f"SAE {self.path} expects d_in={sae.d_in}, the store has d={store.dim}")
        if layer == store.info.model.get("n_layers"):
            warnings.warn("SAE on the last hidden state: many HF models apply their final norm there", stacklevel=2)
        return sae_concept_set(sae, layer)

    def fit_global(self, store: TokenStore, layer: int, cache: Path) -> SAEConceptSet:
        return self.fit(store, layer, cache)  # the same units read the global embedding

    def cache_key(self) -> dict:
        return {"sae": str(self.path)}


def concept_type(name: str, options: ConceptConfig | Mapping[str, Any] | None = None, seed: int = 0,
                 solver: str = "logreg") -> ConceptType:
    """The concept type ``name`` with its knobs from ``options`` (the run's ``concepts`` section;
    a mapping holds any of its keys, the rest keep :class:`ConceptConfig`'s defaults).
    ``solver``: ``logreg`` (ours) or ``seed`` (the seed study's bias-free Adam) for separators."""
    if isinstance(options, ConceptConfig):
        o = options
    else:
        known = {f.name for f in dataclasses.fields(ConceptConfig)}
        o = ConceptConfig(**{k: v for k, v in dict(options or {}).items() if k in known})
    lin = {"max_per_class": int(o.linsep_max_tokens_per_class), "c_reg": float(o.linsep_c)}
    if name == "mean":
        return MeanType()
    if name == "diffmean":
        return DiffMeanType()
    if name == "linsep":
        return LinsepType(seed=seed, solver=solver, **lin)
    if name in ("kmeans", "kmeans-linsep"):
        return KMeansType(name=name, k_tokens=int(o.kmeans_k_tokens), k_global=int(o.kmeans_k_global),
                          separator=name == "kmeans-linsep", seed=seed, **lin)
    if name == "sae":
        return SAEType(path=str(o.sae_path or ""))
    raise ValueError(f"unknown concept type {name!r}; choose from {list(CONCEPT_TYPES)}")


def load_concepts(path: str | Path) -> ConceptSet:
    """A saved concept set of any kind (SAE unit sets keep their encoder settings)."""
    return SAEConceptSet.load(path) if (Path(path) / "sae.json").exists() else ConceptSet.load(path)
