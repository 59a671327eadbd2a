"""Figures (matplotlib, Agg backend; PNG and SVG) and the HTML token view for text samples.

Colours follow the Okabe-Ito palette, which stays distinguishable under the common forms of
colour blindness; SuperActivator evidence is always vermillion, out-of-concept tokens sky
blue, in-concept tokens orange. Every function takes plain arrays (no run folder), so the
report and tests can call them on anything. Figures are built without pyplot's figure manager,
so in Jupyter a returned figure displays once, inline, and nothing else is drawn.
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

if "ipykernel" not in sys.modules:  # in Jupyter the inline backend stays: figures display there
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if "ipykernel" in sys.modules:  # load the inline backend now (pyplot loads it lazily), which
    plt.switch_backend(matplotlib.get_backend())  # registers the display of returned figures
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ..evaluate import methods as records  # noqa: E402
from ..evaluate.methods import ROLLING_MAX, SA, SUPERACTIVATOR_SAMPLE  # noqa: E402

OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
SUPER = OKABE_ITO["vermillion"]
IN_C = OKABE_ITO["orange"]
OUT_C = OKABE_ITO["sky"]
# one colour per method; SuperActivator always vermillion
METHOD_COLORS = {
    SA: SUPER, "global": OKABE_ITO["blue"], "max_token": OKABE_ITO["green"],
    "mean_token": OKABE_ITO["purple"], "last_token": OKABE_ITO["orange"], "random_token": "#7f7f7f",
    SUPERACTIVATOR_SAMPLE.name: OKABE_ITO["black"], ROLLING_MAX.name: OKABE_ITO["sky"],
}
# lines next to a vermillion SuperActivator line (vermillion left out; yellow last, it is faint on white)
LINE_COLORS = [OKABE_ITO[k] for k in ("blue", "orange", "green", "purple", "sky", "black", "yellow")]
STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.6, "figure.dpi": 100,
    "savefig.dpi": 150, "svg.fonttype": "none", "figure.constrained_layout.use": True,
}


def method_label(m: str) -> str:
    """Display name of a result row (the method record's label, its variant marked)."""
    return records.label(m)


def new_figure(w: float, h: float, ncols: int = 1, margins: dict | None = None, **kw) -> tuple[Figure, np.ndarray]:
    """A figure with ``ncols`` axes in the report style.

    ``margins`` (``subplots_adjust`` arguments) fixes the layout instead of matplotlib's
    constrained layout, which costs about a third of the drawing time in text measurement:
    used for the many per-concept figures, whose layout never changes.
    """
    style = dict(STYLE, **({"figure.constrained_layout.use": False} if margins else {}))
    with plt.rc_context(style):
        fig = Figure(figsize=(w, h))
        axes = fig.subplots(1, ncols, squeeze=False, **kw)[0]
        if margins:
            fig.subplots_adjust(**margins)
    return fig, axes


def save_figure(fig: Figure, base: Path, formats: Sequence[str] = ("png", "svg")) -> dict[str, Path]:
    """Write ``base.png`` / ``base.svg`` (no timestamps, so reruns give identical SVG) and close."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    with plt.rc_context(STYLE):
        for fmt in formats:
            path = base.with_suffix(f".{fmt}")
            meta = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(path, format=fmt, metadata=meta)
            out[fmt] = path
    plt.close(fig)
    return out


def render_job(job: tuple) -> None:
    """``(make, base, formats)``: build the figure with ``make()`` and save it (a worker's task;
    lives here so that a worker process imports matplotlib only)."""
    make, base, formats = job
    save_figure(make(), base, formats)


# --- activation distributions -------------------------------------------------------------

def display_bins(edges: np.ndarray, counts: np.ndarray, max_bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Trim empty end bins (over all rows of ``counts [k, B]``) and merge neighbours to ``<= max_bins``."""
    counts = np.atleast_2d(counts)
    occupied = np.flatnonzero(counts.sum(axis=0) > 0)
    if occupied.size == 0:
        return edges, counts
    a, b = occupied[0], occupied[-1] + 1
    e, c = edges[a:b + 1], counts[:, a:b]
    k = int(np.ceil(c.shape[1] / max_bins))
    if k > 1:
        pad = (-c.shape[1]) % k
        c = np.pad(c, ((0, 0), (0, pad)))
        c = c.reshape(c.shape[0], -1, k).sum(axis=2)
        step = e[1] - e[0]
        e = e[0] + step * k * np.arange(c.shape[1] + 1)
    return e, c


def plot_activation_histogram(ax, edges: np.ndarray, out_counts: np.ndarray, in_counts: np.ndarray,
                              threshold: float | None = None, n_pct: float | None = None,
                              max_bins: int = 60) -> None:
    """In- vs out-of-concept densities, the tail threshold as a line, the in-concept tail shaded."""
    e, c = display_bins(np.asarray(edges, float), np.vstack([out_counts, in_counts]), max_bins)
    widths = np.diff(e)
    dens = c / np.maximum(c.sum(axis=1, keepdims=True), 1) / widths[None, :]
    n_out, n_in = int(np.sum(out_counts)), int(np.sum(in_counts))
    has_t = threshold is not None and np.isfinite(threshold)
    above = (lambda k: f", {100 * share_above(e, c[k], threshold):.{2 if k == 0 else 1}f}% ≥ τ") if has_t else (lambda k: "")
    ax.stairs(dens[0], e, fill=True, color=OUT_C, alpha=0.45, label=f"out-of-concept tokens ({n_out:,}{above(0)})")
    ax.stairs(dens[0], e, color=OKABE_ITO["blue"], linewidth=1.0)
    ax.stairs(dens[1], e, fill=True, color=IN_C, alpha=0.45, label=f"in-concept tokens ({n_in:,}{above(1)})")
    ax.stairs(dens[1], e, color="#9a6a00", linewidth=1.0)
    ymax = float(dens.max()) if dens.size and dens.max() > 0 else 1.0
    if has_t:
        # shade the in-concept density at and above the threshold: the SuperActivator tail
        x = np.clip(e, threshold, None)
        tail = f"top {n_pct:g}% of cal in-concept" if n_pct is not None and np.isfinite(n_pct) else "above τ"
        ax.stairs(dens[1], x, fill=True, color=SUPER, alpha=0.85, label=f"SuperActivator tail ({tail})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.4, label=f"threshold τ = {threshold:.3g}")
    ax.set_xlabel("token activation")
    ax.set_ylabel("density")
    ax.set_ylim(0, ymax * 1.55)
    ax.legend(loc="upper left", frameon=False)


def hist_quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a histogram's mass, linear within the bin that holds it."""
    cum = np.cumsum(counts)
    if cum.size == 0 or cum[-1] == 0:
        return float("nan")
    target = q * cum[-1]
    b = int(np.searchsorted(cum, target))
    prev = cum[b - 1] if b > 0 else 0
    frac = (target - prev) / counts[b] if counts[b] else 0.0
    return float(edges[b] + frac * (edges[b + 1] - edges[b]))


def share_above(edges: np.ndarray, counts: np.ndarray, t: float) -> float:
    """Fraction of a histogram's mass at or above ``t`` (the bin holding ``t`` split linearly)."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    frac = np.clip((edges[1:] - t) / np.diff(edges), 0, 1)
    return float((counts * frac).sum() / total)


def plot_f1_vs_n(ax, grid: np.ndarray, test_curve: np.ndarray, cal_curve: np.ndarray | None = None,
                 chosen_n: float | None = None, color: str = SUPER) -> None:
    """One concept's F1 as a function of N (log x axis), cal dashed, the chosen N marked."""
    grid = np.asarray(grid, float)
    ax.plot(grid, test_curve, "-o", color=color, markersize=4, linewidth=2, label="test")
    if cal_curve is not None:
        ax.plot(grid, cal_curve, "--", color="black", linewidth=1.2, label="cal (chooses N)")
    if chosen_n is not None and np.isfinite(chosen_n):
        j = int(np.argmin(np.abs(grid - chosen_n)))
        ax.plot([grid[j]], [test_curve[j]], "o", markersize=11, markerfacecolor="none", markeredgecolor="black",
                markeredgewidth=1.6, label=f"chosen N = {chosen_n:g}%")
    _n_axis(ax, grid)
    ax.set_ylabel("detection F1")
    ax.legend(loc="best", frameon=False)


def _n_axis(ax, grid: np.ndarray) -> None:
    ax.set_xscale("log")
    ticks = [t for t in (2, 5, 10, 20, 50, 95) if grid.min() <= t <= grid.max()] or list(grid)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("N (% of in-concept cal tokens kept above τ)")
    ax.set_ylim(0, 1.02)


def concept_figure(edges: np.ndarray, out_counts: np.ndarray, in_counts: np.ndarray, threshold: float, n_pct: float,
                   grid: np.ndarray | None, test_curve: np.ndarray | None, cal_curve: np.ndarray | None,
                   title: str, note: str = "") -> Figure:
    """The key picture for one concept: activation distributions with the tail, and F1 vs N."""
    with_curve = grid is not None and test_curve is not None
    margins = {"left": 0.065 if with_curve else 0.1, "right": 0.985, "bottom": 0.14, "top": 0.84, "wspace": 0.2}
    fig, axes = new_figure(11.5 if with_curve else 7.5, 4.2, 2 if with_curve else 1, margins=margins,
                           **({"width_ratios": [1.7, 1]} if with_curve else {}))
    plot_activation_histogram(axes[0], edges, out_counts, in_counts, threshold, n_pct)
    axes[0].set_title("token activations on test" + (f"  ({note})" if note else ""), loc="left")
    if with_curve:
        plot_f1_vs_n(axes[1], grid, test_curve, cal_curve, n_pct)
        axes[1].set_title("SuperActivator detection vs N", loc="left")
    fig.suptitle(title, fontweight="bold", x=0.01, ha="left")
    return fig


@dataclass
class RocCurve:
    """One score's test ROC curve (a method, or several sharing the score) and its calibrated points."""

    label: str
    color: str
    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float
    points: list[tuple[str, float, float]] = field(default_factory=list)  # (label, test FPR, test TPR)


POINT_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def roc_figure(curves: Sequence[RocCurve], title: str) -> Figure:
    """Per concept: each score's test ROC curve, each of its calibrated thresholds a point on it
    (SuperActivator's tau sits on max token's curve: the same score)."""
    fig, axes = new_figure(10.0, 5.4, margins={"left": 0.07, "right": 0.6, "bottom": 0.1, "top": 0.88})
    ax = axes[0]
    ax.plot([0, 1], [0, 1], ":", color="#999999", linewidth=1)
    for c in curves:
        ax.plot(c.fpr, c.tpr, "-", color=c.color, linewidth=1.8, drawstyle="default",
                label=f"{c.label} (AUROC {c.auroc:.3f})")
        for k, (lab, x, y) in enumerate(c.points):
            ax.plot([x], [y], POINT_MARKERS[k % len(POINT_MARKERS)], color=c.color, markersize=8,
                    markeredgecolor="black", markeredgewidth=0.8, linestyle="none", label=f"  {lab}: FPR {x:.3f}, TPR {y:.3f}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_xlabel("false-positive rate on test")
    ax.set_ylabel("true-positive rate (recall) on test")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False, fontsize=7.5)
    fig.suptitle(title, fontweight="bold", x=0.01, ha="left")
    return fig


def f1_vs_n_figure(grid: np.ndarray, curves: np.ndarray, labels: Sequence[str], title: str,
                   sequential: bool = False, mean_label: str | None = "mean over concepts") -> Figure:
    """Several F1-vs-N curves ``[k, G]`` (concepts, or layers when ``sequential``) with their mean.

    The peak of the mean is marked: where detection works best, the paper's claim being 5-10 %.
    """
    grid = np.asarray(grid, float)
    curves = np.atleast_2d(np.asarray(curves, float))
    fig, axes = new_figure(7.2, 4.4)
    ax = axes[0]
    k = len(curves)
    labelled = sequential or k <= 2 * len(LINE_COLORS)
    for i in range(k):
        if sequential:
            color, style = plt.get_cmap("viridis")(0.85 * i / max(k - 1, 1)), "-"
        elif labelled:
            color, style = LINE_COLORS[i % len(LINE_COLORS)], "-" if i < len(LINE_COLORS) else "--"
        else:
            color, style = "#9a9a9a", "-"
        ax.plot(grid, curves[i], style, color=color, linewidth=1.7 if sequential else 1.2,
                alpha=1.0 if labelled else 0.6, label=labels[i] if labelled else None)
    if mean_label:
        mean = np.nanmean(curves, axis=0)
        ax.plot(grid, mean, "-o", color=SUPER, linewidth=3.2, markersize=5, label=mean_label, zorder=5)
        j = int(np.nanargmax(mean))
        ax.axvline(grid[j], color=SUPER, linestyle=":", linewidth=1.3)
        ax.text(1.03, 0.0, f"{mean_label}\npeaks at N = {grid[j]:g}%\n(F1 {mean[j]:.2f})", transform=ax.transAxes,
                ha="left", va="bottom", fontsize=10.5, fontweight="bold", color=SUPER)
    _n_axis(ax, grid)
    ax.set_ylabel("test detection F1")
    ax.set_title(title, loc="left")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


# --- methods and layers -------------------------------------------------------------------

def method_comparison_figure(per_concept: pd.DataFrame, title: str, methods: Sequence[str] | None = None,
                             summary: pd.DataFrame | None = None) -> Figure:
    """F1 per method as bars, each concept's F1 as a dot (the spread), SuperActivator on top.

    ``per_concept`` has columns method, concept, f1 (concepts without test positives removed
    by the caller). Without ``summary`` a bar is the macro F1 of the dots. With ``summary``
    (index method; columns f1, and optionally f1_err, sa_diff and sa_p_two, or the older
    one-sided sa_p) a bar is that value, typically F1 weighted by test positives, with
    ``± f1_err`` as an error bar, and every baseline is marked by the paired test against
    SuperActivator: ``SA better *`` / ``SA worse *`` at two-sided p < 0.05, ``n.s.`` when not.
    """
    methods = list(methods or dict.fromkeys(per_concept["method"]))
    marks = summary is not None and ("sa_p" in summary.columns or "sa_p_two" in summary.columns)
    fig, axes = new_figure(9.4 if marks else 7.6, 0.55 * len(methods) + 1.5)
    ax = axes[0]
    ax.grid(axis="y", visible=False)
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        f = per_concept.loc[per_concept["method"] == m, "f1"].to_numpy(float)
        y = len(methods) - 1 - i
        color = METHOD_COLORS.get(records.base_of(m), "#7f7f7f")
        has = summary is not None and m in summary.index
        value = float(summary.loc[m, "f1"]) if has else (float(np.nanmean(f)) if f.size else np.nan)
        err = float(summary.loc[m, "f1_err"]) if has and "f1_err" in summary.columns else np.nan
        ax.barh(y, value, height=0.62, color=color, alpha=0.9 if m == SA else 0.55,
                hatch="//" if records.has_variant(m) else None, edgecolor="black" if m == SA else "none",
                xerr=err if np.isfinite(err) else None, error_kw={"ecolor": "black", "capsize": 4, "lw": 1.3})
        ax.scatter(f, y + rng.uniform(-0.18, 0.18, f.size), s=14, color="black", alpha=0.6, zorder=3, linewidths=0)
        label = f"{value:.3f}" + (f" ± {err:.3f}" if np.isfinite(err) else "")
        ax.text(0.012, y, label, va="center", ha="left", fontsize=10.5, zorder=4,
                fontweight="bold" if m == SA else "normal", color="white" if m == SA else "black")
        pcol = "sa_p_two" if summary is not None and "sa_p_two" in summary.columns else "sa_p"
        p = float(summary.loc[m, pcol]) if has and pcol in summary.columns else np.nan
        if m != SA and np.isfinite(p):
            d = float(summary.loc[m, "sa_diff"]) if "sa_diff" in summary.columns else 1.0
            sig = p < 0.05 and (pcol == "sa_p" or d != 0)
            mark = ("SA better *" if d > 0 else "SA worse *") if sig else ("SA lower, n.s." if d < 0 else "n.s.")
            ax.text(1.04, y, f"{mark}\np = {p:.3f}", va="center", ha="left", fontsize=9, transform=ax.get_yaxis_transform(),
                    color=(SUPER if d > 0 else OKABE_ITO["blue"]) if sig else "#5b6475", zorder=4, clip_on=False)
    ax.set_yticks(range(len(methods))[::-1], [method_label(m) for m in methods])
    ax.set_xlim(0, 1.02)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    what = "weighted by test positives ± error" if summary is not None else "macro over concepts"
    ax.set_xlabel(f"test F1 (bar: {what}; dots: single concepts)")
    ax.set_title(title + ("\nright: SuperActivator vs the method, paired bootstrap (two-sided p)" if marks else ""),
                 loc="left")
    return fig


def best_layer_histogram_figure(best: pd.DataFrame, concept_types: Sequence[str], layers: Sequence[int],
                                method: str = SA) -> Figure:
    """How many concepts chose each layer (on cal), one panel per concept type (as the seed plots).

    ``best`` has columns concept_type, method, concept, best_layer (one row per concept).
    """
    layers = sorted(int(v) for v in layers)
    fig, axes = new_figure(4.6 * len(concept_types) + 0.8, 3.6, len(concept_types), sharey=True)
    for ax, ct in zip(axes, concept_types):
        b = best[(best["concept_type"] == ct) & (best["method"] == method)]["best_layer"].dropna().astype(int)
        counts = np.array([(b == layer).sum() for layer in layers])
        ax.bar(layers, counts, color=SUPER if method == SA else "#7f7f7f", width=0.75)
        ax.set_xticks(layers)
        ax.set_xlabel("best layer (chosen on cal)")
        ax.set_title(f"{ct}: {len(b)} concepts, {method_label(method)}", loc="left")
        ax.grid(axis="x", visible=False)
    axes[0].set_ylabel("concepts")
    return fig


def layer_sweep_figure(curve: pd.DataFrame, concept_types: Sequence[str], swept: pd.DataFrame | None = None,
                       methods: Sequence[str] | None = None) -> Figure:
    """Macro test F1 per layer, one line per method, one panel per concept type.

    ``curve``: concept_type, method, layer, f1. ``swept`` (optional): concept_type, method,
    f1 of the per-concept best layer, drawn as a dotted level at the right edge.
    """
    methods = list(methods or dict.fromkeys(curve["method"]))
    fig, axes = new_figure(5.2 * len(concept_types) + 1.8, 4.2, len(concept_types), sharey=True)
    for ax, ct in zip(axes, concept_types):
        sub = curve[curve["concept_type"] == ct]
        for m in methods:
            s = sub[sub["method"] == m].sort_values("layer")
            if s.empty:
                continue
            color = METHOD_COLORS.get(m, "#7f7f7f")
            sup = m == SA
            ax.plot(s["layer"], s["f1"], "-o", color=color, linewidth=3 if sup else 1.6, markersize=5 if sup else 3.5,
                    label=method_label(m), zorder=4 if sup else 2)
        if swept is not None:
            sw = swept[(swept["concept_type"] == ct) & (swept["method"] == SA)]
            if len(sw):
                v = float(sw["f1"].iloc[0])
                ax.axhline(v, color=SUPER, linestyle=":", linewidth=1.5)
                ax.annotate(f"best layer per concept: {v:.3f}", (0.99, v), xycoords=("axes fraction", "data"),
                            xytext=(0, 4), textcoords="offset points", ha="right", fontsize=9.5, color=SUPER)
        layers = sorted(sub["layer"].unique())
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_title(f"concept type: {ct}", loc="left")
        ax.set_ylim(0, 1.0)
    axes[0].set_ylabel("macro test detection F1")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


# --- samples ------------------------------------------------------------------------------

@dataclass
class ImagePanel:
    """One image sample for :func:`image_samples_figure`; grids are ``[rows, cols]`` over patches
    in the store's row-major patch order."""

    image: np.ndarray  # [H, W, 3]
    acts: np.ndarray  # [rows, cols] activations of one concept
    valid: np.ndarray | None = None  # [rows, cols] False = padding patch
    in_concept: np.ndarray | None = None  # [rows, cols] ground-truth patches
    label: str = ""

    def __post_init__(self) -> None:
        self.acts = np.asarray(self.acts, float)
        if self.acts.ndim != 2:
            raise ValueError(f"acts must be [rows, cols] over the patch grid, got shape {self.acts.shape}")
        self.valid = np.ones(self.acts.shape, bool) if self.valid is None else np.asarray(self.valid, bool)
        for what, arr in (("valid", self.valid), ("in_concept", self.in_concept)):
            if arr is not None and np.shape(arr) != self.acts.shape:
                raise ValueError(f"{what} has shape {np.shape(arr)}, acts {self.acts.shape}")


def image_samples_figure(panels: Sequence[ImagePanel], threshold: float, title: str = "") -> Figure:
    """Per sample (one row each): raw patch activations as a heatmap over the image, beside the
    SuperActivator patches (activation >= ``threshold``) outlined in vermillion.

    The image is stretched to the patch grid's extent; padding patches are left out of both
    panels; ground-truth patches are dashed sky blue. One colour scale is shared by all rows.
    """
    if not panels:
        raise ValueError("no image panels to draw")
    vals = np.concatenate([p.acts[p.valid] for p in panels])
    top = max(vals.max(), threshold) if vals.size and np.isfinite(threshold) else (vals.max() if vals.size else 1.0)
    vmin, vmax = (float(vals.min()), float(top)) if vals.size else (0.0, 1.0)
    head = 0.85 if title else 0.55  # inches above the first row: the title, then the row's two-line titles
    h = 4.5 * len(panels) + head - 0.45
    with plt.rc_context(dict(STYLE, **{"figure.constrained_layout.use": False})):
        fig = Figure(figsize=(9.4, h))
        gs = fig.add_gridspec(len(panels), 3, width_ratios=[1, 1, 0.045], left=0.01, right=0.91, wspace=0.06,
                              bottom=0.1 / h, top=1 - head / h, hspace=0.2)
        axes = np.array([[fig.add_subplot(gs[i, 0]), fig.add_subplot(gs[i, 1])] for i in range(len(panels))])
        cax = fig.add_subplot(gs[:, 2])
    hm = None
    for (a0, a1), p in zip(axes, panels):
        rows, cols = p.acts.shape
        extent = (0, cols, rows, 0)
        a0.imshow(p.image, extent=extent, interpolation="bilinear")
        hm = a0.imshow(np.where(p.valid, p.acts, np.nan), extent=extent, cmap="magma", alpha=0.6, vmin=vmin,
                       vmax=vmax, interpolation="nearest")
        a0.set_title(f"{p.label}\nraw patch activations" if p.label else "raw patch activations", loc="left",
                     fontsize=10.5)
        sup = p.valid & (p.acts >= threshold)
        a1.imshow(p.image, extent=extent, interpolation="bilinear")
        shade = np.zeros((rows, cols, 4))
        shade[..., 3] = np.where(sup, 0.0, 0.5)  # dim everything but the SuperActivators
        a1.imshow(shade, extent=extent, interpolation="nearest")
        for r, c in zip(*np.nonzero(sup)):  # one rectangle per SuperActivator patch (a handful)
            a1.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor=SUPER, linewidth=2.2))
        if p.in_concept is not None:
            for r, c in zip(*np.nonzero(np.asarray(p.in_concept, bool) & p.valid)):
                a1.add_patch(Rectangle((c + 0.1, r + 0.1), 0.8, 0.8, fill=False, edgecolor=OKABE_ITO["sky"],
                                       linewidth=1.0, linestyle="--"))
        n = int(sup.sum())
        a1.set_title(("\n" if p.label else "") + f"SuperActivators: {n} patch{'es' if n != 1 else ''} ≥ τ = {threshold:.3g}",
                     loc="left", fontsize=10.5)
        for ax in (a0, a1):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_xlim(0, cols)
            ax.set_ylim(rows, 0)
    cb = fig.colorbar(hm, cax=cax)
    cb.set_label("activation (left panels)")
    if np.isfinite(threshold):
        cb.ax.axhline(threshold, color=SUPER, linewidth=2.5)
    if title:  # a fixed 0.08 inch from the top whatever the rows (a figure-fraction y drifts into them)
        fig.suptitle(title, fontweight="bold", x=0.01, ha="left", va="top", y=1 - 0.08 / h)
    return fig


