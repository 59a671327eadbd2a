"""The seed's text annotations: ``word_level_*.csv`` (word truth) and ``paragraph_level_*.csv`` (labels).

Word file: ``paragraph_id`` (1-based: metadata row + 1), ``word``, optional ``sentence_id`` /
``sentiment_label``, and a 0/1 column per concept. The k-th row of a paragraph is the paragraph's
k-th word, words being the ``\\S+`` runs of its text (the seed's ``re.finditer(r"\\S+", text)``); a
word labelled 1 becomes its character span, and spans reach tokens through the tokenizer's offsets
(:func:`superactivators.store.truth.span_token_bits`). Paragraph file: row i is metadata row i
(``paragraph_id`` = i + 1, a ``text`` column) and its concept columns are the sample labels, as in
the seed (which takes them from here, not from ``metadata.csv``).

Checked at load time, each an error naming file and row: a missing or unparsable file, a
``paragraph_id`` outside the metadata, a concept column ``metadata.csv`` lacks, a non-0/1 value,
more word rows than words, a ``word`` that does not occur in the paragraph's k-th word, a
paragraph file with another number of rows than ``metadata.csv`` or another text than the
sample's file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import MetaRows, TextTruth, binary_frame, read_csv

WORD_META = ("paragraph_id", "sentence_id", "word", "sentiment_label")
PARAGRAPH_META = ("paragraph_id", "sentence_id", "sentence", "text", "sentiment_label")
_WORD = re.compile(r"\S+")


def seed_text_files(root: Path) -> tuple[Path, Path] | None:
    """The word- and paragraph-level files of a seed text folder, or None when it has none.

    The seed picks ``*_sarcasm.csv`` for folders named ``*Sarcasm*`` and ``*_emotion.csv`` for
    ``*Emotion*``; other folders work when exactly one ``word_level_*.csv`` is present. One file
    without its partner is an error (the seed reads both).
    """
    words = sorted(root.glob("word_level_*.csv"))
    if not words:
        paras = sorted(root.glob("paragraph_level_*.csv"))
        if paras:
            raise DatasetError(f"{paras[0]} found but no word_level_*.csv beside it in {root}")
        return None
    name = root.name.lower()
    pick = [w for w in words if ("sarcasm" in name and w.stem.endswith("sarcasm"))
            or ("emotion" in name and w.stem.endswith("emotion"))]
    if len(pick) != 1:
        if len(words) > 1:
            raise DatasetError(f"{root}: several word-level files ({', '.join(w.name for w in words)}); "
                               "set data.ground_truth to choose")
        pick = words
    word = pick[0]
    para = root / word.name.replace("word_level_", "paragraph_level_", 1)
    if not para.exists():
        raise DatasetError(f"{word} needs its paragraph-level file, not found: {os.path.abspath(para)}")
    return word, para


def read_seed_text(rows: MetaRows, word_file: Path, para_file: Path) -> TextTruth:
    """Spans and sample labels from the seed's word- and paragraph-level files."""
    if rows.text is None:
        raise DatasetError(f"{rows.source}: word-level truth needs a text dataset")
    labels, label_concepts = _paragraph_labels(rows, para_file)
    spans, _ = _word_spans(rows, word_file)
    truth = TextTruth(kind="seed-words", files=[word_file, para_file], spans=spans, labels=labels,
                      label_concepts=label_concepts)
    _warn_words_in_negatives(truth, rows, word_file)
    return truth


def _concepts_of(df, meta: tuple[str, ...], rows: MetaRows, path: Path) -> list[str]:
    cols = [c for c in df.columns if c not in meta and not str(c).startswith("Unnamed:")]  # pandas index columns
    unknown = [c for c in cols if c not in rows.concepts]
    if unknown:
        raise DatasetError(f"{path}: row 1 (header): concept column(s) {unknown} are not columns of "
                           f"{rows.source}")
    return cols


