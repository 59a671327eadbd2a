"""One typed run configuration, read from YAML, overridable with ``--set section.key=value``."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .concepts.types import CONCEPT_TYPES
from .data.seed import KINDS as GROUND_TRUTH_KINDS
from .encoders.base import EmbedConfig
from .evaluate.attribution import ATTRIBUTIONS
from .evaluate.calibrate import DEFAULT_GRID
from .evaluate.detect import METHODS
from .util.errors import ValidationError

PROMPT_METHODS = ("prompt", "prompt_seed")
#: ``protocol``: "ours" (the project's defaults) or "seed" (the seed study's choices where ours
#: deliberately differ; docs/protocol.md lists each one and why)
PROTOCOLS = ("ours", "seed")
# accepted spellings of compute / store dtypes -> the canonical name the cache keys use
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("float16", "float32")
GLOBAL_TOKENS = ("auto", "cls", "mean", "last")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


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
    # a span past its text's end (or wholly outside) is an error naming file, row and concept;
    # true: a warning each, and the span is cut to the text (dropped when wholly outside)
    clip_spans: bool = False
    # withhold the token-level truth (spans, masks): the run sees sample labels only, as for data
    # that has none (every valid token of a positive sample then counts as in-concept)
    sample_labels_only: bool = False
    # text/image/mask paths must resolve inside the dataset folder unless this is set
    allow_outside_paths: bool = False
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
    # causal LM / VLM asked by method 'prompt' (calibrated logit(yes) - logit(no)) and/or
    # 'prompt_seed' (the seed's question, a greedy generated Yes/No, scored as it is)
    prompt_model: str | None = None
    prompt_batch_size: int = 8
    prompt_chat: str = "auto"  # auto: through the tokenizer's chat template when it has one | always | never
    prompt_max_new_tokens: int = 16  # prompt_seed: tokens generated per answer


@dataclass
class LocalizeConfig:
    """Attribution baselines for localisation (opt-in: they run the model again).

    ``attributions``: any of :data:`~superactivators.evaluate.attribution.ATTRIBUTIONS`
    (empty: none); ``attribution_budget``: perturbed samples per (sample, concept) for lime /
    kernel_shap / rise; ``attribution_samples``: detected samples per concept and split;
    ``attribution_layer``: ``best`` (per concept type, the layer of the best SuperActivator
    localisation F1 on ``cal``) or a layer index; ``attribution_types``: concept types (default
    every one with cosine or signed-distance scores; SAE units are skipped).
    """

    attributions: list[str] = field(default_factory=list)
    attribution_budget: int = 64
    attribution_samples: int = 16
    attribution_layer: str | int = "best"
    attribution_types: list[str] | None = None
    ig_steps: int = 16
    occlusion_window: int = 1
    batch_size: int = 16
    attribution_target: str = "global"  # or mean_token: the mean of the concept's token scores (the seed's)


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

    def problems(self) -> list[str]:
        """Every value out of its range or set of choices, one line each (types are checked on load)."""
        out: list[str] = []
        e, d, c, t = self.embed, self.data, self.concepts, self.detect
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            out.append(f"name: {self.name!r} must be a plain folder name (no '/')")
        if self.seed < 0:
            out.append(f"seed: must be >= 0, got {self.seed}")
        for key, val in (("score_device", self.score_device), ("embed.device", e.device)):
            if not _DEVICE_RE.match(val):
                out.append(f"{key}: {val!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        for key, val, lo in (("embed.batch_size", e.batch_size, 1), ("embed.max_length", e.max_length, 1),
                             ("embed.shard_tokens", e.shard_tokens, 1), ("concepts.kmeans_k_tokens", c.kmeans_k_tokens, 2),
                             ("concepts.kmeans_k_global", c.kmeans_k_global, 2),
                             ("concepts.linsep_max_tokens_per_class", c.linsep_max_tokens_per_class, 1),
                             ("detect.prompt_batch_size", t.prompt_batch_size, 1)):
            if val < lo:
                out.append(f"{key}: must be >= {lo}, got {val}")
        if e.dtype not in COMPUTE_DTYPES:
            out.append(f"embed.dtype: {e.dtype!r} is not one of {list(COMPUTE_DTYPES)} (or fp32, fp16, bf16)")
        if e.store_dtype not in STORE_DTYPES:
            out.append(f"embed.store_dtype: {e.store_dtype!r} is not one of {list(STORE_DTYPES)}")
        if e.global_token not in GLOBAL_TOKENS:
            out.append(f"embed.global_token: {e.global_token!r} is not one of {list(GLOBAL_TOKENS)}")
        out += _layer_spec_problems(e.layers)
        if not 0 < d.mask_coverage <= 1:
            out.append(f"data.mask_coverage: must be in (0, 1], got {d.mask_coverage}")
        if not 0 <= d.content_coverage <= 1:
            out.append(f"data.content_coverage: must be in [0, 1], got {d.content_coverage}")
        if isinstance(d.concepts, list):
            dup = sorted({x for x in d.concepts if d.concepts.count(x) > 1})
            if dup:
                out.append(f"data.concepts: listed twice: {dup}")
            if not d.concepts:
                out.append("data.concepts: empty list (leave it out to use every concept column)")
        if c.linsep_c <= 0:
            out.append(f"concepts.linsep_c: must be > 0, got {c.linsep_c}")
        if not c.types:
            out.append("concepts.types: empty; choose from " + str(list(CONCEPT_TYPES)))
        bad = [x for x in c.types if x not in CONCEPT_TYPES]
        if bad:
            out.append(f"concepts.types: unknown concept type(s) {bad}; choose from {list(CONCEPT_TYPES)}")
        bad = [m for m in t.methods if m not in (*METHODS, *PROMPT_METHODS)]
        if bad:
            out.append(f"detect.methods: unknown detection method(s) {bad}; choose from {[*METHODS, *PROMPT_METHODS]}")
        if set(PROMPT_METHODS) & set(t.methods) and not t.prompt_model:
            out.append("detect.methods: 'prompt' / 'prompt_seed' needs detect.prompt_model (a causal LM or VLM id/folder)")
        if t.prompt_chat not in ("auto", "always", "never"):
            out.append(f"detect.prompt_chat: must be auto, always or never, got {t.prompt_chat!r}")
        if "sae" in c.types and not c.sae_path:
            out.append("concepts.types: 'sae' needs concepts.sae_path")
        if d.ground_truth not in GROUND_TRUTH_KINDS:
            out.append(f"data.ground_truth: unknown {d.ground_truth!r}; choose from {list(GROUND_TRUTH_KINDS)}")
        loc = self.localize
        if loc.attributions:
            bad = [m for m in loc.attributions if m not in ATTRIBUTIONS]
            if bad:
                out.append(f"localize.attributions: unknown {bad}; choose from {list(ATTRIBUTIONS)}")
            for k in ("attribution_budget", "attribution_samples", "ig_steps", "occlusion_window", "batch_size"):
                if int(getattr(loc, k)) < 1:
                    out.append(f"localize.{k}: must be >= 1, got {getattr(loc, k)}")
            lay = loc.attribution_layer
            if not (lay == "best" or (isinstance(lay, int) and not isinstance(lay, bool))):
                out.append(f"localize.attribution_layer: must be 'best' or a layer index, got {lay!r}")
        if not t.grid:
            out.append("detect.grid: empty")
        bad_n = [g for g in t.grid if not 0 < g <= 100]
        if bad_n:
            out.append(f"detect.grid: percentages must be in (0, 100], got {bad_n}")
        return out

    def validate(self) -> None:
        """Raise :class:`ValidationError` listing every problem of :meth:`problems`."""
        self.embed.dtype = DTYPE_ALIASES.get(self.embed.dtype, self.embed.dtype)
        self.embed.store_dtype = DTYPE_ALIASES.get(self.embed.store_dtype, self.embed.store_dtype)
        probs = self.problems()
        if probs:
            raise ValidationError(probs)
        self.__post_init__()  # embed.protocol follows the top-level protocol

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``config.yaml``; remote code is never recorded as allowed (a shared
        run folder must not switch it on for whoever uses it next)."""
        d = asdict(self)
        d["embed"]["trust_remote_code"] = False
        return d


