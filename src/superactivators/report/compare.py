"""``superactivators compare RUN_DIR [RUN_DIR ...]``: the paper's table over finished runs.

Rows are (dataset · model · concept type), columns detection methods, each cell the test F1
with every concept at its own best layer (chosen on ``cal``), weighted by test positives, ±
the seed's bootstrap error (:mod:`superactivators.stats.bootstrap`). Per row the best method is
marked, and every other method whose gap to the best is not significant (paired bootstrap on
the same test resamples, one-sided p >= 0.05) is flagged: the data cannot tell it from the best.
Beside it, SuperActivator against every other method in words from the two-sided paired test
(``sa_verdict``: significantly better / significantly worse / no significant difference; ``sa_p_two``).
Written as CSV (long, every number), Markdown and LaTeX.

``metric`` picks the number in the cells: ``f1`` (default), ``auroc`` / ``ap`` (ranking metrics at
each concept's best-``cal_auroc`` layer, weighted by test positives, ± half the 95 % interval;
SuperActivator's equal max-token's: the same ranking), or ``tpr@fpr=1%`` (recall at the threshold
set to a 1 % false-positive rate on the ``cal`` negatives: the ``METHOD@fpr=1%`` rows). Against
SuperActivator, ``↓`` marks a method SuperActivator beats significantly and ``↑`` one that beats
SuperActivator significantly (the same one-sided paired test, each direction at p < 0.05).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.methods import METHODS, SA, WEIGHTED, base_of, fpr_of, has_variant, short_label
from ..stats.bestlayers import BestLayers, best_layer_table
from ..stats.bootstrap import ALPHA, DEFAULT_RESAMPLES, one_sided_p, percentile_interval, significance_words
from ..store.artefacts import require_intact
from ..store.layout import RunLayout
from ..util.io import atomic_write_bytes
from ..util.yamlio import load_yaml_file
from ..util.console import frame_text, wrap

BEST, TIED = "*", "†"
SA_BEATS, BEATS_SA = "↓", "↑"
LEGEND = (f"{BEST} best in its row; {TIED} not significantly below the best (paired bootstrap of weighted F1 "
          f"on the same test resamples, one-sided p >= {ALPHA:g}); ± = the seed's error (95 % interval half-widths "
          "of the concepts' F1, combined with the test-positive weights)")
SA_LEGEND = (f"; {SA_BEATS} SuperActivator significantly better than this method, {BEATS_SA} this method "
             f"significantly better than SuperActivator (paired bootstrap, one-sided p < {ALPHA:g} each way)")
METRIC_CHOICES = ("f1", "auroc", "ap", "tpr@fpr=1%", "tpr@fpr=5%")
METRIC_LABEL = {"f1": "weighted F1", "auroc": "weighted ROC AUC", "ap": "weighted average precision"}


def parse_metric(metric: str) -> float | None:
    """The target FPR of ``tpr@fpr=A%`` (``0.01``), ``None`` for f1 / auroc / ap; a bad name raises."""
    if metric in ("f1", "auroc", "ap"):
        return None
    alpha = fpr_of(metric.replace("tpr@", "x@", 1)) if metric.startswith("tpr@") else None
    if alpha is None:
        raise ValueError(f"compare --metric: expected f1, auroc, ap or tpr@fpr=A% (e.g. tpr@fpr=1%), got {metric!r}")
    return alpha


def metric_legend(metric: str) -> str:
    """What the cells of ``metric`` are, and how their ± and marks are computed."""
    if metric == "f1":
        return LEGEND + SA_LEGEND
    what = METRIC_LABEL.get(metric, f"weighted recall at the {metric[4:]} threshold set on cal negatives")
    note = " (SuperActivator's ranking is max token's: equal AUROC and AP by construction)" if metric in (
        "auroc", "ap") else ""
    return (f"{what}{note}; {BEST} best in its row; {TIED} not significantly below the best (paired bootstrap, "
            f"one-sided p >= {ALPHA:g}); ± = half the 95 % bootstrap interval" + (SA_LEGEND if metric != "f1" else ""))


def run_identity(run_dir: Path) -> tuple[str, str]:
    """(dataset, model) of a run, from its ``config.yaml``."""
    path = RunLayout(run_dir).config
    if not path.exists():
        raise FileNotFoundError(f"{os.path.abspath(path)} not found: is {run_dir} a run folder?")
    cfg = load_yaml_file(path)
    cfg = cfg if isinstance(cfg, dict) else {}
    data = str((cfg.get("data") or {}).get("path", "?"))
    dataset = data.split(":", 1)[1] if data.startswith("builtin:") else (
        Path(data).parent.name if Path(data).suffix == ".csv" else Path(data).name)
    model = str((cfg.get("embed") or {}).get("model", "?"))
    return dataset, Path(model).name if "/" in model and Path(model).exists() else model


@dataclass
class Comparison:
    """The long table (one row per run, concept type and method) and the runs' notes."""

    long: pd.DataFrame
    notes: list[str]
    metric: str = "f1"

    def methods(self) -> list[str]:
        names = list(dict.fromkeys(self.long["method"]))
        return [m for m in METHODS if m in names] + [m for m in names if m not in METHODS]

    def cell(self, r: pd.Series, fmt: str) -> str:
        if pd.isna(r["value"]):
            return ""
        err = "" if pd.isna(r["err"]) else (f" ± {r['err']:.3f}" if fmt != "tex" else f" $\\pm$ {r['err']:.3f}")
        v = f"{r['value']:.3f}{err}"
        if r.get("sa_better") is True:
            v += SA_BEATS if fmt != "tex" else "$\\downarrow$"
        elif r.get("sa_worse") is True:
            v += BEATS_SA if fmt != "tex" else "$\\uparrow$"
        if r["best"]:
            return {"md": f"**{v}**", "tex": f"\\textbf{{{v}}}"}.get(fmt, v + " " + BEST)
        if r["tied"]:
            return {"tex": v + "$^\\dagger$"}.get(fmt, v + " " + TIED)
        return v

    def wide(self, fmt: str = "text") -> pd.DataFrame:
        """Rows ``dataset · model · concept type``, columns methods, formatted cells."""
        rows = {}
        for key, g in self.long.groupby("row", sort=False):
            cells = {r["method"]: self.cell(r, fmt) for _, r in g.iterrows()}  # one cell per method
            rows[key] = [cells.get(m, "") for m in self.methods()]
        return pd.DataFrame.from_dict(rows, orient="index", columns=self.methods())

    def verdicts(self) -> list[str]:
        """One line per row and method: SuperActivator against it, in words (two-sided paired test)."""

        out = []
        if "sa_verdict" not in self.long.columns:
            return out
        for key, g in self.long.groupby("row", sort=False):
            out.append(f"{key}: SuperActivator vs")
            for _, r in g[g["sa_verdict"].notna()].iterrows():
                out.append(f"  {short_label(r['method']):<13} {r['sa_diff']:+.3f}  {r['sa_verdict']} (p = {r['sa_p_two']:.3f})")
        return out

    def text(self) -> str:
        out = frame_text(self.wide("text"), short=short_label)  # 100 columns, blocks of methods; every number in compare.csv
        lines = self.verdicts()
        sig = ("\n" + "\n".join(lines) + "\n(paired bootstrap, two-sided p < "
               f"{ALPHA:g}: significantly better / worse)") if lines else ""
        return (out + "\n" + wrap(metric_legend(self.metric)) + sig
                + "".join(f"\n{wrap('note: ' + n, indent='  ')}" for n in self.notes))

    def markdown(self) -> str:
        w = self.wide("md")
        head = "| run | " + " | ".join(w.columns) + " |\n|---|" + "---|" * len(w.columns) + "\n"
        body = "".join(f"| {i} | " + " | ".join(r) + " |\n" for i, r in zip(w.index, w.to_numpy()))
        return head + body + "\n" + metric_legend(self.metric).replace(BEST, "**bold**", 1) + "\n"

    def latex(self) -> str:
        w = self.wide("tex")

        def esc(s: str) -> str:
            return s.replace("_", "\\_").replace("&", "\\&").replace("%", "\\%").replace("·", "$\\cdot$")

        lines = ["\\begin{tabular}{l" + "c" * len(w.columns) + "}", "\\toprule",
                 "run & " + " & ".join(esc(c) for c in w.columns) + " \\\\", "\\midrule"]
        lines += [esc(i) + " & " + " & ".join(r) + " \\\\" for i, r in zip(w.index, w.to_numpy())]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> dict[str, Path]:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "compare.csv", "md": out / "compare.md", "tex": out / "compare.tex"}
        atomic_write_bytes(paths["csv"], self.long.to_csv(index=False).encode())
        atomic_write_bytes(paths["md"], self.markdown().encode())
        atomic_write_bytes(paths["tex"], self.latex().encode())
        return paths


