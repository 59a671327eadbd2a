"""Synthetic CLEVR-style single-object scenes with exact per-pixel masks.

Every image shows one shaded 3-D object (cube, cylinder or sphere in one of
four colours) resting on a floor in front of a wall, seen by an orthographic
camera that looks slightly down.  The object is rendered from the same
analytic geometry that produces its mask, so the mask is exact up to the
anti-aliasing rule "a pixel belongs to the object when at least half of its
sub-samples do".  The soft shadow lives on the floor and is not part of the
mask.

Everything is deterministic in ``seed``: two runs write byte-identical files.
"""

from __future__ import annotations

import colorsys
import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "COLORS",
    "SHAPES",
    "CLASSES",
    "CONCEPT_COLUMNS",
    "generate_shapes",
    "render_scene",
]

#: Nominal object colours (RGB, 0-255) before per-image jitter.
COLORS: dict[str, tuple[int, int, int]] = {
    "blue": (45, 85, 205),
    "green": (40, 160, 65),
    "red": (200, 38, 35),
    "yellow": (228, 196, 38),
}
SHAPES: tuple[str, ...] = ("cube", "cylinder", "sphere")
CLASSES: tuple[str, ...] = tuple(f"{c}_{s}" for c in COLORS for s in SHAPES)
CONCEPT_COLUMNS: tuple[str, ...] = tuple(
    [f"color::{c}" for c in COLORS] + [f"shape::{s}" for s in SHAPES]
)
SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)

_SUPERSAMPLE = 3  # sub-samples per pixel side for the object
_FloatArray = np.ndarray
_Rendered = tuple[np.ndarray, np.ndarray]  # (coverage mask, RGB) on a sub-sample grid


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Camera frame: x right, y up, z towards the viewer.  Light from the upper
# left, slightly in front of the object.
_LIGHT = _unit((-0.62, 0.58, 0.55))
_HALF = _unit(_LIGHT + np.array([0.0, 0.0, 1.0]))  # Blinn half-vector


@dataclass(frozen=True)
class _Look:
    """Material parameters of one object."""

    rgb: np.ndarray  # (3,) float, 0-255
    ambient: float
    shininess: float
    specular: float


def _shade(
    normals: _FloatArray, look: _Look, occlusion: _FloatArray | float = 1.0
) -> _FloatArray:
    """Blinn-Phong shading of unit ``normals`` (..., 3) in camera space -> RGB (..., 3)."""
    n_dot_l = np.clip(normals @ _LIGHT, 0.0, None)
    # weak fill light from the opposite side keeps shadowed faces readable
    fill = 0.22 * np.clip(normals @ _unit((0.7, 0.1, 0.7)), 0.0, None)
    n_dot_h = np.clip(normals @ _HALF, 0.0, None)
    spec = look.specular * n_dot_h**look.shininess
    intensity = (look.ambient + 0.78 * n_dot_l + fill) * occlusion
    rgb = look.rgb * intensity[..., None] + 255.0 * spec[..., None]
    return rgb


def _jitter_color(rng: np.random.Generator, name: str) -> np.ndarray:
    """Nominal colour with a slight random hue / saturation / brightness change."""
    r, g, b = (c / 255.0 for c in COLORS[name])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + rng.uniform(-0.018, 0.018)) % 1.0
    s = float(np.clip(s * rng.uniform(0.85, 1.08), 0.0, 1.0))
    v = float(np.clip(v * rng.uniform(0.85, 1.08), 0.0, 1.0))
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float64) * 255.0


# ---------------------------------------------------------------------------
# Background
# ---------------------------------------------------------------------------

_BACKDROP_TONES: tuple[tuple[float, float, float], ...] = (
    (0.62, 0.62, 0.62),  # neutral grey
    (0.52, 0.52, 0.53),  # darker grey
    (0.74, 0.69, 0.60),  # beige
    (0.66, 0.62, 0.55),  # warm stone
    (0.58, 0.62, 0.68),  # bluish grey
    (0.50, 0.55, 0.61),  # slate
)


