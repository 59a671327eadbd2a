"""Property-based fuzz of the input edge (hypothesis): metadata.csv, spans JSON and YAML configs,
generated and mutated. The property: either accepted and equal to an independent reference read
here, or refused with lines that each name the file, column or key; never another exception (a
traceback) and never a hang. No model loads; the whole module runs in well under a minute.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from superactivators.config import load_config
from superactivators.data.checks import load_and_check
from superactivators.data.datasets import load_dataset
from superactivators.util.errors import ValidationError

from .timeouts import deadline

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRUE = ("1", "1.0", "yes", "true", "y", "t")
FALSE = ("0", "0.0", "no", "false", "n", "f")
SPLITS = ("train", "cal", "test")
NA = ["nan", "NA", "None", "null", "N/A", "#N/A", "<NA>", "NULL", "NaN", "n/a", "-nan", "1.#IND"]
CELLS = ["", " ", "0", "1", "2", "-1", "yes", "No", "TRUE", "positive", "negative", "1.0", "0.5", "x", "train",
         "Cal", " test ", "\u200b", "é", "a,b", 'q"q', "line\nbreak", "{}", '{"joy": [[0, 1]]}', *NA]




def _names_something(line: str, where: str) -> bool:
    """A refusal line names the file, or is a hint / overflow line that follows one that does."""
    return where in line or line.startswith(("(", "... and"))


# ---------------------------------------------------------------------------- metadata.csv

HEADER = ["text", "split", "emo::joy", "emo::fear", "calm", "class", "spans"]


def _clean_rows() -> list[list[str]]:
    rows = []
    for i in range(9):
        joy, fear, calm = i % 2, (i // 2) % 2, 1 - i % 2
        spans = json.dumps({"emo::joy": [[0, 3]]}) if joy else ""
        rows.append([f"text number {i}", SPLITS[i % 3], str(joy), str(fear), str(calm),
                     ["red_cube", "blue_ball", "green_cone"][i % 3], spans])
    # every concept needs a positive in train and cal and a negative in train
    return rows


def _to_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _oracle(data: bytes, concepts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Labels of ``concepts`` and the splits, read with the csv module (independent of the loader)."""
    rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8"))) if r]
    header, body = rows[0], rows[1:]
    labels = np.array([[1 if r[header.index(c)].strip().lower() in TRUE else 0 for c in concepts] for r in body])
    for r in body:
        for c in concepts:
            assert r[header.index(c)].strip().lower() in TRUE + FALSE, (c, r)
    return labels.reshape(len(body), len(concepts)), [r[header.index("split")].strip().lower() for r in body]


mutation = st.one_of(
    st.tuples(st.just("cell"), st.integers(0, 8), st.integers(0, len(HEADER) - 1), st.sampled_from(CELLS)),
    st.tuples(st.just("header"), st.integers(0, len(HEADER) - 1), st.sampled_from(["", "split", "text", "__x__",
                                                                                   "a::b", "mask::joy", *NA])),
    st.tuples(st.just("drop"), st.integers(0, len(HEADER) - 1)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("same"), st.integers(0, 8), st.integers(2, 4), st.integers(0, 5)),
)


def _mutate(muts: list[tuple]) -> tuple[bytes, bool]:
    """The mutated file and whether it still means the clean dataset (only 'same' mutations)."""
    header, rows = list(HEADER), [list(r) for r in _clean_rows()]
    same = True
    tail: list[tuple] = []
    for m in muts:
        if m[0] in ("cell", "header", "drop"):
            col = m[2] if m[0] == "cell" else m[1]
            if col >= len(header):
                continue
            same = False
            if m[0] == "cell":
                rows[m[1]][col] = m[3]
            elif m[0] == "header":
                header[col] = m[2]
            else:
                del header[col]
                for r in rows:
                    del r[col]
        elif m[0] == "same":  # an equivalent spelling of a label cell
            row, col, k = m[1], m[2], m[3]
            if col < len(header) and header[col] == HEADER[col] and rows[row][col] in ("0", "1"):
                spell = TRUE if rows[row][col] == "1" else FALSE
                rows[row][col] = f" {spell[k % len(spell)].upper()} " if k % 2 else spell[k % len(spell)]
        else:
            tail.append(m)
            same = False
    data = _to_bytes(header, rows)
    for m in tail:
        pos = int(m[1] * len(data))
        data = data[:pos] if m[0] == "truncate" else data[:pos] + m[2] + data[pos:]
    return data, same