def image_activation_figure(image: np.ndarray, acts: np.ndarray, threshold: float, valid: np.ndarray | None = None,
                            in_concept: np.ndarray | None = None, title: str = "") -> Figure:
    """One image sample: raw activations vs SuperActivator patches (see :func:`image_samples_figure`)."""
    return image_samples_figure([ImagePanel(image, acts, valid, in_concept)], threshold, title)


def _hex_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def text_tokens_html(text: str, spans: np.ndarray, acts: np.ndarray, threshold: float,
                     in_concept: np.ndarray | None = None, vmin: float | None = None) -> str:
    """The text with each token's background shaded by its activation (blue, darker = higher).

    Tokens at or above ``threshold`` (SuperActivators) get a vermillion frame and bold type;
    ground-truth in-concept tokens are underlined. Each token's value is in its tooltip. Text
    between tokens (spaces, dropped specials) is kept as is.
    """
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    acts = np.asarray(acts, float)
    if len(spans) != len(acts):
        raise ValueError(f"{len(spans)} token spans but {len(acts)} activations")
    if len(acts) == 0:
        return f'<p class="tok-text">{html.escape(text)}</p>'
    lo = float(np.min(acts)) if vmin is None or not np.isfinite(vmin) else float(vmin)
    hi = float(threshold) if np.isfinite(threshold) else float(np.max(acts))
    alpha = np.clip((acts - lo) / max(hi - lo, 1e-12), 0, 1) * 0.8
    super_ = acts >= threshold
    gt = np.zeros(len(acts), bool) if in_concept is None else np.asarray(in_concept, bool)
    r, g, b = _hex_rgb(OKABE_ITO["blue"])
    out, pos = [], 0
    for k in np.argsort(spans[:, 0], kind="stable"):  # output formatting: one <span> per token
        s, e = int(spans[k, 0]), int(spans[k, 1])
        if s < pos or e <= s:
            continue  # overlapping or empty offset (e.g. merged byte-level pieces): skip
        out.append(html.escape(text[pos:s]))
        cls = "tok" + (" sa" if super_[k] else "") + (" gt" if gt[k] else "")
        style = f"background:rgba({r},{g},{b},{alpha[k]:.2f});" + ("color:#fff;" if alpha[k] > 0.5 else "")
        out.append(f'<span class="{cls}" style="{style}" title="{acts[k]:.3f}">{html.escape(text[s:e])}</span>')
        pos = e
    rest = text[pos:]
    if rest:
        out.append(f'<span class="trunc">{html.escape(rest)}</span>' if pos < len(text) and rest.strip() else html.escape(rest))
    return '<p class="tok-text">' + "".join(out) + "</p>"


