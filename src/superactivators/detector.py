"""The fitted detector a user takes away: concept vectors + calibrated tail thresholds.

``ConceptDetector.from_run`` picks, per concept, a layer (the best on ``cal`` by default) and
the calibrated SuperActivator threshold from a finished run; ``save``/``load`` keep it as
safetensors + ``cfg.json``; ``detect`` embeds new texts (or images) and says which concepts
are present and which tokens carry them (tokens whose activation reaches the threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .concepts.supervised import ConceptSet
from .concepts.types import load_concepts
from .encoders.base import EmbedConfig
from .encoders.factory import make_encoder
from .evaluate.methods import LOC_SUPERACTIVATOR, MACRO, SA, WEIGHTED
from .evaluate.scoring import make_scorer
from .store.artefacts import ArtefactError, load_json, rebuild_hint, recording, require_intact
from .store.layout import RunLayout
from .store.runs import find_stages, find_store
from .util.io import atomic_write_json
from .util.console import fmt_num, limited, text_table
from .util.tables import read_table
from .util.yamlio import load_yaml_file


@dataclass
class TokenEvidence:
    """One token that carries a concept: its index, activation and (text) character span, or
    (images) its patch row / column and the pixel box ``(x0, y0, x1, y1)`` it covers in the input."""

    index: int
    activation: float
    span: tuple[int, int] | None = None
    text: str | None = None
    row: int | None = None
    col: int | None = None
    box: tuple[int, int, int, int] | None = None

    def describe(self) -> str:
        """``'joy' (0.81)`` for a text token, ``patch r3 c5 px 42,70-56,84 (0.81)`` for an image patch."""
        if self.text is not None:
            return f"{self.text!r} ({self.activation:.2f})"
        if self.row is not None:
            px = "" if self.box is None else " px {},{}-{},{}".format(*self.box)
            return f"patch r{self.row} c{self.col}{px} ({self.activation:.2f})"
        return f"token {self.index} ({self.activation:.2f})"


@dataclass
class Detection:
    """The verdict for one sample; in Jupyter it renders as the text with its SuperActivator
    tokens framed, or the image with its SuperActivator patches (``_repr_html_``)."""

    present: dict[str, bool]
    max_activation: dict[str, float]
    evidence: dict[str, list[TokenEvidence]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    activations: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)  # concept -> [t]
    text: str | None = field(default=None, repr=False, compare=False)
    token_spans: np.ndarray | None = field(default=None, repr=False, compare=False)  # [t, 2] character spans
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # [H, W, 3]
    patch_grid: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    valid: np.ndarray | None = field(default=None, repr=False, compare=False)  # [t] False = padding patch

    def shown_concepts(self) -> list[str]:
        """The concepts found, or else the one closest to its threshold."""
        found = [c for c, p in self.present.items() if p]
        if found or not self.max_activation:
            return found
        return [max(self.max_activation, key=lambda c: self.max_activation[c] - self.thresholds.get(c, 0.0))]

    def _rows(self) -> list[list[str]]:
        return [[name, "yes" if self.present[name] else "–", f"{self.max_activation[name]:.3f}",
                 fmt_num(self.thresholds.get(name, float("nan"))),
                 ", ".join(e.describe() for e in self.evidence.get(name, [])[:3])] for name in self.present]

    def __repr__(self) -> str:
        """A short table: per concept, present or not, max activation, τ and the top evidence."""
        n = sum(self.present.values())
        rows, more = limited(self._rows())
        head = f"Detection: {n} of {len(self.present)} concepts present" + ("" if n else " (no concept found)")
        return "\n".join([head, text_table(["concept", "present", "max", "τ", "evidence"], rows,
                                             numeric=[False, False, True, True, False])] + ([more] if more else []))

    def _repr_html_(self) -> str:
        from .report.notebook import detection_html  # noqa: PLC0415 - matplotlib only when rendered

        return detection_html(self)


@dataclass
class ConceptDetector:
    """Per-concept (layer, vector, threshold); scores with one forward pass for all layers."""

    embed: EmbedConfig
    modality: str
    concept_sets: dict[int, ConceptSet]  # layer -> the concepts detected at that layer
    thresholds: dict[str, float]  # concept -> SuperActivator threshold tau_c(N*)
    n_pct: dict[str, float]
    # concept -> the token threshold calibrated for localisation on cal (token F1 inside the
    # spans / masks; the run's localization_metrics.csv); evidence tokens use it when present
    localization_thresholds: dict[str, float] = field(default_factory=dict)
    _encoder: object = field(default=None, repr=False, compare=False)

    @property
    def concepts(self) -> list[str]:
        return [n for cs in self.concept_sets.values() for n in cs.names]

    @property
    def units(self) -> dict[str, str]:
        """Unlabelled concept types: the unit (cluster, SAE unit) each concept was matched to."""
        return {n: u for cs in self.concept_sets.values() for n, u in zip(cs.names, cs.units or [])}

    def __repr__(self) -> str:
        """A short table (concept, layer, N, τ), not the vectors: ``print(detector)`` fits a terminal."""
        rows = [[name, str(layer), fmt_num(self.n_pct.get(name, float("nan"))), fmt_num(self.thresholds[name])]
                for layer, cs in sorted(self.concept_sets.items()) for name in cs.names]
        rows, more = limited(rows)
        kinds = ", ".join(dict.fromkeys(cs.kind for cs in self.concept_sets.values()))
        head = (f"ConceptDetector: {len(self.concepts)} {kinds} concepts on {self.embed.model} ({self.modality}), "
                f"layers {', '.join(map(str, sorted(self.concept_sets)))}")
        return "\n".join([head, text_table(["concept", "layer", "N %", "τ"], rows, numeric=[False, True, True, True])]
                         + ([more] if more else []))

    def _repr_html_(self) -> str:
        from .report.notebook import detector_html  # noqa: PLC0415

        return detector_html(self)

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str | Path, concept_type: str = "linsep", layer: int | str = "best",
                 concepts: Sequence[str] | None = None, trust_remote_code: bool = False) -> "ConceptDetector":
        """Build from a finished run: ``layer='best'`` picks each concept's best layer by cal F1.

        The model may run its own code only if ``trust_remote_code`` is passed here: the run
        folder's ``config.yaml`` cannot switch it on (a shared folder must not run code).
        """
        run_dir = Path(run_dir)
        run = RunLayout(run_dir)
        if not run.config.is_file():
            raise FileNotFoundError(f"not a finished run folder: {run_dir.resolve()} (no config.yaml and "
                                    "detection_metrics.csv; give the folder `superactivators run` printed)")
        require_intact(run.config)  # each file against its checksum first; concepts: checked on load
        cfg = load_yaml_file(run.config)
        if not run.detection_metrics.is_file():
            raise FileNotFoundError(f"not a finished run folder: {run_dir.resolve()} (no detection_metrics.csv; "
                                    "give the folder `superactivators run` printed)")
        require_intact(run.detection_metrics)
        table = read_table(run.detection_metrics)
        rows = table[(table.method == SA) & (table.concept_type == concept_type)
                     & ~table.concept.isin([MACRO, WEIGHTED])]
        if rows.empty:
            raise ValueError(f"{run_dir}: no SuperActivator results for concept type {concept_type!r}")
        if concepts is not None:
            missing = sorted(set(concepts) - set(rows.concept))
            if missing:
                raise ValueError(f"concepts not in the run: {missing}")
            rows = rows[rows.concept.isin(concepts)]
        if layer == "best":
            rows = rows.sort_values(["concept", "cal_f1", "layer"], ascending=[True, False, True])
            rows = rows.drop_duplicates("concept")
        else:
            rows = rows[rows.layer == int(layer)]
            if rows.empty:
                raise ValueError(f"{run_dir}: layer {layer} not in the run")
        stages = {(st.layer, st.concept_type): st.path for st in find_stages(run_dir)}
        concept_sets: dict[int, ConceptSet] = {}
        for lay, grp in rows.groupby("layer"):
            stage = stages.get((int(lay), concept_type))
            if stage is None or not ConceptSet.exists(stage / "concepts"):
                raise FileNotFoundError(f"{run_dir}: no saved {concept_type} concepts for layer {lay}")
            cs = load_concepts(stage / "concepts")
            concept_sets[int(lay)] = cs.subset([cs.names.index(c) for c in grp.concept])
        embed = EmbedConfig(**{**cfg["embed"], "layers": sorted(concept_sets), "trust_remote_code": trust_remote_code})
        return cls(
            embed=embed, modality=find_store(run_dir).info.modality, concept_sets=concept_sets,
            thresholds=dict(zip(rows.concept, rows.threshold.astype(float))),
            n_pct=dict(zip(rows.concept, rows.n_pct.astype(float))),
            localization_thresholds=_localization_thresholds(run, concept_type, rows),
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for layer, cs in self.concept_sets.items():
            cs.save(path / f"layer_{layer:02d}")
        with recording(path / "detector.json"):  # the detector's own checksums.json; checked by load
            atomic_write_json(path / "detector.json", {
                "embed": {**asdict(self.embed), "trust_remote_code": False},  # only ever a load-time choice
                "modality": self.modality, "layers": sorted(self.concept_sets),
                "thresholds": self.thresholds, "n_pct": self.n_pct,
                "localization_thresholds": self.localization_thresholds,
            })

    @classmethod
    def load(cls, path: str | Path, trust_remote_code: bool = False) -> "ConceptDetector":
        """A saved detector; its model runs its own code only if ``trust_remote_code`` is passed here.

        Every file is checked against the checksums recorded by :meth:`save`; a damaged one is an
        error naming it."""
        path = Path(path)
        if not (path / "detector.json").exists():
            raise FileNotFoundError(f"no saved detector at {path} (missing detector.json)")
        d = load_json(path / "detector.json")
        try:
            embed = EmbedConfig(**{**d["embed"], "trust_remote_code": trust_remote_code})
            layers, thresholds, n_pct = [int(l) for l in d["layers"]], d["thresholds"], d["n_pct"]
            modality, loc = d["modality"], d["localization_thresholds"]
        except (KeyError, TypeError, ValueError) as err:
            raise ArtefactError(f"{path / 'detector.json'}: not a saved detector ({type(err).__name__}: {err}); "
                                f"{rebuild_hint(path / 'detector.json')}") from None
        return cls(embed=embed, modality=modality, concept_sets={l: load_concepts(path / f"layer_{l:02d}") for l in layers},
                   thresholds=thresholds, n_pct=n_pct, localization_thresholds=loc)

    # --- inference ----------------------------------------------------------------------------
    def _enc(self):
        if self._encoder is None:
            self._encoder = make_encoder(self.embed, self.modality)
        return self._encoder

    def activations(self, inputs: Sequence) -> tuple[dict[str, np.ndarray], np.ndarray, object]:
        """Token activations per concept ``{name: [t]}``, per-sample lengths, and the batch."""
        enc = self._enc()
        batch = enc.encode_inputs(list(inputs))
        acts: dict[str, np.ndarray] = {}
        for layer, cs in self.concept_sets.items():
            a = make_scorer(cs)(batch.tokens[layer])
            a = np.where(batch.valid[:, None], a, -np.inf)
            for j, name in enumerate(cs.names):
                acts[name] = a[:, j]
        return acts, np.asarray(batch.lengths), batch

    def detect(self, inputs: Sequence, top_k: int = 5) -> list[Detection]:
        """Which concepts each input contains, with up to ``top_k`` evidence tokens each."""
        if isinstance(inputs, (str, bytes)):
            raise TypeError("detect takes a list of inputs; wrap a single text in a list")
        acts, lengths, batch = self.activations(inputs)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out = []
        enc = self._enc()
        grid = getattr(enc, "patch_grid", None)
        for i, (a0, n) in enumerate(zip(starts, lengths)):
            det = Detection(present={}, max_activation={}, thresholds=dict(self.thresholds),
                            activations={name: a[a0:a0 + n] for name, a in acts.items()},
                            valid=np.asarray(batch.valid[a0:a0 + n]))
            if self.modality == "text":
                det.text = inputs[i] if isinstance(inputs[i], str) else None
                det.token_spans = None if batch.char_spans is None else np.asarray(batch.char_spans[a0:a0 + n])
            else:
                det.image, det.patch_grid = _as_rgb(inputs[i]), (tuple(grid) if grid is not None else None)
            for name, a in acts.items():
                seg = a[a0:a0 + n]
                mx = float(seg.max())
                thr = self.localization_thresholds.get(name, self.thresholds[name])
                det.max_activation[name] = mx
                det.present[name] = mx >= self.thresholds[name]
                if det.present[name]:
                    idx = np.flatnonzero(seg >= thr)
                    idx = idx[np.argsort(-seg[idx])][:top_k]
                    ev = []
                    for k in idx:
                        span = None if batch.char_spans is None else tuple(int(v) for v in batch.char_spans[a0 + k])
                        text = inputs[i][span[0]:span[1]] if span is not None and isinstance(inputs[i], str) else None
                        ev.append(TokenEvidence(int(k), float(seg[k]), span, text, *_patch_place(enc, det, int(k))))
                    det.evidence[name] = ev
            out.append(det)
        return out


def _localization_thresholds(run: RunLayout, concept_type: str, rows: pd.DataFrame) -> dict[str, float]:
    """Per concept, SuperActivator's localisation threshold at the concept's chosen layer (from
    ``localization_metrics.csv``; empty when the run did not localise, e.g. no spans / masks)."""
    if not run.localization_metrics.exists():
        return {}
    loc = read_table(run.localization_metrics)
    loc = loc[(loc["method"] == LOC_SUPERACTIVATOR.name) & (loc["concept_type"] == concept_type)]
    thr = loc.set_index(["concept", "layer"])["threshold"]
    out = {}
    for c, layer in zip(rows.concept, rows.layer):
        v = thr.get((c, layer))
        if v is not None and np.isfinite(float(v)):
            out[str(c)] = float(v)
    return out


def _patch_place(enc, det: Detection, k: int) -> tuple[int | None, int | None, tuple[int, int, int, int] | None]:
    """Patch row, column and pixel box of token ``k`` of an image detection (Nones for text)."""
    if det.patch_grid is None:
        return None, None, None
    r, c = divmod(k, int(det.patch_grid[1]))
    geometry, patch = getattr(enc, "geometry", None), getattr(enc, "patch_size", None)
    if det.image is None or geometry is None or patch is None:
        return r, c, None
    from .data.patchbox import patch_box  # noqa: PLC0415

    h, w = det.image.shape[:2]
    return r, c, patch_box(geometry.place(h, w), int(patch), r, c)


def _as_rgb(x) -> np.ndarray | None:
    """An input image (path or PIL image) as an RGB array, for display."""
    from PIL import Image

    try:
        if isinstance(x, (str, Path)):
            with Image.open(x) as im:
                return np.asarray(im.convert("RGB"))
        return np.asarray(x.convert("RGB"))
    except Exception:  # display only: the encoder already read it
        return None
