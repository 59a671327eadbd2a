"""A tiny finished run (tiny random BERT on a head of the emotions dataset) and its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

CONCEPTS = ["emotion::joy", "emotion::fear"]


@dataclass
class TinyRun:
    run_dir: Path
    page: Path


def concept_subset_copy(src: Path, out: Path) -> Path:
    """The dataset with only the :data:`CONCEPTS` as columns and spans (the loader's ``concepts``
    option rejects spans of the concepts it leaves out)."""
    import json

    import pandas as pd

    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    drop = [c for c in df.columns if "::" in c and c not in CONCEPTS]
    df = df.drop(columns=drop)
    df["spans"] = [json.dumps({k: v for k, v in json.loads(s).items() if k in CONCEPTS}) if s.strip() else ""
                   for s in df["spans"]]
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "metadata.csv", index=False)
    return out / "metadata.csv"


def make_tiny_run(out: Path, data: Path, model: Path) -> Path:
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({
        "name": "tiny", "output_dir": str(out), "score_device": "cpu",
        "data": {"path": str(concept_subset_copy(data, out / "data"))},
        "embed": {"model": str(model), "layers": "all", "batch_size": 16, "max_length": 128, "shard_tokens": 1500},
        "concepts": {"types": ["mean", "linsep"], "linsep_max_tokens_per_class": 300},
        "detect": {"grid": [2, 5, 10, 20, 50, 90]},
    })
    return run_pipeline(cfg, progress=False).run_dir


@pytest.fixture(scope="session")
def tiny_report_run(tmp_path_factory, small_emotions, tiny_bert) -> TinyRun:
    """Two layers x two concept types x two concepts, report with PNG + SVG and 2 examples each."""
    from superactivators.report.html import build_report

    run_dir = make_tiny_run(tmp_path_factory.mktemp("report_run"), small_emotions, tiny_bert)
    return TinyRun(run_dir, build_report(run_dir, n_examples=2))


@pytest.fixture(scope="session")
def tiny_run_pair(tmp_path_factory, small_emotions, tiny_bert, tiny_gpt2) -> tuple[Path, Path]:
    """Two finished tiny runs (BERT-style and GPT-2-style, mean and linsep), no report: for
    best_layers.csv and ``compare``."""
    root = tmp_path_factory.mktemp("run_pair")
    return (make_tiny_run(root / "bert", small_emotions, tiny_bert),
            make_tiny_run(root / "gpt2", small_emotions, tiny_gpt2))
