"""Hidden states shared between runs: embedded once per inputs and model, in a cache folder.

A run's token store (``RUN/stores/NAME-KEY/``) is a *view*: its labels, splits, span truth and
train statistics (what varies per run), over a *states-only* store in the cache that holds the
index (token counts, validity, character offsets) and the hidden states (what the model gives).
The cache entry is keyed by everything that changes the states: the content of the inputs (the
texts in order; for images the content of every image and mask file, the labels and the mask
options, since patch truth comes out of the same pass), the model (and the file sizes and times of a
local model folder), layers, max length, compute and store dtypes, the global token, the
protocol's tokenisation. Not by the run's name, folder, concept types, ``sample_labels_only``
or span truth: a second run that differs only there reuses the states and says so in one line.

Safe under concurrent runs: an entry is written under a lock (``.NAME-KEY.lock`` beside it); a
second run waits, then reuses it. An interrupted embedding resumes from the entry's last
completed shard; every file is checksummed as in any store (a view checks its states too).
``superactivators cache ls|rm`` shows and frees the entries; a run whose states were removed
embeds them again.

Where: ``embed.store_cache`` (``auto``: ``$SUPERACTIVATORS_STATES_CACHE``, else
``$SUPERACTIVATORS_CACHE/states``, else ``~/.cache/superactivators/states``; ``off``: the states
stay inside the run's store, as before; or a folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock, Timeout

from ..data.builtin import cache_root
from ..data.datasets import Dataset
from ..data.fingerprint import content_key, file_hash
from ..data.hf import DESCRIPTOR_SUFFIX
from ..data.masks import MaskOptions
from ..encoders.base import EmbedConfig
from ..util.io import atomic_save_npy, atomic_save_npz, atomic_write_json
from .embed import dataset_info, embed_dataset, warn_store
from .tokens import (
    MANIFEST,
    StatesMissingError,
    StoreInfo,
    TokenStore,
    add_norm,
    file_checksum,
    read_manifest,
    store_is_complete,
)
from .truth import span_token_bits, truth_kind

log = logging.getLogger(__name__)

STATES_ENV = "SUPERACTIVATORS_STATES_CACHE"
USERS = "users.json"  # the run stores that reference an entry, and when each last did


def states_root(cfg: EmbedConfig) -> Path | None:
    """The shared states folder ``cfg.store_cache`` names, or None (``off``: states stay in the run)."""
    setting = (cfg.store_cache or "auto").strip()
    if setting.lower() in ("off", "none", "false", "no"):
        return None
    if setting.lower() == "auto":
        env = os.environ.get(STATES_ENV)
        return Path(env).expanduser() if env else cache_root() / "states"
    return Path(setting).expanduser()


def _texts_digest(ds: Dataset, chunk: int = 4096) -> str:
    """BLAKE2b of the texts in sample order (each with its length, so boundaries count)."""
    h = hashlib.blake2b(digest_size=16)
    for a in range(0, len(ds), chunk):
        for t in ds.texts(np.arange(a, min(len(ds), a + chunk))):
            b = t.encode("utf-8", "surrogatepass")
            h.update(f"{len(b)}:".encode())
            h.update(b)
    return h.hexdigest()


def _model_files(name: str) -> list | None:
    """Names, sizes and modification times of a local model folder's files (None for other models):
    weights replaced in place must not reuse the old states."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return None
    out = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            out.append([f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def states_key(ds: Dataset, cfg: EmbedConfig, masks: MaskOptions | None = None,
               fingerprints: Path | None = None) -> str:
    """Hash of everything that changes the hidden states (and, for images, the patch truth)."""
    extra: dict = {"n_samples": len(ds), "modality": ds.modality, "model_files": _model_files(cfg.model)}
    if ds.modality == "text":
        extra["texts"] = _texts_digest(ds)
        if ds.context_chars is not None:  # context prefixes are embedded but not stored: other token rows
            extra["context_chars"] = hashlib.blake2b(np.ascontiguousarray(ds.context_chars, dtype=np.int64).tobytes(),
                                                     digest_size=16).hexdigest()
    else:  # validity, the mean global token and patch truth come out of the encoder's pass
        m = masks or MaskOptions()
        extra.update(files=content_key(ds, fingerprints), images=[str(p) for p in ds.image_paths or []],
                     concepts=list(ds.concepts), mask_coverage=m.coverage, content_coverage=m.content,
                     labels=hashlib.blake2b(np.ascontiguousarray(ds.labels, dtype=np.uint8).tobytes(),
                                            digest_size=16).hexdigest())  # masks may follow the labels
        if ds.source is not None and ds.source.name.endswith(DESCRIPTOR_SUFFIX):  # its files: in the descriptor
            extra["descriptor"] = file_hash(Path(ds.source))
    return cfg.key(extra)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60] or "data"


def _open_view(sdir: Path) -> TokenStore | None:
    """The run's complete store at ``sdir`` (a view or a self-contained one), or None.

    A view whose shared states were removed is dropped (and rebuilt by the caller); a damaged
    self-contained store raises as before.
    """
    if not store_is_complete(sdir):
        return None
    try:
        return TokenStore(sdir)
    except StatesMissingError as err:
        print(f"note: {err}", flush=True)
        shutil.rmtree(sdir)
        return None


def _record_user(entry: Path, sdir: Path) -> None:
    """Remember that run store ``sdir`` reads ``entry`` (shown by ``cache ls``); under the entry's lock."""
    path = entry / USERS
    try:
        users = json.loads(path.read_text())
    except (OSError, ValueError):
        users = {}
    users[str(sdir.resolve())] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(path, users)


def write_view(ds: Dataset, cfg: EmbedConfig, states: TokenStore, sdir: Path, key: str) -> TokenStore:
    """The run's store at ``sdir`` over the states-only store ``states``: labels, splits, span truth, statistics.

    Span truth is computed from the stored character offsets exactly as embedding computes it
    (:func:`~superactivators.store.truth.span_token_bits`, per sample), so the view equals a
    self-contained store of the same run bit for bit.
    """
    entry = states.path
    if sdir.exists():
        shutil.rmtree(sdir)  # an unfinished view: rebuilt, it is cheap
    sdir.mkdir(parents=True)
    kind = truth_kind(ds)
    if kind == "masks" and states.info.token_ground_truth != "masks":
        raise RuntimeError(f"{entry}: cached image states hold no mask truth; remove the entry and run again")
    data = {**dataset_info(ds), **{k: v for k, v in states.info.dataset.items() if k == "truncated_samples"}}
    info = StoreInfo(n_samples=states.n_samples, dim=states.dim, layers=states.layers, concepts=list(ds.concepts),
                     modality=ds.modality, dtype=states.info.dtype, model=states.info.model, dataset=data,
                     token_ground_truth=kind, patch_grid=states.info.patch_grid, shards=states.info.shards,
                     states={"path": str(entry.resolve()), "key": key})
    atomic_save_npy(sdir / "labels.npy", ds.labels.astype(np.uint8))
    atomic_save_npy(sdir / "splits.npy", np.asarray(ds.splits, dtype="<U8"))
    if ds.known is not None:  # missing labels (data.missing_labels: allow): per run, like the labels
        atomic_save_npy(sdir / "known.npy", np.asarray(ds.known, dtype=bool))
    if kind == "spans":
        (sdir / "truth").mkdir()
        seed = cfg.protocol == "seed"
        for s in states.shards:
            ids = np.arange(s.start, s.stop)
            rows = slice(s.token_start, s.token_stop)
            bits = span_token_bits(ds, ids, states.lengths[s.start:s.stop], states.char_spans[rows],
                                   ds.texts(ids) if seed else None)
            atomic_save_npz(sdir / "truth" / f"{s.name}.npz", gt=bits)
    for f in sorted(p for p in sdir.rglob("*") if p.is_file()):
        info.checksums[f.relative_to(sdir).as_posix()] = file_checksum(f)
    atomic_write_json(sdir / MANIFEST, asdict(info))  # complete=False until the statistics are in
    add_norm(TokenStore(sdir, require_complete=False, verify="none"), info)
    info.complete = True
    atomic_write_json(sdir / MANIFEST, asdict(info))
    store = TokenStore(sdir, verify="none")  # just written; the states were checked when opened above
    warn_store(store, cfg)
    return store


def cached_store(ds: Dataset, cfg: EmbedConfig, sdir: Path, make_encoder: Callable[[], object] | None = None,
                 masks: MaskOptions | None = None, fingerprints: Path | None = None,
                 progress: bool = True) -> TokenStore:
    """The run's token store at ``sdir``, its hidden states embedded once in the shared cache.

    ``make_encoder`` builds the encoder (None: the default one for the modality) and is only
    called when the states are not cached yet. With ``embed.store_cache: off`` the store is
    self-contained, as :func:`~superactivators.store.embed.embed_dataset` writes it.
    """
    sdir = Path(sdir)
    root = states_root(cfg)
    if "states" in read_manifest(sdir):  # a view (over the cache): as it is, or dropped when unfinished / orphaned
        store = _open_view(sdir)
        if store is not None:
            return store
        shutil.rmtree(sdir, ignore_errors=True)  # rebuilt below: a view is cheap
    if root is None or (sdir / MANIFEST).exists():
        # no cache, or a self-contained store begun here: finished, or resumed in place
        if store_is_complete(sdir):
            return TokenStore(sdir)
        return embed_dataset(ds, cfg, sdir, encoder=make_encoder() if make_encoder else None, progress=progress)
    key = states_key(ds, cfg, masks, fingerprints)
    entry = root / f"{_safe(ds.name)}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{entry.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another run embedding the same states into {entry} ...", flush=True)
        lock.acquire()
    try:
        if store_is_complete(entry):
            states = TokenStore(entry)
            print(f"reusing cached hidden states {entry} ({states.n_samples} samples, {states.n_tokens} tokens, "
                  f"layers {states.layers}): no embedding", flush=True)
        else:
            enc = make_encoder() if make_encoder else None
            states = embed_dataset(ds, cfg, entry, encoder=enc, progress=progress, states_only=True)
            print(f"hidden states cached in {entry}; other runs on the same inputs and model reuse them", flush=True)
        _record_user(entry, sdir)
        return write_view(ds, cfg, states, sdir, key)
    finally:
        lock.release()


