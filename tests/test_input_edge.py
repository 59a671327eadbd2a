"""The input edge (issue 23): names pandas / YAML would reinterpret, label columns, duplicate YAML
keys, non-regular files, strict spans, empty tokenizations, dataset-info = run's dataset checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from superactivators.cli import main
from superactivators.config import apply_overrides, config_from_dict, load_config
from superactivators.data.checks import load_and_check
from superactivators.data.datasets import DatasetError, load_dataset
from superactivators.encoders import text as text_mod
from superactivators.preflight import check_run
from superactivators.util.errors import ValidationError
from superactivators.util.tables import TableError, read_table
from superactivators.util.yamlio import load_yaml_file

from .timeouts import deadline

#: every spelling pandas' CSV reader turns into NaN by default (pandas._libs.parsers.STR_NA_VALUES, less "")
NA_SPELLINGS = ["#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def test_na_spellings_list_is_pandas_own():
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(NA_SPELLINGS) == set(STR_NA_VALUES) - {""}




def _write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text(text)
    return root / "metadata.csv"


def _problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as err:
        config_from_dict(data)
    return err.value.problems


# ---------------------------------------------------------------------------- 1. result tables


def test_read_table_keeps_every_na_spelling_and_fixes_dtypes(tmp_path):
    df = pd.DataFrame({"layer": list(range(len(NA_SPELLINGS))), "concept": NA_SPELLINGS,
                       "method": ["NA"] * len(NA_SPELLINGS), "f1": [0.5] * (len(NA_SPELLINGS) - 1) + [np.nan]})
    df.to_csv(tmp_path / "t.csv", index=False)
    assert pd.read_csv(tmp_path / "t.csv")["concept"].isna().all()  # what the default reader did
    t = read_table(tmp_path / "t.csv")
    assert t["concept"].tolist() == NA_SPELLINGS and set(t["method"]) == {"NA"}
    assert t["layer"].dtype.kind == "i" and t["f1"].dtype.kind == "f"
    assert np.isnan(t["f1"].iloc[-1]) and t["f1"].iloc[0] == 0.5


def test_read_table_damaged_file_names_it(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(TableError, match="empty.csv: empty file"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "cut.csv").write_bytes(b'a,b\n1,"2\n')
    with pytest.raises(TableError, match="cut.csv: not a readable CSV"):
        read_table(tmp_path / "cut.csv")


def test_na_named_concepts_survive_into_best_layers(tmp_path, small_emotions, tiny_bert):
    """Every NA spelling as a concept column: each one in best_layers.csv, and the __weighted__
    rows' support is the test positives of all of them (counted here from the metadata)."""
    from superactivators.pipeline import run_pipeline

    src = pd.read_csv(small_emotions, dtype=str, keep_default_na=False)
    emo = [c for c in src.columns if "::" in c]
    df = src[["text", "split"]].copy()
    for k, name in enumerate(NA_SPELLINGS):
        df[name] = src[emo[k % len(emo)]]
    data = tmp_path / "data"
    data.mkdir()
    df.to_csv(data / "metadata.csv", index=False)
    keep = [n for n in NA_SPELLINGS if all(((df["split"] == s) & (df[n] == "1")).any() for s in ("train", "cal"))]
    assert len(keep) >= 8
    cfg = config_from_dict({
        "name": "na", "output_dir": str(tmp_path / "runs"), "score_device": "cpu", "data": {"path": str(data)},
        "embed": {"model": str(tiny_bert), "layers": [1], "batch_size": 64, "max_length": 32},
        "concepts": {"types": ["mean"]}, "detect": {"methods": ["superactivator", "max_token"], "grid": [10, 50]},
        "localize": {"attributions": []},
    })
    res = run_pipeline(cfg, progress=False)
    best = read_table(res.run_dir / "best_layers.csv")
    for method in ("superactivator", "max_token"):
        rows = best[best["method"] == method]
        assert sorted(set(rows["concept"]) - {"__macro__", "__weighted__", "__micro__"}) == sorted(keep)
        want = sum(int(((df["split"] == "test") & (df[n] == "1")).sum()) for n in keep)
        assert int(rows.loc[rows["concept"] == "__weighted__", "support"].iloc[0]) == want
    metrics = read_table(res.run_dir / "detection_metrics.csv")
    assert set(keep) <= set(metrics["concept"])