@FUZZ
@given(st.lists(mutation, max_size=3))
def test_fuzz_metadata_csv(tmp_path_factory, muts):
    root = tmp_path_factory.mktemp("fz")
    data, same = _mutate(muts)
    (root / "metadata.csv").write_bytes(data)
    with deadline(20), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = load_and_check(root / "metadata.csv")  # any other exception fails the test
    where = str(root / "metadata.csv")
    event("refused" if checked.problems else ("accepted, same as clean" if same else "accepted"))
    if checked.problems:
        assert not same, checked.problems
        for line in checked.problems:
            assert "\n" not in line and _names_something(line, where), line
        return
    ds = checked.ds
    assert ds is not None
    labels, splits = _oracle(data, ds.concepts)
    np.testing.assert_array_equal(ds.labels, labels)
    assert list(ds.splits) == splits
    if same:
        clean = load_dataset(_clean_dir(tmp_path_factory))
        assert ds.concepts == clean.concepts and ds.spans == clean.spans
        np.testing.assert_array_equal(ds.labels, clean.labels)


_CLEAN: dict[str, Path] = {}


def _clean_dir(factory) -> Path:
    if "p" not in _CLEAN:
        p = factory.mktemp("clean")
        (p / "metadata.csv").write_bytes(_to_bytes(HEADER, _clean_rows()))
        _CLEAN["p"] = p
    return _CLEAN["p"]


# ---------------------------------------------------------------------------- spans JSON

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["joy", "fear", "x"]), kids, max_size=2),
    max_leaves=8,
)
good_spans = st.dictionaries(st.sampled_from(["joy", "fear"]),
                             st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)).map(list), max_size=3),
                             max_size=2)


def _span_oracle(obj: object) -> dict | None:
    """The spans a valid cell means, or None when it must be refused (written independently)."""
    if not isinstance(obj, dict):
        return None
    out = {}
    for c, lst in obj.items():
        if c not in ("joy", "fear") or not isinstance(lst, list):
            return None
        pairs = []
        for p in lst:
            if not (isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p)):
                return None
            if not 0 <= p[0] < p[1] <= 2**31 - 1:
                return None
            pairs.append((p[0], p[1]))
        out[c] = pairs
    return out


@FUZZ
@given(st.one_of(good_spans, json_values), st.sampled_from(["plain", "deep", "raw"]), st.integers(1, 3000))
def test_fuzz_spans_json(tmp_path_factory, obj, shape, depth):
    if shape == "deep":
        cell = '{"joy": ' + "[" * depth + "]" * depth + "}"
        want = _span_oracle(json.loads(cell)) if depth < 500 else None
    elif shape == "raw":
        cell = json.dumps(obj).replace("1", "1e400", 1)  # a float that overflows
        want = _span_oracle(obj) if cell == json.dumps(obj) else None
    else:
        cell = json.dumps(obj)
        want = _span_oracle(obj)
    root = tmp_path_factory.mktemp("sp")
    rows = [["joy", "fear", "text", "split", "spans"]]
    for i in range(3):
        rows.append([str(i % 2), str((i + 1) % 2), f"t{i}", SPLITS[i], ""])
    rows.append(["1", "1", "row five", "train", cell])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (root / "metadata.csv").write_text(buf.getvalue())
    try:
        with deadline(20):
            ds = load_dataset(root / "metadata.csv")
    except ValidationError as err:
        event("refused")
        assert want is None, (cell[:80], err.problems)
        assert len(err.problems) == 1 and "row 5, column 'spans'" in err.problems[0], err.problems
        return
    event("accepted")
    assert want is not None, cell[:200]
    assert ds.spans[3] == want


# ---------------------------------------------------------------------------- YAML configs