def _smoothstep(e0: float, e1: float, x: _FloatArray) -> _FloatArray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (yy, xx) pixel-centre coordinates, broadcastable to (size, size)."""
    c = np.arange(size, dtype=np.float64) + 0.5
    yy, xx = c[:, None], c[None, :]
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _background(rng: np.random.Generator, size: int, horizon: float) -> np.ndarray:
    """Wall + floor with gradients, a soft spotlight and a horizon crease; (size, size, 3) float."""
    yy, xx = (a / size for a in _pixel_grid(size))
    h = horizon / size
    tone = np.array(_BACKDROP_TONES[rng.integers(len(_BACKDROP_TONES))])
    tone = tone * rng.uniform(0.9, 1.1) + rng.uniform(-0.02, 0.02, size=3)
    wall_gain = rng.uniform(0.75, 1.0)
    floor_gain = rng.uniform(0.9, 1.15)
    # wall darkens upwards, floor brightens towards the viewer (or the reverse)
    wall = wall_gain * (1.0 - rng.uniform(0.05, 0.3) * (h - yy) / max(h, 1e-6))
    floor_slope = rng.uniform(-0.15, 0.25)
    floor = floor_gain * (1.0 + floor_slope * (yy - h) / max(1.0 - h, 1e-6))
    # soft transition over ~1.5 pixels so the horizon is anti-aliased
    blend = _smoothstep(h - 0.75 / size, h + 0.75 / size, yy)
    shade = wall * (1.0 - blend) + floor * blend
    # thin darker crease where floor meets wall
    crease = rng.uniform(0.04, 0.12) * np.exp(-(((yy - h) * size / 1.2) ** 2))
    shade = shade * (1.0 - crease)
    # side-to-side gradient and a broad spotlight
    shade = shade * (1.0 + rng.uniform(-0.12, 0.12) * (xx - 0.5))
    sx, sy = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.9)
    spot = np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * rng.uniform(0.15, 0.35) ** 2))
    shade *= 1.0 + rng.uniform(0.0, 0.18) * spot - 0.06
    return shade[..., None] * tone[None, None, :] * 255.0


def _shadow(
    img: np.ndarray, base: tuple[float, float], width: float, phi: float, horizon: float,
    strength: float,
) -> None:
    """Darken a soft cast shadow plus a contact shadow on the floor, in place."""
    yy, xx = _pixel_grid(img.shape[0])
    bx, by = base
    fore = np.sin(phi)  # floor circles are squashed by the view angle
    # cast shadow: light comes from the left/front, so it falls right and back
    cx, cy = bx + 0.38 * width, by - 0.28 * width * fore
    ax, ay = 0.62 * width, 0.62 * width * fore + 1.0
    d = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    cast = strength * (1.0 - _smoothstep(0.15, 1.15, d))
    # contact shadow right under the object
    ax2, ay2 = 0.5 * width, 0.5 * width * fore + 1.0
    d2 = np.sqrt(((xx - bx) / ax2) ** 2 + ((yy - by) / ay2) ** 2)
    contact = 0.25 * (1.0 - _smoothstep(0.2, 1.0, d2))
    on_floor = _smoothstep(horizon - 1.0, horizon + 2.0, yy)
    dark = 1.0 - np.clip(cast + contact, 0.0, 0.7) * on_floor
    img *= dark[..., None]


# ---------------------------------------------------------------------------
# Objects: each renderer takes sub-sample coordinates (X, Y) in image pixel
# units and returns (coverage mask, RGB) on that grid.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    """An object's geometry in image pixels: base point (floor contact) and sizes."""

    shape: str
    base: tuple[float, float]
    scale: float  # pixels per world unit
    yaw: float
    phi: float  # camera pitch (radians)
    height: float  # world units (cylinder height; cube side = 1; sphere radius = 0.5)


