"""The token store: per-layer token hidden states as memory-mapped shards.

Layout of a store folder (one dataset x one model, several layers)::

    manifest.json            shapes, layers, model, concepts, completed shards, norm stats
    labels.npy               [N, C] uint8 sample labels
    known.npy                [N, C] bool, which labels are known (only when some are not)
    index/SSSSSSSSS.npz      per shard: lengths [n], valid [t], char_spans [t, 2], gt bits [t, C/8]
    layer_LL/SSSSSSSSS.npy   per shard: token hidden states [t, d] (fp16 by default)
    layer_LL/globals_SSSSSSSSS.npy  per shard: global embeddings [n, d]
    layer_LL/mean.npy        train-split token mean [d] (after ``finalize``)

A store can keep its hidden states elsewhere (:mod:`superactivators.store.cache`): a
*states-only* store (``states_only``) holds the model's side (``index/`` without gt bits for
text, ``layer_LL/`` shards and globals) and no labels, splits or statistics; a *view* (manifest
``states: {"path", "key"}``) holds a run's side: ``labels.npy``, ``splits.npy``,
``truth/SSSSSSSSS.npz`` (gt bits of span truth), ``layer_LL/mean.npy``, and reads the index
and the states from the states-only store.

Shards are named by their first sample index, cover contiguous sample ranges, and are
written to a temporary name then renamed; the manifest lists a shard only once all its files
are in place, so an interrupted run resumes from the last completed shard and never reads a
half-written file. Sample ``i`` owns token rows ``offsets[i]:offsets[i+1]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ..util.io import atomic_save_npy, atomic_save_npz, atomic_write_json

MANIFEST = "manifest.json"


def read_manifest(path: Path) -> dict:
    """The store manifest at ``path`` as a dict; ``{}`` when missing or unreadable (opening the
    store with :class:`TokenStore` names the problem)."""
    try:
        out = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def store_is_complete(path: Path) -> bool:
    """Is there a finished token store at ``path``? (Its manifest says so; nothing else is read.)"""
    return bool(read_manifest(path).get("complete"))
FORMAT_VERSION = 1


NPY_HEADER_BYTES = 128
CHECK_BLOCK = 1 << 22  # 4 MiB: checksums are per block, so a sampled check reads only a few
CHECK_ALGO = "crc32"
SAMPLE_BLOCKS = 16  # blocks of hidden states a store's default check on open reads (plus every small file)
NORM_BLOCK = 4096  # token rows per global window of the normalisation sums (TokenStore.aligned_blocks)
NORM_PARTIAL = ".norm_partial.npz"  # a store being written: its train sums so far (removed at close)


class StoreError(ValueError):
    """A store file is missing, truncated or does not match the checksum recorded when it was written."""


class StatesMissingError(StoreError):
    """A view's shared hidden states are gone (removed from the cache): embedding them again rebuilds it."""


def _digest(algo: str, data) -> str:
    """Hex digest of one block: CRC-32 (what new stores record) or BLAKE2b-128 (older stores)."""
    if algo == "crc32":
        return f"{zlib.crc32(data):08x}"
    if algo == "blake2b":
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    raise StoreError(f"unknown checksum algorithm {algo!r} in the store manifest")


