"""The report's localisation section: method x metric tables, F1 / IoU bars, maps side by side.

Reads what the pipeline wrote: ``localization_metrics.csv`` (every activation-based method at
every stage), ``attribution_metrics.csv`` (every method, attributions included, on the same
attributed test samples) and each attributed stage's ``attribution_maps.npz``. For each
concept type the section shows the attributed layer (or, without attributions, the layer of
the best SuperActivator localisation F1 on ``cal``).
"""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..evaluate.methods import ACTIVATION_MAPS, LOC_METHODS, MACRO, SA
from ..localize.attribution import load_maps
from ..store.layout import RunLayout, StageFolder
from ..store.tokens import TokenStore
from ..util.tables import read_table
from . import figures as F

MAP_EXAMPLES = 3  # test samples per concept in the maps


def _macro(table: pd.DataFrame, ct: str, layer: int) -> pd.DataFrame:
    m = table[(table["concept"] == MACRO) & (table["concept_type"] == ct) & (table["layer"] == layer)]
    cols = [c for c in ("method", "precision", "recall", "f1", "iou", "cal_f1", "seconds") if c in m.columns]
    return m[cols].reset_index(drop=True)


def pick_layer(loc: pd.DataFrame, attr: pd.DataFrame | None, ct: str) -> int | None:
    """The attributed layer of ``ct``, else the layer of the best SuperActivator ``cal`` localisation F1."""
    if attr is not None and (attr["concept_type"] == ct).any():
        return int(attr.loc[attr["concept_type"] == ct, "layer"].iloc[0])
    sa = loc[(loc["concept_type"] == ct) & (loc["method"] == SA) & (loc["concept"] == MACRO)]
    if sa.empty:
        return None
    return int(sa.sort_values(["cal_f1", "layer"], ascending=[False, True])["layer"].iloc[0])


def map_methods(attr: pd.DataFrame, ct: str) -> list[str]:
    """SuperActivator, the two-stage inversion and the two best attribution methods (test macro F1)."""
    m = attr[(attr["concept_type"] == ct) & (attr["concept"] == MACRO) & attr["method"].str.startswith("attr:")]
    best = m.sort_values("f1", ascending=False)["method"].head(2).tolist()
    have = set(attr.loc[attr["concept_type"] == ct, "method"])
    return [x for x in ACTIVATION_MAPS if x in have] + best


def localization_section(run_dir: Path, store: TokenStore, ds, stages: Sequence, ctypes: Sequence[str],
                         add_fig: Callable[[str, str, partial, str], str], table_html: Callable[..., str],
                         slugs: dict[str, str]) -> str:
    """HTML of the section (empty without ``localization_metrics.csv``); figures go through ``add_fig``,
    which queues a figure and returns its relative path."""
    path = RunLayout(run_dir).localization_metrics
    if not path.exists():
        return ""
    loc = read_table(path)
    apath = RunLayout(run_dir).attribution_metrics
    attr = read_table(apath) if apath.exists() else None
    parts = ["<section id='localization'><h2>Localisation: which tokens carry the concept?</h2>",
             "<p class='muted'>Token-level precision, recall, F1 and IoU on <i>test</i> against the masks / spans; every "
             "threshold calibrated on <i>cal</i>. <b>superactivator</b>: tail threshold in the samples the detector flags; "
             "<b>superactivator_joint</b>: detection and inversion N chosen together; <b>twostage</b>: tokens scored "
             "against the sample's own SuperActivator vector; <b>attr:…</b>: attribution maps of the concept's score of "
             "the global embedding (captum; RISE own), computed on the attributed test samples only, where every "
             "method is re-scored on exactly those samples.</p>"]
    by_stage = {(s.concept_type, s.layer): s for s in stages}
    for ct in ctypes:
        layer = pick_layer(loc, attr, ct)
        if layer is None:
            continue
        parts.append(f"<h3>{html.escape(ct)} concepts · layer {layer}</h3>")
        full = _macro(loc, ct, layer)
        order = [m for m in LOC_METHODS if m in set(full["method"])]
        full = full.set_index("method").loc[order].reset_index()
        parts.append("<p>Every test sample (macro over concepts):</p>" + table_html(full.round(4), sortable=True))
        bars = full
        if attr is not None and (attr["concept_type"] == ct).any():
            sub = _macro(attr, ct, layer)
            n = attr[(attr["concept_type"] == ct) & (attr["concept"] != MACRO)]["n_test_samples"]
            parts.append(f"<p>The attributed test samples (up to {int(n.max()) if len(n) else 0} detected samples per "
                         "concept; seconds = time to compute the maps on cal + test):</p>"
                         + table_html(sub.round(4), sortable=True))
            bars = sub
        rel = add_fig("loc_bars", ct, partial(F.localization_bars_figure, bars,
                                              f"localisation, {ct} concepts, layer {layer}"), f"loc_bars_{ct}")
        parts.append(f"<figure><img src='{html.escape(rel)}' alt='localisation F1 and IoU per method'>"
                     "<figcaption>Macro test F1 and IoU per method.</figcaption></figure>")
        st = by_stage.get((ct, layer))
        if attr is not None and st is not None and StageFolder(Path(st.path)).attribution_maps.exists() and ds is not None:
            parts.append(_maps(StageFolder(Path(st.path)).attribution_maps, attr, ct, layer, store, ds, add_fig, slugs))
    parts.append("</section>")
    return "".join(parts)


