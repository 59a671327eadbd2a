"""One typed run configuration, read from YAML, overridable with ``--set section.key=value``."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .concepts.options import CONCEPT_TYPES, ConceptConfig
from .data.masks import MaskOptions
from .data.options import DataConfig
from .encoders.base import DEVICE_HELP, DEVICE_RE, EmbedConfig
from .evaluate.options import DetectConfig
from .localize.options import LocalizeConfig
from .util.errors import ValidationError
from .util.yamlio import load_yaml, load_yaml_file

__all__ = ["CONCEPT_TYPES", "PROTOCOLS", "SECTIONS", "ConceptConfig", "DataConfig", "DetectConfig", "EmbedConfig",
           "LocalizeConfig", "RunConfig", "apply_overrides", "config_from_dict", "load_config"]

#: ``protocol``: "ours" (the project's defaults) or "seed" (the seed study's choices where ours
#: deliberately differ; docs/protocol.md lists each one and why)
PROTOCOLS = ("ours", "seed")


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

    def mask_options(self) -> MaskOptions:
        """How image masks become patch truth for this run (the seed's any-pixel rule under protocol seed)."""
        return self.data.mask_options(any_pixel=self.protocol == "seed")

    def problems(self) -> list[str]:
        """Every value out of its range or set of choices, one line each (types are checked on load):
        the run's own keys, then each section's :meth:`problems`."""
        out: list[str] = []
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            out.append(f"name: {self.name!r} must be a plain folder name (no '/')")
        if self.seed < 0:
            out.append(f"seed: must be >= 0, got {self.seed}")
        if not DEVICE_RE.match(self.score_device):
            out.append(f"score_device: {self.score_device!r} is not a device; {DEVICE_HELP}")
        for section in SECTIONS:
            out += getattr(self, section).problems()
        return out

    def validate(self) -> None:
        """Raise :class:`ValidationError` listing every problem of :meth:`problems`."""
        self.embed.normalise()
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
    seen: set[str] = set()
    for item in overrides:
        if "=" not in item:
            raise ValidationError([f"--set {item!r}: must look like section.key=value"])
        key, raw = item.split("=", 1)
        if key.strip() in seen:
            raise ValidationError([f"--set {key.strip()}: given twice; keep one"])
        seen.add(key.strip())
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValidationError([f"--set {item!r}: {p} is not a section"])
        try:
            node[parts[-1]] = load_yaml(raw, f"--set {key.strip()}")
        except ValidationError as err:
            if "written twice" in str(err):
                raise
            node[parts[-1]] = raw  # not YAML: the text as written
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
        data = load_yaml_file(path)  # a repeated key or an empty file is an error naming the file
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path.resolve()}") from None
    if isinstance(data, dict):
        data = resolve_config_paths(data, path.parent)
    return config_from_dict(apply_overrides(data, overrides or []))
