"""``superactivators compare RUN_DIR [RUN_DIR ...]``: the paper's table over finished runs.

Rows are (dataset · model · concept type), columns detection methods, each cell the test F1
with every concept at its own best layer (chosen on ``cal``), weighted by test positives, ±
the seed's bootstrap error (:mod:`superactivators.stats.bootstrap`). Per row the best method is
marked, and every other method whose gap to the best is not significant (paired bootstrap on
the same test resamples, one-sided p >= 0.05) is flagged: the data cannot tell it from the best.
Beside it, SuperActivator against every other method in words from the two-sided paired test
(``sa_verdict``: significantly better / significantly worse / no significant difference; ``sa_p_two``).
Written as CSV (long, every number), Markdown and LaTeX.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.methods import METHODS, SA, WEIGHTED, has_variant, short_label
from ..stats.bestlayers import best_layer_table
from ..stats.bootstrap import ALPHA, DEFAULT_RESAMPLES, significance_words
from ..store.artefacts import require_intact
from ..store.layout import RunLayout
from ..util.io import atomic_write_bytes
from ..util.yamlio import load_yaml_file
from ..util.console import frame_text, wrap

BEST, TIED = "*", "†"
LEGEND = (f"{BEST} best in its row; {TIED} not significantly below the best (paired bootstrap of weighted F1 "
          f"on the same test resamples, one-sided p >= {ALPHA:g}); ± = the seed's error (95 % interval half-widths "
          "of the concepts' F1, combined with the test-positive weights)")


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

    def methods(self) -> list[str]:
        names = list(dict.fromkeys(self.long["method"]))
        return [m for m in METHODS if m in names] + [m for m in names if m not in METHODS]

    def cell(self, r: pd.Series, fmt: str) -> str:
        if pd.isna(r["f1"]):
            return ""
        err = "" if pd.isna(r["f1_err"]) else (f" ± {r['f1_err']:.3f}" if fmt != "tex" else f" $\\pm$ {r['f1_err']:.3f}")
        v = f"{r['f1']:.3f}{err}"
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
        sig = ("\n" + "\n".join(lines) + "\n(paired bootstrap of weighted F1, two-sided p < "
               f"{ALPHA:g}: significantly better / worse)") if lines else ""
        return out + "\n" + wrap(LEGEND) + sig + "".join(f"\n{wrap('note: ' + n, indent='  ')}" for n in self.notes)

    def markdown(self) -> str:
        w = self.wide("md")
        head = "| run | " + " | ".join(w.columns) + " |\n|---|" + "---|" * len(w.columns) + "\n"
        body = "".join(f"| {i} | " + " | ".join(r) + " |\n" for i, r in zip(w.index, w.to_numpy()))
        return head + body + "\n" + LEGEND.replace(BEST, "**bold**", 1) + "\n"

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


def compare_runs(run_dirs: Sequence[str | Path], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 all_methods: bool = False, alpha: float = ALPHA) -> Comparison:
    """Weighted F1 ± error per (run, concept type, method), best marked, non-significant gaps flagged.

    ``all_methods``: also the ``METHOD@best_threshold`` references (thresholds tuned freely on cal).
    """
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
        if not all_methods:
            t = t[~t["method"].map(has_variant)]
        for ct, g in t.groupby("concept_type", sort=False):
            g = g.set_index("method")
            best = str(g["f1"].idxmax())
            boot = res.boot.get(ct)
            for m, r in g.iterrows():
                p = float(boot.paired(best, m, "weighted").p) if boot is not None and m != best else np.nan
                sa = boot.paired(SA, m, "weighted") \
                    if boot is not None and m != SA and SA in g.index else None
                rows.append({"row": f"{dataset} · {model} · {ct}", "run": str(rd), "dataset": dataset, "model": model,
                             "concept_type": ct, "method": m, "f1": r["f1"], "f1_err": r.get("f1_err", np.nan),
                             "f1_lo": r.get("f1_lo", np.nan), "f1_hi": r.get("f1_hi", np.nan),
                             "n_concepts": r.get("n_concepts", np.nan), "support": r.get("support", np.nan),
                             "best": m == best, "p_vs_best": p, "tied": bool(m != best and p >= alpha),
                             "sa_diff": float(sa.diff) if sa else np.nan, "sa_p_two": float(sa.p_two) if sa else np.nan,
                             "sa_verdict": significance_words(float(sa.diff), float(sa.p_two), alpha) if sa else None})
    long = pd.DataFrame(rows)
    # two runs of the same dataset, model and concept type: tell them apart by folder
    runs_per_row = long.groupby("row")["run"].transform("nunique")
    long.loc[runs_per_row > 1, "row"] = long["row"] + " · " + long["run"]
    return Comparison(long, notes)
