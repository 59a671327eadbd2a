"""The ``data`` section of a run config: which dataset, its columns, and how masks become truth."""

from __future__ import annotations

from dataclasses import dataclass

from .labels import MISSING_CHOICES, MISSING_LABELS
from .masks import MaskOptions
from .seed import KINDS as GROUND_TRUTH_KINDS


@dataclass
class DataConfig:
    """Which dataset: a metadata.csv, a folder holding one, or ``builtin:NAME``."""

    path: str = "builtin:emotions"
    # restrict / order concept columns: a list, or 'seed' (the seed's subset for its folder) / 'preset:NAME'
    concepts: list[str] | str | None = None
    # token-level truth beside metadata.csv (superactivators.data.seed): auto (recognise the seed's
    # files), none (sample labels / the metadata's own spans and masks), or one reader's kind
    ground_truth: str = "auto"
    # images (see superactivators.data.masks): min fraction of a patch's pixels in a concept's mask
    # for "in concept", and of image (not padding) pixels for "valid"; unreadable images/masks
    # are an error unless skip_bad_images (then skipped and reported)
    mask_coverage: float = 0.5
    content_coverage: float = 0.5
    skip_bad_images: bool = False
    # a span past its text's end (or wholly outside) is an error naming file, row and concept;
    # true: a warning each, and the span is cut to the text (dropped when wholly outside)
    clip_spans: bool = False
    # withhold the token-level truth (spans, masks): the run sees sample labels only, as for data
    # that has none (every valid token of a positive sample then counts as in-concept)
    sample_labels_only: bool = False
    # text/image/mask paths must resolve inside the dataset folder unless this is set
    allow_outside_paths: bool = False
    # Parquet / Arrow / datasets folders / hf:ID (superactivators.data.hf): which column is what
    text_column: str | None = None  # default 'text'
    image_column: str | None = None  # default 'image'
    mask_column: str | None = None
    concept_columns: list[str] | str | None = None  # 0/1 columns, or one list-of-labels column
    span_column: str | None = None  # default 'spans'
    split_column: str | None = None  # default 'split' (a DatasetDict's splits give it)
    split_map: dict[str, str] | None = None  # e.g. {validation: cal}; validation -> cal by default
    # a blank label cell: 'error', or 'allow' (that sample is left out of that concept's fit,
    # calibration and metrics, and counts for the other concepts)
    missing_labels: str = MISSING_LABELS

    def columns(self) -> dict:
        """The column options that are set (for :func:`superactivators.data.datasets.load_dataset`)."""
        keys = ("text_column", "image_column", "mask_column", "concept_columns", "span_column", "split_column",
                "split_map")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def mask_options(self, any_pixel: bool = False) -> MaskOptions:
        """How image masks become patch truth (``any_pixel``: the seed's rule, ``protocol: seed``)."""
        return MaskOptions(coverage=self.mask_coverage, content=self.content_coverage,
                           skip_bad_images=self.skip_bad_images, any_pixel=any_pixel)

    def problems(self) -> list[str]:
        out: list[str] = []
        if not 0 < self.mask_coverage <= 1:
            out.append(f"data.mask_coverage: must be in (0, 1], got {self.mask_coverage}")
        if not 0 <= self.content_coverage <= 1:
            out.append(f"data.content_coverage: must be in [0, 1], got {self.content_coverage}")
        if isinstance(self.concepts, list):
            dup = sorted({x for x in self.concepts if self.concepts.count(x) > 1})
            if dup:
                out.append(f"data.concepts: listed twice: {dup}")
            if not self.concepts:
                out.append("data.concepts: empty list (leave it out to use every concept column)")
        if self.missing_labels not in MISSING_CHOICES:
            out.append(f"data.missing_labels: must be one of {list(MISSING_CHOICES)}, got {self.missing_labels!r}")
        if self.ground_truth not in GROUND_TRUTH_KINDS:
            out.append(f"data.ground_truth: unknown {self.ground_truth!r}; choose from {list(GROUND_TRUTH_KINDS)}")
        return out