# ------------------------------------------------------------------------------ cache ls / rm
@dataclass
class CacheEntry:
    """One entry of the shared states cache, as ``cache ls`` shows it."""

    name: str
    path: Path
    complete: bool
    n_samples: int
    n_tokens: int
    layers: list[int]
    model: str
    bytes: int
    runs: int  # run stores that reference it
    last_used: str


def list_entries(root: Path) -> list[CacheEntry]:
    """Every entry under ``root`` (newest use first)."""
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).exists()):
        man = read_manifest(d)
        try:
            users = json.loads((d / USERS).read_text())
        except (OSError, ValueError):
            users = {}
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        shards = man.get("shards") or []
        out.append(CacheEntry(d.name, d, bool(man.get("complete")), int(man.get("n_samples", 0)),
                              int(shards[-1]["token_stop"]) if shards else 0, list(man.get("layers", [])),
                              str((man.get("model") or {}).get("id", "?")), size, len(users),
                              max(users.values()) if users else "-"))
    return sorted(out, key=lambda e: e.last_used, reverse=True)


def format_entries(root: Path, entries: list[CacheEntry]) -> str:
    """The ``cache ls`` table."""
    lines = [f"shared hidden states in {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
             f"{sum(e.bytes for e in entries) / 1e6:.1f} MB"]
    for e in entries:
        state = "" if e.complete else "  (incomplete: resumes on the next run)"
        lines.append(f"  {e.name}  {e.bytes / 1e6:.1f} MB  {e.model}  {e.n_samples} samples  {e.n_tokens} tokens  "
                     f"layers {e.layers}  runs {e.runs}  last used {e.last_used}{state}")
    return "\n".join(lines)


def remove_entries(root: Path, names: list[str], everything: bool = False) -> list[str]:
    """Delete the named entries (or all); each under its lock, so an entry being written is refused.

    Returns the removed names; a name that matches nothing, or an entry in use, raises ValueError.
    """
    entries = {e.name: e for e in list_entries(root)}
    todo = sorted(entries) if everything else names
    unknown = [n for n in todo if n not in entries]
    if unknown:
        raise ValueError(f"no cache entry {unknown[0]!r} in {root} (see 'superactivators cache ls')")
    removed = []
    for n in todo:
        lock = FileLock(str(root / f".{n}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(f"cache entry {n} is being written by a run; try again when it ends") from None
        try:
            shutil.rmtree(entries[n].path)
            removed.append(n)
        finally:
            lock.release()  # the lock file stays: a run waiting on it must not lock a deleted file
    return removed
