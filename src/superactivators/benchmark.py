"""External benchmarks: ``superactivators benchmark axbench PATH`` (issue 22, item 5).

Each AxBench setting is written as a dataset (:mod:`superactivators.data.axbench`) under
``OUTPUT_DIR/data/SETTING/`` and run through the ordinary pipeline (``OUTPUT_DIR/runs/SETTING``).
The benchmark table is then computed from each stage's per-sample scores (``summary.npz``) and
calibrated test predictions (``predictions.npz``), per concept on the samples whose label for it
is known, with that concept's hard negatives left out of AUROC / AP / F1 / TPR (AxBench's
protocol) and reported on their own as ``hard_negative_fpr``: the share of the concept's hard
negatives flagged at the calibrated threshold.

Per (concept type, method, concept), the layer is the one with the best AUROC on ``cal`` (train
rows, every label known), so the test numbers never choose their own layer. The tail methods
(``superactivator``, ``superactivator_sample``) threshold the max token, so their AUROC / AP /
TPR are the ``max_token`` score's; they differ from it in F1 (their threshold) only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .config import config_from_dict
from .data.axbench import HARD_NEGATIVE, VIEWS, axbench_table, chat_formatter, settings_in
from .data.datasets import load_dataset
from .evaluate.detect import StagePredictions
from .evaluate.methods import BY_NAME, MACRO, order, score_of
from .evaluate.scoring import ScoreSummary
from .store.layout import BenchmarkLayout, RunLayout, StageFolder

COLUMNS = ("setting", "concept_type", "method", "concept", "layer", "auroc", "ap", "f1", "tpr_at_fpr_1",
           "hard_negative_fpr", "n_pos", "n_neg", "n_hard_negative")
ALL = "__all__"  # the aggregate over settings
DEFAULT_TYPES = ("mean", "diffmean", "linsep")
MAX_FPR = 0.01


@dataclass
class BenchmarkOptions:
    """What ``benchmark axbench`` runs."""

    path: str
    view: str = "scoped"
    model: str = "minilm"
    layers: list[int] | str = "all"
    types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    output_dir: str = "benchmark-axbench"
    seed: int = 0
    batch_size: int = 16
    max_length: int = 512


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """The highest TPR among thresholds whose FPR is at most ``max_fpr`` (ROC curve, sklearn)."""
    fpr, tpr, _ = roc_curve(y, s)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def ranking_metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """AUROC, AP and TPR at 1 % FPR of scores ``s`` for 0/1 truth ``y``; NaN without both classes."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return {"auroc": float("nan"), "ap": float("nan"), "tpr_at_fpr_1": float("nan")}
    s = np.nan_to_num(np.asarray(s, dtype=np.float64), neginf=-1e30, posinf=1e30)
    return {"auroc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
            "tpr_at_fpr_1": tpr_at_fpr(y, s)}


def f1_of(pred: np.ndarray, y: np.ndarray) -> float:
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _scores(summary: ScoreSummary, method: str) -> np.ndarray | None:
    if method in summary.method_scores:
        return summary.method_scores[method]
    return summary.sample_scores.get(score_of(method))


def stage_rows(summary: ScoreSummary, preds: StagePredictions, labels: np.ndarray, known: np.ndarray,
               hard: np.ndarray, splits: np.ndarray) -> list[dict]:
    """Per (method, concept) of one stage: cal AUROC (layer choice) and the test metrics.

    ``labels``, ``known``, ``hard`` are ``[N, C]`` in the summary's concept order; ``hard`` marks
    each concept's own hard negatives."""
    out = []
    test_pos = {int(t): i for i, t in enumerate(preds.test_ids)}
    cal = splits == "cal"
    for m in preds.pred:
        if m not in BY_NAME:  # the @best_threshold variants: same scores, a threshold chosen on cal
            continue
        s = _scores(summary, m)
        if s is None:
            continue
        for c, name in enumerate(summary.names):
            rows = (splits == "test") & known[:, c] & ~hard[:, c]
            y = labels[rows, c].astype(bool)
            pred_rows = np.array([test_pos[int(i)] for i in np.flatnonzero(rows)], dtype=np.int64)
            pred = preds.pred[m][pred_rows, c] if len(pred_rows) else np.zeros(0, bool)
            h = np.flatnonzero((splits == "test") & hard[:, c])
            hard_pred = preds.pred[m][[test_pos[int(i)] for i in h], c] if len(h) else np.zeros(0, bool)
            cal_rows = cal & known[:, c]
            out.append({
                "method": m, "concept": name,
                "cal_auroc": ranking_metrics(labels[cal_rows, c], s[cal_rows, c])["auroc"],
                **ranking_metrics(y, s[rows, c]), "f1": f1_of(pred, y),
                "hard_negative_fpr": float(hard_pred.mean()) if len(h) else float("nan"),
                "n_pos": int(y.sum()), "n_neg": int((~y).sum()), "n_hard_negative": int(len(h)),
            })
    return out