def _cells(res: BestLayers, ct: str, g: pd.DataFrame, metric: str, alpha_fpr: float | None
           ) -> dict[str, dict[str, float]]:
    """Per method (rows of ``g``, weighted rows by method): value, err, lo, hi and its resampled values."""
    out: dict[str, dict[str, float]] = {}
    boot, rb = res.boot.get(ct), res.rank_boot.get(ct)
    for m, r in g.iterrows():
        c: dict = {"value": np.nan, "err": np.nan, "lo": np.nan, "hi": np.nan, "samples": None}
        if metric == "f1":
            c.update(value=r["f1"], err=r.get("f1_err", np.nan), lo=r.get("f1_lo", np.nan), hi=r.get("f1_hi", np.nan))
            if boot is not None and m in boot.methods:
                c["samples"] = boot.aggregate_samples("weighted")[:, boot.methods.index(m)]
        elif alpha_fpr is None:
            c.update(value=r.get(metric, np.nan), lo=r.get(f"{metric}_lo", np.nan), hi=r.get(f"{metric}_hi", np.nan))
            c["err"] = (c["hi"] - c["lo"]) / 2
            if rb is not None and m in rb.methods:
                c["samples"] = rb.aggregate_samples(metric, "weighted")[:, rb.methods.index(m)]
        else:
            c["value"] = r["recall"]
            if boot is not None and m in boot.methods:
                i, s = boot.methods.index(m), boot.scored
                tp, pos = boot.tp[:, i, s].sum(axis=1), (boot.tp[:, i, s] + boot.fn[:, i, s]).sum(axis=1)
                rec = np.divide(tp, pos, out=np.zeros_like(tp), where=pos > 0)
                lo, hi = percentile_interval(rec[:, None])
                c.update(lo=float(lo[0]), hi=float(hi[0]), err=float((hi[0] - lo[0]) / 2), samples=rec)
        out[str(m)] = c
    return out


