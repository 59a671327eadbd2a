"""The seed metadata loader: reference files, built-in data, and malformed input."""

from pathlib import Path

import numpy as np
import pytest

from superactivators.data.datasets import DatasetError, dataset_summary, load_dataset, usable_concepts

from .conftest import REFERENCE_DATA

# (folder, modality, n concepts, first concept, split counts) read off the files independently
EXPECTED = {
    "Augmented_GoEmotions": ("text", 19, "admiration", {"train": 3271, "cal": 1082, "test": 1074}),
    "Augmented_iSarcasm": ("text", 7, "sarcasm", {"train": 1028, "cal": 357, "test": 349}),
    "Broden-OpenSurfaces": ("image", 37, "color::black-c", {"train": 2118, "cal": 717, "test": 743}),
    "Broden-Pascal": ("image", 94, "color::black-c", {"train": 2703, "cal": 891, "test": 909}),
    "CLEVR": ("image", 6, "color::blue", {"train": 634, "cal": 200, "test": 166}),
    "Coco": ("image", 91, "person", {"train": 4001, "cal": 500, "test": 999}),
    "Sarcasm": ("text", 1, "sarcasm", {"train": 861, "cal": 300, "test": 285}),
}


@pytest.mark.skipif(not REFERENCE_DATA.exists(), reason=f"reference data not found at {REFERENCE_DATA}")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_metadata_loads(name):
    modality, n_concepts, first, counts = EXPECTED[name]
    ds = load_dataset(REFERENCE_DATA / name / "metadata.csv")
    assert ds.modality == modality
    assert len(ds.concepts) == n_concepts and ds.concepts[0] == first
    assert {s: int((ds.splits == s).sum()) for s in counts} == counts
    assert ds.labels.shape == (sum(counts.values()), n_concepts)
    assert "split" not in ds.concepts and "image_path" not in ds.concepts
    if name == "CLEVR":
        assert list(ds.metadata.columns) == ["class"]  # non-0/1 column kept as metadata
        assert "shape::sphere" in ds.concepts
    if name == "Coco":
        assert "traffic light" in ds.concepts
    assert "positives per split" in dataset_summary(ds)


def test_builtin_emotions():
    ds = load_dataset("builtin:emotions")
    assert ds.modality == "text" and len(ds.concepts) >= 6 and len(ds) >= 600
    assert ds.spans is not None and ds.has_token_ground_truth()
    i = int(np.flatnonzero(ds.labels[:, 0])[0])
    (a, b), *_ = ds.spans[i][ds.concepts[0]]
    assert 0 <= a < b <= len(ds.text(i))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "metadata.csv"
    p.write_text(text)
    return p


def test_inline_and_file_texts(tmp_path):
    (tmp_path / "a.txt").write_text("hello there")
    p = _write(tmp_path, "c1,text_path,split\n1,a.txt,train\n")
    assert load_dataset(p).text(0) == "hello there"
    p = _write(tmp_path, 'c1,text,split\n1,"inline, with comma",cal\n')
    assert load_dataset(p).text(0) == "inline, with comma"


def test_missing_split_column(tmp_path):
    p = _write(tmp_path, "c1,text\n1,hi\n")
    with pytest.raises(DatasetError, match=r"metadata.csv: missing column 'split'"):
        load_dataset(p)


def test_unknown_split_names_row(tmp_path):
    p = _write(tmp_path, "c1,text,split\n1,a,train\n0,b,validation\n")
    with pytest.raises(DatasetError, match=r"row 3, column 'split': unknown split 'validation'"):
        load_dataset(p)


def test_bad_label_value_names_row_and_column(tmp_path):
    p = _write(tmp_path, "c1,c2,text,split\n1,0,a,train\n1,0,b,train\n0,2,c,cal\n")
    with pytest.raises(DatasetError, match=r"row 4, column 'c2': expected 0 or 1, got '2'"):
        load_dataset(p)


def test_no_text_or_image_column(tmp_path):
    p = _write(tmp_path, "c1,split\n1,train\n")
    with pytest.raises(DatasetError, match="image_path"):
        load_dataset(p)


def test_empty_text_is_clear_error(tmp_path):
    p = _write(tmp_path, 'c1,text,split\n1,"   ",train\n')
    with pytest.raises(DatasetError, match=r"row 2, column 'text': empty value"):
        load_dataset(p)
    (tmp_path / "blank.txt").write_text("  \n")
    p = _write(tmp_path, "c1,text_path,split\n1,blank.txt,train\n")
    with pytest.raises(DatasetError, match=r"empty text: .*blank.txt \(row 2"):
        load_dataset(p).text(0)


def test_missing_text_file_is_clear_error(tmp_path):
    p = _write(tmp_path, "c1,text_path,split\n1,nope.txt,train\n")
    with pytest.raises(DatasetError, match="text file not found: .*nope.txt"):
        load_dataset(p).text(0)


def test_bad_spans(tmp_path):
    p = _write(tmp_path, 'c1,text,spans,split\n0,abc,"{""c1"": [[0, 2]]}",train\n')
    with pytest.raises(DatasetError, match="span for 'c1' but its label is 0"):
        load_dataset(p)
    p = _write(tmp_path, 'c1,text,spans,split\n1,abc,"{oops",train\n')
    with pytest.raises(DatasetError, match="row 2, column 'spans'"):
        load_dataset(p)


def test_missing_requested_concept(tmp_path):
    p = _write(tmp_path, "c1,text,split\n1,a,train\n")
    with pytest.raises(DatasetError, match=r"missing concept column\(s\) \['c9'\]"):
        load_dataset(p, concepts=["c9"])


def test_concept_without_cal_positives_is_skipped_with_warning(tmp_path):
    p = _write(tmp_path, "c1,c2,text,split\n1,1,a,train\n0,0,d,train\n1,0,b,cal\n0,1,c,test\n")
    ds = load_dataset(p)
    with pytest.warns(UserWarning, match=r"concept 'c2' skipped: no positive samples in split\(s\) cal"):
        keep = usable_concepts(ds)
    assert keep == ["c1"]
    sub = ds.subset_concepts(keep)
    assert sub.labels.shape == (4, 1)


def test_missing_metadata_file(tmp_path):
    with pytest.raises(DatasetError, match="metadata file not found"):
        load_dataset(tmp_path / "nothing.csv")


def test_concept_subset_keeps_only_their_spans(tmp_path):
    p = _write(tmp_path, 'c1,c2,text,spans,split\n1,1,abcdef,"{""c1"": [[0, 2]], ""c2"": [[3, 5]]}",train\n')
    ds = load_dataset(p, concepts=["c2"])
    assert ds.concepts == ["c2"] and ds.spans == [{"c2": [(3, 5)]}]