KEYS = {
    "name": st.sampled_from(["a", "", "x/y", "null", 3]),
    "seed": st.sampled_from([0, -1, "x", 1.5, True]),
    "data": st.fixed_dictionaries({}, optional={"path": st.sampled_from(["builtin:emotions", 4]),
                                                "concepts": st.sampled_from([["a"], "a", [], [None], ["nan", "NA"]])}),
    "embed": st.fixed_dictionaries({}, optional={"batch_size": st.sampled_from([1, 0, "abc", 8.0]),
                                                 "layers": st.sampled_from([[1], "all", "50%", [True], "200%"]),
                                                 "store_dtype": st.sampled_from(["fp16", "float8"])}),
    "detect": st.fixed_dictionaries({}, optional={"methods": st.sampled_from([[], ["superactivator"], ["nope"]]),
                                                  "grid": st.sampled_from([[10], [], [0], [float("nan")]])}),
    "bogus": st.just(1),
}
configs = st.fixed_dictionaries({}, optional=KEYS)
text_edits = st.lists(st.tuples(st.sampled_from(["dup_line", "delete", "insert"]), st.floats(0, 1),
                                st.sampled_from(["\t", ":", "- ", "{", "&a ", "*a", "\x00", "embed:\n", "  "])),
                      max_size=2)
KEY_LINE = re.compile(r"^(top level|unknown config key|[a-z_]+(\.[a-z_]+)*(\[\d+\])?:)")


def _has_duplicate_key(text: str) -> bool:
    """Independent check: a mapping node of the composed document that repeats a scalar key."""
    def walk(node) -> bool:
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
            return len(keys) != len(set(keys)) or any(walk(v) for _, v in node.value)
        if isinstance(node, yaml.SequenceNode):
            return any(walk(v) for v in node.value)
        return False

    return walk(yaml.compose(text, Loader=yaml.SafeLoader))


@FUZZ
@given(configs, text_edits)
def test_fuzz_yaml_config(tmp_path_factory, cfg, edits):
    text = yaml.safe_dump(cfg, sort_keys=False) if cfg else ""
    for kind, at, piece in edits:
        lines = text.splitlines(keepends=True)
        i = int(at * len(lines)) if lines else 0
        if kind == "dup_line" and lines:
            lines.insert(i, lines[min(i, len(lines) - 1)])
        elif kind == "delete" and lines:
            del lines[min(i, len(lines) - 1)]
        else:
            lines.insert(i, piece)
        text = "".join(lines)
    path = tmp_path_factory.mktemp("yc") / "c.yaml"
    path.write_text(text)
    try:
        with deadline(20):
            got = load_config(path)
    except ValidationError as err:
        event("refused")
        for line in err.problems:
            assert "\n" not in line and (str(path) in line or KEY_LINE.match(line)), line
        return
    event("accepted")
    # accepted: a readable, non-empty document without a repeated key, read as plain YAML reads it
    plain = yaml.safe_load(text)
    assert plain and not _has_duplicate_key(text), text
    from superactivators.config import config_from_dict

    assert got.to_dict() == config_from_dict(plain).to_dict()


set_items = st.lists(st.tuples(st.sampled_from(["embed.batch_size", "data.concepts", "name", "detect.grid", "seed",
                                                "embed", "x.y.z", "data.split_map"]),
                               st.sampled_from(["4", "abc", "[1, 2]", "{a: 1, a: 2}", "{a: cal}", "", "null", "[",
                                                "nan", "- a\n- a", "1e400", "{", "[[[[[[]]]]]]"])),
                     max_size=3)


@FUZZ
@given(set_items)
def test_fuzz_set_values(items):
    from superactivators.config import apply_overrides, config_from_dict

    args = [f"{k}={v}" for k, v in items]
    try:
        with deadline(20):
            config_from_dict(apply_overrides({}, args))
    except ValidationError as err:
        event("refused")
        keys = {k for k, _ in items}
        for line in err.problems:
            assert "\n" not in line and (line.startswith("--set ") or KEY_LINE.match(line)
                                         or any(k in line for k in keys)), line
        return
    event("accepted")
    assert len({k for k, _ in items}) == len(items)  # a key given twice is never accepted
