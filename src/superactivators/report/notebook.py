"""HTML for Jupyter: a detection (text with its SuperActivator tokens framed, or the image with its
SuperActivator patches) and a fitted detector's summary. Self-contained: inline CSS, PNGs as data
URIs, so a saved notebook shows them anywhere."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from . import figures as F

CSS = """<style>
.sa-nb{font-family:system-ui,sans-serif;font-size:14px}
.sa-nb table{border-collapse:collapse;margin:4px 0 8px}
.sa-nb th,.sa-nb td{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}
.sa-nb td.yes{color:#D55E00;font-weight:700}
.sa-nb .tok-text{margin:2px 0 10px;line-height:2.0}
.sa-nb .tok{border-radius:3px;padding:1px 1px}
.sa-nb .tok.sa{outline:2.5px solid #D55E00;font-weight:700}
.sa-nb .tok.gt{text-decoration:underline;text-decoration-color:#E69F00}
.sa-nb .concept{font-weight:600;margin-top:6px}
</style>"""


def figure_png_html(fig, width: int | None = None) -> str:
    """A matplotlib figure as an inline ``<img>`` (PNG data URI); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    F.plt.close(fig)
    w = f' width="{width}"' if width else ""
    return f'<img{w} src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def detection_html(det) -> str:
    """One :class:`~superactivators.detector.Detection`: verdicts, then each shown concept's evidence."""
    rows = []
    for name, present in det.present.items():
        thr = det.thresholds.get(name, np.nan)
        acts = det.activations.get(name)
        n_sa = int(np.sum(acts >= thr)) if acts is not None and np.isfinite(thr) else 0
        rows.append(f"<tr><td>{html.escape(name)}</td><td class=\"{'yes' if present else ''}\">"
                    f"{'present' if present else '–'}</td><td>{det.max_activation[name]:.3f}</td>"
                    f"<td>{thr:.3f}</td><td>{n_sa}</td>"
                    f"<td>{html.escape(', '.join(e.describe() for e in det.evidence.get(name, [])[:3]))}</td></tr>")
    table = ("<table><tr><th>concept</th><th>verdict</th><th>max activation</th><th>τ</th>"
             "<th>SuperActivators</th><th>evidence</th></tr>" + "".join(rows) + "</table>")
    parts = []
    for name in det.shown_concepts():
        acts, thr = det.activations.get(name), det.thresholds.get(name, np.inf)
        if acts is None:
            continue
        head = f'<div class="concept">{html.escape(name)}{"" if det.present.get(name) else " (not found; closest)"}</div>'
        if det.text is not None and det.token_spans is not None:
            finite = np.where(np.isfinite(acts), acts, np.nan)
            parts.append(head + F.text_tokens_html(det.text, det.token_spans, np.nan_to_num(finite, nan=np.nanmin(finite)),
                                                   thr))
        elif det.image is not None and det.patch_grid is not None:
            grid = tuple(det.patch_grid)
            valid = None if det.valid is None else np.asarray(det.valid).reshape(grid)
            a = np.where(np.isfinite(acts), acts, np.nan).reshape(grid)
            fig = F.image_activation_figure(det.image, np.nan_to_num(a, nan=np.nanmin(a)), thr, valid, title=name)
            parts.append(head + figure_png_html(fig, width=560))
    return f'<div class="sa-nb">{CSS}{table}{"".join(parts)}</div>'


def detector_html(detector) -> str:
    """A fitted :class:`~superactivators.detector.ConceptDetector`: model, and per concept its layer,
    N and threshold."""
    rows = []
    for layer, cs in sorted(detector.concept_sets.items()):
        for name in cs.names:
            loc = detector.localization_thresholds.get(name)
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{layer}</td><td>{html.escape(cs.kind)}</td>"
                        f"<td>{detector.n_pct.get(name, np.nan):g} %</td><td>{detector.thresholds[name]:.4f}</td>"
                        f"<td>{'' if loc is None else f'{loc:.4f}'}</td></tr>")
    return (f'<div class="sa-nb">{CSS}<b>ConceptDetector</b> — {html.escape(str(detector.embed.model))} '
            f"({html.escape(detector.modality)}), {len(rows)} concepts"
            "<table><tr><th>concept</th><th>layer</th><th>concepts</th><th>N</th><th>τ (detection)</th>"
            "<th>τ (localisation)</th></tr>" + "".join(rows) + "</table></div>")
