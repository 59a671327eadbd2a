"""Tests of the built-in multi-label ``emotions`` text dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from superactivators.data.builtin import BUILTIN_DATASETS, builtin_dataset_path
from superactivators.data.builtin.textgen import CONCEPTS, EVIDENCE, FILLERS, generate_emotions, main

SENT_SPLIT = re.compile(r"(?<=[.?!]) ")


@pytest.fixture(scope="module")
def shipped() -> pd.DataFrame:
    """The CSV shipped as package data."""
    return pd.read_csv(builtin_dataset_path("emotions"), keep_default_na=False)


def _spans(row: pd.Series) -> dict[str, list[list[int]]]:
    return json.loads(row["spans"])


def test_registry_and_path() -> None:
    assert "emotions" in BUILTIN_DATASETS
    path = builtin_dataset_path("emotions")
    assert isinstance(path, Path)
    assert path.name == "metadata.csv" and path.is_file()
    with pytest.raises(ValueError, match="emotions"):
        builtin_dataset_path("no-such-dataset")


def test_shipped_csv_matches_generator(shipped: pd.DataFrame) -> None:
    fresh = generate_emotions()
    assert list(shipped.columns) == [*CONCEPTS, "text", "spans", "split"]
    pd.testing.assert_frame_equal(shipped, fresh, check_dtype=False)


def test_generator_is_deterministic_and_seeded() -> None:
    a = generate_emotions(n_samples=50, seed=3)
    pd.testing.assert_frame_equal(a, generate_emotions(n_samples=50, seed=3))
    assert not a["text"].equals(generate_emotions(n_samples=50, seed=4)["text"])


def test_cli_writes_same_csv(tmp_path: Path, shipped: pd.DataFrame) -> None:
    out = tmp_path / "sub" / "metadata.csv"
    assert main([str(out)]) == 0
    assert out.read_text() == builtin_dataset_path("emotions").read_text()


def test_phrase_lists() -> None:
    assert len(CONCEPTS) >= 6
    assert all(c.startswith("emotion::") for c in CONCEPTS)
    all_phrases: list[str] = []
    for concept in CONCEPTS:
        phrases = EVIDENCE[concept]
        assert len(set(phrases)) == len(phrases) >= 25, concept
        all_phrases += phrases
    assert len(set(all_phrases)) == len(all_phrases), "a phrase belongs to two concepts"
    assert not set(all_phrases) & set(FILLERS)


def test_spans_point_at_evidence(shipped: pd.DataFrame) -> None:
    for _, row in shipped.iterrows():
        text = row["text"]
        for concept, spans in _spans(row).items():
            assert concept in CONCEPTS
            assert spans
            for start, end in spans:
                assert 0 <= start < end <= len(text)
                assert text[start:end] in EVIDENCE[concept], (concept, text[start:end])


def test_labels_agree_with_spans(shipped: pd.DataFrame) -> None:
    for _, row in shipped.iterrows():
        spans = _spans(row)
        for concept in CONCEPTS:
            assert row[concept] in (0, 1)
            assert (row[concept] == 1) == (concept in spans)


def test_texts_shape(shipped: pd.DataFrame) -> None:
    for text in shipped["text"]:
        assert text.strip()
        n_sent = len(SENT_SPLIT.split(text))
        n_words = len(text.split())
        assert 3 <= n_sent <= 8, text
        assert 40 <= n_words <= 120, text
    assert shipped["text"].is_unique


def test_every_sample_has_filler(shipped: pd.DataFrame) -> None:
    fillers = set(FILLERS)
    for text in shipped["text"]:
        assert sum(s in fillers for s in SENT_SPLIT.split(text)) >= 2


def test_splits_and_positive_counts(shipped: pd.DataFrame) -> None:
    assert len(shipped) >= 600
    counts = shipped["split"].value_counts()
    assert set(counts.index) == {"train", "cal", "test"}
    n = len(shipped)
    assert abs(counts["train"] / n - 0.6) < 0.02
    assert abs(counts["cal"] / n - 0.2) < 0.02
    assert abs(counts["test"] / n - 0.2) < 0.02
    for split, part in shipped.groupby("split"):
        for concept in CONCEPTS:
            pos = int(part[concept].sum())
            assert pos > 0, (split, concept)
            if split in ("cal", "test"):
                assert pos >= 15, (split, concept, pos)


def test_multilabel_mix(shipped: pd.DataFrame) -> None:
    k = shipped[list(CONCEPTS)].sum(axis=1)
    assert set(k.unique()) == {0, 1, 2, 3}
    assert 0.10 <= (k == 0).mean() <= 0.15
    assert (k >= 2).sum() > 0.2 * len(shipped)


def _giveaway_words(df: pd.DataFrame, concept: str) -> list[str]:
    """Words in >= 95% of ``concept``'s positives and <= 5% of its negatives."""
    words = [set(re.findall(r"[a-z']+", text.lower())) for text in df["text"]]
    is_pos = df[concept].to_numpy() == 1
    pos = [w for w, p in zip(words, is_pos) if p]
    neg = [w for w, p in zip(words, is_pos) if not p]
    found = []
    for word in sorted(set().union(*pos)):
        pos_rate = sum(word in w for w in pos) / len(pos)
        neg_rate = sum(word in w for w in neg) / len(neg)
        if pos_rate >= 0.95 and neg_rate <= 0.05:
            found.append(word)
    return found


def test_no_giveaway_keyword(shipped: pd.DataFrame) -> None:
    for concept in CONCEPTS:
        assert _giveaway_words(shipped, concept) == [], concept


def test_giveaway_check_detects_planted_keyword(shipped: pd.DataFrame) -> None:
    concept = CONCEPTS[0]
    planted = shipped.copy()
    is_pos = planted[concept] == 1
    planted.loc[is_pos, "text"] = planted.loc[is_pos, "text"] + " Zorblax."
    assert _giveaway_words(planted, concept) == ["zorblax"]