def setting_table(run_dir: Path, data_path: Path, setting: str, concepts: list[str],
                  with_hard: bool = True) -> pd.DataFrame:
    """The benchmark rows of one finished run on the AxBench dataset at ``data_path``: each
    (concept type, method, concept) at its best cal layer."""
    run = RunLayout(run_dir)
    hard_cols = [f"{HARD_NEGATIVE}::{c}" for c in concepts] if with_hard else []
    ds = load_dataset(data_path, concepts=concepts + hard_cols, missing_labels="allow")
    rows = []
    for st in json.loads(run.stages_index.read_text()):
        stage = StageFolder(run.root / st["dir"])
        summary = ScoreSummary.load(stage.summary)
        preds = StagePredictions.load(stage.predictions)
        idx = [ds.concepts.index(n) for n in summary.names]
        known = np.ones(ds.labels.shape, bool) if ds.known is None else ds.known
        if with_hard:
            hidx = [ds.concepts.index(f"{HARD_NEGATIVE}::{n}") for n in summary.names]
            hard = ds.labels[:, hidx].astype(bool) & known[:, hidx]
        else:
            hard = np.zeros((len(ds.labels), len(idx)), bool)
        for r in stage_rows(summary, preds, ds.labels[:, idx], known[:, idx], hard, ds.splits):
            rows.append({"setting": setting, "concept_type": st["concept_type"], "layer": st["layer"], **r})
    df = pd.DataFrame(rows)
    # the layer per (type, method, concept): best cal AUROC (first layer on ties)
    df = df.sort_values(["concept_type", "method", "concept", "cal_auroc", "layer"],
                        ascending=[True, True, True, False, True], na_position="last")
    return df.groupby(["concept_type", "method", "concept"], sort=False).head(1).reset_index(drop=True)


def with_aggregates(df: pd.DataFrame) -> pd.DataFrame:
    """Concept rows plus ``__macro__`` rows (mean over concepts) per (setting, type, method) and
    the same over every setting's concepts (``setting = __all__``)."""
    metrics = ["auroc", "ap", "f1", "tpr_at_fpr_1", "hard_negative_fpr"]
    per = df.groupby(["setting", "concept_type", "method"], sort=False)[metrics].mean().reset_index()
    per["concept"] = MACRO
    allr = df.groupby(["concept_type", "method"], sort=False)[metrics].mean().reset_index()
    allr["setting"], allr["concept"] = ALL, MACRO
    out = pd.concat([df, per, allr], ignore_index=True)
    return out[[c for c in COLUMNS if c in out.columns]]


def headline(table: pd.DataFrame) -> str:
    """The benchmark's headline (AxBench: mean AUROC over concepts, every setting; sae-probes:
    test AUROC, averaged over tasks) per method beside ours (F1 at the calibrated threshold, TPR
    at 1 % FPR, hard-negative FPR where there are hard negatives)."""
    a = table[(table.setting == ALL) & (table.concept == MACRO)].copy()
    methods = order(list(a.method.unique()))
    a["method"] = pd.Categorical(a.method, methods, ordered=True)
    a = a.sort_values(["concept_type", "method"])
    lines = [f"{'concept type':<12} {'method':<22} {'AUROC':>6} {'AP':>6} {'F1':>6} {'TPR@1%':>7} {'HN-FPR':>7}"]
    for _, r in a.iterrows():
        lines.append(f"{r.concept_type:<12} {r.method:<22} {r.auroc:6.3f} {r.ap:6.3f} {r.f1:6.3f} "
                     f"{r.tpr_at_fpr_1:7.3f} {r.hard_negative_fpr:7.3f}")
    return "\n".join(lines)


def model_formatter(model: str):
    """The model's chat template when its tokenizer has one (AxBench's instruction / response), else None."""
    from transformers import AutoTokenizer

    from .encoders.base import resolve_model_path

    return chat_formatter(AutoTokenizer.from_pretrained(resolve_model_path(model)))