def _rot_yaw(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_pitch(phi: float) -> np.ndarray:
    """World -> camera rotation for a camera looking down by ``phi``."""
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


_CUBE_VERTS = np.array(
    [[x, y, z] for x in (-0.5, 0.5) for y in (0.0, 1.0) for z in (-0.5, 0.5)], dtype=np.float64
)
# faces as (corner, edge-a, edge-b) vertex indices and outward normal (world)
_CUBE_FACES: tuple[tuple[tuple[int, int, int], tuple[float, float, float]], ...] = (
    ((2, 6, 3), (0.0, 1.0, 0.0)),  # top: y = 1, corners (-,1,-) (+,1,-) (-,1,+)
    ((1, 5, 3), (0.0, 0.0, 1.0)),  # front z=+0.5: (-,0,+) (+,0,+) (-,1,+)
    ((0, 4, 2), (0.0, 0.0, -1.0)),  # back
    ((4, 5, 6), (1.0, 0.0, 0.0)),  # right x=+0.5: (+,0,-) (+,0,+) (+,1,-)
    ((0, 1, 2), (-1.0, 0.0, 0.0)),  # left
)


def _cube_screen_verts(p: _Placed) -> np.ndarray:
    """Projected cube corners (8, 2) in image pixels."""
    cam = _CUBE_VERTS @ (_rot_pitch(p.phi) @ _rot_yaw(p.yaw)).T
    bx, by = p.base
    return np.stack([bx + p.scale * cam[:, 0], by - p.scale * cam[:, 1]], axis=1)


def _render_cube(X: _FloatArray, Y: _FloatArray, p: _Placed, look: _Look) -> _Rendered:
    rot = _rot_pitch(p.phi) @ _rot_yaw(p.yaw)
    scr = _cube_screen_verts(p)
    mask = np.zeros(X.shape, dtype=bool)
    rgb = np.zeros(X.shape + (3,), dtype=np.float64)
    for (i0, ia, ib), normal in _CUBE_FACES:
        n_cam = rot @ np.array(normal)
        if n_cam[2] <= 1e-6:
            continue  # facing away
        o, ea, eb = scr[i0], scr[ia] - scr[i0], scr[ib] - scr[i0]
        # solve (X, Y) = o + s*ea + t*eb for face coordinates (s, t)
        det = ea[0] * eb[1] - ea[1] * eb[0]
        if abs(det) < 1e-9:
            continue  # seen edge-on
        dx, dy = X - o[0], Y - o[1]
        s = (dx * eb[1] - dy * eb[0]) / det
        t = (ea[0] * dy - ea[1] * dx) / det
        inside = (s >= 0.0) & (s <= 1.0) & (t >= 0.0) & (t <= 1.0)
        if not inside.any():
            continue
        if normal[1] > 0.5:  # top face: gentle gradient across it
            occ = 0.94 + 0.06 * (1.0 - t[inside])
        else:  # side faces: ambient occlusion towards the floor (t = height)
            occ = 0.78 + 0.22 * np.sqrt(np.clip(t[inside], 0.0, 1.0))
        # faint bevel highlight along the face edges
        edge = np.minimum.reduce([s[inside], 1.0 - s[inside], t[inside], 1.0 - t[inside]])
        bevel = 1.0 + 0.12 * np.exp(-edge * p.scale / 1.5)
        normals = np.broadcast_to(n_cam, (int(inside.sum()), 3))
        rgb[inside] = _shade(normals, look, occ * bevel)
        mask |= inside
    return mask, rgb


def _render_sphere(X: _FloatArray, Y: _FloatArray, p: _Placed, look: _Look) -> _Rendered:
    r = 0.5 * p.scale
    bx, by = p.base
    cx, cy = bx, by - r * np.cos(p.phi)  # centre sits one radius above the floor
    dx, dy = (X - cx) / r, (Y - cy) / r
    d2 = dx * dx + dy * dy
    mask = d2 <= 1.0
    nz = np.sqrt(np.clip(1.0 - d2[mask], 0.0, None))
    normals = np.stack([dx[mask], -dy[mask], nz], axis=1)
    # darker towards the floor contact (bounce-free underside)
    occ = 0.85 + 0.15 * np.clip(1.0 - dy[mask], 0.0, 1.0)
    rgb = np.zeros(X.shape + (3,), dtype=np.float64)
    rgb[mask] = _shade(normals, look, occ)
    return mask, rgb


def _render_cylinder(X: _FloatArray, Y: _FloatArray, p: _Placed, look: _Look) -> _Rendered:
    R = 0.5 * p.scale
    H = p.height * p.scale
    bx, by = p.base
    sphi, cphi = np.sin(p.phi), np.cos(p.phi)
    ty = by - H * cphi  # top ellipse centre
    u = (X - bx) / R
    top = u * u + ((Y - ty) / (R * sphi)) ** 2 <= 1.0
    bottom = u * u + ((Y - by) / (R * sphi)) ** 2 <= 1.0
    body = ((np.abs(u) <= 1.0) & (Y >= ty) & (Y <= by)) | bottom
    body &= ~top
    mask = top | body
    rgb = np.zeros(X.shape + (3,), dtype=np.float64)
    # side: at screen column u the visible surface point has angle alpha, sin(alpha) = u
    ub = np.clip(u[body], -1.0, 1.0)
    ca = np.sqrt(1.0 - ub * ub)
    n_side = np.stack([ub, -ca * sphi, ca * cphi], axis=1)
    world_y = (by + R * sphi * ca - Y[body]) / cphi  # height of the surface point
    occ = 0.78 + 0.22 * np.sqrt(np.clip(world_y / max(H, 1e-6), 0.0, 1.0))
    rgb[body] = _shade(n_side, look, occ)
    # top: flat cap, slightly lighter rim
    n_top = np.broadcast_to(np.array([0.0, cphi, sphi]), (int(top.sum()), 3))
    rr = np.sqrt(u[top] ** 2 + ((Y[top] - ty) / (R * sphi)) ** 2)
    rim = 1.0 + 0.1 * np.exp(-(1.0 - rr) * R / 1.5)
    rgb[top] = _shade(n_top, look, (0.96 + 0.04 * rr) * rim)
    return mask, rgb


def _extent(p: _Placed) -> tuple[float, float, float, float]:
    """Screen bounding box (x0, y0, x1, y1) of a placed object in pixels."""
    bx, by = p.base
    if p.shape == "cube":
        v = _cube_screen_verts(p)
        lo, hi = v.min(axis=0), v.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])
    if p.shape == "sphere":
        r = 0.5 * p.scale
        cy = by - r * np.cos(p.phi)
        return bx - r, cy - r, bx + r, cy + r
    R, H = 0.5 * p.scale, p.height * p.scale
    return bx - R, by - H * np.cos(p.phi) - R * np.sin(p.phi), bx + R, by + R * np.sin(p.phi)