def _layer_spec_problems(spec: Any) -> list[str]:
    """Syntax of ``embed.layers`` (ranges need the model's config: checked before it loads)."""
    items = spec if isinstance(spec, list) else [spec]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append(f"embed.layers: bad layer {item!r}")
        elif isinstance(item, str):
            s = item.strip().lower()
            if s in ("all", "sweep", "default"):
                continue
            try:
                v = float(s[:-1]) if s.endswith("%") else int(s)
            except ValueError:
                out.append(f"embed.layers: bad layer {item!r}: use an index, 'P%', 'all' or 'sweep'")
                continue
            if s.endswith("%") and not 0 <= v <= 100:
                out.append(f"embed.layers: percentage {item!r} outside 0..100%")
    return out


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str, problems: list[str], lenient: bool = True) -> Any:
    """``value`` checked against the type ``hint`` (a lone string becomes a one-item list if ``lenient``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for strict in (True, False):  # an exact match (str for ``list[str] | str``) before any coercion
            for arg in [a for a in args if a is not type(None)]:
                trial: list[str] = []
                out = _coerce(value, arg, where, trial, lenient=not strict)
                if not trial:
                    return out
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if origin is list:
        (arg,) = typing.get_args(hint) or (Any,)
        if lenient and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # "types: mean" means [mean]
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        return [_coerce(v, arg, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
        return value
    return value


SECTIONS = {"data": DataConfig, "embed": EmbedConfig, "concepts": ConceptConfig, "detect": DetectConfig,
            "localize": LocalizeConfig}


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{where or 'top level'}: must be a mapping of keys to values, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    if cls is RunConfig and isinstance(data.get("embed"), dict) and \
            data["embed"].get("protocol", data.get("protocol", "ours")) != data.get("protocol", "ours"):
        problems.append("embed.protocol: derived from the top-level key 'protocol'; set that one")
        data = {**data, "embed": {k: v for k, v in data["embed"].items() if k != "protocol"}}
    if cls is RunConfig and data.get("protocol", "ours") not in PROTOCOLS:
        problems.append(f"protocol: protocol must be one of {list(PROTOCOLS)}, got {data['protocol']!r}")
        data = {k: v for k, v in data.items() if k != "protocol"}
    unknown = sorted(set(data) - fields)
    if unknown:
        problems.append(f"unknown config key(s) {unknown} in {where or 'top level'}; valid: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        if k not in fields:
            continue
        key = f"{where}.{k}" if where else k
        if cls is RunConfig and k in SECTIONS:
            kwargs[k] = _build(SECTIONS[k], v or {}, k, problems)
        elif cls is EmbedConfig and k == "trust_remote_code" and v:
            problems.append("embed.trust_remote_code: cannot be switched on from a config file or --set "
                            "(a shared config must not run code); pass --trust-remote-code to the command")
        else:
            n = len(problems)
            val = _coerce(v, hints[k], key, problems)
            if len(problems) == n:
                kwargs[k] = val
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig`; every bad key or value is one line of the :class:`ValidationError`."""
    problems: list[str] = []
    cfg = _build(RunConfig, data or {}, "", problems)  # a mistyped value leaves its default in place
    try:
        cfg.validate()
    except ValidationError as err:
        problems += err.problems
    if problems:
        raise ValidationError(problems)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValidationError([f"--set {item!r}: must look like section.key=value"])
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValidationError([f"--set {item!r}: {p} is not a section"])
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


