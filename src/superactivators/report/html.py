"""One HTML page for a finished run: ``superactivators report RUN_DIR`` -> ``RUN_DIR/report/index.html``.

The page needs no network: figures are PNG files beside it (``report/figures/``, referenced
relatively; SVG twins next to them), tables are plain HTML made sortable by a few lines of
inline JavaScript, and one toolbar (concept type, layer, concept) swaps every figure.

What it shows, top to bottom: the headline (SuperActivator vs the best baseline at each
concept's best layer), the layer sweep, the selected concept (activation distributions with
the tail threshold, F1 vs N, example samples with their tokens' activations), the selected
layer (method comparison, F1 vs N per concept), and the full tables.

Data comes from the run folder: ``detection_metrics.csv``, the token store, and per stage
``summary.npz``, ``concepts/``, ``hist.npz`` and ``curves.npz``; the last two are computed
(and saved) here when a run predates them.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..concepts.types import load_concepts
from ..data.datasets import SAMPLE_LABELS_NOTE
from ..evaluate.calibrate import DEFAULT_GRID
from ..evaluate.detect import StagePredictions, run_detection
from ..evaluate.methods import MACRO, METHODS, SA, WEIGHTED, has_variant, is_baseline
from ..evaluate.ranking import auc_ap, roc_points
from ..evaluate.scoring import ScoreSummary
from ..stats.bestlayers import write_best_layers
from ..stats.bootstrap import ALPHA, BETTER, DEFAULT_RESAMPLES, WORSE, significance_words
from ..stats.sweep import best_layers, headline, layer_curve, load_metrics, per_concept_rows, sweep_macro
from ..store.artefacts import require_intact
from ..store.layout import RunLayout, StageFolder
from ..store.runs import StageRef, find_stages, find_store
from ..store.tokens import Shard, TokenStore
from ..util.io import atomic_write_bytes
from ..util.tables import read_table
from ..util.yamlio import load_yaml_file
from . import figures as F
from .figdata import F1Curves, TokenHistograms, ensure_histograms, sample_token_activations, save_curves
from .localization import localization_section

log = logging.getLogger(__name__)

def run_config(run_dir: Path) -> dict:
    path = RunLayout(run_dir).config
    cfg = load_yaml_file(path) if path.exists() else {}
    return cfg if isinstance(cfg, dict) else {}


def ensure_curves(stage: StageRef, store: TokenStore, grid: Sequence[float], methods: Sequence[str],
                  rule: str = "ours") -> F1Curves:
    """Load ``curves.npz`` or recompute it from the cached summary (detection only, cheap;
    ``rule``: the run's ``protocol``, which names its threshold rule)."""
    path = StageFolder(stage.path).curves
    if not path.exists():
        summary = ScoreSummary.load(StageFolder(stage.path).summary)
        res = run_detection(summary, store.labels, store.splits, methods, grid, best_threshold=False, rule=rule,
                            known=store.known)
        save_curves(path, res, grid)
    return F1Curves.load(path)


def load_best_layers(run_dir: Path, seed: int = 0) -> pd.DataFrame:
    """``best_layers.csv`` of the run, (re)computed and written when missing or older than
    ``detection_metrics.csv`` (runs from before it existed)."""
    path, metrics = RunLayout(run_dir).best_layers, RunLayout(run_dir).detection_metrics
    if path.exists() and path.stat().st_mtime >= metrics.stat().st_mtime:
        table = read_table(path, rebuild=f"delete it and run 'superactivators report {run_dir}' again")
        if "sa_p" not in table.columns or "sa_p_two" in table.columns:  # else from before the two-sided test
            return table
    return write_best_layers(run_dir, seed=seed).table


def slug(i: int, name: str) -> str:
    """A file-name-safe, unique name: index plus the readable part."""
    return f"c{i:02d}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "concept")


# --- sample examples ----------------------------------------------------------------------

def choose_examples(max_scores: np.ndarray, labels: np.ndarray, test_mask: np.ndarray, k: int = 3) -> list[tuple[int, str]]:
    """Sample ids to show for one concept: its strongest positive, a typical (median) positive,
    and the strongest negative (the likeliest false alarm), from ``test``; at most ``k``."""
    ids = np.flatnonzero(test_mask)
    pos, neg = ids[labels[ids] > 0], ids[labels[ids] == 0]
    out: list[tuple[int, str]] = []
    if pos.size:
        p = pos[np.argsort(-max_scores[pos], kind="stable")]
        out.append((int(p[0]), "strongest positive"))
        if p.size > 2:
            out.append((int(p[p.size // 2]), "median positive"))
    if neg.size:
        out.append((int(neg[np.argmax(max_scores[neg])]), "strongest negative"))
    return out[:k]


def _sample_rows(store: TokenStore, i: int) -> Shard:
    return Shard(i, i + 1, int(store.offsets[i]), int(store.offsets[i + 1]))


# --- building -----------------------------------------------------------------------------

@dataclass
class ReportBuilder:
    """Collects figures and HTML fragments for one run, then writes the page."""

    run_dir: Path
    out_dir: Path
    formats: Sequence[str] = ("png", "svg")
    n_examples: int = 3
    device: str = "cpu"
    workers: int = 1
    only_layers: tuple[int, ...] | None = None  # per-layer figures for these layers only
    progress: bool = False  # a progress bar while the figures are drawn
    jobs: list = field(default_factory=list)
    figs: dict[str, dict[str, str]] = field(default_factory=dict)  # view -> key -> relative png
    fragments: dict[str, dict[str, str]] = field(default_factory=dict)  # block -> key -> html
    notes: list[str] = field(default_factory=list)
    best_table: pd.DataFrame | None = None  # best_layers.csv (weighted F1, bootstrap errors, paired tests)
    rule: str = "ours"  # the run's threshold rule (its ``protocol``), for curves recomputed here

    def fig(self, view: str, key: str, make: partial, name: str) -> None:
        """Queue a figure: ``make()`` builds it; it is drawn and saved by :meth:`render`."""
        base = self.out_dir / "figures" / name
        self.jobs.append((make, base))
        self.figs.setdefault(view, {})[key] = base.with_suffix(f".{self.formats[0]}").relative_to(self.out_dir).as_posix()

    def render(self) -> None:
        """Draw every queued figure, in ``workers`` processes when there are many (drawing text
        dominates: ~0.3-0.7 s of CPU per figure); workers are spawned, never forked, so that no
        thread state of the parent (torch, BLAS) is copied into them."""
        from tqdm.auto import tqdm  # noqa: PLC0415

        jobs = [(make, base, tuple(self.formats)) for make, base in self.jobs]
        self.jobs.clear()
        bar = tqdm(total=len(jobs), desc="report figures", unit="fig", disable=not self.progress)
        if self.workers <= 1 or len(jobs) < 8:
            for job in jobs:
                F.render_job(job)
                bar.update()
            bar.close()
            return
        import multiprocessing as mp  # noqa: PLC0415
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            for _ in pool.map(F.render_job, jobs, chunksize=4):
                bar.update()
        bar.close()

    def build(self) -> Path:
        run_dir = self.run_dir
        table = load_metrics(run_dir)
        best = best_layers(table)
        macro = sweep_macro(best)
        curve = layer_curve(table)
        stages = find_stages(run_dir)
        if self.only_layers is not None:
            stages = [s for s in stages if s.layer in self.only_layers]
        if not stages:
            raise FileNotFoundError(f"{run_dir}: no finished stage folders under stages/ (for the layers asked)")
        store = find_store(run_dir)
        cfg = run_config(run_dir)
        self.best_table = load_best_layers(run_dir, int(cfg.get("seed") or 0))  # weighted F1 with errors
        grid = list(cfg.get("detect", {}).get("grid") or DEFAULT_GRID)
        methods = list(cfg.get("detect", {}).get("methods") or METHODS)
        self.rule = str(cfg.get("protocol") or "ours")  # the threshold rule follows the protocol
        # concept types / layers with rows in the table but no stage folder (runs from before
        # every type had stage folders) still get the sweep and method figures
        ctypes = list(dict.fromkeys([s.concept_type for s in stages] + list(table["concept_type"].unique())))
        layers = sorted({s.layer for s in stages} | set(int(v) for v in table["layer"].unique()))
        names = list(store.concepts)
        slugs = {c: slug(i, c) for i, c in enumerate(names)}
        plain = [m for m in dict.fromkeys(best["method"]) if not has_variant(m)]
        # layer sweep and method comparison at each concept's best layer
        self.fig("sweep", "all", partial(F.layer_sweep_figure, curve, ctypes, macro, plain), "sweep_macro_f1")
        rows = per_concept_rows(table)
        rows = rows[rows["support"] > 0]
        bsc = best[best["support"] > 0]
        bl = self.best_table
        weighted = bl[bl["concept"] == WEIGHTED]
        self.fig("best_layers", "all", partial(F.best_layer_histogram_figure, best, ctypes, layers), "best_layers")
        for ct in ctypes:
            b = bsc[bsc["concept_type"] == ct]
            summ = weighted[weighted["concept_type"] == ct].set_index("method")
            self.fig("methods_best", ct, partial(F.method_comparison_figure, b,
                                                 f"{ct} concepts, each at its best layer (chosen on cal)", plain,
                                                 summ if len(summ) else None),
                     f"methods_{ct}_best")
        by_stage = {(s.concept_type, s.layer): s for s in stages}
        sa = table[table["method"] == SA].set_index(["concept_type", "layer", "concept"])
        for (ct, layer), st in sorted(by_stage.items()):
            sub = rows[(rows["concept_type"] == ct) & (rows["layer"] == layer)]
            self.fig("methods_layer", f"{ct}|{layer}",
                     partial(F.method_comparison_figure, sub, f"{ct} concepts at layer {layer}", plain),
                     f"methods_{ct}_L{layer:02d}")
            hist = ensure_histograms(st.path, store, device=self.device)
            curves = ensure_curves(st, store, grid, methods, self.rule)
            self._stage_figures(ct, layer, hist, curves, sa, names, slugs)
            self._roc_figures(ct, layer, st, table, store, slugs)
        for ct in ctypes:
            self._overview_f1n(ct, layers, by_stage, store, grid, methods)
        self._examples(ctypes, layers, by_stage, best, sa, store, names, slugs)
        loc_html = self._localization(store, stages, ctypes, slugs)
        self.render()
        page = self._page(table, best, macro, curve, ctypes, layers, names, slugs, store, cfg)
        if loc_html:  # the localisation section sits before the tables
            page = page.replace('<section id="tables">', loc_html + '<section id="tables">', 1).replace(
                '<a href="#tables">tables</a>', '<a href="#localization">localisation</a><a href="#tables">tables</a>', 1)
        path = self.out_dir / "index.html"
        atomic_write_bytes(path, page.encode("utf-8"))
        return path

    def _stage_figures(self, ct: str, layer: int, hist: TokenHistograms, curves: F1Curves, sa: pd.DataFrame,
                       names: list[str], slugs: dict[str, str]) -> None:
        grid = curves.grid
        test_c, cal_c = curves.test.get(SA), curves.cal.get(SA)
        for c, name in enumerate(hist.names):
            thr, npct = (float(sa.loc[(ct, layer, name), "threshold"]), float(sa.loc[(ct, layer, name), "n_pct"])) \
                if (ct, layer, name) in sa.index else (np.nan, np.nan)
            ci = curves.names.index(name) if name in curves.names else None
            outside = int(hist.under[:, c].sum() + hist.over[:, c].sum())
            have = ci is not None and test_c is not None
            fig = partial(F.concept_figure, hist.edges[c], hist.counts[0, c], hist.counts[1, c], thr, npct,
                          grid if have else None, test_c[ci] if have else None,
                          cal_c[ci] if have and cal_c is not None else None,
                          f"{name}  ·  {ct} concept  ·  layer {layer}",
                          note=f"{outside} tokens beyond the bins, counted at the ends" if outside else "")
            self.fig("concept", f"{ct}|{layer}|{name}", fig, f"concept_{ct}_L{layer:02d}_{slugs[name]}")
        if test_c is not None:
            fig = partial(F.f1_vs_n_figure, grid, test_c, curves.names,
                          f"SuperActivator F1 vs N, {ct} concepts, layer {layer}")
            self.fig("f1n_layer", f"{ct}|{layer}", fig, f"f1n_{ct}_L{layer:02d}")

    def _overview_f1n(self, ct: str, layers: list[int], by_stage: dict, store: TokenStore, grid, methods) -> None:
        rows, labels, g = [], [], None
        for layer in layers:
            st = by_stage.get((ct, layer))
            if st is None:
                continue
            cv = ensure_curves(st, store, grid, methods, self.rule)
            if SA in cv.test:
                rows.append(np.nanmean(cv.test[SA], axis=0))
                labels.append(f"layer {layer}")
                g = cv.grid
        if rows:
            fig = partial(F.f1_vs_n_figure, g, np.vstack(rows), labels,
                          f"SuperActivator macro F1 vs N per layer, {ct} concepts", sequential=True,
                          mean_label="mean over layers")
            self.fig("f1n_all", ct, fig, f"f1n_{ct}_layers")

    def _examples(self, ctypes, layers, by_stage, best, sa, store: TokenStore, names, slugs) -> None:
        """Per (concept type, concept): a few test samples chosen at the concept's best layer,
        shown at every layer (so that depth can be compared on the same tokens)."""
        if self.n_examples <= 0:
            return
        ds = self._dataset(store)
        if ds is None:
            return
        test = store.splits == "test"
        summaries: dict[Path, ScoreSummary] = {}
        for ct in ctypes:
            own = [s for (t, _), s in sorted(by_stage.items()) if t == ct]
            if not own:
                continue
            bsa = best[(best["concept_type"] == ct) & (best["method"] == SA)].set_index("concept")
            chosen: dict[str, list[tuple[int, str]]] = {}
            for c, name in enumerate(names):
                bl = int(bsa.loc[name, "best_layer"]) if name in bsa.index else own[0].layer
                st = by_stage.get((ct, bl), own[0])
                if st.path not in summaries:
                    summaries[st.path] = ScoreSummary.load(StageFolder(st.path).summary)
                summ = summaries[st.path]
                if name not in summ.names:
                    continue
                chosen[name] = choose_examples(summ.sample_scores["max_token"][:, summ.names.index(name)],
                                               store.labels[:, c], test, self.n_examples)
            ids = sorted({i for v in chosen.values() for i, _ in v})
            for layer in layers:
                st = by_stage.get((ct, layer))
                if st is None:
                    continue
                cs = load_concepts(st.path / "concepts")
                hist = TokenHistograms.load(StageFolder(st.path).hist)
                acts = dict(zip(ids, sample_token_activations(store, cs, ids, self.device)))
                for c, name in enumerate(names):
                    if name not in cs.names or name not in chosen:
                        continue
                    j = cs.names.index(name)
                    thr = float(sa.loc[(ct, layer, name), "threshold"]) if (ct, layer, name) in sa.index else np.inf
                    key = f"{ct}|{layer}|{name}"
                    if store.info.modality == "image":
                        self._image_examples(ds, store, chosen[name], acts, j, c, thr, key, ct, layer, name, slugs)
                    else:
                        # white = the median out-of-concept test token, so that only signal is shaded
                        base = (F.hist_quantile(hist.edges[hist.names.index(name)],
                                                hist.counts[0, hist.names.index(name)], 0.5)
                                if name in hist.names else None)
                        self.fragments.setdefault("examples", {})[key] = self._text_examples(
                            ds, store, chosen[name], acts, j, c, thr, base)

    def _localization(self, store: TokenStore, stages, ctypes, slugs) -> str:
        """The localisation section (:mod:`superactivators.report.localization`), figures queued here."""
        def add(view: str, key: str, make: partial, name: str) -> str:
            self.fig(view, key, make, name)
            return self.figs[view][key]

        ds = self._dataset(store) if self.n_examples > 0 else None
        return localization_section(self.run_dir, store, ds, stages, ctypes, add, html_table, slugs)

    def _dataset(self, store: TokenStore):
        from ..data.datasets import load_dataset  # noqa: PLC0415

        src = store.info.dataset.get("source")
        try:
            outside = bool(store.info.dataset.get("allow_outside_paths", False))  # as the run allowed
            cols = store.info.dataset.get("columns") if not str(src).endswith(".json") else None  # CSV mapping
            return load_dataset(src, concepts=store.concepts, ground_truth="none",
                                allow_outside_paths=outside, columns=cols) if src else None
        except Exception as err:  # report without examples rather than fail
            self.notes.append(f"example samples left out: cannot read the dataset {src!r} ({err})")
            return None

    def _text_examples(self, ds, store: TokenStore, chosen, acts, j: int, c: int, thr: float,
                       base: float | None) -> str:
        if store.char_spans is None:
            return "<p class='muted'>this store has no token character spans</p>"
        parts = []
        for i, why in chosen:
            a = acts[i][:, j]
            sh = _sample_rows(store, i)
            spans = store.char_spans[sh.token_start:sh.token_stop]
            gt = store.token_labels(sh, np.array([c]))[:, 0]
            n_sa = int((a >= thr).sum())
            lab = "positive" if store.labels[i, c] else "negative"
            head = (f"<div class='ex-head'><b>sample {i}</b> · {html.escape(why)} · label {lab} · max activation "
                    f"{a.max():.3f} · <span class='sa-count'>{n_sa} SuperActivator token{'s' if n_sa != 1 else ''}"
                    f"</span> · {'detected' if n_sa else 'not detected'}</div>")
            parts.append("<div class='example'>" + head + F.text_tokens_html(ds.text(i), spans, a, thr, gt, vmin=base) + "</div>")
        return "".join(parts) or "<p class='muted'>no test samples</p>"

    def _image_examples(self, ds, store: TokenStore, chosen, acts, j, c, thr, key, ct, layer, name, slugs) -> None:
        from PIL import Image  # noqa: PLC0415

        grid = store.info.patch_grid
        if not grid:
            self.notes.append("image examples left out: the store records no patch_grid")
            return
        rows, cols = int(grid[0]), int(grid[1])
        panels = []
        for i, why in chosen:
            sh = _sample_rows(store, i)
            if sh.n_tokens != rows * cols:
                self.notes.append(f"sample {i}: {sh.n_tokens} tokens do not fill the {rows}x{cols} patch grid; skipped")
                continue
            img = np.asarray(Image.open(ds.image_path(i)).convert("RGB"))
            gt = store.token_labels(sh, np.array([c]))[:, 0].reshape(rows, cols)
            valid = store.valid[sh.token_start:sh.token_stop].reshape(rows, cols)
            lab = "positive" if store.labels[i, c] else "negative"
            panels.append(F.ImagePanel(img, acts[i][:, j].reshape(rows, cols), valid, gt, f"sample {i} · {why} · {lab}"))
        if panels:
            fig = partial(F.image_samples_figure, panels, thr, f"{name}  ·  {ct} concept  ·  layer {layer}")
            self.fig("image_examples", key, fig, f"images_{ct}_L{layer:02d}_{slugs[name]}")

    # --- HTML -----------------------------------------------------------------------------
    def _roc_figures(self, ct: str, layer: int, st, table: pd.DataFrame, store: TokenStore,
                     slugs: dict[str, str]) -> None:
        """Per concept, each score's test ROC curve with every calibrated threshold of the methods that
        threshold it drawn as a point (test FPR, TPR from the table); needs the sample scores that
        ``predictions.npz`` keeps since issue 21 (older runs: no ROC figure)."""
        files = StageFolder(st.path)
        if not files.predictions.exists():
            return
        p = StagePredictions.load(files.predictions)
        if not p.test_scores:
            return
        rows = per_concept_rows(table)
        rows = rows[(rows["concept_type"] == ct) & (rows["layer"] == layer)]
        for j, name in enumerate(p.names):
            if name not in store.concepts:
                continue
            y = store.labels[p.test_ids, store.concepts.index(name)].astype(bool)
            sub = rows[rows["concept"] == name].set_index("method")
            groups: list[tuple[list[str], np.ndarray]] = []  # methods sharing one score column
            for m, v in p.test_scores.items():
                col = np.asarray(v)[:, j]
                for ms, ref in groups:
                    if np.array_equal(ref, col):
                        ms.append(m)
                        break
                else:
                    groups.append(([m], col))
            curves = []
            for k, (ms, col) in enumerate(groups):
                fpr, tpr = roc_points(col, y)
                if np.isnan(fpr).all():
                    continue
                plain = [m for m in ms if not has_variant(m)] or ms
                lab = " =\n".join(F.method_label(m) for m in plain)  # one score, several methods
                color = F.METHOD_COLORS.get(plain[0], F.LINE_COLORS[k % len(F.LINE_COLORS)])
                pts = [(F.method_label(m), float(sub.loc[m, "fpr"]), float(sub.loc[m, "recall"]))
                       for m in ms if m in sub.index and pd.notna(sub.loc[m].get("fpr"))]
                auc = float(auc_ap(col[:, None], y[:, None])[0][0])
                curves.append(F.RocCurve(lab, color, fpr, tpr, auc, pts))
            if curves:
                self.fig("roc", f"{ct}|{layer}|{name}",
                         partial(F.roc_figure, curves, f"{name} · {ct} · layer {layer}: test ROC"),
                         f"roc_{ct}_L{layer:02d}_{slugs[name]}")

    def _card(self, ct: str, macro: pd.DataFrame) -> str:
        """Headline card: SuperActivator's weighted F1 ± error (macro beside it) vs the best plain
        baseline, with the paired test of the gap; macro only for tables without best_layers."""
        try:
            h = headline(macro, ct)
        except ValueError:
            return ""
        bl = self.best_table
        w = bl[(bl["concept_type"] == ct) & (bl["concept"] == WEIGHTED)].set_index("method") \
            if bl is not None else pd.DataFrame()
        if SA not in w.index:  # no best_layers table: the macro headline
            margin = h.get("margin")
            sign = "good" if margin is not None and margin >= 0 else "bad"
            base = (f"vs <b>{h['baseline_f1']:.3f}</b> for the best baseline ({F.method_label(str(h['best_baseline']))})"
                    f" <span class='delta {sign}'>{margin:+.3f}</span>") if margin is not None else ""
            return (f"<div class='card'><div class='card-t'>{html.escape(ct)} concepts</div>"
                    f"<div class='big'>{h[SA]:.3f}</div><div>SuperActivator macro test F1 {base}</div></div>")

        def pm(r: pd.Series) -> str:
            return f" ± {r['f1_err']:.3f}" if pd.notna(r.get("f1_err", np.nan)) else ""

        sa = w.loc[SA]
        base_rows = w[[is_baseline(m) for m in w.index]]
        text = ""
        if len(base_rows):
            bm = str(base_rows["f1"].idxmax())
            b = base_rows.loc[bm]
            d = float(sa["f1"] - b["f1"])
            p = b.get("sa_p_two", np.nan)
            words = significance_words(d, float(p), ALPHA) if pd.notna(p) else ""
            cls = {BETTER: "yes", WORSE: "worse"}.get(words, "no")
            sig = f" <span class='sig {cls}'>{words}, p = {p:.3f}</span>" if words else ""
            text = (f"<div>vs <b>{b['f1']:.3f}{pm(b)}</b> for the best baseline ({F.method_label(bm)}) "
                    f"<span class='delta {'good' if d >= 0 else 'bad'}'>{d:+.3f}</span>{sig}</div>")
        return (f"<div class='card'><div class='card-t'>{html.escape(ct)} concepts</div>"
                f"<div class='big'>{sa['f1']:.3f}<span class='pm'>{pm(sa)}</span></div>"
                f"<div>SuperActivator test F1 weighted by test positives (the paper's number; macro "
                f"{h[SA]:.3f})</div>{text}</div>")

    def _layer_choice(self) -> pd.DataFrame:
        """SuperActivator's row per concept: its layer, N, test F1 and 95 % interval."""
        bl = self.best_table
        rows = bl[(bl["method"] == SA) & bl["best_layer"].notna()]
        cols = [c for c in ("concept_type", "concept", "best_layer", "n_pct", "cal_f1", "f1", "f1_lo", "f1_hi", "support")
                if c in rows.columns]
        return rows[cols].rename(columns={"best_layer": "best layer", "n_pct": "N %", "f1": "test F1"})

    def _page(self, table, best, macro, curve, ctypes, layers, names, slugs, store: TokenStore, cfg) -> str:
        name = cfg.get("name") or self.run_dir.name
        model = store.info.model.get("id") or store.info.model.get("path", "?")
        n_split = {s: int((store.splits == s).sum()) for s in ("train", "cal", "test")}
        heads = [c for c in (self._card(ct, macro) for ct in ctypes) if c]
        if store.info.token_ground_truth == "sample":  # say it where the headline numbers are
            heads.insert(0, "<div class='card' id='sample-labels-note'><div class='card-t'>sample labels only</div>"
                            f"<div>{html.escape(SAMPLE_LABELS_NOTE[0].upper() + SAMPLE_LABELS_NOTE[1:])}</div></div>")
        drawn = self._drawn_layers() or list(layers)
        state = self._first_view(curve, ctypes, drawn, names)
        stage_tables = {}
        rows = per_concept_rows(table)
        for (ct, layer, concept), sub in rows.groupby(["concept_type", "layer", "concept"], sort=False):
            stage_tables[f"{ct}|{layer}|{concept}"] = html_table(
                sub[[c for c in ("method", "n_pct", "threshold", "cal_f1", "precision", "recall", "f1", "fpr", "auroc",
                                 "ap", "f1_at_prevalence", "hn_fpr", "hn_auroc", "support") if c in sub.columns]],
                sortable=False)
        macro_pv = table[table["concept"] == MACRO].pivot_table(index=["concept_type", "layer"], columns="method",
                                                                values="f1").reset_index()
        mcols = ["concept_type", "layer"] + [m for m in METHODS if m in macro_pv.columns] + sorted(
            c for c in macro_pv.columns if c not in METHODS and c not in ("concept_type", "layer"))
        data = {"figs": self.figs, "state": state, "svg": "svg" in self.formats, "frag": {"examples": self.fragments.get("examples", {}),
                                                            "stage_table": stage_tables}}
        opts = lambda vals, lab=str: "".join(f"<option value='{html.escape(str(v))}'>{html.escape(lab(v))}</option>" for v in vals)  # noqa: E731
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in dict.fromkeys(self.notes))
        ex_kind = "image" if store.info.modality == "image" else "text"
        page = PAGE.format(
            title=html.escape(f"SuperActivators report: {name}"),
            name=html.escape(str(name)), model=html.escape(str(model)), dataset=html.escape(store.info.dataset.get("name", "?")),
            n=store.n_samples, ntok=store.n_tokens, splits=", ".join(f"{k} {v}" for k, v in n_split.items()),
            layers=", ".join(map(str, layers)), ctypes=", ".join(map(html.escape, ctypes)), nconcepts=len(names),
            cards="".join(heads), peak=PEAK_NOTE, n_boot=DEFAULT_RESAMPLES,
            opt_ct=opts(ctypes), opt_layer=opts(drawn, lambda v: f"layer {v}"), opt_concept=opts(names),
            best_table=html_table(self.best_table.rename(columns={"best_layer": "best layer"}), table_id="t-best",
                                  filter_box=True),
            choice_table=html_table(self._layer_choice(), table_id="t-choice", filter_box=True),
            swept_table=html_table(macro, table_id="t-swept"),
            macro_table=html_table(macro_pv[mcols], table_id="t-macro"),
            all_table=html_table(table, table_id="t-all", filter_box=True),
            ex_kind=ex_kind, notes=f"<ul class='notes'>{notes}</ul>" if notes else "",
            data=json.dumps(data).replace("</", "<\\/"), css=CSS, js=JS,
            image_fig=IMAGE_FIG if ex_kind == "image" else TEXT_EXAMPLES,
            legend=IMAGE_LEGEND if ex_kind == "image" else TEXT_LEGEND,
        )
        return self._initial_src(page, state)

    def _drawn_layers(self) -> list[int]:
        """Layers with per-layer figures (``--layers`` draws a subset): the only ones the menu offers."""
        keys = [k for view in ("concept", "methods_layer", "f1n_layer") for k in self.figs.get(view, {})]
        return sorted({int(k.split("|")[1]) for k in keys})

    def _first_view(self, curve: pd.DataFrame, ctypes: list[str], drawn: list[int], names: list[str]) -> dict:
        """The selection the page opens on: the headline's (first) concept type at its best drawn
        layer (SuperActivator's macro F1 on cal, ties to the shallower layer) and the first concept
        with a figure there, so that no panel starts empty."""
        have = {tuple(k.split("|")[:2]) for k in self.figs.get("concept", {})}
        ct = next((t for t in ctypes if any(h[0] == t for h in have)), ctypes[0])
        sa_curve = curve[(curve["method"] == SA) & (curve["concept_type"] == ct)
                         & curve["layer"].isin(drawn)]
        rank = "cal_f1" if "cal_f1" in sa_curve else "f1"
        layer = (int(sa_curve.sort_values([rank, "layer"], ascending=[False, True])["layer"].iloc[0])
                 if len(sa_curve) else drawn[0])
        concept = next((n for n in names if f"{ct}|{layer}|{n}" in self.figs.get("concept", {})), names[0])
        return {"ct": ct, "layer": layer, "concept": concept}

    def _initial_src(self, page: str, state: dict) -> str:
        """Give every figure its initial ``src`` so that the page shows the default view without
        waiting for the script (the script then swaps them on every selection)."""
        keys = {"all": "all", "ct": state["ct"], "layer": f"{state['ct']}|{state['layer']}",
                "concept": f"{state['ct']}|{state['layer']}|{state['concept']}"}

        def put(m: re.Match) -> str:
            src = self.figs.get(m.group(1), {}).get(keys[m.group(2)])
            return m.group(0) + (f' src="{html.escape(src)}"' if src else " hidden")

        return re.sub(r'<img data-view="(\w+)" data-key="(\w+)"', put, page)


def html_table(df: pd.DataFrame, table_id: str = "", sortable: bool = True, filter_box: bool = False) -> str:
    """A plain HTML table; numbers right-aligned with 3 decimals and a raw ``data-v`` for sorting."""
    head = "".join(f"<th scope='col'>{html.escape(str(c))}</th>" for c in df.columns)
    num = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    body = []
    for row in df.itertuples(index=False):  # output formatting, one <tr> per table row
        cells = []
        for v, isnum in zip(row, num):
            if isnum:
                fv = float(v) if v is not None else np.nan
                txt = "–" if not np.isfinite(fv) else (f"{int(fv)}" if float(fv).is_integer() and abs(fv) < 1e15 else f"{fv:.3f}")
                cells.append(f"<td class='n' data-v='{fv if np.isfinite(fv) else ''}'>{txt}</td>")
            else:
                s = str(v)
                cls = " class='sa'" if s == SA else ""
                cells.append(f"<td{cls}>{html.escape(s)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attrs = (f" id='{table_id}'" if table_id else "") + (" class='sortable'" if sortable else "")
    box = (f"<input class='filter' type='search' placeholder='filter rows…' data-for='{table_id}' "
           f"aria-label='filter table rows'>") if filter_box and table_id else ""
    return (f"{box}<div class='tbl-wrap'><table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table></div>")


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, formats: Sequence[str] = ("png", "svg"),
                 n_examples: int = 3, device: str = "cpu", workers: int | None = None,
                 layers: Sequence[int] | None = None, progress: bool = False) -> Path:
    """Write ``out_dir/index.html`` (default ``RUN_DIR/report``) and its figures; returns the page path.

    ``workers``: processes drawing figures (default: up to 2, the CPUs this process may use).
    ``layers``: draw per-layer figures for these layers only (figure count grows with
    layers x concept types x concepts); tables and the sweep still cover every layer.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {os.path.abspath(run_dir)}")
    if not formats or formats[0] != "png":
        raise ValueError(f"formats must start with 'png' (the page shows PNG), got {list(formats)}")
    require_intact(run_dir)  # every recorded artefact against its checksum: damage names the file
    out = Path(out_dir) if out_dir is not None else RunLayout(run_dir).report
    out.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return ReportBuilder(run_dir, out, tuple(formats), n_examples, device, workers,
                         only_layers=None if layers is None else tuple(int(l) for l in layers),
                         progress=progress).build()


PEAK_NOTE = ("SuperActivator macro F1 on test as a function of N (the share of in-concept calibration tokens kept above "
             "the threshold), one line per layer: where the tail separates concept from noise. The paper reports "
             "peaks at 5-10 %.")

IMAGE_FIG = """<figure><img data-view="image_examples" data-key="concept" alt="image samples with patch activations">\
<div class="missing" hidden>no image samples for this selection</div>
<figcaption><a class="svg" href="#">SVG</a></figcaption></figure>"""

TEXT_EXAMPLES = '<div data-frag="examples" data-key="concept"></div>'

TEXT_LEGEND = """Token shade = activation (white: at or below the median out-of-concept token, darkest blue: τ);
<span class="tok sa">framed bold</span> = SuperActivator (activation ≥ τ); <span class="tok gt">underlined</span> = annotated
concept evidence. Hover a token for its value. The same samples are shown at every layer."""

IMAGE_LEGEND = """Left: each patch's activation over the image; right: SuperActivator patches (activation ≥ τ) framed in
vermillion, annotated concept patches dashed blue. The same images are shown at every layer."""

CSS = """
:root{--sa:#D55E00;--blue:#0072B2;--ink:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#f7f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:var(--bg)}
header{padding:22px 32px 10px;background:#fff;border-bottom:1px solid var(--line)}
h1{margin:0 0 4px;font-size:24px}
h2{margin:0 0 8px;font-size:19px}
h3{margin:18px 0 6px;font-size:16px}
.meta{color:var(--muted);font-size:13.5px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;display:flex;gap:18px;align-items:center;flex-wrap:wrap;box-shadow:0 2px 6px rgba(0,0,0,.04)}
nav label{font-size:13px;color:var(--muted)}
nav select{font:inherit;padding:3px 6px;margin-left:4px;border:1px solid #c9ced8;border-radius:6px;background:#fff}
nav a{font-size:13.5px;color:var(--blue);text-decoration:none}
nav .links{margin-left:auto;display:flex;gap:14px}
main{padding:18px 32px 40px;max-width:1400px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin-bottom:18px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:6px 0 14px}
.card{border:1px solid var(--line);border-left:5px solid var(--sa);border-radius:8px;padding:10px 16px;min-width:280px;max-width:460px;background:#fffaf6}
.card-t{font-size:13px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.big{font-size:34px;font-weight:700;color:var(--sa);line-height:1.1}
.delta{font-weight:700;padding:1px 6px;border-radius:5px}
.delta.good{background:#e3f4ec;color:#006b4e}.delta.bad{background:#fbe9e1;color:#a23d00}
.pm{font-size:18px;font-weight:600;margin-left:4px}
.sig{font-size:12.5px;padding:1px 6px;border-radius:5px}.sig.yes{background:#e3f4ec;color:#006b4e}.sig.no{background:#eef0f4;color:#5b6475}.sig.worse{background:#fbe9e1;color:#a23d00}
figure{margin:8px 0}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
figcaption{font-size:13px;color:var(--muted)}
.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}.row>figure{flex:1 1 480px;max-width:calc(50% - 9px)}
figure.wide img{max-width:1250px;width:100%}
@media (max-width:1000px){.row>figure{max-width:100%}}
.muted{color:var(--muted)}
.tbl-wrap{max-height:460px;overflow:auto;border:1px solid var(--line);border-radius:6px;margin:6px 0 4px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:4px 9px;border-bottom:1px solid #eef0f4;white-space:nowrap}
th{position:sticky;top:0;background:#f0f2f6;text-align:left;font-weight:600}
table.sortable th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.sa{color:var(--sa);font-weight:600}
.filter{font:inherit;font-size:13px;padding:4px 8px;border:1px solid #c9ced8;border-radius:6px;width:260px}
.example{border:1px solid var(--line);border-radius:8px;padding:8px 12px;margin:8px 0;background:#fcfcfd}
.ex-head{font-size:13px;color:var(--muted);margin-bottom:4px}
.sa-count{color:var(--sa);font-weight:600}
.tok-text{margin:0;line-height:2.0;font-size:15px}
.tok{border-radius:3px;padding:1px 1px}
.tok.sa{outline:2.5px solid var(--sa);outline-offset:0;font-weight:700}
.tok.gt{text-decoration:underline;text-decoration-thickness:2px;text-decoration-color:#E69F00;text-underline-offset:3px}
.trunc{color:#9aa1ad}
.legend{font-size:13px;color:var(--muted);margin:4px 0}
.legend .tok{display:inline-block;margin:0 3px}
.notes{color:#8a4b00;font-size:13px}
.missing{padding:30px;color:var(--muted);border:1px dashed #c9ced8;border-radius:6px;text-align:center}
"""

JS = r"""
const D = JSON.parse(document.getElementById('report-data').textContent);
const S = D.state;
const sel = {ct: document.getElementById('sel-ct'), layer: document.getElementById('sel-layer'),
             concept: document.getElementById('sel-concept')};
function keyFor(kind) {
  if (kind === 'ct') return S.ct;
  if (kind === 'layer') return S.ct + '|' + S.layer;
  if (kind === 'concept') return S.ct + '|' + S.layer + '|' + S.concept;
  return 'all';
}
function render() {
  document.querySelectorAll('img[data-view]').forEach(img => {
    const src = (D.figs[img.dataset.view] || {})[keyFor(img.dataset.key)];
    const miss = img.nextElementSibling;
    if (src) { if (img.getAttribute('src') !== src) img.src = src; img.hidden = false; if (miss) miss.hidden = true;
      const a = img.parentElement.querySelector('a.svg');
      if (a) { if (D.svg) a.href = src.replace(/\.png$/, '.svg'); else a.hidden = true; } }
    else { img.hidden = true; img.removeAttribute('src'); if (miss) miss.hidden = false; }
  });
  document.querySelectorAll('[data-frag]').forEach(el => {
    el.innerHTML = (D.frag[el.dataset.frag] || {})[keyFor(el.dataset.key)] || '<p class="muted">nothing to show for this selection</p>';
  });
  document.querySelectorAll('.cur-ct').forEach(e => e.textContent = S.ct);
  document.querySelectorAll('.cur-layer').forEach(e => e.textContent = S.layer);
  document.querySelectorAll('.cur-concept').forEach(e => e.textContent = S.concept);
}
for (const [k, el] of Object.entries(sel)) {
  el.value = String(S[k]);
  el.addEventListener('change', () => { S[k] = el.value; render(); });
}
function cellVal(td) { const v = td.dataset.v; return v === undefined ? td.textContent : (v === '' ? NaN : parseFloat(v)); }
document.querySelectorAll('table.sortable').forEach(t => {
  t.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const asc = th.getAttribute('aria-sort') !== 'ascending';
    t.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    const body = t.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = cellVal(a.cells[col]), y = cellVal(b.cells[col]);
      const nx = typeof x === 'number', ny = typeof y === 'number';
      let r;
      if (nx && ny) { r = isNaN(x) ? (isNaN(y) ? 0 : 1) : (isNaN(y) ? -1 : x - y); if (isNaN(x) || isNaN(y)) return r; }
      else r = String(x).localeCompare(String(y), undefined, {numeric: true});
      return asc ? r : -r;
    });
    body.append(...rows);
  }));
});
document.querySelectorAll('input.filter').forEach(inp => inp.addEventListener('input', () => {
  const q = inp.value.toLowerCase().trim();
  document.getElementById(inp.dataset.for).tBodies[0].querySelectorAll('tr').forEach(tr => {
    tr.hidden = q !== '' && !tr.textContent.toLowerCase().includes(q);
  });
}));
render();
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style></head>
<body>
<header>
<h1>SuperActivators · {name}</h1>
<div class="meta">dataset <b>{dataset}</b> ({n} samples: {splits}; {ntok:,} tokens) · model <b>{model}</b> ·
layers {layers} · concept types {ctypes} · {nconcepts} concepts · thresholds and layers chosen on <i>cal</i>, every number on <i>test</i></div>
</header>
<nav aria-label="selection">
<label>concept type<select id="sel-ct">{opt_ct}</select></label>
<label>layer<select id="sel-layer">{opt_layer}</select></label>
<label>concept<select id="sel-concept">{opt_concept}</select></label>
<span class="links"><a href="#summary">summary</a><a href="#concept">concept</a><a href="#layer">layer</a><a href="#tables">tables</a></span>
</nav>
<main>
<section id="summary">
<h2>Does the tail beat the aggregators?</h2>
<p class="muted">Each concept is read at its own best layer (highest F1 on <i>cal</i>); cards and method bars are test F1
weighted by test positives (the paper's number) ± the seed's bootstrap error ({n_boot} resamples of the test samples);
SuperActivator is "significantly better" or "significantly worse" than a method when a paired bootstrap on the same
resamples rejects "no difference" (two-sided p &lt; 0.05); otherwise there is "no significant difference".
A sample is detected when any of its tokens reaches the concept's tail threshold τ (SuperActivator); the baselines threshold one score per sample.</p>
<div class="cards">{cards}</div>
{notes}
<figure class="wide"><img data-view="sweep" data-key="all" alt="macro F1 per layer and method"><div class="missing" hidden>no figure</div>
<figcaption>Macro test F1 per layer (one line per method); dotted: SuperActivator with each concept at its best layer. <a class="svg" href="#">SVG</a></figcaption></figure>
<div class="row">
<figure><img data-view="methods_best" data-key="ct" alt="method comparison at the best layers"><div class="missing" hidden>no figure</div>
<figcaption>Method comparison for <b class="cur-ct"></b> concepts at their best layers: bar = weighted F1 ± error, dot = one concept; right: SuperActivator significantly better or worse than the method (two-sided p &lt; 0.05), or no significant difference (n.s.). <a class="svg" href="#">SVG</a></figcaption></figure>
<figure><img data-view="f1n_all" data-key="ct" alt="F1 vs N per layer"><div class="missing" hidden>no figure</div>
<figcaption>{peak} <a class="svg" href="#">SVG</a></figcaption></figure>
</div>
<h3 id="best-layers">Which layer each concept chose</h3>
<figure class="wide"><img data-view="best_layers" data-key="all" alt="histogram of best layers over concepts"><div class="missing" hidden>no figure</div>
<figcaption>How many concepts read SuperActivator best at each layer (highest F1 on <i>cal</i>), per concept type. <a class="svg" href="#">SVG</a></figcaption></figure>
{choice_table}
</section>
<section id="concept">
<h2>Concept <span class="cur-concept"></span> <span class="muted">· <span class="cur-ct"></span> · layer <span class="cur-layer"></span></span></h2>
<figure><img data-view="concept" data-key="concept" alt="in- vs out-of-concept activations and F1 vs N"><div class="missing" hidden>no figure for this selection</div>
<figcaption>Left: activations of test tokens inside the concept's annotated evidence (orange) and all other tokens (blue); the dashed line is the threshold τ calibrated on <i>cal</i>, the vermillion area the in-concept tail above it. Right: detection F1 as a function of N. <a class="svg" href="#">SVG</a></figcaption></figure>
<figure><img data-view="roc" data-key="concept" alt="test ROC curve per score with each calibrated threshold as a point"><div class="missing" hidden>no ROC figure (a run written before sample scores were kept)</div>
<figcaption>Test ROC curve of each method's score; each calibrated threshold is a point on its curve (test FPR, recall). SuperActivator's score is the max token, so its τ is a point on max token's curve: the two differ only in where the threshold sits (identical AUROC). <a class="svg" href="#">SVG</a></figcaption></figure>
<h3>Every method for this concept at this layer</h3>
<p class="muted">fpr = realised test false-positive rate of each method's calibrated threshold, beside its F1; auroc / ap: the ranking of its score (SuperActivator's equals max token's).</p>
<div data-frag="stage_table" data-key="concept"></div>
<h3>Test samples</h3>
<div class="legend" data-kind="{ex_kind}">{legend}</div>
{image_fig}
</section>
<section id="layer">
<h2>Layer <span class="cur-layer"></span> <span class="muted">· <span class="cur-ct"></span> concepts</span></h2>
<div class="row">
<figure><img data-view="methods_layer" data-key="layer" alt="method comparison at this layer"><div class="missing" hidden>no figure</div>
<figcaption>Every method at this layer: bar = macro test F1, dot = one concept. <a class="svg" href="#">SVG</a></figcaption></figure>
<figure><img data-view="f1n_layer" data-key="layer" alt="F1 vs N per concept"><div class="missing" hidden>no figure</div>
<figcaption>SuperActivator test F1 vs N, one line per concept. <a class="svg" href="#">SVG</a></figcaption></figure>
</div>
</section>
<section id="tables">
<h2>Tables</h2>
<p class="muted">Click a column header to sort; type to filter.</p>
<h3>Best layer per concept and method (chosen on cal, metrics on test; f1_lo / f1_hi: 95 % bootstrap interval,
f1_err: the seed's error; sa_diff: SuperActivator minus the method; paired bootstrap: sa_p one-sided p of "not better",
sa_p_two two-sided p of "no difference", sa_verdict its words)</h3>{best_table}
<h3>Macro over concepts at their best layers</h3>{swept_table}
<h3>Macro test F1 per layer</h3>{macro_table}
<h3>Every detection metric</h3>{all_table}
</section>
</main>
<script id="report-data" type="application/json">{data}</script>
<script>{js}</script>
</body></html>
"""