class BlockHasher:
    """Digests of consecutive ``CHECK_BLOCK``-byte blocks of a byte stream.

    CRC-32 (``zlib``, ~3 GB/s here against BLAKE2b's ~0.6 GB/s): the checksums guard against
    truncated, replaced and bit-rotted files, not against someone forging a store; a
    cryptographic hash bought nothing for that and cost ~4 % of a small model's embed stage.
    """

    def __init__(self, algo: str = CHECK_ALGO) -> None:
        self.algo = algo
        self.digests: list[str] = []
        self.size = 0
        self._crc, self._fill = 0, 0

    def update(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        while len(mv):
            take = min(CHECK_BLOCK - self._fill, len(mv))
            self._crc = zlib.crc32(mv[:take], self._crc)
            self._fill += take
            self.size += take
            mv = mv[take:]
            if self._fill == CHECK_BLOCK:
                self.digests.append(f"{self._crc:08x}")
                self._crc, self._fill = 0, 0

    def blocks(self) -> list[str]:
        return self.digests + ([f"{self._crc:08x}"] if self._fill or not self.digests else [])

    def record(self, skip: int = 0) -> dict:
        """The checksum record of the stream (written after ``skip`` header bytes)."""
        return {"size": skip + self.size, "skip": skip, "blocks": self.blocks(), "algo": self.algo}


def file_checksum(path: Path, skip: int = 0) -> dict:
    """``{"size", "skip", "blocks", "algo"}`` of a file: its size and the block digests of its bytes after ``skip``."""
    h = BlockHasher()
    with open(path, "rb") as f:
        f.seek(skip)
        while chunk := f.read(CHECK_BLOCK):
            h.update(chunk)
    return h.record(skip)


class _HashingFile:
    """A write-only file that hashes what goes through it (the checksum of a file as it is written)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.hasher = fh, BlockHasher()

    def write(self, data) -> int:
        self.hasher.update(data)
        return self.fh.write(data)


def save_npy_checksummed(path: Path, arr: np.ndarray) -> dict:
    """``np.save`` to ``path`` (atomically, the same bytes) and its checksum record, hashed on the way
    rather than read back."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    with open(tmp, "wb") as fh:
        out = _HashingFile(fh)
        np.save(out, arr)  # not a real file object: numpy writes header and data through write()
    os.replace(tmp, path)
    return out.hasher.record()


def save_npz_checksummed(path: Path, **arrays: np.ndarray) -> dict:
    """``np.savez`` to ``path`` (atomically) and its checksum record, from the bytes in memory
    (a zip rewrites its headers after the data, so it is serialised first, then hashed and written)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getbuffer()
    h = BlockHasher()
    h.update(data)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return h.record()


def check_file(path: Path, rec: dict, blocks: list[int] | None = None) -> str | None:
    """Why ``path`` does not match its checksum record (only ``blocks`` of it, or all), or None."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"{path}: missing"
    if size != rec["size"]:
        return f"{path}: {size} bytes, {rec['size']} were written (truncated or replaced)"
    todo = range(len(rec["blocks"])) if blocks is None else blocks
    algo = rec.get("algo", "blake2b")  # stores written before the switch to CRC-32 carry no algo
    with open(path, "rb") as f:
        for k in todo:
            f.seek(rec["skip"] + k * CHECK_BLOCK)
            if _digest(algo, f.read(CHECK_BLOCK)) != rec["blocks"][k]:
                return f"{path}: content differs from what was written (block {k}, bytes from {rec['skip'] + k * CHECK_BLOCK})"
    return None


def npy_header(dtype: np.dtype, shape: tuple[int, int]) -> bytes:
    """A fixed-length (128-byte) ``.npy`` v1 header, so it can be rewritten in place."""
    body = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(int(v) for v in shape)}).encode("latin1")
    pad = NPY_HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} too large for the store's fixed .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", NPY_HEADER_BYTES - 10) + body + b" " * pad + b"\n"


@dataclass(frozen=True)
class Shard:
    """A contiguous range of samples and their token rows."""

    start: int  # first sample
    stop: int  # one past last sample
    token_start: int
    token_stop: int

    @property
    def name(self) -> str:
        return f"{self.start:09d}"

    @property
    def n_tokens(self) -> int:
        return self.token_stop - self.token_start


@dataclass
class StoreInfo:
    """What ``manifest.json`` records."""

    n_samples: int
    dim: int
    layers: list[int]
    concepts: list[str]
    modality: str
    dtype: str = "float16"
    model: dict = field(default_factory=dict)  # id, revision, family, n_layers, global_token, ...
    dataset: dict = field(default_factory=dict)  # name, source, config hash
    token_ground_truth: str = "sample"  # "sample" | "spans" | "masks"
    patch_grid: list[int] | None = None  # [rows, cols] for image stores
    shards: list[dict] = field(default_factory=list)
    norm: dict = field(default_factory=dict)  # layer -> {"scale": float, "n_train_tokens": int}
    complete: bool = False
    format_version: int = FORMAT_VERSION
    sample_range: list[int] | None = None  # [lo, hi): a data-parallel part of a store, see distributed.py
    checksums: dict = field(default_factory=dict)  # file (relative) -> {"size", "skip", "blocks", "algo"}, see check_file
    states_only: bool = False  # hidden states and index only: no labels, splits or norm (a shared cache entry)
    states: dict | None = None  # a view: {"path", "key"} of the states-only store its index and states live in