# --- localisation ---------------------------------------------------------------------------
def localization_bars_figure(macro: pd.DataFrame, title: str) -> Figure:
    """Macro token-level F1 and IoU per localisation method as paired horizontal bars.

    ``macro`` has columns method, f1, iou (one row per method, in display order).
    """
    methods = list(macro["method"])
    fig, axes = new_figure(7.6, 0.42 * len(methods) + 1.5)
    ax = axes[0]
    ax.grid(axis="y", visible=False)
    y = np.arange(len(methods))[::-1]
    for off, col, color in ((0.2, "f1", SUPER), (-0.2, "iou", OKABE_ITO["blue"])):
        vals = macro[col].to_numpy(float)
        ax.barh(y + off, np.nan_to_num(vals), height=0.38, color=color, alpha=0.8, label=col.upper() if col == "iou" else "F1")
        for yy, v in zip(y + off, vals):
            if np.isfinite(v):
                ax.text(v + 0.01, yy, f"{v:.3f}", va="center", ha="left", fontsize=9)
    ax.set_yticks(y, [m.replace("attr:", "") + (" (attribution)" if m.startswith("attr:") else "") for m in methods])
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("test token-level score (macro over concepts)")
    ax.legend(loc="lower right")
    ax.set_title(title, loc="left")
    return fig