# keys holding a path; for the model-like ones a name (a hub id, a packaged name) is left alone
PATH_KEYS = (("data", "path"), ("", "output_dir"))
MODEL_KEYS = (("embed", "model"), ("concepts", "sae_path"), ("detect", "prompt_model"))


def _is_local(value: str, base: Path) -> bool:
    """A model-like value names a local folder: it looks like a path, or the config folder holds it."""
    v = value.strip()
    return v.startswith(("./", "../", "~", ".\\", "..\\")) or (base / v).is_dir()


def resolve_config_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths of a config file read from the config file's folder ``base``: ``data.path``
    (not ``builtin:`` / ``hf:``), ``output_dir``, and ``embed.model`` / ``concepts.sae_path`` /
    ``detect.prompt_model`` when they name a local folder (``./x``, ``../x``, or one beside the
    config). Made absolute, so that messages and the run's ``config.yaml`` say where they are."""
    base = base.resolve()

    def fix(section: str, key: str, model: bool) -> None:
        node = data.get(section) if section else data
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            return
        v = node[key]
        if not v.strip() or v.startswith(("builtin:", "hf:")) or (model and not _is_local(v, base)):
            return
        p = Path(v).expanduser()
        if not p.is_absolute():
            node[key] = str(Path(os.path.normpath(base / p)))
        else:
            node[key] = str(p)

    for section, key in PATH_KEYS:
        fix(section, key, False)
    for section, key in MODEL_KEYS:
        fix(section, key, True)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config: its relative paths against its own folder (:func:`resolve_config_paths`),
    ``--set`` values as given (relative to the current directory)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path.resolve()}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValidationError([f"{path}: invalid YAML: {err}"]) from None
    if isinstance(data, dict):
        data = resolve_config_paths(data, path.parent)
    return config_from_dict(apply_overrides(data, overrides or []))
