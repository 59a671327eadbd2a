"""One typed run configuration, read from YAML, overridable with ``--set section.key=value``."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.seed import KINDS as GROUND_TRUTH_KINDS
from .encoders.base import EmbedConfig
from .evaluate.attribution import ATTRIBUTIONS
from .evaluate.calibrate import DEFAULT_GRID
from .evaluate.detect import METHODS

CONCEPT_TYPES = ("mean", "linsep", "kmeans", "kmeans-linsep", "sae")
#: ``protocol``: "ours" (the project's defaults) or "seed" (the seed study's choices where ours
#: deliberately differ; docs/protocol.md lists each one and why)
PROTOCOLS = ("ours", "seed")


@dataclass
class DataConfig:
    """Which dataset: a metadata.csv, a folder holding one, or ``builtin:NAME``."""

    path: str = "builtin:emotions"
    # restrict / order concept columns: a list, or 'seed' (the seed's subset for its folder) / 'preset:NAME'
    concepts: list[str] | str | None = None
    # token-level truth beside metadata.csv (superactivators.data.seed): auto (recognise the seed's
    # files), none (sample labels / the metadata's own spans and masks), or one reader's kind
    ground_truth: str = "auto"
    # images (see superactivators.data.masks): min fraction of a patch's pixels in a concept's mask
    # for "in concept", and of image (not padding) pixels for "valid"; unreadable images/masks
    # are an error unless skip_bad_images (then skipped and reported)
    mask_coverage: float = 0.5
    content_coverage: float = 0.5
    skip_bad_images: bool = False
    # withhold the token-level truth (spans, masks): the run sees sample labels only, as for data
    # that has none (every valid token of a positive sample then counts as in-concept)
    sample_labels_only: bool = False
    # Parquet / Arrow / datasets folders / hf:ID (superactivators.data.hf): which column is what
    text_column: str | None = None  # default 'text'
    image_column: str | None = None  # default 'image'
    mask_column: str | None = None
    concept_columns: list[str] | str | None = None  # 0/1 columns, or one list-of-labels column
    span_column: str | None = None  # default 'spans'
    split_column: str | None = None  # default 'split' (a DatasetDict's splits give it)
    split_map: dict[str, str] | None = None  # e.g. {validation: cal}; validation -> cal by default

    def columns(self) -> dict:
        """The column options that are set (for :func:`superactivators.data.datasets.load_dataset`)."""
        keys = ("text_column", "image_column", "mask_column", "concept_columns", "span_column", "split_column",
                "split_map")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class ConceptConfig:
    """Which concept types to learn, and their knobs."""

    types: list[str] = field(default_factory=lambda: ["mean", "linsep"])
    linsep_max_tokens_per_class: int = 4000
    linsep_c: float = 1.0
    kmeans_k_tokens: int = 1000
    kmeans_k_global: int = 50
    sae_path: str | None = None  # SAELens folder or HF repo id (type 'sae')


@dataclass
class DetectConfig:
    """Detection methods and the calibration grid (percent of in-concept tokens kept)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    best_threshold: bool = True
    localize: bool = True  # token-level localisation metrics when the data has masks or spans
    prompt_model: str | None = None  # causal LM / VLM for method 'prompt' (yes/no logit difference)
    prompt_batch_size: int = 8


@dataclass
class LocalizeConfig:
    """Attribution baselines for localisation (opt-in: they run the model again).

    ``attributions``: any of :data:`~superactivators.evaluate.attribution.ATTRIBUTIONS`
    (empty: none); ``attribution_budget``: perturbed samples per (sample, concept) for lime /
    kernel_shap / rise; ``attribution_samples``: detected samples per concept and split;
    ``attribution_layer``: ``best`` (per concept type, the layer of the best SuperActivator
    localisation F1 on ``cal``) or a layer index; ``attribution_types``: concept types (default
    every supervised one).
    """

    attributions: list[str] = field(default_factory=list)
    attribution_budget: int = 64
    attribution_samples: int = 16
    attribution_layer: str | int = "best"
    attribution_types: list[str] | None = None
    ig_steps: int = 16
    occlusion_window: int = 1
    batch_size: int = 16


@dataclass
class RunConfig:
    """Everything a run needs; every stage's cache key derives from the relevant part."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    score_device: str = "auto"
    protocol: str = "ours"  # ours | seed (docs/protocol.md)
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    concepts: ConceptConfig = field(default_factory=ConceptConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        if self.embed.protocol != self.protocol:  # the embed stage needs it (text specials, Mllama tiles)
            self.embed = dataclasses.replace(self.embed, protocol=self.protocol)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> None:
        bad = [t for t in self.concepts.types if t not in CONCEPT_TYPES]
        if bad:
            raise ValueError(f"unknown concept type(s) {bad}; choose from {list(CONCEPT_TYPES)}")
        self.__post_init__()
        bad = [m for m in self.detect.methods if m not in (*METHODS, "prompt")]
        if bad:
            raise ValueError(f"unknown detection method(s) {bad}; choose from {[*METHODS, 'prompt']}")
        if "prompt" in self.detect.methods and not self.detect.prompt_model:
            raise ValueError("detection method 'prompt' needs detect.prompt_model (a causal LM or VLM id/folder)")
        if "sae" in self.concepts.types and not self.concepts.sae_path:
            raise ValueError("concept type 'sae' needs concepts.sae_path")
        if self.data.ground_truth not in GROUND_TRUTH_KINDS:
            raise ValueError(f"unknown data.ground_truth {self.data.ground_truth!r}; choose from "
                             f"{list(GROUND_TRUTH_KINDS)}")
        if self.localize.attributions:
            bad = [m for m in self.localize.attributions if m not in ATTRIBUTIONS]
            if bad:
                raise ValueError(f"unknown localize.attributions {bad}; choose from {list(ATTRIBUTIONS)}")
            for k in ("attribution_budget", "attribution_samples", "ig_steps", "occlusion_window", "batch_size"):
                if int(getattr(self.localize, k)) < 1:
                    raise ValueError(f"localize.{k} must be >= 1, got {getattr(self.localize, k)}")
            lay = self.localize.attribution_layer
            if not (lay == "best" or isinstance(lay, int)):
                raise ValueError(f"localize.attribution_layer must be 'best' or a layer index, got {lay!r}")
        if self.embed.batch_size < 1:
            raise ValueError("embed.batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or 'top level'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is RunConfig and isinstance(data.get("embed"), dict) and \
            data["embed"].get("protocol", data.get("protocol", "ours")) != data.get("protocol", "ours"):
        raise ValueError("embed.protocol is derived from the top-level key 'protocol'; set that one")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {where or 'top level'}; valid: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        ftype = fields[k].type
        sub = {"data": DataConfig, "embed": EmbedConfig, "concepts": ConceptConfig, "detect": DetectConfig,
               "localize": LocalizeConfig}
        if cls is RunConfig and k in sub:
            kwargs[k] = _build(sub[k], v or {}, k)
        else:
            kwargs[k] = v
        del ftype
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data or {}, "")
    cfg.validate()
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from None
    return config_from_dict(apply_overrides(data, overrides or []))
