"""``benchmark axbench|sae-probes ... --regime scarcity|noise`` (issue 22, item 7).

Each setting is run once per regime point (:mod:`superactivators.data.regimes`): the same texts
with the point's train / cal labels, written to ``data/regimes/POINT/SETTING/`` (the folder keeps
the setting's name, so every point reads the hidden states the first one embedded, through the
shared states cache) and run as ``runs/SETTING-POINT`` (the unchanged-data point is the plain
benchmark run ``runs/SETTING``). The benchmark rows of each run (:func:`~superactivators.benchmark.setting_table`:
test labels, each concept at its best cal layer, cal labels being the point's) make
``regime_metrics.csv``; ``regime_summary.csv`` holds, per (regime, knob, concept type, method),
the mean and the standard deviation over repeats of the macro average over concepts (every
setting's concepts together); ``regime.png`` plots F1 and AUROC against the knob.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .benchmark import BenchmarkOptions, Setting, run_setting
from .data.regimes import NOISE, REPEATS, SCARCITY, RegimePoint, apply_point, positives_to_spare, regime_points
from .evaluate.methods import order
from .store.layout import BenchmarkLayout, RunLayout
from .store.tokens import read_manifest

REGIME_COLUMNS = ("setting", "regime", "knob", "repeat", "concept_type", "method", "concept", "layer", "auroc", "ap",
                  "f1", "tpr_at_fpr_1", "hard_negative_fpr", "n_pos", "n_neg", "n_train_pos", "n_cal_pos")
SUMMARY_METRICS = ("f1", "auroc", "ap", "tpr_at_fpr_1")
KNOB_LABEL = {SCARCITY: "positives kept per concept (train + cal)", NOISE: "share of train + cal labels flipped"}


def label_arrays(table: pd.DataFrame, concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(labels [N, C] uint8, known [N, C] bool)`` of a ``metadata.csv`` table (strings; blank = unknown)."""
    cells = table[concepts].astype(str).replace({"nan": ""}).to_numpy()
    known = np.char.strip(cells.astype(str)) != ""
    bad = known & ~np.isin(cells, ["0", "1"])
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"concept {concepts[c]!r}, row {r}: label {cells[r, c]!r} is not 0, 1 or blank")
    return (cells == "1").astype(np.uint8), known


def table_at(table: pd.DataFrame, concepts: list[str], point: RegimePoint, seed: int) -> pd.DataFrame:
    """The table with its concept labels at ``point`` (other columns, hard negatives included, unchanged)."""
    labels, known = label_arrays(table, concepts)
    lab, kn = apply_point(point, labels, known, table["split"].to_numpy(), seed)
    out = table.copy()
    for c, name in enumerate(concepts):
        out[name] = np.where(kn[:, c], lab[:, c].astype(str), "")
    return out


def _fit_positives(table: pd.DataFrame, concepts: list[str], split: str) -> dict[str, int]:
    labels, known = label_arrays(table, concepts)
    rows = (table["split"] == split).to_numpy()[:, None]
    return dict(zip(concepts, (labels.astype(bool) & known & rows).sum(axis=0).tolist()))