@dataclass
class Setting:
    """One benchmark setting as a dataset: its ``metadata.csv`` rows and how its run is named."""

    name: str  # the ``setting`` column of the tables (``prod_2b_l10_v1``, ``148_twt_emotion_worry``)
    folder: str  # its dataset folder under ``data/`` (and the dataset's name, which keys its hidden states)
    run_name: str
    table: pd.DataFrame  # metadata.csv rows, strings; a blank label is unknown
    concepts: list[str]
    with_hard: bool  # carries ``hard_negative::`` columns


def axbench_settings(opts: BenchmarkOptions, fmt=None) -> list[Setting]:
    """Every AxBench setting under ``opts.path`` (:mod:`superactivators.data.axbench`)."""
    if opts.view not in VIEWS:
        raise ValueError(f"--view must be one of {list(VIEWS)}, got {opts.view!r}")
    out = []
    for folder in settings_in(opts.path):
        table, concepts = axbench_table(folder, opts.view, fmt, opts.seed)
        tag = f"{folder.name}-{opts.view}"
        out.append(Setting(folder.name, tag, tag, table, concepts, with_hard=True))
    return out


def saeprobes_settings(tasks: Sequence[str], data_dir: Path | None = None) -> list[Setting]:
    """Each sae-probes task (:mod:`superactivators.data.saeprobes`), one setting per task."""
    from .data.saeprobes import binary_tasks, resolve_task, saeprobes_table

    out = []
    for task in tasks:
        table, concept = saeprobes_table(task, data_dir)
        tag = resolve_task(task, binary_tasks(data_dir))
        out.append(Setting(tag, f"sae-probes-{task}", f"sae-probes-{tag}", table, [concept], with_hard=False))
    return out


def write_table(table: pd.DataFrame, folder: Path) -> Path:
    """``folder/metadata.csv`` (written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".metadata.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(folder / "metadata.csv")
    return folder / "metadata.csv"


def run_setting(opts: BenchmarkOptions, s: Setting, data_dir: Path, run_name: str, table: pd.DataFrame | None = None,
                progress: bool = True) -> pd.DataFrame:
    """``s`` (or ``table``, its labels changed) written to ``data_dir`` and run; its benchmark rows."""
    from .pipeline import run_pipeline

    meta = write_table(s.table if table is None else table, data_dir)
    res = run_pipeline(_config(opts, run_name, meta.parent, s.concepts), progress=progress)
    return setting_table(res.run_dir, meta.parent, s.name, s.concepts, with_hard=s.with_hard)


def print_text_format(fmt) -> None:
    print(f"AxBench texts: {'the model chat template' if fmt is not None else 'instruction + blank line + response'}"
          " (the instruction part is context: embedded, never scored)", flush=True)


def run_axbench(opts: BenchmarkOptions, progress: bool = True, formatter=None) -> pd.DataFrame:
    """Every setting under ``opts.path`` through the pipeline; writes and returns the benchmark table."""
    fmt = formatter if formatter is not None else model_formatter(opts.model)
    print_text_format(fmt)
    return run_settings(opts, axbench_settings(opts, fmt), progress)


def run_saeprobes(opts: BenchmarkOptions, tasks: Sequence[str], progress: bool = True,
                  data_dir: Path | None = None) -> pd.DataFrame:
    """Each sae-probes task through the pipeline; one setting per task."""
    return run_settings(opts, saeprobes_settings(tasks, data_dir), progress)


def run_settings(opts: BenchmarkOptions, settings: list[Setting], progress: bool = True) -> pd.DataFrame:
    layout = BenchmarkLayout(Path(opts.output_dir))
    tables = [run_setting(opts, s, layout.data(s.folder), s.run_name, progress=progress) for s in settings]
    table = with_aggregates(pd.concat(tables, ignore_index=True))
    layout.root.mkdir(parents=True, exist_ok=True)
    table.to_csv(layout.metrics, index=False)
    return table


def _config(opts: BenchmarkOptions, name: str, data: Path, concepts: list[str]):
    return config_from_dict({
        "name": name, "output_dir": str(BenchmarkLayout(Path(opts.output_dir)).runs), "seed": opts.seed,
        "data": {"path": str(data), "concepts": concepts, "missing_labels": "allow"},
        "embed": {"model": opts.model, "layers": opts.layers, "batch_size": opts.batch_size,
                  "max_length": opts.max_length},
        "concepts": {"types": list(opts.types)},
        "detect": {"localize": False},
    })


def parse_layers(text: str | None) -> list[int] | str:
    """``--layers``: ``all``, ``sweep`` (the model family's default sweep) or indices ``2,4,6``."""
    if text is None or text in ("all", "sweep"):
        return text or "all"
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers: expected all, sweep or comma-separated layer indices, got {text!r}") from None

