"""``repr`` of a finished run's result (:class:`~superactivators.pipeline.RunResult`): where it
is, what it holds, and the headline per concept type, short enough for a terminal; the same as
HTML for Jupyter."""

from __future__ import annotations

import html

import pandas as pd

from ..evaluate.methods import SA, WEIGHTED, is_baseline
from ..util.console import html_table, text_table


def headline_rows(best: pd.DataFrame | None, macro: pd.DataFrame) -> list[list[str]]:
    """Per concept type: SuperActivator's test F1 (weighted, each concept at its best layer; else
    the best macro), the best plain baseline's, and the two-sided verdict when there is one."""
    rows = []
    if best is not None and "concept" in best.columns:
        w = best[best["concept"] == WEIGHTED]
        for ct, g in w.groupby("concept_type", sort=False):
            g = g.set_index("method")
            base = g[[is_baseline(m) for m in g.index]]
            if SA not in g.index or base.empty:
                continue
            bm = str(base["f1"].idxmax())
            verdict = base.loc[bm].get("sa_verdict") if "sa_verdict" in base.columns else None
            rows.append([str(ct), f"{g.loc[SA, 'f1']:.3f}", bm, f"{base.loc[bm, 'f1']:.3f}",
                         str(verdict) if isinstance(verdict, str) else "–"])
        return rows
    for ct, g in macro.reset_index().groupby("concept_type", sort=False) if "concept_type" in macro.reset_index() else []:
        if SA not in g.columns:
            continue
        plain = [c for c in g.columns if is_baseline(c)]
        bm = max(plain, key=lambda c: g[c].max()) if plain else "–"
        rows.append([str(ct), f"{g[SA].max():.3f}", bm, f"{g[bm].max():.3f}" if plain else "–", "–"])
    return rows


HEADS = ["concept type", "SuperActivator F1", "best baseline", "its F1", "SuperActivator is"]


def run_result_text(res) -> str:
    """A few lines: run folder, store, stages, seconds, then the headline table."""
    st = res.store
    lines = [f"RunResult: {res.run_dir} ({res.seconds:.1f} s)",
             f"  {st.n_samples} samples, {st.n_tokens} tokens, {len(st.concepts)} concepts, layers "
             f"{', '.join(map(str, st.layers))}; {len(res.table)} metric rows (.table, .macro, .best)"]
    rows = headline_rows(res.best.table if res.best is not None else None, res.macro)
    if rows:
        lines.append(text_table(HEADS, rows, numeric=[False, True, False, True, False], indent="  "))
    return "\n".join(lines)


def run_result_html(res) -> str:
    rows = headline_rows(res.best.table if res.best is not None else None, res.macro)
    return (f"<div><b>RunResult</b> {html.escape(str(res.run_dir))} ({res.seconds:.1f} s), "
            f"{res.store.n_samples} samples, {len(res.store.concepts)} concepts" + html_table(HEADS, rows) + "</div>")