def _paragraph_labels(rows: MetaRows, path: Path) -> tuple[np.ndarray, list[str]]:
    df = read_csv(path, "paragraph-level file")
    n = len(rows)
    if len(df) != n:
        what = (f"truncated: row {len(df) + 2} (sample {len(df) + 1}) is missing" if len(df) < n
                else f"extra rows from row {n + 2} on")
        raise DatasetError(f"{path}: {len(df)} rows but {rows.source} has {n} samples ({what}; row i must be "
                           "sample i)")
    if "paragraph_id" in df.columns:
        ids = _int_column(df, "paragraph_id", path)
        bad = np.flatnonzero(ids != np.arange(1, n + 1))
        if bad.size:
            r = int(bad[0])
            raise DatasetError(f"{path}: row {r + 2}, column 'paragraph_id': {ids[r]} but this row is "
                               f"sample {r + 1} of {rows.source} (rows must follow metadata order)")
    concepts = _concepts_of(df, PARAGRAPH_META, rows, path)
    labels = binary_frame(df, concepts, path)
    if "text" in df.columns:
        for i, t in enumerate(df["text"].tolist()):
            if " ".join(t.split()) != " ".join(rows.text(i).split()):
                raise DatasetError(f"{path}: row {i + 2}, column 'text' differs from the text of sample "
                                   f"{i + 1} ({rows.root}, row {i + 2} of {rows.source.name})")
    return labels, concepts


def _int_column(df, col: str, path: Path) -> np.ndarray:
    vals = df[col].str.strip()
    ok = vals.str.fullmatch(r"\d+(\.0)?")
    if not ok.all():
        r = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DatasetError(f"{path}: row {r + 2}, column {col!r}: expected a whole number, got {df[col].iloc[r]!r}")
    return vals.astype(float).astype(np.int64).to_numpy()


def _word_spans(rows: MetaRows, path: Path) -> tuple[list[dict[str, list[tuple[int, int]]]], list[str]]:
    df = read_csv(path, "word-level file")
    for col in ("paragraph_id", "word"):
        if col not in df.columns:
            raise DatasetError(f"{path}: missing column {col!r}")
    concepts = _concepts_of(df, WORD_META, rows, path)
    if not concepts:
        raise DatasetError(f"{path}: no concept columns")
    n = len(rows)
    pid = _int_column(df, "paragraph_id", path)
    bad = np.flatnonzero((pid < 1) | (pid > n))
    if bad.size:
        r = int(bad[0])
        raise DatasetError(f"{path}: row {r + 2}, column 'paragraph_id': {pid[r]} is not a sample of "
                           f"{rows.source} (paragraph ids run 1..{n})")
    vals = binary_frame(df, concepts, path)
    k = df.groupby(pid, sort=False).cumcount().to_numpy()  # k-th row of its paragraph = k-th word
    words = df["word"].tolist()
    spans: list[dict[str, list[tuple[int, int]]]] = [{} for _ in range(n)]
    order = np.argsort(pid, kind="stable")
    cuts = np.flatnonzero(np.diff(pid[order])) + 1
    for grp in np.split(order, cuts):
        if not grp.size:
            continue
        p = int(pid[grp[0]]) - 1
        text = rows.text(p)
        found = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        ks = k[grp]
        if ks.max() >= len(found):
            r = int(grp[np.flatnonzero(ks >= len(found))[0]])
            raise DatasetError(f"{path}: row {r + 2}: paragraph {p + 1} has {int(ks.max()) + 1} word rows but "
                               f"its text has {len(found)} words")
        for r, kk in zip(grp, ks):
            w = words[r].strip()
            a, b = found[kk]
            if w and w not in text[a:b]:
                raise DatasetError(f"{path}: row {int(r) + 2}: word {words[r]!r} does not occur in word {kk + 1} "
                                   f"of paragraph {p + 1} ({text[a:b]!r})")
        sp = spans[p]
        for j, c in enumerate(concepts):
            sp[c] = [found[kk] for kk in ks[vals[grp, j] == 1]]
    return spans, concepts


def _warn_words_in_negatives(truth: TextTruth, rows: MetaRows, path: Path) -> None:
    """Word truth in a paragraph labelled 0 is ignored (token truth never contradicts labels): say so."""
    def label_of(c: str) -> np.ndarray:
        if c in truth.label_concepts:
            return truth.labels[:, truth.label_concepts.index(c)]
        return rows.labels[:, rows.concepts.index(c)]

    for c in sorted({c for sp in truth.spans for c in sp}):
        lab = label_of(c)
        bad = [i for i, sp in enumerate(truth.spans) if sp.get(c) and not lab[i]]
        if bad:
            warnings.warn(f"{path}: {len(bad)} paragraph(s) have {c!r} words but label 0 (first: paragraph "
                          f"{bad[0] + 1}); those words are not counted as in-concept", stacklevel=3)
