"""Embed a dataset: token hidden states at chosen layers, written to the token store.

One forward pass per batch yields every requested layer. Text tokens that are padding or
special (CLS, SEP, BOS, ...) are not stored; each stored token keeps its character span so
that span annotations map to tokens through the tokenizer's offset mapping.

Texts are batched by length: each window of ``batch_size * bucket_window`` consecutive samples
is sorted by token count and cut into batches, so a batch pays for its own longest text, not
for the longest of sixteen neighbours; the window's results go to the writer in sample order,
one batch-sized chunk at a time (memory: one window of encoded tokens plus one chunk). Padding
never reaches a stored token (attention masks; right padding), so the store is the same as with
in-order batches.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from ..data.checks import positives_without_spans
from ..data.datasets import Dataset, truth_label
from ..encoders.base import EmbedConfig, EncodedBatch, Encoder
from ..encoders.factory import make_encoder
from .tokens import MANIFEST, StoreInfo, StoreWriter, TokenStore
from .truth import TokenTruth, check_content, excl_cumsum, seed_padding, truth_kind
from .writer_thread import WriteBehind

log = logging.getLogger(__name__)

def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions ``0..n-1`` grouped into batches of similar length (stable sort by length)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _run_rows(first_rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row indices of consecutive runs: ``first_rows[j] + 0..lengths[j]-1`` for each j, concatenated."""
    return np.repeat(first_rows - excl_cumsum(lengths), lengths) + np.arange(int(lengths.sum()))


def window_chunks(batches: list[EncodedBatch], positions: list[np.ndarray], size: int) -> Iterator[EncodedBatch]:
    """The window's samples in sample order, ``size`` at a time, from batches holding them at ``positions``.

    ``batches[i]`` encoded the window's samples ``positions[i]`` (in that order). Each chunk
    gathers its rows from the batches it draws on, one index array per (chunk, batch): no
    per-token loop, and no second copy of the whole window (memory: the window's batches plus
    one chunk).
    """
    n = sum(len(p) for p in positions)
    src = np.empty(n, dtype=np.int64)  # window position -> batch
    src_first = np.empty(n, dtype=np.int64)  # its first row in that batch's token arrays
    src_index = np.empty(n, dtype=np.int64)  # its index among the batch's samples
    lengths = np.empty(n, dtype=np.int64)
    for i, (b, pos) in enumerate(zip(batches, positions)):
        lb = np.asarray(b.lengths, dtype=np.int64)
        src[pos], src_first[pos], src_index[pos], lengths[pos] = i, excl_cumsum(lb), np.arange(len(pos)), lb
    first = batches[0]
    layers = list(first.tokens)
    flags = all(b.truncated is not None for b in batches)
    for a in range(0, n, size):
        ps = np.arange(a, min(n, a + size))
        ln = lengths[ps]
        out_first = excl_cumsum(ln)
        n_rows = int(ln.sum())
        tokens = {l: np.empty((n_rows, *first.tokens[l].shape[1:]), dtype=first.tokens[l].dtype) for l in layers}
        globals_ = {l: np.empty((len(ps), *first.globals[l].shape[1:]), dtype=first.globals[l].dtype) for l in layers}
        valid = np.empty(n_rows, dtype=first.valid.dtype)
        spans = None if first.char_spans is None else np.empty((n_rows, 2), dtype=first.char_spans.dtype)
        truncated = np.empty(len(ps), dtype=first.truncated.dtype) if flags else None
        for i in np.unique(src[ps]):
            sel = np.flatnonzero(src[ps] == i)  # chunk-local indices of the samples batch i holds
            b = batches[i]
            rows_in = _run_rows(src_first[ps[sel]], ln[sel])
            rows_out = _run_rows(out_first[sel], ln[sel])
            for l in layers:
                tokens[l][rows_out] = b.tokens[l][rows_in]
                globals_[l][sel] = b.globals[l][src_index[ps[sel]]]
            valid[rows_out] = b.valid[rows_in]
            if spans is not None:
                spans[rows_out] = b.char_spans[rows_in]
            if truncated is not None:
                truncated[sel] = b.truncated[src_index[ps[sel]]]
        yield EncodedBatch(tokens=tokens, globals=globals_, lengths=ln, valid=valid, char_spans=spans,
                           truncated=truncated)


