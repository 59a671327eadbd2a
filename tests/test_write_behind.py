"""Embedding close to the bare forward (issue 24 item 3): the writer thread, train sums kept while
writing (and across a resume), one tokenisation per window, checksums hashed on the way."""

from __future__ import annotations

import dataclasses
import json
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from superactivators.data.datasets import load_dataset
from superactivators.encoders.base import EmbedConfig
from superactivators.encoders.factory import make_encoder
from superactivators.store.embed import embed_dataset
from superactivators.store.tokens import (
    NORM_BLOCK,
    NORM_PARTIAL,
    StoreInfo,
    StoreWriter,
    TokenStore,
    TrainSums,
    save_npy_checksummed,
    save_npz_checksummed,
)
from superactivators.store.writer_thread import WriteBehind

from .conftest import write_small_emotions


def _info(n: int, dim: int, layers: list[int], dtype: str = "float16") -> StoreInfo:
    return StoreInfo(n_samples=n, dim=dim, layers=layers, concepts=["a"], modality="text", dtype=dtype,
                     model={"id": "x"})


def _batches(n_samples: int, dim: int, layers: list[int], seed: int = 0, per_batch: int = 7):
    """Ragged batches of random states (lengths 20..400), some tokens invalid."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 400, size=n_samples)
    out = []
    for a in range(0, n_samples, per_batch):
        ls = lengths[a:a + per_batch]
        t = int(ls.sum())
        out.append({"tokens": {l: (rng.normal(size=(t, dim)) * 3 + l).astype(np.float32) for l in layers},
                    "globals_": {l: rng.normal(size=(len(ls), dim)).astype(np.float32) for l in layers},
                    "lengths": ls, "valid": rng.random(t) > 0.1,
                    "char_spans": np.stack([np.arange(t), np.arange(t) + 1], axis=1)})
    return out


SPLITS = np.array(["train", "cal", "train", "test", "train"] * 20)


def _write(path: Path, batches, n: int, shard_tokens: int = 1500, threaded: bool | None = None) -> TokenStore:
    w = StoreWriter(path, _info(n, 3, [1, 4]), np.zeros((n, 1)), SPLITS[:n], shard_tokens=shard_tokens)
    if threaded is None:
        for b in batches:
            w.add(**b)
        return w.close()
    with WriteBehind(w, threaded=threaded, max_bytes=20_000) as wb:
        for b in batches:
            wb.add(**b)
        return wb.close()


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- train sums


def test_train_sums_by_hand():
    """Windows of 4 rows; rows 0..9 arrive as 3 + 6 + 1; train rows 0, 2, 3, 5, 8, 9."""
    s = TrainSums([7], dim=2, block=4)
    x = np.arange(20, dtype=np.float16).reshape(10, 2)  # row r = (2r, 2r + 1)
    mask = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], bool)
    s.add({7: x[:3]}, mask[:3])
    assert s.n == 0 and s.window_start == 0  # window [0, 4) still open
    s.add({7: x[3:9]}, mask[3:9])
    # windows [0, 4) and [4, 8) closed: rows 0, 2, 3 and 5
    assert s.n == 4 and s.window_start == 8
    assert s.total[7].tolist() == [0 + 4 + 6 + 10, 1 + 5 + 7 + 11]
    s.add({7: x[9:]}, mask[9:])
    total, n = s.result()
    assert n == 6 and total[7].tolist() == [20 + 16 + 18, 24 + 17 + 19]  # + rows 8 and 9


def test_store_norm_equals_two_passes_over_the_written_store(tmp_path):
    """The sums kept while writing give the statistics a read-back of the store gives, bit for bit."""
    batches = _batches(60, 3, [1, 4])
    store = _write(tmp_path / "s", batches, 60)
    assert store.n_tokens > 2 * NORM_BLOCK  # several windows, straddling shards
    assert not (tmp_path / "s" / NORM_PARTIAL).exists()  # removed once complete
    for layer in (1, 4):
        mean, scale, n = store.compute_norm(layer, store.splits == "train")  # both passes from the shards
        got_mean, got_scale = store.norm(layer)
        assert got_mean.tobytes() == mean.tobytes() and got_scale == scale
        assert store.info.norm[str(layer)]["n_train_tokens"] == n
        # independently: float64 mean of the valid train rows as stored (float16)
        rows = np.concatenate([np.asarray(store.tokens(layer, s)) for s in store.shards]).astype(np.float64)
        sel = store.valid & (store.splits == "train")[store.sample_of_token]
        np.testing.assert_allclose(got_mean, rows[sel].mean(0), rtol=1e-6)
        assert n == int(sel.sum())


@pytest.mark.parametrize("state", ["saved", "missing", "ahead_of_manifest"])
def test_interrupted_run_resumes_to_the_same_statistics(tmp_path, state):
    """A writer killed after some shards, resumed by a new one: the same store and statistics,
    whether its saved sums are there, gone, or ahead of the manifest (killed between the two)."""
    batches = _batches(60, 3, [1, 4], seed=1)
    whole = _write(tmp_path / "whole", batches, 60)
    path = tmp_path / "resumed"
    w = StoreWriter(path, _info(60, 3, [1, 4]), np.zeros((60, 1)), SPLITS[:60], shard_tokens=1500)
    for b in batches[:5]:
        w.add(**b)
    done = w.next_sample
    assert 0 < done <= 35 and w.next_token % NORM_BLOCK  # killed with a window open
    del w  # the buffered samples are lost
    man = json.loads((path / "manifest.json").read_text())
    if state == "missing":
        (path / NORM_PARTIAL).unlink()
    elif state == "ahead_of_manifest":  # the sums were saved for a shard the manifest does not list yet
        man["shards"] = man["shards"][:-1]
        (path / "manifest.json").write_text(json.dumps(man))
    w2 = StoreWriter(path, _info(60, 3, [1, 4]), np.zeros((60, 1)), SPLITS[:60], shard_tokens=1500)
    first = next(i for i, b in enumerate(batches) if sum(len(x["lengths"]) for x in batches[:i + 1]) > w2.next_sample)
    assert sum(len(x["lengths"]) for x in batches[:first]) == w2.next_sample  # shards end at batch ends here
    for b in batches[first:]:
        w2.add(**b)
    resumed = w2.close()
    assert _files(tmp_path / "whole") == _files(path)  # manifest (norm), mean.npy, every shard
    for layer in (1, 4):
        assert resumed.norm(layer)[0].tobytes() == whole.norm(layer)[0].tobytes()


# --------------------------------------------------------------------------- the writer thread


def test_threaded_store_is_byte_identical_to_the_serial_one(tmp_path):
    batches = _batches(40, 3, [1, 4], seed=2)
    _write(tmp_path / "serial", batches, 40)
    _write(tmp_path / "off", batches, 40, threaded=False)
    n_threads = threading.active_count()
    _write(tmp_path / "thread", batches, 40, threaded=True)  # max_bytes 20 kB: the caller waits often
    assert threading.active_count() == n_threads  # the thread ended
    serial = _files(tmp_path / "serial")
    assert len(serial) > 10
    assert _files(tmp_path / "off") == serial
    assert _files(tmp_path / "thread") == serial


def test_an_error_in_the_writer_thread_reaches_the_caller(tmp_path):
    batches = _batches(14, 3, [1], seed=3)
    bad = dict(batches[1], tokens={1: np.full_like(batches[1]["tokens"][1], np.nan)})
    w = StoreWriter(tmp_path, _info(14, 3, [1]), np.zeros((14, 1)), SPLITS[:14], shard_tokens=10)
    n_threads = threading.active_count()
    wb = WriteBehind(w)
    wb.add(**batches[0])
    wb.add(**bad)
    with pytest.raises(FloatingPointError, match="non-finite hidden states at layer 1 for samples 7..13"):
        wb.wait()
    with pytest.raises(FloatingPointError):  # and at every later call: nothing more is queued
        wb.add(**batches[0])
    with pytest.raises(FloatingPointError):
        wb.close()
    assert threading.active_count() == n_threads
    assert json.loads((tmp_path / "manifest.json").read_text())["shards"][-1]["stop"] == 7  # batch 0 is stored


def test_a_caller_error_ends_the_thread(tmp_path):
    w = StoreWriter(tmp_path, _info(14, 3, [1]), np.zeros((14, 1)), SPLITS[:14], shard_tokens=10)
    n_threads = threading.active_count()
    with pytest.raises(KeyError), WriteBehind(w) as wb:
        wb.add(**_batches(7, 3, [1], seed=4)[0])
        raise KeyError("the model failed")
    assert threading.active_count() == n_threads
    assert w.next_sample == 7  # what was queued before the error was written


# --------------------------------------------------------------------------- checksums on the way


def test_checksums_hashed_on_the_way_match_the_files(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    rec = save_npy_checksummed(tmp_path / "a.npy", arr)
    data = (tmp_path / "a.npy").read_bytes()
    np.save(tmp_path / "ref.npy", arr)
    assert data == (tmp_path / "ref.npy").read_bytes()  # what np.save writes
    assert rec == {"size": len(data), "skip": 0, "blocks": [f"{zlib.crc32(data):08x}"], "algo": "crc32"}
    rec = save_npz_checksummed(tmp_path / "b.npz", x=arr, y=np.arange(3))
    data = (tmp_path / "b.npz").read_bytes()
    assert rec["size"] == len(data) and rec["blocks"] == [f"{zlib.crc32(data):08x}"]
    with np.load(tmp_path / "b.npz") as z:
        assert z["x"].tolist() == arr.tolist() and z["y"].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- one tokenisation, end to end


@pytest.mark.parametrize("protocol", ["ours", "seed"])
def test_encode_tokenised_equals_encode(tiny_bert, small_emotions, protocol):
    cfg = EmbedConfig(model=str(tiny_bert), layers="all", device="cpu", dtype="float32", max_length=24,
                      protocol=protocol)
    enc = make_encoder(cfg, "text")
    texts = load_dataset(small_emotions).texts(np.arange(9))
    tokenised = enc.tokenise(texts)
    rows = [7, 2, 5]
    ctx = np.array([0, 10, 3])
    a = enc.encode([texts[i] for i in rows], context_chars=ctx)
    b = enc.encode_tokenised(tokenised, rows, [texts[i] for i in rows], context_chars=ctx)
    assert a.lengths.tolist() == b.lengths.tolist() and a.lengths.min() > 0
    assert a.char_spans.tobytes() == b.char_spans.tobytes() and a.valid.tobytes() == b.valid.tobytes()
    assert a.truncated.tolist() == b.truncated.tolist()
    assert a.truncated.any() == (protocol == "ours")  # max_length 24 cuts some texts, not in seed
    for l in a.tokens:
        assert a.tokens[l].tobytes() == b.tokens[l].tobytes() and a.globals[l].tobytes() == b.globals[l].tobytes()


def test_embed_with_the_writer_thread_writes_the_serial_store(tmp_path, tiny_bert):
    """Bucketed windows, spans, truncation counts, several shards: the same files, threaded or not."""
    ds = load_dataset(write_small_emotions(tmp_path / "data", {"train": 20, "cal": 8, "test": 8}))
    cfg = EmbedConfig(model=str(tiny_bert), layers="all", batch_size=4, device="cpu", dtype="float32",
                      max_length=32, shard_tokens=200, bucket_window=3)
    enc = make_encoder(cfg, "text")
    with pytest.warns(UserWarning, match="were cut"):
        a = embed_dataset(ds, cfg, tmp_path / "serial", encoder=enc, progress=False, write_behind=False)
    with pytest.warns(UserWarning, match="were cut"):
        embed_dataset(ds, cfg, tmp_path / "thread", encoder=enc, progress=False)
    assert len(a.shards) > 3 and a.info.dataset["truncated_samples"] > 0
    assert _files(tmp_path / "serial") == _files(tmp_path / "thread")


def test_embed_raises_the_writer_threads_error(tmp_path, tiny_bert, small_emotions, monkeypatch):
    from superactivators.store import tokens

    ds = load_dataset(small_emotions)
    cfg = EmbedConfig(model=str(tiny_bert), layers=[1], batch_size=4, device="cpu", shard_tokens=100)
    real = tokens.StoreWriter.flush

    def failing_flush(self):
        if self.info.shards:
            raise OSError(28, "No space left on device")
        real(self)

    monkeypatch.setattr(tokens.StoreWriter, "flush", failing_flush)
    n_threads = threading.active_count()
    with pytest.raises(OSError, match="No space left"):
        embed_dataset(ds, dataclasses.replace(cfg), tmp_path / "s", progress=False)
    assert threading.active_count() == n_threads
    assert len(json.loads((tmp_path / "s" / "manifest.json").read_text())["shards"]) == 1  # resumable from there