def compare_runs(run_dirs: Sequence[str | Path], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 all_methods: bool = False, alpha: float = ALPHA, metric: str = "f1") -> Comparison:
    """``metric`` (weighted, ± error) per (run, concept type, method), best marked, non-significant gaps flagged.

    ``all_methods``: also the ``METHOD@best_threshold`` references (thresholds tuned freely on cal).
    ``metric``: ``f1``, ``auroc``, ``ap`` or ``tpr@fpr=A%`` (module doc).
    """
    alpha_fpr = parse_metric(metric)
    if not run_dirs:
        raise ValueError("compare needs at least one run folder")
    rows, notes = [], []
    for rd in map(Path, run_dirs):
        if rd.is_dir():
            require_intact(rd)  # every recorded artefact against its checksum: damage names the file
        dataset, model = run_identity(rd)
        res = best_layer_table(rd, n_resamples, seed, alpha)
        notes += [f"{rd}: {n}" for n in res.notes]
        t = res.table[res.table["concept"] == WEIGHTED]
        if alpha_fpr is not None:
            t = t[t["method"].map(lambda m: fpr_of(m) is not None and abs(fpr_of(m) - alpha_fpr) < 1e-12)]
        elif metric in ("auroc", "ap") or not all_methods:
            t = t[~t["method"].map(has_variant)]  # a variant ranks as its method
        elif metric == "f1":
            t = t[t["method"].map(lambda m: fpr_of(m) is None)]
        if metric != "f1" and alpha_fpr is None and metric not in t.columns:
            notes.append(f"{rd}: no {metric} column in best_layers (a run written before ranking metrics)")
            continue
        for ct, g in t.groupby("concept_type", sort=False):
            g = g.set_index("method")
            cells = _cells(res, ct, g, metric, alpha_fpr)
            vals = pd.Series({m: c["value"] for m, c in cells.items()}, dtype=float)
            if vals.isna().all():
                continue
            best = str(vals.idxmax())
            # exact ties share the mark (SuperActivator's AUROC is max_token's: the same score)
            tops = {str(m) for m in vals.index[vals == vals.max()]}
            sa_col = {"f1": "sa", "auroc": "sa_auroc", "ap": "sa_ap"}.get(metric)
            for m, r in g.iterrows():
                c = cells[str(m)]
                sb, ss = c["samples"], cells[best]["samples"]
                p = float(one_sided_p((ss - sb)[:, None])[0]) if sb is not None and ss is not None and m not in tops else np.nan
                p_sa = r.get(f"{sa_col}_p", np.nan) if sa_col else np.nan
                p_rev = r.get(f"{sa_col}_p_reverse", np.nan) if sa_col else np.nan
                diff = r.get(f"{sa_col}_diff", np.nan) if sa_col else np.nan
                p_two = r.get("sa_p_two" if sa_col == "sa" else f"{sa_col}_p_two_sided", np.nan) if sa_col else np.nan
                is_sa = base_of(str(m)) == SA
                rows.append({"row": f"{dataset} · {model} · {ct}", "run": str(rd), "dataset": dataset, "model": model,
                             "concept_type": ct, "method": m, "metric": metric, "value": c["value"], "err": c["err"],
                             "lo": c["lo"], "hi": c["hi"],
                             "f1": r["f1"], "f1_err": r.get("f1_err", np.nan),
                             "f1_lo": r.get("f1_lo", np.nan), "f1_hi": r.get("f1_hi", np.nan),
                             "n_concepts": r.get("n_concepts", np.nan), "support": r.get("support", np.nan),
                             "best": m in tops, "p_vs_best": p, "tied": bool(m not in tops and p >= alpha),
                             "sa_p": p_sa, "sa_p_reverse": p_rev, "sa_diff": diff, "sa_p_two": p_two,
                             "sa_verdict": (significance_words(float(diff), float(p_two), alpha)
                                            if not is_sa and pd.notna(p_two) and pd.notna(diff) else None),
                             "sa_better": bool(pd.notna(p_sa) and p_sa < alpha) if not is_sa else None,
                             "sa_worse": bool(pd.notna(p_rev) and p_rev < alpha) if not is_sa else None})
    long = pd.DataFrame(rows)
    if long.empty:
        raise ValueError(f"compare: no run has {metric} values")
    # two runs of the same dataset, model and concept type: tell them apart by folder
    runs_per_row = long.groupby("row")["run"].transform("nunique")
    long.loc[runs_per_row > 1, "row"] = long["row"] + " · " + long["run"]
    return Comparison(long, notes, metric)
