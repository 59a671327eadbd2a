"""Up-front checks of a loaded dataset, before any model loads: every problem is one line.

What is checked: every split has samples; every text file exists, is a regular file (a FIFO,
device or socket is refused without opening it), is UTF-8 and not blank; every image and mask opens and each mask has its image's size (headers only, via
:func:`superactivators.data.masks.check_images`). What is reported (warnings): positive samples
without any span for their concept, whose every token then counts as in-concept.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..util.files import regular_file_problem
from .datasets import SPLITS, Dataset, DatasetError, load_dataset, usable_concepts, withhold_token_truth
from .masks import check_images


def split_problems(ds: Dataset) -> list[str]:
    """One line per empty split (train fits concepts, cal calibrates, test reports)."""
    counts = {s: int((ds.splits == s).sum()) for s in SPLITS}
    return [f"{ds.source}: split {s!r} has no samples (column 'split' needs train, cal and test rows)"
            for s, n in counts.items() if n == 0]


def text_file_problems(ds: Dataset) -> list[str]:
    """One line per text file that is missing, unreadable, not UTF-8 or blank."""
    if ds.text_paths is None:
        return []
    out = []
    for i, rel in enumerate(ds.text_paths):
        path = ds.root / rel
        where = f"{os.path.abspath(path)} (row {i + 2} of {ds.source})"
        why = regular_file_problem(path)  # checked without opening: a FIFO would block the read
        if why not in (None, "not found"):
            out.append(f"text file {where} {why}")
            continue
        try:
            txt = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            out.append(f"text file not found: {where}")
            continue
        except UnicodeDecodeError as err:
            out.append(f"text file is not UTF-8: {where}: byte {err.start}")
            continue
        except OSError as err:
            out.append(f"cannot read text file {where}: {err.strerror or err}")
            continue
        if not txt.strip():
            out.append(f"empty text file: {where}")
    return out


def positives_without_spans(ds: Dataset) -> dict[str, int]:
    """Per concept, positive samples with no span for it (their every token counts as in-concept)."""
    if ds.spans is None:
        return {}
    has = np.array([[c in sp for c in ds.concepts] for sp in ds.spans], dtype=bool).reshape(len(ds), -1)
    n = ((ds.labels > 0) & ~has).sum(axis=0)
    return {c: int(k) for c, k in zip(ds.concepts, n) if k}


def warn_positives_without_spans(ds: Dataset) -> dict[str, int]:
    """One warning per concept with span-less positives; returns the counts (for the manifest)."""
    counts = positives_without_spans(ds)
    pos = ds.labels.sum(axis=0)
    for c, k in counts.items():
        warnings.warn(
            f"concept {c!r}: {k} of {int(pos[ds.concepts.index(c)])} positive samples have no span; every token "
            "of those samples counts as in-concept (token-level truth and localisation scores for it are weaker)",
            stacklevel=2,
        )
    return counts


def check_dataset(ds: Dataset, skip_bad_images: bool = False, clip_spans: bool = False) -> tuple[Dataset, list[str]]:
    """The dataset (bad images skipped when asked) and one line per problem found (spans outside
    their texts: a warning each and cut when ``clip_spans``)."""
    from .spancheck import span_problems

    problems = split_problems(ds) + text_file_problems(ds)
    if not problems:
        problems += span_problems(ds, clip=clip_spans)
    if ds.modality == "image":
        try:
            ds, _ = check_images(ds, skip_bad=skip_bad_images)
        except DatasetError as err:
            problems += str(err).splitlines()
    return ds, problems


@dataclass
class CheckedData:
    """A dataset after :func:`load_and_check`: ``ds`` (None when it could not be read), the
    concepts that can be learnt (``usable``) and one line per problem."""

    ds: Dataset | None
    usable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load_and_check(path: str | Path, concepts: list[str] | str | None = None, ground_truth: str = "auto",
                   columns: dict | None = None, allow_outside_paths: bool = False, sample_labels_only: bool = False,
                   skip_bad_images: bool = False, clip_spans: bool = False,
                   missing_labels: str = "error") -> CheckedData:
    """Every dataset check a run makes before any model loads; ``run`` (preflight) and
    ``dataset-info`` both come here, so the two never disagree about a dataset."""
    try:
        ds = load_dataset(path, concepts=concepts, ground_truth=ground_truth, columns=columns,
                          allow_outside_paths=allow_outside_paths, missing_labels=missing_labels)
    except DatasetError as err:
        return CheckedData(None, [], list(err.problems))
    if sample_labels_only:  # withhold spans / masks: sample labels only
        ds = withhold_token_truth(ds)
    ds, problems = check_dataset(ds, skip_bad_images=skip_bad_images, clip_spans=clip_spans)
    keep = usable_concepts(ds, need=("train", "cal"))
    if not keep:
        problems.append(f"{ds.source}: no concept has positives in both train and cal (and negatives in train)")
    return CheckedData(ds, keep, problems)
