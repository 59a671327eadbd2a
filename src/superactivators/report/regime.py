"""The data-regime figure (``benchmark ... --regime``): F1 and AUROC against the regime's knob."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..evaluate import methods as records
from .figures import LINE_COLORS, METHOD_COLORS, SA, STYLE, method_label, plt


def regime_figure(summary: pd.DataFrame, knob_label: str, log_x: bool = False) -> Figure:
    """One row per concept type, columns F1 and AUROC; a line per method through the knob values,
    error bars the std over repeats (``regime_summary.csv``'s ``*_mean`` / ``*_std``)."""
    types = list(dict.fromkeys(summary["concept_type"]))
    methods = records.order(list(dict.fromkeys(summary["method"])))
    with plt.rc_context(STYLE):
        fig = Figure(figsize=(10.5, 3.2 * len(types) + 0.6))
        axes = fig.subplots(len(types), 2, squeeze=False)
        for i, ct in enumerate(types):
            for j, metric in enumerate(("f1", "auroc")):
                ax = axes[i, j]
                for n, m in enumerate(methods):
                    d = summary[(summary.concept_type == ct) & (summary.method == m)].sort_values("knob")
                    if d.empty:
                        continue
                    x = d.knob.to_numpy(float) * (1 if log_x else 100)
                    err = np.nan_to_num(d[f"{metric}_std"].to_numpy(float))
                    ax.errorbar(x, d[f"{metric}_mean"].to_numpy(float), yerr=err, marker="o", ms=3.5, capsize=2.5,
                                lw=2.2 if m == SA else 1.2, zorder=3 if m == SA else 2, label=method_label(m),
                                color=METHOD_COLORS.get(records.base_of(m), LINE_COLORS[n % len(LINE_COLORS)]))
                knobs = np.sort(summary.knob.unique()).astype(float) * (1 if log_x else 100)
                if log_x:
                    ax.set_xscale("log", base=2)
                ax.set_xticks(knobs, _tick_labels(knobs, 1.3 if log_x else 0.0))
                ax.minorticks_off()
                ax.set_xlabel(knob_label + ("" if log_x else " (%)"))
                ax.set_ylabel(f"test {'F1' if metric == 'f1' else 'AUROC'}")
                ax.set_title(f"{ct}: {'F1 at the calibrated threshold' if metric == 'f1' else 'AUROC'}", loc="left")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False)
    return fig


def _tick_labels(knobs: np.ndarray, min_ratio: float) -> list[str]:
    """The knob values as labels, a label left blank where the next labelled knob is less than
    ``min_ratio`` times it (on a log axis 64 and 72 would overlap; the last one is kept)."""
    out, nxt = [""] * len(knobs), None
    for i in range(len(knobs) - 1, -1, -1):
        if nxt is None or knobs[i] * min_ratio <= nxt:
            out[i], nxt = f"{knobs[i]:g}", knobs[i]
    return out