def run_regime(opts: BenchmarkOptions, settings: list[Setting], regime: str, repeats: int = REPEATS,
               progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every point of ``regime`` for every setting; writes and returns ``(regime_metrics, regime_summary)``."""
    layout = BenchmarkLayout(Path(opts.output_dir))
    rows, runs = [], []
    t0 = time.time()
    for s in settings:
        labels, known = label_arrays(s.table, s.concepts)
        points = regime_points(regime, positives_to_spare(labels, known, s.table["split"].to_numpy()), repeats)
        print(f"{s.name}: regime {regime}, {len(points)} points ({', '.join(p.name for p in points)})", flush=True)
        for i, p in enumerate(points):
            unchanged = p.full or (p.regime == NOISE and p.knob == 0)
            table = table_at(s.table, s.concepts, p, opts.seed)
            data = layout.data(s.folder) if unchanged else layout.regime_data(p.name, s.folder)
            run_name = s.run_name if unchanged else f"{s.run_name}-{p.name}"
            print(f"[{i + 1}/{len(points)}] {s.name} {p.name} ({time.time() - t0:.0f} s so far)", flush=True)
            df = run_setting(opts, s, data, run_name, table=table, progress=progress)
            runs.append(layout.runs / run_name)
            n_tr, n_cal = _fit_positives(table, s.concepts, "train"), _fit_positives(table, s.concepts, "cal")
            rows.append(df.assign(regime=p.regime, knob=p.knob, repeat=p.repeat,
                                  n_train_pos=df.concept.map(n_tr), n_cal_pos=df.concept.map(n_cal)))
    print(states_note(runs), flush=True)
    metrics = pd.concat(rows, ignore_index=True)[list(REGIME_COLUMNS)]
    summary = summarize(metrics)
    layout.root.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(layout.regime_metrics, index=False)
    summary.to_csv(layout.regime_summary, index=False)
    from .report.regime import regime_figure

    fig = regime_figure(summary, KNOB_LABEL[regime], log_x=regime == SCARCITY)
    fig.savefig(layout.regime_figure)
    return metrics, summary


def states_note(run_dirs: list[Path]) -> str:
    """One line: do the runs' token stores all read one shared hidden-states entry (embedded once)?"""
    entries = set()
    own = 0
    for run in run_dirs:
        for m in RunLayout(run).store_manifests():
            st = read_manifest(m.parent).get("states")
            if st:
                entries.add(str(st["path"]))
            else:
                own += 1
    if len(entries) == 1 and not own:
        return (f"hidden states: all {len(run_dirs)} regime runs read one shared cache entry (embedded once): "
                f"{next(iter(entries))}")
    return (f"hidden states: the {len(run_dirs)} regime runs read {len(entries)} shared cache entries and "
            f"{own} stores of their own (embed.store_cache off?): embedded more than once")


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (regime, knob, concept type, method): mean and std (ddof 1; blank for one repeat) over
    repeats of each repeat's macro average over concepts (every setting's, NaNs skipped)."""
    keys = ["regime", "knob", "concept_type", "method"]
    per_rep = metrics.groupby(keys + ["repeat"], sort=False)[list(SUMMARY_METRICS)].mean().reset_index()
    g = per_rep.groupby(keys, sort=False)
    out = g.size().rename("n_repeats").reset_index()
    for m in SUMMARY_METRICS:
        out[f"{m}_mean"] = g[m].mean().to_numpy()
        out[f"{m}_std"] = g[m].std(ddof=1).to_numpy()
    out["method"] = pd.Categorical(out.method, order(list(out.method.unique())), ordered=True)
    out = out.sort_values(["regime", "concept_type", "method", "knob"]).reset_index(drop=True)
    out["method"] = out.method.astype(str)
    return out


def _knob_text(regime: str, knob: float) -> str:
    return f"k={int(knob)}" if regime == SCARCITY else f"{knob * 100:.0f}%"


def format_summary(summary: pd.DataFrame, metric: str = "f1") -> str:
    """``metric`` mean ± std per method (rows) and knob (columns), one block per (regime, concept type)."""
    lines = []
    for (regime, ct), d in summary.groupby(["regime", "concept_type"], sort=False):
        knobs = sorted(d.knob.unique())
        lines.append(f"{regime} / {ct}: {metric} (mean ± std over repeats, macro over concepts)")
        lines.append(f"{'method':<22}" + "".join(f"{_knob_text(regime, k):>14}" for k in knobs))
        for m in order(list(d.method.unique())):
            r = d[d.method == m].set_index("knob")
            cells = []
            for k in knobs:
                mu, sd = r[f"{metric}_mean"].get(k, np.nan), r[f"{metric}_std"].get(k, np.nan)
                cells.append(f"{mu:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "        "))
            lines.append(f"{m:<22}" + "".join(f"{c:>14}" for c in cells))
        lines.append("")
    return "\n".join(lines)