def localization_maps_figure(images: Sequence[np.ndarray], maps: Sequence[Sequence[np.ndarray]],
                             thresholds: Sequence[float], methods: Sequence[str], in_concept: Sequence[np.ndarray],
                             labels: Sequence[str], title: str = "") -> Figure:
    """Rows = samples, columns = methods: each method's map ``[rows, cols]`` as a heatmap over the
    image (own colour scale per panel), its predicted patches (map >= threshold) outlined in
    vermillion, ground-truth patches dashed sky blue."""
    n, m = len(images), len(methods)
    with plt.rc_context(dict(STYLE, **{"figure.constrained_layout.use": True})):
        fig = plt.figure(figsize=(2.6 * m, 2.75 * n + 0.5))
        axes = fig.subplots(n, m, squeeze=False)
    for i in range(n):
        gt = np.asarray(in_concept[i], bool)
        rows, cols = gt.shape
        for j, meth in enumerate(methods):
            ax = axes[i, j]
            a = np.asarray(maps[i][j], float).reshape(rows, cols)
            extent = (0, cols, rows, 0)
            ax.imshow(images[i], extent=extent, interpolation="bilinear")
            ax.imshow(a, extent=extent, cmap="magma", alpha=0.6, interpolation="nearest")
            pred = a >= thresholds[j] if np.isfinite(thresholds[j]) else np.zeros_like(gt)
            for r, c in zip(*np.nonzero(pred)):
                ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor=SUPER, linewidth=1.6))
            for r, c in zip(*np.nonzero(gt)):
                ax.add_patch(Rectangle((c + 0.15, r + 0.15), 0.7, 0.7, fill=False, edgecolor=OKABE_ITO["sky"],
                                       linewidth=0.9, linestyle="--"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_xlim(0, cols)
            ax.set_ylim(rows, 0)
            head = meth.replace("attr:", "")
            ax.set_title(f"{labels[i]}\n{head}" if j == 0 else f"\n{head}", loc="left", fontsize=9.5)
    if title:
        fig.suptitle(title, fontweight="bold", x=0.01, ha="left")
    return fig
