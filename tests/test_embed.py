"""What the embed stage reports instead of hiding: truncated texts, positives without spans."""

from __future__ import annotations

import json

import pytest

from superactivators.config import config_from_dict
from superactivators.data.checks import positives_without_spans
from superactivators.data.datasets import load_dataset
from superactivators.encoders.base import EmbedConfig
from superactivators.preflight import check_run
from superactivators.store.embed import embed_dataset

LONG = " ".join(["grateful"] * 40)


def _data(tmp_path):
    """12 inline texts; rows 0 and 3 are long; 'a' has spans on rows 1 and 5 only, 'b' on all its positives."""
    rows = ["a,b,text,split,spans"]
    for i in range(12):
        text = LONG if i in (0, 3) else f"thanks number {i}"
        a, b = int(i % 2 == 1), int(i % 3 == 0)
        sp = {}
        if a and i in (1, 5):
            sp["a"] = [[0, 6]]
        if b:
            sp["b"] = [[0, 5]]
        rows.append(f'{a},{b},{text},{("train", "cal", "test")[i % 3]},"{json.dumps(sp).replace(chr(34), chr(34) * 2)}"')
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "metadata.csv"


def test_positives_without_spans_are_counted_and_warned_per_concept(tmp_path, tiny_bert):
    path = _data(tmp_path)
    ds = load_dataset(path)
    # a: positives at rows 1, 3, 5, 7, 9, 11; spans on 1 and 5 -> 4 without; b: every positive has one
    assert positives_without_spans(ds) == {"a": 4}
    cfg = config_from_dict({"output_dir": str(tmp_path / "runs"), "data": {"path": str(path)},
                            "embed": {"model": str(tiny_bert), "layers": [1]}, "concepts": {"types": ["mean"]}})
    with pytest.warns(UserWarning, match=r"concept 'a': 4 of 6 positive samples have no span; every token"):
        check_run(cfg)


def test_truncation_and_spanless_positives_recorded_in_the_manifest(tmp_path, tiny_bert):
    ds = load_dataset(_data(tmp_path))
    with pytest.warns(UserWarning, match=r"2 of 12 texts were cut at embed.max_length=8 tokens"):
        store = embed_dataset(ds, EmbedConfig(model=str(tiny_bert), layers=[1], max_length=8, batch_size=5),
                              tmp_path / "store", progress=False)
    man = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert man["dataset"]["truncated_samples"] == 2
    assert man["dataset"]["positives_without_spans"] == {"a": 4}
    assert store.info.dataset["truncated_samples"] == 2