# ---------------------------------------------------------------------------- 3. YAML


def test_duplicate_yaml_keys_are_refused_by_file_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("embed:\n  model: minilm\ndata:\n  path: builtin:emotions\nembed:\n  batch_size: 4\n")
    with pytest.raises(ValidationError, match=r"c.yaml: key 'embed' written twice \(line 1 and line 5\)"):
        load_config(p)
    p.write_text("embed:\n  layers: [1]\n  batch_size: 4\n  layers: [2]\n")
    with pytest.raises(ValidationError, match=r"key 'layers' written twice \(line 2 and line 4\)"):
        load_config(p)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_config_file_is_refused(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ValidationError, match="c.yaml: empty"):
        load_config(p)


def test_set_values_refuse_duplicates():
    with pytest.raises(ValidationError, match="--set data.split_map: key 'a' written twice"):
        apply_overrides({}, ["data.split_map={a: cal, a: test}"])
    with pytest.raises(ValidationError, match="--set embed.batch_size: given twice"):
        apply_overrides({}, ["embed.batch_size=4", "embed.batch_size=8"])
    assert apply_overrides({}, ["name=a: b: c"]) == {"name": "a: b: c"}  # not YAML: the text as written


def test_run_folder_config_with_duplicate_key_is_refused(tmp_path):
    from superactivators.detector import ConceptDetector
    from superactivators.report.compare import run_identity

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\ndata:\n  path: a\ndata:\n  path: b\n")
    with pytest.raises(ValidationError, match=r"config.yaml: key 'data' written twice"):
        ConceptDetector.from_run(run)
    with pytest.raises(ValidationError, match=r"config.yaml: key 'data' written twice"):
        run_identity(run)


def test_yaml_concept_names_that_yaml_reinterprets_are_refused_or_kept(tmp_path):
    # unquoted null / yes are not strings: refused by key; quoted, every spelling is kept exactly
    probs = _problems({"data": {"concepts": [None, True]}})
    assert probs == ["data.concepts: expected list or str or NoneType, got [None, True]"]
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  concepts: [" + ", ".join(json.dumps(n) for n in NA_SPELLINGS) + "]\n")
    cfg = load_config(p)
    assert cfg.data.concepts == NA_SPELLINGS
    import yaml

    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert load_yaml_file(tmp_path / "saved.yaml")["data"]["concepts"] == NA_SPELLINGS


# ---------------------------------------------------------------------------- 2. label columns


