"""Parquet / Arrow / datasets input: built with `datasets` itself, run end to end through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest

import datasets  # the 'hf' extra, installed by `make test`

from superactivators.cli import main
from superactivators.data.datasets import DatasetError, load_dataset
from superactivators.data.hf import _Table


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERACTIVATORS_CACHE", str(tmp_path / "cache"))


def _frame(csv):
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    concepts = [c for c in df.columns if "::" in c]
    return df, concepts


def _cfg(tmp_path, name, data: dict, model) -> str:
    import yaml

    cfg = {"name": name, "output_dir": str(tmp_path / "runs"), "score_device": "cpu", "data": data,
           "embed": {"model": str(model), "layers": [1], "batch_size": 16, "max_length": 128},
           "concepts": {"types": ["mean"]}, "detect": {"grid": [5, 10, 50]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _metrics(tmp_path, name):
    return pd.read_csv(tmp_path / "runs" / name / "detection_metrics.csv").drop(columns=["layer", "concept_type"])


def test_datasets_folder_and_parquet_runs_equal_the_csv_run(tmp_path, small_emotions, tiny_bert):
    df, concepts = _frame(small_emotions)
    # a DatasetDict (train / validation / test) with int 0/1 concept columns and JSON spans, saved to disk
    parts = {}
    for split, key in (("train", "train"), ("cal", "validation"), ("test", "test")):
        sub = df[df.split == split]
        parts[key] = datasets.Dataset.from_dict(
            {"text": sub.text.tolist(), "spans": sub.spans.tolist(), **{c: sub[c].astype(int).tolist() for c in concepts}})
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "dsdict"))
    # one Parquet file: a renamed text column, a list-of-labels ClassLabel column, its own split column
    feats = datasets.Features({"body": datasets.Value("string"), "part": datasets.Value("string"),
                               "emotions": datasets.Sequence(datasets.ClassLabel(names=concepts)),
                               "evidence": datasets.Value("string")})
    labels = [[k for k, c in enumerate(concepts) if row[c] == "1"] for _, row in df.iterrows()]
    pq_ds = datasets.Dataset.from_dict({"body": df.text.tolist(), "part": df.split.tolist(), "emotions": labels,
                                        "evidence": df.spans.tolist()}, features=feats)
    pq_ds.to_parquet(str(tmp_path / "emotions.parquet"), batch_size=16)  # several row groups

    runs = {
        "csv": {"path": str(small_emotions)},
        "disk": {"path": str(tmp_path / "dsdict")},
        "parquet": {"path": str(tmp_path / "emotions.parquet"), "text_column": "body", "split_column": "part",
                    "concept_columns": "emotions", "span_column": "evidence"},
    }
    for name, data in runs.items():
        assert main(["run", _cfg(tmp_path, name, data, tiny_bert), "--quiet"]) == 0
    ref = _metrics(tmp_path, "csv")
    assert len(ref) > 0 and set(ref.concept) >= set(concepts)
    for name in ("disk", "parquet"):
        pd.testing.assert_frame_equal(_metrics(tmp_path, name), ref, check_exact=True, obj=name)
    # the run's store names the descriptor, which reloads the same dataset with its column mapping
    from superactivators.store.runs import find_store

    src = find_store(tmp_path / "runs" / "parquet").info.dataset["source"]
    again = load_dataset(src)
    assert again.text(3) == df.text.iloc[3] and again.concepts == concepts
    # a second run of the same config reuses the store (stable cache key)
    stores = list((tmp_path / "runs" / "parquet" / "stores").iterdir())
    assert main(["run", _cfg(tmp_path, "parquet", runs["parquet"], tiny_bert), "--quiet"]) == 0
    assert list((tmp_path / "runs" / "parquet" / "stores").iterdir()) == stores


def test_parquet_texts_stream_by_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 50
    t = pa.table({"text": [f"sample {i}" for i in range(n)], "c": [i % 2 for i in range(n)],
                  "split": (["train", "cal", "test"] * 17)[:n]})
    pq.write_table(t, tmp_path / "d.parquet", row_group_size=7)
    ds = load_dataset(tmp_path / "d.parquet")
    assert ds.concepts == ["c"] and len(ds) == n and ds.labels[:, 0].tolist() == [i % 2 for i in range(n)]
    assert ds.texts(range(n)) == [f"sample {i}" for i in range(n)]
    tab = ds.inline_texts.table
    assert isinstance(tab, _Table) and tab.pf is not None and tab.pf.num_row_groups == 8
    assert tab._cache["text"][0] == 7 and len(tab._cache["text"][1]) == 1  # only the last row group held
    # an Arrow file (IPC) reads memory-mapped
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    ds2 = load_dataset(tmp_path / "d.arrow")
    assert ds2.text(49) == "sample 49" and (ds2.splits == ds.splits).all()


def test_bad_columns_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(**cols):
        pq.write_table(pa.table(cols), tmp_path / "b.parquet")
        return tmp_path / "b.parquet"

    base = {"text": ["a", "b", "c"], "split": ["train", "cal", "test"]}
    with pytest.raises(DatasetError, match=r"row 2, column 'c': expected 0 or 1, got '2'"):
        load_dataset(write(**base, c=[0, 1, 2]))
    with pytest.raises(DatasetError, match=r"row 1, column 'split': unknown split 'holdout'"):
        load_dataset(write(text=["a", "b", "c"], split=["train", "holdout", "test"], c=[0, 1, 1]))
    p = write(**base, c=[0, 1, 1])
    with pytest.raises(DatasetError, match=r"data.text_column 'body' is not a column"):
        load_dataset(p, columns={"text_column": "body"})
    with pytest.raises(DatasetError, match=r"unknown column option"):
        load_dataset(p, columns={"txt_column": "text"})
    assert load_dataset(write(text=["a", "b", "c"], split=["train", "dev", "test"], c=[0, 1, 1])).splits[1] == "cal"
    spans = [json.dumps({"c": [[0, 1]]}), "", ""]
    with pytest.raises(DatasetError, match=r"row 0, span column: span for .c. but its label is 0"):
        load_dataset(write(**base, c=[0, 1, 1], spans=spans))


def test_image_column_extracted_lazily(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    masks = [Image.fromarray((np.arange(64).reshape(8, 8) % 2 * (i + 1)).astype(np.uint8)) for i in range(4)]
    feats = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(), "red": datasets.Value("bool"),
                               "split": datasets.ClassLabel(names=["train", "cal", "test"])})
    d = datasets.Dataset.from_dict({"image": imgs, "mask": masks, "red": [True, False, True, False],
                                    "split": [0, 1, 2, 0]}, features=feats)
    d.save_to_disk(str(tmp_path / "imgs"))
    ds = load_dataset(tmp_path / "imgs", columns={"mask_column": "mask"})
    assert ds.modality == "image" and ds.concepts == ["red"] and list(ds.splits) == ["train", "cal", "test", "train"]
    assert not any((tmp_path / "cache").rglob("*.png"))  # nothing extracted yet
    np.testing.assert_array_equal(np.asarray(ds.load_image(2)), np.asarray(imgs[2]))
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 1  # only the image asked for
    np.testing.assert_array_equal(np.asarray(Image.open(ds.root / ds.mask_paths[3])), np.asarray(masks[3]))
