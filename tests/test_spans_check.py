"""Spans past their text's end or outside it: an error naming file, row and concept (a warning and
a cut under data.clip_spans); dataset-info counts inline-span truth per concept (CLI entry point)."""

from __future__ import annotations

import json
import warnings

import pandas as pd

from superactivators.cli import main
from superactivators.data.checks import check_dataset
from superactivators.data.datasets import load_dataset


def _data(tmp_path, spans: list[dict]):
    texts = ["I feel happy today", "so sad and blue", "happy happy joy", "nothing at all",
             "blue mood", "joyful day"] * 2
    joy = [1, 0, 1, 0, 0, 1] * 2
    sad = [0, 1, 0, 0, 1, 0] * 2
    df = pd.DataFrame({"text": texts, "split": ["train"] * 6 + ["cal"] * 3 + ["test"] * 3, "joy": joy, "sad": sad,
                       "spans": [json.dumps(s) if s else "" for s in spans]})
    (tmp_path / "d").mkdir(exist_ok=True)
    df.to_csv(tmp_path / "d" / "metadata.csv", index=False)
    return tmp_path / "d" / "metadata.csv"


GOOD = [{"joy": [[7, 12]]}, {"sad": [[3, 6], [11, 15]]}, {"joy": [[0, 5], [6, 11]]}, {}, {"sad": [[0, 4]]},
        {"joy": [[0, 6]]}] * 2


def test_span_past_the_end_is_an_error_naming_file_row_and_concept(tmp_path, capsys):
    spans = list(GOOD)
    spans[2] = {"joy": [[0, 5], [6, 40]]}  # "happy happy joy" has 15 characters
    spans[4] = {"sad": [[20, 30]]}  # "blue mood": wholly outside
    path = _data(tmp_path, spans)
    _, problems = check_dataset(load_dataset(path))
    assert problems[0] == (f"{path}: row 4, column 'spans': span [6, 40) for 'joy' ends past the end of its text "
                           "(15 characters)")
    assert problems[1] == (f"{path}: row 6, column 'spans': span [20, 30) for 'sad' lies wholly outside its text "
                           "(9 characters)")
    # under the option: a warning each naming them, the span cut (or dropped), no problem
    ds = load_dataset(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds, problems = check_dataset(ds, clip_spans=True)
    msgs = [str(w.message) for w in seen]
    assert len(msgs) == 2 and "row 4, column 'spans': span [6, 40) for 'joy'" in msgs[0] and "cut to [6, 15)" in msgs[0]
    assert "row 6, column 'spans': span [20, 30) for 'sad' lies wholly outside" in msgs[1] and "dropped" in msgs[1]
    assert not problems and ds.spans[2]["joy"] == [(0, 5), (6, 15)] and ds.spans[4]["sad"] == []
    # through the CLI: exit 2 before any model loads, the same line
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: s\noutput_dir: {tmp_path / 'runs'}\ndata:\n  path: {path}\nembed:\n  model: minilm\n")
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "row 4, column 'spans': span [6, 40) for 'joy' ends past the end of its text" in err
    assert not (tmp_path / "runs" / "s" / "stores").exists()


def test_dataset_info_counts_inline_span_truth(tmp_path, capsys):
    path = _data(tmp_path, GOOD)
    assert main(["dataset-info", str(path)]) == 0
    out = capsys.readouterr().out
    block = out[out.index("token-level truth per concept (spans"):]
    rows = {ln.split()[0]: ln.split()[1:] for ln in block.splitlines()[2:] if ln.strip()}
    # joy: 6 positives, all with spans; spans 1 + 2 + 1 per 3 rows, twice = 8; characters 5 + 10 + 6 = 21, twice;
    # words: "happy" / "happy", "happy" / "joyful" = 4, twice
    assert rows["joy"] == ["6", "6", "8", "42", "8"]
    # sad: "so sad and blue" [3, 6) + [11, 15) = 7 chars, 2 words; "blue mood" [0, 4) = 4 chars, 1 word
    assert rows["sad"] == ["4", "4", "6", "22", "6"]