def _maps(path: Path, attr: pd.DataFrame, ct: str, layer: int, store: TokenStore, ds,
          add_fig: Callable, slugs: dict[str, str]) -> str:
    saved = load_maps(path)
    methods = map_methods(attr, ct)
    thr_tab = attr[(attr["concept_type"] == ct) & (attr["concept"] != MACRO)].set_index(["method", "concept"])
    out = ["<h4>Maps on test samples: " + ", ".join(html.escape(m.replace("attr:", "")) for m in methods)
           + " (framed: predicted tokens at the calibrated threshold; dashed / underlined: ground truth)</h4>"]
    for c, name in enumerate(saved["names"]):
        ids = saved["ids"][c][:MAP_EXAMPLES]
        if not len(ids):
            continue
        cidx = store.concepts.index(name)
        thrs = [float(thr_tab.loc[(m, name), "threshold"]) if (m, name) in thr_tab.index else np.inf for m in methods]
        keys = [m.replace("attr:", "") for m in methods]
        body = ""
        if store.info.modality == "image" and store.info.patch_grid:
            from PIL import Image  # noqa: PLC0415

            rows, cols = (int(v) for v in store.info.patch_grid)
            imgs, maps, gts, labels = [], [], [], []
            for i, s in enumerate(ids):
                imgs.append(np.asarray(Image.open(ds.image_path(int(s))).convert("RGB")))
                maps.append([saved["maps"].get((k, c, i), np.full(rows * cols, np.nan)) for k in keys])
                a, b = store.offsets[s], store.offsets[s + 1]
                gts.append(_gt(store, a, b, cidx).reshape(rows, cols))
                labels.append(f"sample {int(s)}")
            rel = add_fig("loc_maps", f"{ct}|{name}", partial(F.localization_maps_figure, imgs, maps, thrs, methods,
                                                              gts, labels, f"{name} · {ct} · layer {layer}"),
                          f"loc_maps_{ct}_{slugs.get(name, c)}")
            body = f"<img src='{html.escape(rel)}' alt='maps of {html.escape(name)}'>"
        elif store.char_spans is not None:
            for i, s in enumerate(ids):
                a, b = store.offsets[s], store.offsets[s + 1]
                gt = _gt(store, a, b, cidx)
                body += f"<div class='example'><div class='ex-head'><b>sample {int(s)}</b></div>"
                for k, m, t in zip(keys, methods, thrs):
                    mp = saved["maps"].get((k, c, i))
                    if mp is None:
                        continue
                    vmin = 0.0 if m.startswith("attr:") else None
                    body += (f"<div><span class='muted'>{html.escape(k)}</span> "
                             + F.text_tokens_html(ds.text(int(s)), store.char_spans[a:b], np.asarray(mp, float), t, gt,
                                                  vmin=vmin) + "</div>")
                body += "</div>"
        out.append(f"<details{' open' if c == 0 else ''}><summary>{html.escape(name)}</summary>{body}</details>")
    return "".join(out)


def _gt(store: TokenStore, a: int, b: int, c: int) -> np.ndarray:
    sh = next(s for s in store.shards if s.token_start <= a < s.token_stop)
    return store.token_labels(sh, np.array([c]))[a - sh.token_start:b - sh.token_start, 0]
