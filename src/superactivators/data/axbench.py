"""AxBench concept-detection settings as datasets (issue 22, item 3).

An AxBench setting folder (``axbench/concept10/prod_2b_l10_v1`` ...) holds ``train_data.parquet``
(per concept its ``positive`` rows, plus ``negative`` rows shared by every concept, ``concept_id``
-1), ``latent_eval_data.parquet`` (per concept ``positive``, ``negative`` and ``hard negative``
rows, each carrying that concept's ``concept_id``) and ``metadata.jsonl`` (``concept_id`` ->
``concept``, its description). This module turns one into a seed-format ``metadata.csv``:

- one concept column per ``concept_id``, named by its description, slugged;
- train rows -> ``train`` / ``cal``, 70 / 30, seeded, stratified by ``concept_id``; every train
  row is labelled for every concept (its own positives 1, everything else 0);
- eval rows -> ``test``. View ``scoped`` (AxBench's own protocol): concept c is labelled only on
  its own eval rows (positives 1, negatives and hard negatives 0), blank (unknown, read with
  ``data.missing_labels: allow``) elsewhere. View ``multilabel`` (stricter): every eval row is
  labelled for every concept, other concepts' positives being negatives;
- ``hard_negative::<concept>``: 1 on that concept's hard-negative eval rows, 0 on the rest of
  its rows (scoped: blank elsewhere), for the hard-negative false positive rate;
- text = instruction and response: through the model's chat template when it has one
  (:func:`chat_formatter`), else ``input + "\\n\\n" + output`` (:func:`plain_format`); the
  instruction part is context (``context_chars``): embedded, never scored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import DatasetError

TRAIN, EVAL, META = "train_data.parquet", "latent_eval_data.parquet", "metadata.jsonl"
VIEWS = ("scoped", "multilabel")
HARD_NEGATIVE = "hard_negative"
CAL_FRACTION = 0.3
_COLUMNS = ("input", "output", "category", "concept_id")
#: (instruction, response) -> (text, number of leading context characters)
Formatter = Callable[[str, str], tuple[str, int]]


def plain_format(instruction: str, response: str) -> tuple[str, int]:
    """``instruction + "\\n\\n" + response``; the instruction and the blank line are context."""
    head = f"{instruction}\n\n"
    return head + response, len(head)


def chat_formatter(tokenizer: Any) -> Formatter | None:
    """The tokenizer's chat template around the instruction (a user turn, then the generation
    prompt) with the response appended; None when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    bos = getattr(tokenizer, "bos_token", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos and (bos_id is None or list(tokenizer("x")["input_ids"][:1]) != [bos_id]):
        bos = None  # the tokenizer adds no BOS of its own: keep the template's

    def fmt(instruction: str, response: str) -> tuple[str, int]:
        head = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
        if bos and head.startswith(bos):  # the tokenizer adds its own BOS (Gemma's): not twice
            head = head[len(bos):]
        return head + response, len(head)

    return fmt


def is_setting(path: Path) -> bool:
    return (Path(path) / TRAIN).is_file()


def settings_in(path: str | Path) -> list[Path]:
    """``path`` itself when it is a setting folder, else its setting subfolders (sorted)."""
    path = Path(path)
    if is_setting(path):
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: not an AxBench setting folder (no {TRAIN}) nor a folder of them")
    found = sorted(p for p in path.iterdir() if p.is_dir() and is_setting(p))
    if not found:
        raise DatasetError(f"{path}: no AxBench setting folders (each holds {TRAIN}, {EVAL}, {META})")
    return found


def slug(text: str, max_len: int = 80) -> str:
    """Lower-case words joined by ``_`` (a concept column name)."""
    s = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return s[:max_len].rstrip("_") or "concept"


def read_setting(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, str]]:
    """``(train rows, eval rows, concept_id -> column name)`` of one setting, checked."""
    folder = Path(folder)
    for name in (TRAIN, EVAL, META):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder}: missing {name} (an AxBench setting holds {TRAIN}, {EVAL}, {META})")
    tables = {}
    for name in (TRAIN, EVAL):
        df = pd.read_parquet(folder / name)
        missing = [c for c in _COLUMNS if c not in df.columns]
        if missing:
            raise DatasetError(f"{folder / name}: missing column(s) {missing}")
        bad = sorted(set(df["category"]) - {"positive", "negative", "hard negative"})
        if bad:
            raise DatasetError(f"{folder / name}: column 'category': unknown value(s) {bad}")
        tables[name] = df.reset_index(drop=True)
    names: dict[int, str] = {}
    for i, line in enumerate((folder / META).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            cid, desc = int(rec["concept_id"]), str(rec["concept"])
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{folder / META}: line {i + 1}: not a concept record ({err})") from None
        name = slug(desc)
        names[cid] = name if name not in names.values() else f"{name}_{cid}"
    used = set(tables[TRAIN]["concept_id"]) | set(tables[EVAL]["concept_id"])
    unknown = sorted(int(c) for c in used - set(names) - {-1})
    if unknown:
        raise DatasetError(f"{folder}: concept_id(s) {unknown} are not in {META}")
    return tables[TRAIN], tables[EVAL], names


def stratified_cal(groups: np.ndarray, fraction: float = CAL_FRACTION, seed: int = 0) -> np.ndarray:
    """``[n]`` bool: ``round(fraction * size)`` rows of each group, drawn with ``seed``, go to ``cal``."""
    rng = np.random.default_rng(seed)
    cal = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):  # a few groups (one per concept), not a loop per row
        idx = np.flatnonzero(groups == g)
        cal[rng.permutation(idx)[:int(round(fraction * len(idx)))]] = True
    return cal