_RENDERERS = {"cube": _render_cube, "sphere": _render_sphere, "cylinder": _render_cylinder}


def _place(
    rng: np.random.Generator, shape: str, size: int, horizon: float, phi: float
) -> _Placed:
    """Random size/orientation/position with the object inside the frame, standing on the floor."""
    width = rng.uniform(0.15, 0.45) * size
    yaw = rng.uniform(np.deg2rad(15.0), np.deg2rad(75.0))
    height = rng.uniform(0.7, 1.5) if shape == "cylinder" else 1.0
    unit = _Placed(shape, (0.0, 0.0), 1.0, yaw, phi, height)
    x0, y0, x1, y1 = _extent(unit)
    scale = width / (x1 - x0)
    x0, y0, x1, y1 = (scale * c for c in (x0, y0, x1, y1))
    margin = 0.03 * size
    bx = rng.uniform(margin - x0, size - margin - x1)
    lo = max(horizon + 0.06 * size, margin - y0)
    hi = size - margin - y1
    by = rng.uniform(lo, hi) if hi > lo else hi
    base = (float(bx), float(by))
    return _Placed(shape, base, float(scale), float(yaw), float(phi), float(height))


def render_scene(
    rng: np.random.Generator, color: str, shape: str, size: int = 224
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene; returns (RGB uint8 image (size, size, 3), bool object mask)."""
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown class {color}_{shape}")
    horizon = rng.uniform(0.22, 0.5) * size
    phi = rng.uniform(np.deg2rad(22.0), np.deg2rad(38.0))
    img = _background(rng, size, horizon)
    p = _place(rng, shape, size, horizon, phi)
    look = _Look(
        rgb=_jitter_color(rng, color),
        ambient=float(rng.uniform(0.22, 0.32)),
        shininess=float(rng.uniform(20.0, 60.0)),
        specular=float(rng.uniform(0.05, 0.2) if shape == "cube" else rng.uniform(0.25, 0.6)),
    )
    x0, y0, x1, y1 = _extent(p)
    _shadow(img, p.base, x1 - x0, phi, horizon, strength=float(rng.uniform(0.3, 0.5)))

    # object: supersample inside its (pixel-aligned) bounding box
    px0, py0 = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    px1, py1 = min(int(np.ceil(x1)) + 1, size), min(int(np.ceil(y1)) + 1, size)
    k = _SUPERSAMPLE
    offs = (np.arange(k) + 0.5) / k
    xs = (np.arange(px0, px1)[:, None] + offs[None, :]).ravel()
    ys = (np.arange(py0, py1)[:, None] + offs[None, :]).ravel()
    X, Y = np.meshgrid(xs, ys)
    sub_mask, sub_rgb = _RENDERERS[shape](X, Y, p, look)
    h, w = py1 - py0, px1 - px0
    cover = sub_mask.reshape(h, k, w, k).mean(axis=(1, 3))
    obj = (sub_rgb * sub_mask[..., None]).reshape(h, k, w, k, 3).sum(axis=(1, 3)) / (k * k)
    window = img[py0:py1, px0:px1]
    img[py0:py1, px0:px1] = window * (1.0 - cover[..., None]) + obj
    mask = np.zeros((size, size), dtype=bool)
    mask[py0:py1, px0:px1] = cover >= 0.5

    # mild sensor noise over the whole frame
    img += rng.normal(0.0, rng.uniform(1.5, 4.0), size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


def _assign_splits(rng: np.random.Generator, labels: np.ndarray) -> list[str]:
    """Stratified ~60/20/20 split; every class with >= 3 images appears in every split."""
    out = [""] * len(labels)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        m = len(idx)
        if m >= 3:
            n_cal = max(1, int(round(SPLIT_FRACTIONS[1] * m)))
            n_test = max(1, int(round(SPLIT_FRACTIONS[2] * m)))
        else:
            n_cal, n_test = 0, m - 1
        n_train = m - n_cal - n_test
        for j, i in enumerate(idx):
            out[i] = "train" if j < n_train else ("cal" if j < n_train + n_cal else "test")
    return out


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Write a PNG via a temporary name so a crash never leaves a truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG", optimize=False, compress_level=3)
    os.replace(tmp, path)


def generate_shapes(out_dir: Path, n: int = 600, seed: int = 0, size: int = 224) -> Path:
    """Write ``n`` scenes, masks and ``metadata.csv`` under ``out_dir``; return the metadata path.

    Classes are balanced (``n`` cycles through the 12 colour x shape classes) and the
    split is stratified per class, so with ``n >= 36`` each class is in every split.
    """
    if n < 1:
        raise ValueError("n must be positive")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "metadata.csv"
    if meta_path.exists():
        meta_path.unlink()  # an interrupted regeneration must not look finished

    master = np.random.default_rng([seed, 0x5A4E])
    labels = master.permutation(np.arange(n) % len(CLASSES))
    splits = _assign_splits(master, labels)

    rows: list[list[str | int]] = []
    for i in range(n):
        cls = CLASSES[int(labels[i])]
        color, shape = cls.split("_")
        img, mask = render_scene(np.random.default_rng([seed, i]), color, shape, size)
        img_rel, mask_rel = f"images/shape_{i:06d}.png", f"masks/shape_{i:06d}.png"
        _save_png(img, out_dir / img_rel)
        _save_png(mask.astype(np.uint8), out_dir / mask_rel)
        on = {f"color::{color}", f"shape::{shape}"}
        concepts = [int(col in on) for col in CONCEPT_COLUMNS]
        rows.append([img_rel, mask_rel, cls, *concepts, splits[i]])

    tmp = meta_path.with_name("metadata.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image_path", "mask_path", "class", *CONCEPT_COLUMNS, "split"])
        writer.writerows(rows)
    os.replace(tmp, meta_path)
    return meta_path
