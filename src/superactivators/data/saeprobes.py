"""The sae-probes binary probing tasks (Kantamneni et al., "Are Sparse Autoencoders Useful?";
PyPI ``sae-probes``, MIT) as datasets (issue 22, item 4).

The package ships its data inside the wheel: ``sae_probes/data/probing_datasets_MASTER.csv.zst``
lists the tasks (113 with ``Data type`` "Binary Classification"), each a ``cleaned_data/N_TAG.csv.zst``
with columns ``prompt`` and ``target``. Install it without its declared dependencies (SAELens,
TransformerLens, xgboost: none is needed to read the data): ``pip install --no-deps sae-probes``.
Only the data files are read (with ``zstandard``); the package is never imported.

A task is named by its number (``102``), tag (``twt_emotion``) or both (``102_twt_emotion``).
Its rows are the first :data:`MAX_ROWS` (the package's ``get_xyvals`` default); the label is the
package's: ``LabelEncoder`` order, so the target sorted second is 1. Split rule (the package's
"normal" setting): ``min(n - 100, 1024)`` rows to train, the rest to test, drawn with seed 42;
``cal`` is carved from train: :data:`CAL_FRACTION` of each class, seeded (ours: the package has
no calibration split).
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DatasetError

MASTER = "probing_datasets_MASTER.csv.zst"
MAX_ROWS = 1500
TEST_MIN = 100
TRAIN_MAX = 1024
SPLIT_SEED = 42
CAL_FRACTION = 0.3


def package_data_dir() -> Path:
    """``sae_probes/data`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the sae-probes package is not installed: pip install --no-deps sae-probes "
                           "(its data ships inside the wheel; its dependencies are not needed)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_zst_csv(path: Path) -> pd.DataFrame:
    """A ``.csv.zst`` file as a DataFrame; a missing or damaged file names itself."""
    import zstandard

    try:
        with open(path, "rb") as fh:
            raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
        return pd.read_csv(io.BytesIO(raw))
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing sae-probes data file") from None
    except (zstandard.ZstdError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not a zstd-compressed CSV ({err})") from None


def binary_tasks(data_dir: Path | None = None) -> dict[str, Path]:
    """Numbered tag (``102_twt_emotion``) -> its data file, for every binary task."""
    data_dir = Path(data_dir) if data_dir is not None else package_data_dir()
    df = read_zst_csv(data_dir / MASTER)
    need = {"Dataset save name", "Data type"}
    if not need <= set(df.columns):
        raise DatasetError(f"{data_dir / MASTER}: missing column(s) {sorted(need - set(df.columns))}")
    b = df[df["Data type"] == "Binary Classification"]
    return {Path(str(n)).name.split(".")[0]: data_dir / f"{n}.zst" for n in b["Dataset save name"]}


def resolve_task(task: str, tasks: dict[str, Path]) -> str:
    """The numbered tag of ``task``: a number, a tag or a numbered tag."""
    task = str(task).strip()
    if task in tasks:
        return task
    hits = [t for t in tasks if t.split("_", 1)[0] == task or t.split("_", 1)[1] == task]
    if len(hits) != 1:
        near = [t for t in tasks if task.lower() in t.lower()][:8]
        raise DatasetError(f"sae-probes task {task!r}: {'ambiguous' if hits else 'not a binary task'}"
                           + (f"; did you mean {near}?" if near else ""))
    return hits[0]


def task_split(n: int, labels: np.ndarray, seed: int = SPLIT_SEED, cal_fraction: float = CAL_FRACTION) -> np.ndarray:
    """``[n]`` split names: ``min(n - 100, 1024)`` train rows (seeded), the rest test; then
    ``cal_fraction`` of each class of train to cal."""
    if n <= TEST_MIN:
        raise DatasetError(f"sae-probes task has {n} rows; the split rule needs more than {TEST_MIN}")
    rng = np.random.default_rng(seed)
    n_train = min(n - TEST_MIN, TRAIN_MAX)
    train = rng.permutation(n)[:n_train]
    split = np.full(n, "test", dtype=object)
    split[train] = "train"
    for v in (0, 1):
        idx = train[labels[train] == v]
        split[rng.permutation(idx)[:int(round(cal_fraction * len(idx)))]] = "cal"
    return split


def saeprobes_table(task: str, data_dir: Path | None = None, seed: int = SPLIT_SEED,
                    max_rows: int = MAX_ROWS) -> tuple[pd.DataFrame, str]:
    """A task as ``metadata.csv`` rows (``text``, ``split``, one 0/1 concept column) and its concept name."""
    tasks = binary_tasks(data_dir)
    tag = resolve_task(task, tasks)
    df = read_zst_csv(tasks[tag])
    for col in ("prompt", "target"):
        if col not in df.columns:
            raise DatasetError(f"{tasks[tag]}: missing column {col!r}")
    df = df.iloc[:max_rows].reset_index(drop=True)
    classes = sorted(pd.unique(df["target"]))  # sklearn's LabelEncoder order: the second class is 1
    if len(classes) != 2:
        raise DatasetError(f"{tasks[tag]}: {len(classes)} target classes in its first {max_rows} rows, expected 2")
    y = (df["target"] == classes[1]).to_numpy()
    text = df["prompt"].astype(str)
    if (text.str.strip() == "").any():
        raise DatasetError(f"{tasks[tag]}: row {int(np.flatnonzero(text.str.strip() == '')[0])}: empty prompt")
    concept = tag.split("_", 1)[1]
    out = pd.DataFrame({"text": text, "split": task_split(len(df), y, seed), concept: y.astype(int).astype(str)})
    return out, concept


def write_saeprobes_dataset(task: str, out_dir: str | Path, data_dir: Path | None = None,
                            seed: int = SPLIT_SEED) -> tuple[Path, str, str]:
    """Write a task as ``out_dir/metadata.csv``; returns its path, the concept name and the numbered tag."""
    table, concept = saeprobes_table(task, data_dir, seed)
    tag = resolve_task(task, binary_tasks(data_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".metadata.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "metadata.csv")
    return out / "metadata.csv", concept, tag