def axbench_table(folder: str | Path, view: str = "scoped", fmt: Formatter | None = None, seed: int = 0,
                  cal_fraction: float = CAL_FRACTION) -> tuple[pd.DataFrame, list[str]]:
    """The setting as ``metadata.csv`` rows (strings; blank = unknown label) and its concept columns."""
    if view not in VIEWS:
        raise ValueError(f"AxBench view must be one of {list(VIEWS)}, got {view!r}")
    fmt = fmt or plain_format
    train, ev, names = read_setting(folder)
    concepts = [names[c] for c in sorted(names)]
    rows = pd.concat([train.assign(_src="train"), ev.assign(_src="eval")], ignore_index=True)
    is_eval = (rows["_src"] == "eval").to_numpy()
    cid = rows["concept_id"].to_numpy(dtype=np.int64)
    cat = rows["category"].to_numpy(dtype=object)
    split = np.where(is_eval, "test", "train").astype(object)
    split[np.flatnonzero(~is_eval)[stratified_cal(cid[~is_eval], cal_fraction, seed)]] = "cal"
    texts, ctx = zip(*(fmt(str(i), str(o)) for i, o in zip(rows["input"], rows["output"])))
    out = pd.DataFrame({"text": list(texts), "context_chars": [str(c) for c in ctx], "split": split})
    for c in sorted(names):
        own = cid == c
        lab = np.where(own & (cat == "positive"), "1", "0").astype(object)
        hard = np.where(own & (cat == "hard negative"), "1", "0").astype(object)
        if view == "scoped":  # eval rows of other concepts: unknown for this one
            lab[is_eval & ~own] = ""
            hard[is_eval & ~own] = ""
        out[names[c]] = lab
        out[f"{HARD_NEGATIVE}::{names[c]}"] = hard
    out["axbench_concept_id"] = cid.astype(str)
    out["axbench_category"] = cat
    out["axbench_source"] = rows["_src"].to_numpy()
    return out, concepts


def write_axbench_dataset(folder: str | Path, out_dir: str | Path, view: str = "scoped",
                          fmt: Formatter | None = None, seed: int = 0) -> tuple[Path, list[str]]:
    """Write the setting as ``out_dir/metadata.csv``; returns its path and the concept columns."""
    table, concepts = axbench_table(folder, view, fmt, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metadata.csv"
    tmp = out / ".metadata.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return path, concepts