def _pid_alive(tmp_name: str) -> bool:
    """Whether the process that named temporary file ``.shard.tmpPID.npy`` still runs (this one counts as dead)."""
    digits = "".join(ch for ch in tmp_name.split("tmp", 1)[-1] if ch.isdigit())
    if not digits or int(digits) == os.getpid():
        return False
    try:
        os.kill(int(digits), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrainSums:
    """Per layer float64 sum and count of the valid train token states, accumulated as rows are written.

    Why: the first pass of :meth:`TokenStore.compute_norm` (the train mean) then costs no read
    of the store after embedding. Rows are grouped by the same global windows of
    :data:`NORM_BLOCK` token rows as :meth:`TokenStore.aligned_blocks`, and each window's rows are
    converted to float32 and summed in one call, so the sums are bit-identical to that pass.
    Rows arrive in store dtype (what the shards hold); a window's rows are kept until it closes
    (at most ``NORM_BLOCK`` rows per layer).
    """

    def __init__(self, layers: list[int], dim: int, block: int = NORM_BLOCK) -> None:
        self.block = block
        self.total = {l: np.zeros(dim, dtype=np.float64) for l in layers}
        self.n = 0  # train tokens summed (closed windows)
        self.row = 0  # next global token row
        self._carry: dict[int, list[np.ndarray]] = {l: [] for l in layers}

    def add(self, rows: dict[int, np.ndarray], mask: np.ndarray) -> None:
        """The next ``len(mask)`` token rows (per layer), ``mask`` marking the valid train ones."""
        r0, t = self.row, len(mask)
        a = 0
        while a < t:
            end = (r0 + a) // self.block * self.block + self.block  # end of the window row r0 + a is in
            b = min(t, end - r0)
            mb = mask[a:b]
            if mb.any():
                every = bool(mb.all())
                for l, x in rows.items():
                    self._carry[l].append(x[a:b] if every else x[a:b][mb])
            if r0 + b == end:
                self._close_window()
            a = b
        self.row = r0 + t

    def _close_window(self) -> None:
        for l, carry in self._carry.items():
            if not carry:
                return  # the same rows in every layer: all empty
            xb = np.concatenate(carry).astype(np.float32, copy=False) if len(carry) > 1 else carry[0].astype(np.float32)
            self.total[l] += xb.sum(axis=0, dtype=np.float64)
            self._carry[l] = []
        self.n += len(xb)

    @property
    def window_start(self) -> int:
        """First row of the open window: rows before it are summed, rows from it on are carried."""
        return self.row - self.row % self.block

    def result(self) -> tuple[dict[int, np.ndarray], int]:
        """Sums and count over every row added (the open window closed)."""
        self._close_window()
        return self.total, self.n

    def save(self, path: Path) -> None:
        """The sums of the closed windows, with the row they reach (the carried rows are in the store)."""
        layers = sorted(self.total)
        atomic_save_npz(path, layers=np.array(layers), total=np.stack([self.total[l] for l in layers]),
                        n=np.int64(self.n), row=np.int64(self.row), window_start=np.int64(self.window_start))


class StoreWriter:
    """Appends embedded samples, in sample order, shard by shard; resumable.

    ``add`` takes one batch: per layer token states ``[t, d]`` for the batch's valid-or-not
    tokens in sample order, per layer global embeddings ``[n, d]``, the per-sample token
    counts, and per-token metadata. A shard is flushed once it reaches ``shard_tokens``.
    """

    def __init__(
        self, path: Path, info: StoreInfo, labels: np.ndarray, splits: np.ndarray, shard_tokens: int = 65536,
        first_sample: int = 0, known: np.ndarray | None = None,
    ):
        """``first_sample > 0`` writes a part of a store (samples from there on, token rows
        counted from 0 within the part), to be merged by :func:`superactivators.store.distributed.merge_parts`."""
        self.path = Path(path)
        self.shard_tokens = shard_tokens
        self.first_sample = first_sample
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "index").mkdir(exist_ok=True)
        for layer in info.layers:
            (self.path / f"layer_{layer:02d}").mkdir(exist_ok=True)
        existing = self.path / MANIFEST
        if existing.exists():
            try:
                old = StoreInfo(**json.loads(existing.read_text()))
            except (ValueError, TypeError) as err:
                raise StoreError(f"{existing}: damaged store manifest ({err}); delete {self.path} to rebuild the store") from None
            same = (old.n_samples, old.dim, old.layers, old.concepts, old.dtype, old.sample_range) == (
                info.n_samples, info.dim, info.layers, info.concepts, info.dtype, info.sample_range)
            if not same or old.model.get("id") != info.model.get("id"):
                raise ValueError(
                    f"{self.path} holds a different store (model/layers/shape differ); use a new folder"
                )
            info.shards = old.shards
            info.checksums = old.checksums
            info.dataset = {**info.dataset, **{k: v for k, v in old.dataset.items() if k == "truncated_samples"}}
        elif info.states_only:
            atomic_write_json(existing, asdict(info))  # no labels or splits: they belong to each run
        else:
            atomic_save_npy(self.path / "labels.npy", labels.astype(np.uint8))
            atomic_save_npy(self.path / "splits.npy", np.asarray(splits, dtype="<U8"))
            names = ["labels.npy", "splits.npy"]
            if known is not None:  # missing labels (data.missing_labels: allow)
                atomic_save_npy(self.path / "known.npy", np.asarray(known, dtype=bool))
                names.append("known.npy")
            for name in names:
                info.checksums[name] = file_checksum(self.path / name)
            atomic_write_json(existing, asdict(info))  # complete=False until close()
        self.info = info
        for stale in self.path.glob("layer_*/.shard.tmp*"):  # left by an interrupted writer
            if not _pid_alive(stale.name):  # never another live writer's file
                stale.unlink(missing_ok=True)
        self._reset_buffer()
        # train normalisation sums, accumulated as rows are written (a whole store with splits;
        # a states-only store has no splits, a data-parallel part's rows are summed after the merge)
        self._train = None if info.states_only or info.sample_range is not None or first_sample \
            else np.asarray(splits, dtype="<U8") == "train"  # as splits.npy holds them
        self._sums = None if self._train is None else self._resume_sums()

    def _resume_sums(self) -> TrainSums:
        """The train sums of the completed shards: the saved ones plus the open window's rows read
        back, or (no matching saved state: a merge, an older writer) every stored row read back."""
        sums = TrainSums(self.info.layers, self.info.dim)
        stop = self.next_token
        if not stop:
            return sums
        try:
            with np.load(self.path / NORM_PARTIAL) as z:
                state = {k: z[k] for k in z.files}
            if int(state["row"]) == stop and state["layers"].tolist() == sorted(self.info.layers):
                sums.total = {l: state["total"][i].copy() for i, l in enumerate(state["layers"].tolist())}
                sums.n = int(state["n"])
                sums.row = int(state["window_start"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # no saved state: every row is read back
        store = TokenStore(self.path, require_complete=False, verify="none")
        tok_train = store.valid & self._train[store.sample_of_token]
        for s in store.shards:
            if s.token_stop <= sums.row:
                continue
            a = max(sums.row, s.token_start) - s.token_start
            sums.add({l: store.tokens(l, s)[a:] for l in self.info.layers}, tok_train[s.token_start + a:s.token_stop])
        return sums

    @property
    def next_sample(self) -> int:
        """First sample not yet in a completed shard (where a resumed run starts)."""
        return self.info.shards[-1]["stop"] if self.info.shards else self.first_sample

    @property
    def next_token(self) -> int:
        return self.info.shards[-1]["token_stop"] if self.info.shards else 0

    def _tmp_path(self, layer: int) -> Path:
        return self.path / f"layer_{layer:02d}" / f".shard.tmp{os.getpid()}.npy"

    def _reset_buffer(self) -> None:
        # token states stream straight into one temporary .npy per layer (memory: one batch,
        # whatever the shard size or the number of layers); the header is fixed up at flush
        self._tok: dict[int, BinaryIO] = {}
        self._hash: dict[int, BlockHasher] = {}  # token bytes after the header, hashed as written
        self._glob: dict[int, list[np.ndarray]] = {l: [] for l in self.info.layers}
        self._meta: dict[str, list[np.ndarray]] = {"lengths": [], "valid": [], "char_spans": [], "gt": []}
        self._buffered_tokens = 0
        self._buffered_samples = 0

    def add(
        self,
        tokens: dict[int, np.ndarray],
        globals_: dict[int, np.ndarray],
        lengths: np.ndarray,
        valid: np.ndarray,
        char_spans: np.ndarray | None = None,
        gt_bits: np.ndarray | None = None,
    ) -> None:
        np_dtype = np.dtype(self.info.dtype)
        stored: dict[int, np.ndarray] = {}
        for layer in self.info.layers:
            # checked at store precision: a finite float32 state past float16's range (65504)
            # would otherwise be stored as inf
            with np.errstate(over="ignore"):  # an overflow is the error raised just below
                rows = np.ascontiguousarray(tokens[layer], dtype=np_dtype)
            if not np.isfinite(rows).all():
                first, last = self.next_sample + self._buffered_samples, self.next_sample + self._buffered_samples + len(lengths) - 1
                why = (f"; past the range of store_dtype {np_dtype.name}: set embed.store_dtype float32"
                       if np.isfinite(tokens[layer]).all() else "")
                raise FloatingPointError(
                    f"non-finite hidden states at layer {layer} for samples {first}..{last}{why}"
                    " (try dtype float32, or a lower-precision-safe layer)"
                )
            fh = self._tok.get(layer)
            if fh is None:
                fh = self._tok[layer] = open(self._tmp_path(layer), "wb")
                fh.write(npy_header(np_dtype, (0, self.info.dim)))
                self._hash[layer] = BlockHasher()
            rows.tofile(fh)
            self._hash[layer].update(rows.reshape(-1).view(np.uint8))
            stored[layer] = rows
            # a copy: an encoder's globals may be a view of the whole batch's hidden states
            # (h[:, 0] of a CPU float32 tensor), which would keep every batch alive until flush
            self._glob[layer].append(np.array(globals_[layer], dtype=np.float32, copy=True))
        if self._sums is not None:  # rows as the shards hold them; valid train tokens only
            first = self.next_sample + self._buffered_samples
            self._sums.add(stored, valid.astype(bool) & np.repeat(self._train[first:first + len(lengths)], lengths))
        self._meta["lengths"].append(lengths.astype(np.int32))
        self._meta["valid"].append(valid.astype(bool))
        if char_spans is not None:
            self._meta["char_spans"].append(char_spans.astype(np.int32))
        if gt_bits is not None:
            self._meta["gt"].append(gt_bits.astype(np.uint8))
        self._buffered_tokens += int(lengths.sum())
        self._buffered_samples += len(lengths)
        if self._buffered_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples as one shard, then record it in the manifest."""
        if not self._buffered_samples:
            return
        shard = Shard(self.next_sample, self.next_sample + self._buffered_samples,
                      self.next_token, self.next_token + self._buffered_tokens)
        meta = {k: np.concatenate(v) for k, v in self._meta.items() if v}
        sums = self.info.checksums
        sums[f"index/{shard.name}.npz"] = save_npz_checksummed(self.path / "index" / f"{shard.name}.npz", **meta)
        for layer in self.info.layers:
            d = self.path / f"layer_{layer:02d}"
            fh = self._tok.pop(layer)
            fh.seek(0)
            fh.write(npy_header(np.dtype(self.info.dtype), (shard.n_tokens, self.info.dim)))
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(self._tmp_path(layer), d / f"{shard.name}.npy")
            h = self._hash.pop(layer)
            sums[f"{d.name}/{shard.name}.npy"] = h.record(NPY_HEADER_BYTES)
            sums[f"{d.name}/globals_{shard.name}.npy"] = save_npy_checksummed(d / f"globals_{shard.name}.npy",
                                                                              np.concatenate(self._glob[layer]))
        if self._sums is not None:  # before the manifest lists the shard: a resume finds the sums that match it
            self._sums.save(self.path / NORM_PARTIAL)
        self.info.shards.append(asdict(shard))
        atomic_write_json(self.path / MANIFEST, asdict(self.info))
        self._reset_buffer()

    def close(self) -> "TokenStore":
        """Flush, compute train normalisation statistics, mark the store complete."""
        self.flush()
        if self.next_sample != self.info.n_samples:
            raise RuntimeError(f"store has {self.next_sample} of {self.info.n_samples} samples")
        atomic_write_json(self.path / MANIFEST, asdict(self.info))
        if not self.info.states_only:  # the statistics follow a run's splits: a view computes them
            sums = self._sums.result() if self._sums is not None else None
            add_norm(TokenStore(self.path, require_complete=False, verify="none"), self.info, sums)
        self.info.complete = True
        atomic_write_json(self.path / MANIFEST, asdict(self.info))
        (self.path / NORM_PARTIAL).unlink(missing_ok=True)
        return TokenStore(self.path, verify="none")  # just written and checksummed


def add_norm(store: "TokenStore", info: StoreInfo,
             sums: tuple[dict[int, np.ndarray], int] | None = None) -> None:
    """Train-split mean (``layer_LL/mean.npy`` in ``store.path``) and mean norm per layer, into ``info``.

    ``sums``: the train sums and count the writer accumulated (:class:`TrainSums`), sparing the first
    pass. Layers are computed on up to one thread per CPU (NumPy's conversions and reductions release
    the GIL; each layer's figures are what one thread computes), then recorded in layer order."""
    train = store.splits == "train"

    def one(layer: int) -> tuple[np.ndarray, float, int]:
        return store.compute_norm(layer, train, None if sums is None else (sums[0][layer], sums[1]))

    with ThreadPoolExecutor(max_workers=max(1, min(len(info.layers), os.cpu_count() or 1))) as pool:
        stats = list(pool.map(one, info.layers))
    for layer, (mean, scale, n) in zip(info.layers, stats):
        rel = f"layer_{layer:02d}/mean.npy"
        (store.path / rel).parent.mkdir(parents=True, exist_ok=True)
        info.checksums[rel] = save_npy_checksummed(store.path / rel, mean)
        info.norm[str(layer)] = {"scale": scale, "n_train_tokens": n}


class TokenStore:
    """Read side of the store: small per-token arrays in memory, hidden states memory-mapped."""

    def __init__(self, path: str | Path, require_complete: bool = True, verify: str = "sample"):
        """Open the store at ``path``; ``verify`` checks files against the checksums recorded when
        they were written: ``"sample"`` (default: sizes of all files, every small file, and
        :data:`SAMPLE_BLOCKS` random blocks of hidden states), ``"full"`` or ``"none"``. A missing,
        truncated or altered file is a :class:`StoreError` naming it."""
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"no token store at {self.path} (missing {MANIFEST})")
        try:
            self.info = StoreInfo(**json.loads(mpath.read_text()))
        except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise StoreError(f"{mpath}: damaged store manifest ({err}); delete {self.path} to rebuild the store") from None
        if require_complete and not self.info.complete:
            raise RuntimeError(f"token store {self.path} is incomplete (interrupted?); re-run embed to resume")
        self.states_path = self.path  # where index/ and the hidden states are
        self._states_sums: dict = {}
        if self.info.states is not None:
            self.states_path = Path(self.info.states["path"])
            try:
                self._states_sums = json.loads((self.states_path / MANIFEST).read_text())["checksums"]
            except (OSError, ValueError, KeyError):
                raise StatesMissingError(
                    f"{self.path}: its hidden states {self.states_path} are missing or damaged (removed with "
                    "'superactivators cache rm'?); run again to embed them anew") from None
        self.shards = [Shard(**s) for s in self.info.shards]
        if verify != "none":
            bad = self.verify(full=verify == "full")
            if bad:
                where = self.path if self.info.states is None else f"{self.path} (or its states {self.states_path})"
                raise StoreError("\n".join([*bad, f"(delete {where} to rebuild the store)"]))
        shared = self.info.states_only  # a states-only store: labels and splits belong to each run
        self.labels = None if shared else self._load(self.path / "labels.npy")
        self.splits = None if shared else self._load(self.path / "splits.npy")
        #: [N, C] bool, which labels are known; None when every label is (data.missing_labels)
        self.known = self._load(self.path / "known.npy") if (self.path / "known.npy").exists() else None
        idx = [self._load(self.states_path / "index" / f"{s.name}.npz") for s in self.shards]
        self.lengths = np.concatenate([z["lengths"] for z in idx]).astype(np.int64)
        self.offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        self.valid = np.concatenate([z["valid"] for z in idx])
        self.char_spans = (np.concatenate([z["char_spans"] for z in idx]) if "char_spans" in idx[0] else None) if idx else None
        self._gt_bits = (np.concatenate([z["gt"] for z in idx]) if "gt" in idx[0] else None) if idx else None
        if self.info.states is not None and self.info.token_ground_truth == "spans":  # the run's own truth
            truth = [self._load(self.path / "truth" / f"{s.name}.npz") for s in self.shards]
            self._gt_bits = np.concatenate([z["gt"] for z in truth]) if truth else None
        elif self.info.states is not None and self.info.token_ground_truth == "sample":
            self._gt_bits = None
        self.sample_of_token = np.repeat(np.arange(len(self.lengths)), self.lengths)

    @staticmethod
    def _load(path: Path, mmap_mode: str | None = None):
        """``np.load`` whose failures (truncated file, bad zip) name the file."""
        try:
            out = np.load(path, mmap_mode=mmap_mode)
            if isinstance(out, np.lib.npyio.NpzFile):  # read now: a damaged member fails here, named
                out = {k: out[k] for k in out.files}
            return out
        except FileNotFoundError:
            raise StoreError(f"{path}: missing store file") from None
        except Exception as err:  # ValueError (mmap length), BadZipFile, EOFError, OSError, ...
            raise StoreError(f"{path}: damaged store file ({type(err).__name__}: {err})") from None

    def verify(self, full: bool = False, rng: np.random.Generator | None = None) -> list[str]:
        """One line per file that differs from its recorded checksum (empty: all good).

        Without ``full``: every file's size, every small file in full, and :data:`SAMPLE_BLOCKS`
        blocks of the large ones picked at random (``rng``), so opening a store stays cheap.
        """
        files = [(self.path, rel, rec) for rel, rec in self.info.checksums.items()]
        files += [(self.states_path, rel, rec) for rel, rec in self._states_sums.items()]  # a view's states
        if not files:
            return []  # a store written before checksums were recorded
        bad: list[str] = []
        big: list[tuple[Path, str, dict, int]] = []
        for root, rel, rec in files:
            n = len(rec["blocks"])
            if full or n <= 1 or not rel.startswith("layer_"):
                why = check_file(root / rel, rec)
            else:
                why = check_file(root / rel, rec, blocks=[])  # size now, sampled blocks below
                big += [(root, rel, rec, k) for k in range(n)]
            if why:
                bad.append(why)
        if big and not bad:
            rng = rng or np.random.default_rng()
            for j in rng.choice(len(big), size=min(SAMPLE_BLOCKS, len(big)), replace=False):
                root, rel, rec, k = big[int(j)]
                why = check_file(root / rel, rec, blocks=[k])
                if why:
                    bad.append(why)
        return bad

    # --- shapes -------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self.info.n_samples

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def layers(self) -> list[int]:
        return list(self.info.layers)

    @property
    def concepts(self) -> list[str]:
        return list(self.info.concepts)

    # --- data ---------------------------------------------------------------------------
    def tokens(self, layer: int, shard: Shard) -> np.ndarray:
        """Raw hidden states of one shard, memory-mapped ``[t, d]``."""
        path = self.states_path / f"layer_{layer:02d}" / f"{shard.name}.npy"
        x = self._load(path, mmap_mode="r")
        if x.shape != (shard.n_tokens, self.dim):
            raise StoreError(f"{path}: holds {x.shape}, expected ({shard.n_tokens}, {self.dim})")
        return x

    def globals(self, layer: int) -> np.ndarray:
        """Global (CLS / pooled / mean) embeddings ``[N, d]`` float32, raw."""
        d = self.states_path / f"layer_{layer:02d}"
        return np.concatenate([self._load(d / f"globals_{s.name}.npy") for s in self.shards])

    def norm(self, layer: int) -> tuple[np.ndarray, float]:
        """Train-split token mean ``[d]`` and mean norm of centred train tokens."""
        mean = self._load(self.path / f"layer_{layer:02d}" / "mean.npy")
        return mean, float(self.info.norm[str(layer)]["scale"])

    def token_labels(self, shard: Shard, concepts: np.ndarray | None = None) -> np.ndarray:
        """In-concept ground truth ``[t, C]`` bool for the shard's tokens (invalid ones False)."""
        sl = slice(shard.token_start, shard.token_stop)
        if concepts is not None and np.array_equal(concepts, np.arange(len(self.info.concepts))):
            concepts = None  # every column in order: no column gather
        if self._gt_bits is not None:  # unpackbits gives fresh 0/1 bytes: viewed as bool, no copy
            gt = np.unpackbits(self._gt_bits[sl], axis=1, count=len(self.info.concepts)).view(bool)
        else:
            gt = self.labels[self.sample_of_token[sl]].astype(bool)
        valid = self.valid[sl]
        if not valid.all():
            gt &= valid[:, None]
        return gt if concepts is None else gt[:, concepts]

    def iter_shards(self, layer: int) -> Iterator[tuple[Shard, np.ndarray]]:
        for s in self.shards:
            yield s, self.tokens(layer, s)

    def compute_norm(self, layer: int, train_mask: np.ndarray,
                     sums: tuple[np.ndarray, int] | None = None) -> tuple[np.ndarray, float, int]:
        """Two streaming passes over train tokens: mean, then mean norm after centring.

        Rows are converted to float32 block by block (never a float32/float64 copy of a whole
        shard); block sums accumulate in float64. Blocks are fixed windows of *global* token
        rows, so the statistics are bit-identical however the store is cut into shards (a
        data-parallel run writes other shards than a single process). ``sums``: the float64 sum
        and count of the first pass, accumulated while writing (:class:`TrainSums`, same blocks).
        """
        tok_train = self.valid & train_mask[self.sample_of_token]
        if sums is not None:
            total, n = sums
        else:
            total = np.zeros(self.dim, dtype=np.float64)
            n = 0
            for xb in self.aligned_blocks(layer, tok_train, block=NORM_BLOCK):
                total += xb.sum(axis=0, dtype=np.float64)
                n += len(xb)
        if n == 0:
            raise ValueError("no train tokens to compute normalisation statistics")
        mean = (total / n).astype(np.float32)
        norm_sum = 0.0
        for xb in self.aligned_blocks(layer, tok_train, block=NORM_BLOCK):
            xb -= mean
            norm_sum += float(np.sqrt(np.einsum("ij,ij->i", xb, xb)).sum(dtype=np.float64))
        return mean, max(norm_sum / n, 1e-12), n

    def aligned_blocks(self, layer: int, mask: np.ndarray, block: int = NORM_BLOCK) -> Iterator[np.ndarray]:
        """Float32 rows ``mask`` selects, grouped by global windows ``[k * block, (k + 1) * block)``.

        A window that straddles two shards is assembled from both, so the blocks (and any
        float sums over them) do not depend on where shards begin and end.
        """
        carry: list[np.ndarray] = []
        for s, x in self.iter_shards(layer):
            m = mask[s.token_start:s.token_stop]
            w0 = s.token_start - s.token_start % block
            for w in range(w0, s.token_stop, block):
                a, b = max(w, s.token_start) - s.token_start, min(w + block, s.token_stop) - s.token_start
                mb = m[a:b]
                if mb.any():
                    carry.append(x[a:b] if mb.all() else x[a:b][mb])
                if w + block <= s.token_stop and carry:  # window complete
                    yield np.concatenate(carry).astype(np.float32, copy=False) if len(carry) > 1 \
                        else carry[0].astype(np.float32)
                    carry = []
        if carry:
            yield np.concatenate(carry).astype(np.float32, copy=False) if len(carry) > 1 else carry[0].astype(np.float32)


ROW_BLOCK = 4096


def row_blocks(x: np.ndarray, mask: np.ndarray | None = None, block: int = ROW_BLOCK) -> Iterator[np.ndarray]:
    """Writable float32 copies of the rows of ``x`` (optionally only where ``mask``), ``block`` rows at a time.

    Why: converting a memory-mapped fp16 shard in cache-sized blocks is several times faster
    than one whole-shard conversion and keeps the extra memory at one block.
    """
    for i in range(0, len(x), block):
        mb = None if mask is None else mask[i:i + block]
        if mb is None or mb.all():
            yield x[i:i + block].astype(np.float32)  # always a fresh, writable copy
        elif mb.any():
            yield x[i:i + block][mb].astype(np.float32, copy=False)
