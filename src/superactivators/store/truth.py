"""Ground truth of every stored token, from the dataset and the model's side of an encoded batch.

One function, :func:`token_truth`, for both modalities: a text token is in-concept when its
character span overlaps an annotated span of that concept, an image patch when enough of it lies
inside the concept's mask (where the image sits on the model input is the batch's
``placements``). Encoders compute states only; what is true of a token is the data's.
"""

from __future__ import annotations

import numpy as np

from ..data.datasets import Dataset, DatasetError
from ..data.masks import MaskOptions, MaskSource, has_masks, load_padding_file, sample_patch_labels
from ..encoders.base import EncodedBatch


def excl_cumsum(x: np.ndarray) -> np.ndarray:
    """``[0, x0, x0 + x1, ...]`` without the total: each run's first row."""
    return np.concatenate([[0], np.cumsum(x)[:-1]]).astype(np.int64)


def truth_kind(ds: Dataset) -> str:
    """The store's ``token_ground_truth`` for ``ds``: spans, masks or sample labels."""
    return "spans" if ds.spans is not None else ("masks" if has_masks(ds) else "sample")


class TokenTruth:
    """In-concept bits of the stored tokens of ``ds``, batch by batch (None where truth is per sample).

    Spans give text truth (:func:`span_token_bits`), masks image truth (:func:`patch_token_bits`).
    ``seed_words``: protocol ``seed``, where a text token without a non-space character takes the
    bits of the word before it. The kind of truth and the dataset's masks are looked up once.
    """

    def __init__(self, ds: Dataset, mask_options: MaskOptions | None = None, *, seed_words: bool = False):
        self.ds = ds
        self.kind = truth_kind(ds)
        self.mask_options = mask_options or MaskOptions()
        self.seed_words = seed_words
        self._masks = MaskSource(ds) if self.kind == "masks" else None

    def __call__(self, ids: np.ndarray, batch: EncodedBatch) -> np.ndarray | None:
        """Packed bits ``[t, ceil(C/8)]`` of ``batch`` (samples ``ids`` of the dataset), or None."""
        if self.kind == "spans":
            if batch.char_spans is None:
                raise ValueError("span truth needs the character span of each token (a text encoder's batch)")
            return span_token_bits(self.ds, ids, batch.lengths, batch.char_spans,
                                   self.ds.texts(ids) if self.seed_words else None)
        if self.kind == "masks":
            return patch_token_bits(self._masks, ids, batch, self.mask_options)
        return None


def token_truth(ds: Dataset, ids: np.ndarray, batch: EncodedBatch, *, mask_options: MaskOptions | None = None,
                seed_words: bool = False) -> np.ndarray | None:
    """:class:`TokenTruth` of one batch (embedding builds the object once and calls it per batch)."""
    return TokenTruth(ds, mask_options, seed_words=seed_words)(ids, batch)


def patch_token_bits(src: MaskSource, ids: np.ndarray, batch: EncodedBatch, options: MaskOptions) -> np.ndarray:
    """Packed per-patch concept bits from each image's masks and its placement on the model input.

    A patch is in-concept when at least ``options.coverage`` of it lies in the mask (any pixel
    under ``options.any_pixel``), and never when it is not valid. A positive sample without a
    mask for that concept counts all its valid patches. One loop over images, none over patches.
    """
    if batch.placements is None or batch.patch_size is None:
        raise ValueError("mask truth needs each image's placement and the patch size (an image encoder's batch)")
    starts = excl_cumsum(batch.lengths)
    parts = []
    for j, (i, pl) in enumerate(zip(ids, batch.placements)):
        _, gt = sample_patch_labels(src, int(i), pl, batch.patch_size, options)
        if len(gt) != batch.lengths[j]:
            raise ValueError(f"sample {int(i)}: {len(gt)} patches from its placement, {batch.lengths[j]} stored tokens")
        parts.append(gt & batch.valid[starts[j]:starts[j] + batch.lengths[j], None])
    return np.packbits(np.concatenate(parts), axis=1)


def span_token_bits(
    ds: Dataset, sample_ids: np.ndarray, lengths: np.ndarray, char_spans: np.ndarray,
    texts: list[str] | None = None,
) -> np.ndarray:
    """Packed in-concept bits ``[t, ceil(C/8)]`` from character spans.

    A token is in-concept when its character range overlaps an annotated span. A positive
    sample without any span for that concept counts all its tokens (sample-level fallback).
    With ``texts`` (protocol ``seed``), a token that covers no non-space character (``\n\n``,
    a bare ``Ġ``) takes the bits of the nearest earlier token that does (the first such token
    when none precedes it), as the seed's word -> token map does.
    The loop runs over annotated spans (a few per sample), never over tokens.
    """
    assert ds.spans is not None
    n_tok = int(lengths.sum())
    gt = np.zeros((n_tok, len(ds.concepts)), dtype=bool)
    starts = excl_cumsum(lengths)
    for j, sid in enumerate(sample_ids):
        a0, a1 = starts[j], starts[j] + lengths[j]
        ta, tb = char_spans[a0:a1, 0], char_spans[a0:a1, 1]
        spans = ds.spans[sid]
        for c, lab in enumerate(ds.labels[sid]):
            if not lab:
                continue
            name = ds.concepts[c]
            if name not in spans:
                gt[a0:a1, c] = True
                continue
            for s, e in spans[name]:
                gt[a0:a1, c] |= (ta < e) & (tb > s) & (tb > ta)
        if texts is not None and a1 > a0:
            _orphans_follow_previous(gt[a0:a1], ta, tb, texts[j])
    return np.packbits(gt, axis=1)


def _orphans_follow_previous(gt: np.ndarray, ta: np.ndarray, tb: np.ndarray, text: str) -> None:
    """In place: tokens without a non-space character copy the previous word token's bits."""
    chars = np.array(list(text), dtype="U1")
    solid = np.concatenate([[0], np.cumsum(~np.char.isspace(chars))])  # non-space characters before i
    lo, hi = np.clip(ta, 0, len(text)), np.clip(tb, 0, len(text))
    word = (hi > lo) & (solid[hi] > solid[lo])
    if word.all() or not word.any():
        return
    idx = np.where(word, np.arange(len(word)), -1)
    prev = np.maximum.accumulate(idx)
    prev[prev < 0] = int(np.flatnonzero(word)[0])
    gt[:] = gt[prev]


def seed_padding(ds: Dataset, input_size: tuple[int, int] | None, n_patches: int | None) -> np.ndarray | None:
    """The seed's per-patch padding flags ``[len(ds), n_patches]`` for ``ds`` at a fixed model input, if it ships them.

    Rows follow the dataset's samples (its ``_source_row`` column where samples were dropped).
    """
    if input_size is None or not n_patches:
        return None
    n_rows = int(ds.metadata.attrs.get("source_rows", len(ds)))
    pad = load_padding_file(ds.root, tuple(input_size), n_rows, int(n_patches))
    if pad is None:
        return None
    rows = ds.metadata["_source_row"].to_numpy() if "_source_row" in ds.metadata else np.arange(len(ds))
    return pad[rows]


def check_content(ds: Dataset, ids: np.ndarray, batch: EncodedBatch) -> None:
    """An image with no valid (content) patch is an error naming its file: it would hold no token."""
    per = np.add.reduceat(batch.valid.astype(np.int64), excl_cumsum(batch.lengths)) if len(batch.lengths) else []
    empty = np.flatnonzero(np.asarray(per) == 0)
    if len(empty):
        bad = int(ids[empty[0]])
        raise DatasetError(f"image {ds.image_path(bad)} has no content patch at the model's input size")