def text_parts(enc, texts: list[str], ctx: np.ndarray | None, batch_size: int) -> Iterator[EncodedBatch]:
    """The encoded ``texts`` in sample order, at most ``batch_size`` samples per part.

    More texts than a batch (a window) are tokenised once, with character offsets and
    special-token masks; batches of similar length are formed on those token counts, padded
    with the tokenizer's own ``pad`` and run through the model (the encoder's
    ``encode_tokenised``), then gathered back in sample order (:func:`window_chunks`). An
    encoder without ``encode_tokenised`` is bucketed on a separate count (:func:`_text_lengths`).
    Context prefixes (``ctx``, ds.context_chars) are in the forward pass but not stored.
    """
    if len(texts) <= batch_size:
        yield enc.encode_inputs(texts) if ctx is None else enc.encode_inputs(texts, context_chars=ctx)
        return
    if hasattr(enc, "encode_tokenised"):
        tokenised = enc.tokenise(texts)
        groups = length_batches(np.array([len(x) for x in tokenised["input_ids"]]), batch_size)
        batches = [enc.encode_tokenised(tokenised, g, [texts[i] for i in g], None if ctx is None else ctx[g])
                   for g in groups]
    else:
        groups = length_batches(_text_lengths(enc, texts), batch_size)
        batches = [enc.encode_inputs([texts[i] for i in g]) if ctx is None
                   else enc.encode_inputs([texts[i] for i in g], context_chars=ctx[g]) for g in groups]
    yield from window_chunks(batches, groups, batch_size)


def count_truncated(writer: StoreWriter, n: int) -> None:
    """Add ``n`` texts cut at ``max_length`` to the manifest's count (run on the writer's thread)."""
    writer.info.dataset["truncated_samples"] = writer.info.dataset.get("truncated_samples", 0) + n


def _text_lengths(enc, texts: list[str]) -> np.ndarray:
    """Token counts (the encoder's tokenizer when it has one, else characters) for bucketing."""
    tok = getattr(enc, "tokenizer", None)
    if tok is not None:
        ids = tok(texts, add_special_tokens=True, truncation=True, max_length=enc.cfg.max_length)["input_ids"]
        return np.array([len(x) for x in ids])
    return np.array([len(t) for t in texts])


def embed_unit(cfg: EmbedConfig, modality: str) -> int:
    """Samples embedded together: a length-bucketing window of texts, or one batch of images."""
    return cfg.batch_size * (max(1, cfg.bucket_window) if modality == "text" else 1)


def add_in_batches(writer: StoreWriter | WriteBehind, batch: EncodedBatch, gt_bits: np.ndarray | None, size: int) -> None:
    """Hand a window to the writer ``size`` samples at a time (in sample order), so shards end
    where in-order batching ends them and ``shard_tokens`` keeps bounding a shard."""
    ends = np.cumsum(batch.lengths)
    starts = ends - batch.lengths
    for a in range(0, len(batch.lengths), size):
        b = min(a + size, len(batch.lengths))
        t0, t1 = int(starts[a]), int(ends[b - 1])
        writer.add({layer: x[t0:t1] for layer, x in batch.tokens.items()},
                   {layer: g[a:b] for layer, g in batch.globals.items()}, batch.lengths[a:b], batch.valid[t0:t1],
                   None if batch.char_spans is None else batch.char_spans[t0:t1],
                   None if gt_bits is None else gt_bits[t0:t1])


def encode_window(enc: Encoder, ds: Dataset, ids: np.ndarray, cfg: EmbedConfig,
                  padding: np.ndarray | None = None) -> Iterator[EncodedBatch]:
    """Samples ``ids`` of ``ds`` through the encoder, in sample order, at most ``batch_size`` at a time.

    Texts of a window longer than a batch go in batches of similar length and come back in sample
    order; their context prefixes (``ds.context_chars``) are embedded but not stored. Images go in
    one batch, with the seed's padding flags (``padding``) as their validity where the dataset has them.
    """
    if ds.modality == "image":
        images = [ds.load_image(int(i)) for i in ids]
        yield enc.encode_inputs(images, **({} if padding is None else {"valid": padding[ids]}))
        return
    yield from text_parts(enc, ds.texts(ids), None if ds.context_chars is None else ds.context_chars[ids],
                          cfg.batch_size)