def test_na_spelled_concept_columns_load_exactly(tmp_path):
    header = ",".join(NA_SPELLINGS)
    rows = [",".join("1" if (i + k) % 2 else "0" for k in range(len(NA_SPELLINGS))) + f",t{i},{s}"
            for i, s in enumerate(["train", "train", "cal", "cal", "test", "test"])]
    ds = load_dataset(_write(tmp_path, header + ",text,split\n" + "\n".join(rows) + "\n"))
    assert ds.concepts == NA_SPELLINGS
    np.testing.assert_array_equal(ds.labels[:, 0], [0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("col, vals, rows", [
    ("c2", ["1", "", "1", "", "1", ""], "3, 5, 7"),  # 1-or-blank: a concept with blank cells
    ("c2", ["positive", "negative"] * 3, "2, 3, 4, 5, 6 and 1 more"),
    ("c2", ["2", "-1", "2", "2", "-1", "1"], "2, 3, 4, 5, 6"),  # mostly 2 / -1
    ("g::c2", ["1", "0", "maybe", "0", "1", "0"], "4"),  # group::name is a concept whatever its values
])
def test_label_like_columns_are_refused_naming_column_and_rows(tmp_path, col, vals, rows):
    lines = [f"c1,{col},text,split"] + [f"{i % 2},{v},t{i},{('train', 'cal', 'test')[i % 3]}"
                                        for i, v in enumerate(vals)]
    with pytest.raises(DatasetError) as err:
        load_dataset(_write(tmp_path, "\n".join(lines) + "\n"))
    msg = str(err.value)
    assert len(err.value.problems) == 1 and f"row {rows}, column {col!r}" in msg, msg


def test_label_like_column_with_spans_does_not_say_unknown_concept(tmp_path):
    lines = ['c1,c2,text,split,spans']
    for i in range(6):
        sp = json.dumps({"c2": [[0, 1]]}) if i % 2 else ""
        lines.append(f"{i % 2},{'positive' if i % 2 else 'negative'},t{i},{('train', 'cal', 'test')[i % 3]},"
                     f"\"{sp.replace(chr(34), chr(34) * 2)}\"")
    with pytest.raises(DatasetError) as err:
        load_dataset(_write(tmp_path, "\n".join(lines) + "\n"))
    assert "unknown concept" not in str(err.value) and "column 'c2'" in str(err.value)
    # listed concepts: c2 is metadata, and a span naming it says so
    with pytest.raises(DatasetError, match="span for 'c2', which is a metadata column"):
        load_dataset(tmp_path, concepts=["c1"])


def test_metadata_columns_stay_metadata(tmp_path):
    lines = ["c1,class,text,split"] + [f"{i % 2},{['red_cube', 'blue_ball', 'green_cone'][i % 3]},t{i},"
                                       f"{('train', 'cal', 'test')[i % 3]}" for i in range(6)]
    ds = load_dataset(_write(tmp_path, "\n".join(lines) + "\n"))
    assert ds.concepts == ["c1"] and list(ds.metadata.columns) == ["class"]
    # a listed concept list keeps a label-like column as metadata
    lines = ["c1,kind,text,split"] + [f"{i % 2},{'pos' if i % 2 else 'neg'},t{i},{('train', 'cal', 'test')[i % 3]}"
                                      for i in range(6)]
    ds = load_dataset(_write(tmp_path, "\n".join(lines) + "\n"), concepts=["c1"])
    assert ds.concepts == ["c1"] and list(ds.metadata.columns) == ["kind"]


# ---------------------------------------------------------------------------- 5. spans


@pytest.mark.parametrize("cell, says", [
    ('{"c1": [[0, 1e400]]}', "bounds must be integers"),
    ('{"c1": [[0, 1.5]]}', "bounds must be integers"),
    ('{"c1": [[false, true]]}', "two integers (no booleans"),
    ('{"c1": [["0", "1"]]}', "two integers"),
    ('{"c1": [[0, 1, 2]]}', "two integers"),
    ('{"c1": [[0, [1]]]}', "two integers"),
    ('{"c1": [[0, 99999999999999999999]]}', "bad span"),
    ('{"c1": [[0, NaN]]}', "bounds must be integers"),
    ('{"c1": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ('{"c1": ' + "[" * 50 + "]" * 50 + "}", "two integers"),
])
def test_spans_must_be_integer_pairs(tmp_path, cell, says):
    q = cell.replace('"', '""')
    text = "c1,text,split,spans\n" + "".join(f"{i % 2},t{i},{s},\n" for i, s in enumerate(["train", "cal", "test"]))
    text += f'1,t3,train,"{q}"\n'
    with pytest.raises(DatasetError) as err:
        load_dataset(_write(tmp_path, text))
    msg = str(err.value)
    assert len(err.value.problems) == 1 and "row 5, column 'spans'" in msg and says in msg, msg


# ---------------------------------------------------------------------------- 5. preflight


def _text_data(root: Path, rows: int = 12, text=lambda i: f"sample {i} says {'happy' if i % 2 else 'flat'}") -> Path:
    (root / "t").mkdir(parents=True, exist_ok=True)
    lines = ["c1,text_path,split"]
    for i in range(rows):
        (root / "t" / f"{i}.txt").write_text(text(i))
        lines.append(f"{i % 2},t/{i}.txt,{('train', 'cal', 'test')[i % 3]}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root / "metadata.csv"


def _cfg(tmp_path, data, model="minilm", **detect):
    return config_from_dict({
        "name": "r", "output_dir": str(tmp_path / "runs"), "score_device": "cpu", "data": {"path": str(data)},
        "embed": {"model": str(model), "layers": [1]}, "concepts": {"types": ["mean"]},
        "detect": {"methods": ["superactivator"], "grid": [10, 50], **detect},
    })


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(text_mod.TextEncoder, "__init__", lambda *a, **k: pytest.fail("model loaded"))


def test_fifo_text_file_is_refused_without_hanging(tmp_path, no_model_load):
    data = _text_data(tmp_path / "d")
    os.remove(tmp_path / "d" / "t" / "4.txt")
    os.mkfifo(tmp_path / "d" / "t" / "4.txt")
    with deadline(20), pytest.raises(ValidationError) as err:
        check_run(_cfg(tmp_path, data))
    assert any("4.txt (row 6 of" in p and "is a FIFO (named pipe), not a regular file" in p
               for p in err.value.problems), err.value.problems
    assert not (tmp_path / "runs").exists()


def test_fifo_metadata_and_config_are_refused(tmp_path):
    os.mkfifo(tmp_path / "metadata.csv")
    with deadline(20), pytest.raises(DatasetError, match="metadata.csv is a FIFO"):
        load_dataset(tmp_path)
    os.mkfifo(tmp_path / "c.yaml")
    with deadline(20), pytest.raises(ValidationError, match="c.yaml is a FIFO"):
        load_config(tmp_path / "c.yaml")


def test_character_device_is_refused(tmp_path):
    (tmp_path / "metadata.csv").write_text("c1,text_path,split\n1,/dev/null,train\n")
    from superactivators.data.checks import text_file_problems

    ds = load_dataset(tmp_path, allow_outside_paths=True)
    probs = text_file_problems(ds)
    assert len(probs) == 1 and "/dev/null" in probs[0] and "character device" in probs[0]


def test_zero_byte_metadata_says_so(tmp_path):
    (tmp_path / "metadata.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"metadata.csv: empty file \(0 bytes\)"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("methods, says", [([], "detect.methods: empty"),
                                           (["superactivatr"], "unknown detection method(s) ['superactivatr']")])
def test_detect_methods_empty_or_unknown_refused_before_loading(tmp_path, no_model_load, methods, says):
    data = _text_data(tmp_path / "d")
    with pytest.raises(ValidationError) as err:
        check_run(_cfg(tmp_path, data, methods=methods))
    assert any(says in p for p in err.value.problems), err.value.problems
    assert not (tmp_path / "runs").exists()


def test_text_the_tokenizer_reduces_to_nothing_is_found_before_the_store(tmp_path, no_model_load):
    data = _text_data(tmp_path / "d", text=lambda i: "\u200b\u200b" if i == 7 else f"sample {i} text")
    with pytest.raises(ValidationError) as err:
        check_run(_cfg(tmp_path, data))
    assert err.value.problems == [
        (f"text file {tmp_path / 'd' / 't' / '7.txt'} (row 9 of {data}): the tokenizer of 'minilm' reduces this "
        "text to no token (starts '\\u200b\\u200b')")]
    assert not (tmp_path / "runs").exists()


def test_dataset_info_runs_runs_dataset_checks(tmp_path, capsys):
    data = _text_data(tmp_path / "d")
    (tmp_path / "d" / "t" / "5.txt").write_text("   \n")
    lines = (tmp_path / "d" / "metadata.csv").read_text().splitlines()
    (tmp_path / "d" / "metadata.csv").write_text("\n".join(lines[:1] + [ln.replace(",cal", ",train") for ln in lines[1:]]) + "\n")
    assert main(["dataset-info", str(data)]) == 2
    err = capsys.readouterr().err
    want = load_and_check(data).problems
    assert len(want) == 3 and all(p in err for p in want), err  # empty split cal, empty text, no cal positives
    assert "split 'cal' has no samples" in err and "empty text file" in err
    # a clean dataset: exit 0
    assert main(["dataset-info", str(_text_data(tmp_path / "ok"))]) == 0


def test_nameless_header_column(tmp_path):
    """Found by the fuzz: a blank header cell became a concept called 'Unnamed: 1'."""
    body = "".join(f"{i % 2},t{i},{s},\n" for i, s in enumerate(["train", "cal", "test"] * 2))
    ds = load_dataset(_write(tmp_path, "c1,text,split,\n" + body))  # an empty trailing column: dropped
    assert ds.concepts == ["c1"] and list(ds.metadata.columns) == []
    with pytest.raises(DatasetError, match="column 1 holds values but has no name"):
        load_dataset(_write(tmp_path, ",text,split,\n" + body))


def test_parquet_null_label_is_an_error_not_zero(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c"], "split": ["train", "cal", "test"],
                             "c": pa.array([True, None, False], pa.bool_())}), tmp_path / "b.parquet")
    with pytest.raises(DatasetError, match=r"row 1, column 'c': blank label"):
        load_dataset(tmp_path / "b.parquet")
