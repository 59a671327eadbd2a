"""The sae-probes reader on a small fixture laid out as the package's data folder (issue 22, item 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zstandard

from superactivators.data.datasets import load_dataset
from superactivators.data.errors import DatasetError
from superactivators.data.saeprobes import (binary_tasks, resolve_task, saeprobes_table, task_split,
                                            write_saeprobes_dataset)


def _zst(path, df):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(df.to_csv(index=False).encode()))


def make_data(root, n=300):
    _zst(root / "probing_datasets_MASTER.csv.zst", pd.DataFrame({
        "Dataset Tag": ["twt_emotion_worry", "us_lat", "spam_is"],
        "Dataset save name": ["cleaned_data/148_twt_emotion_worry.csv", "cleaned_data/11_us_lat.csv",
                              "cleaned_data/96_spam_is.csv"],
        "Data type": ["Binary Classification", "Continuous Data", "Binary Classification"],
    }))
    rng = np.random.default_rng(0)
    target = np.where(rng.random(n) < 0.3, "worry", "neutral")
    _zst(root / "cleaned_data" / "148_twt_emotion_worry.csv.zst",
         pd.DataFrame({"prompt": [f"tweet {i} {t}" for i, t in enumerate(target)], "prompt_len": 3, "target": target}))
    _zst(root / "cleaned_data" / "96_spam_is.csv.zst",
         pd.DataFrame({"prompt": ["a", "b", "c"], "prompt_len": 1, "target": [0, 1, 2]}))
    return root


def test_tasks_and_names(tmp_path):
    d = make_data(tmp_path / "data")
    tasks = binary_tasks(d)
    assert sorted(tasks) == ["148_twt_emotion_worry", "96_spam_is"]  # the continuous task is not binary
    assert resolve_task("148", tasks) == resolve_task("twt_emotion_worry", tasks) == "148_twt_emotion_worry"
    with pytest.raises(DatasetError, match="not a binary task"):
        resolve_task("us_lat", tasks)
    with pytest.raises(DatasetError, match="3 target classes"):
        saeprobes_table("96", d)


def test_split_rule_by_hand():
    y = np.zeros(300, bool)
    y[:90] = True
    s = task_split(300, y)
    # train = min(300 - 100, 1024) = 200 rows, then 30 % of each class of train to cal
    assert (s != "test").sum() == 200 and (s == "test").sum() == 100
    tr = s != "test"
    assert (s == "cal").sum() == round(0.3 * (tr & y).sum()) + round(0.3 * (tr & ~y).sum())
    assert (task_split(300, y) == s).all()  # seed 42, always
    big = task_split(3000, np.arange(3000) % 2 == 0)
    assert (big != "test").sum() == 1024
    with pytest.raises(DatasetError, match="more than 100"):
        task_split(100, np.zeros(100, bool))


def test_table_labels_and_written_dataset(tmp_path):
    d = make_data(tmp_path / "data")
    t, concept = saeprobes_table("148", d)
    assert concept == "twt_emotion_worry" and len(t) == 300
    # LabelEncoder order: "neutral" < "worry", so worry is 1
    assert (t[concept] == np.where(t.text.str.endswith("worry"), "1", "0")).all()
    path, concept, tag = write_saeprobes_dataset("twt_emotion_worry", tmp_path / "out", d)
    ds = load_dataset(path, concepts=[concept])
    assert tag == "148_twt_emotion_worry" and ds.known is None and ds.labels.sum() == (t[concept] == "1").sum()