def embed_dataset(
    ds: Dataset,
    cfg: EmbedConfig,
    out_dir: str | Path,
    encoder=None,
    sample_range: tuple[int, int] | None = None,
    progress: bool = True,
    states_only: bool = False,
    write_behind: bool = True,
) -> TokenStore:
    """Embed ``ds`` into a token store at ``out_dir``; resumes an interrupted run.

    ``sample_range`` restricts to a slice of samples (data-parallel ranks); the store is then
    left unfinalised for the caller to merge. ``states_only`` writes the model's side only (no
    labels, splits, statistics or span truth; image mask truth stays, it comes from the same
    pass): a shared cache entry, see :mod:`superactivators.store.cache`.
    """
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists():
        try:
            return TokenStore(out_dir)
        except RuntimeError:
            pass  # incomplete: resume below
    enc = encoder or make_encoder(cfg, ds.modality)
    if enc.modality != ds.modality:
        raise ValueError(f"dataset is {ds.modality} but the encoder is for {enc.modality}")
    spans = ds.spans is not None and not states_only  # span truth is each run's (a view's) own
    info = StoreInfo(
        n_samples=len(ds), dim=enc.hidden_size, layers=enc.layers,
        concepts=[] if states_only and ds.modality == "text" else ds.concepts,
        modality=ds.modality, dtype=cfg.store_dtype, model=enc.describe(),
        dataset={"name": ds.name, "source": str(ds.source)} if states_only else dataset_info(ds),
        token_ground_truth=truth_kind(ds) if not states_only or ds.modality == "image" else "sample",
        patch_grid=getattr(enc, "patch_grid", None), states_only=states_only,
    )
    lo, hi = sample_range or (0, len(ds))
    if not 0 <= lo <= hi <= len(ds):
        raise ValueError(f"sample_range {sample_range} is outside 0..{len(ds)}")
    partial = (lo, hi) != (0, len(ds))
    info.sample_range = [lo, hi] if partial else None
    writer = WriteBehind(StoreWriter(out_dir, info, ds.labels, ds.splits, shard_tokens=cfg.shard_tokens,
                                     first_sample=lo, known=ds.known), threaded=write_behind)
    start = max(lo, writer.next_sample)
    if start > lo:
        log.info("resuming %s at sample %d", out_dir, start)
    bar = tqdm(total=hi - lo, initial=start - lo, desc=f"embed {ds.name}", unit="sample", disable=not progress)
    step = embed_unit(cfg, ds.modality)
    # token truth is the data's (store.truth); span truth is each run's own (a view's), mask truth
    # comes with the states. The encoder's mask options decide patch validity, so truth uses them too.
    truth = (TokenTruth(ds, getattr(enc, "mask_options", None), seed_words=cfg.protocol == "seed")
             if spans or truth_kind(ds) == "masks" else None)
    # the seed's padding flags, for image encoders with one fixed input size (none for text or tiles)
    padding = seed_padding(ds, getattr(enc, "input_size", None), getattr(enc, "n_patches", None))
    with writer:  # the writer thread ends here, whatever happens
        for b0 in range(start, hi, step):
            ids = np.arange(b0, min(hi, b0 + step))
            a = 0
            for batch in encode_window(enc, ds, ids, cfg, padding):  # in sample order, <= batch_size samples each
                part = ids[a:a + len(batch.lengths)]
                a += len(batch.lengths)
                if ds.modality == "image":
                    check_content(ds, part, batch)
                if batch.truncated is not None:  # counted before add(): a shard flushed there records it with itself
                    writer.call(count_truncated, int(batch.truncated.sum()))
                add_in_batches(writer, batch, truth(part, batch) if truth else None, cfg.batch_size)
            bar.update(len(ids))
        bar.close()
        if partial:  # a data-parallel part: token rows count from 0; the launcher merges the parts
            writer.flush()
            return None  # type: ignore[return-value]
        store = writer.close()
    if not states_only:
        warn_store(store, cfg)
    return store


def dataset_info(ds: Dataset) -> dict:
    """What a store's manifest records of the run's dataset."""
    return {"name": ds.name, "source": str(ds.source), "truth": truth_label(ds),
            "allow_outside_paths": ds.allow_outside_paths,
            **({"columns": ds.columns} if getattr(ds, "columns", None) else {}),
            # positives whose every token counts as in-concept (no span for that concept)
            "positives_without_spans": positives_without_spans(ds)}


def warn_store(store: TokenStore, cfg: EmbedConfig) -> None:
    """Warn about texts cut at ``max_length`` and positives left without an in-concept token."""
    n_cut = int(store.info.dataset.get("truncated_samples", 0))
    if n_cut:
        warnings.warn(f"{n_cut} of {store.n_samples} texts were cut at embed.max_length={cfg.max_length} tokens; "
                      "their later tokens (and any spans there) are not in the store", stacklevel=3)
    n_pos_no_tok = _positives_without_tokens(store)
    if n_pos_no_tok:
        warnings.warn(
            f"{n_pos_no_tok} positive (sample, concept) pairs have no in-concept token "
            "(evidence truncated by max_length or masks too small)", stacklevel=3,
        )


def _positives_without_tokens(store: TokenStore) -> int:
    if store.info.token_ground_truth == "sample":
        return 0
    counts = np.zeros((store.n_samples, len(store.concepts)), dtype=np.int64)
    for s in store.shards:
        gt = store.token_labels(s)
        counts[s.start:s.stop] = np.add.reduceat(gt.astype(np.int64), store.offsets[s.start:s.stop] - s.token_start, axis=0)
    return int(((counts == 0) & (store.labels > 0)).sum())
