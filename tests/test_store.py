"""Token store: ragged round trip across shards, resume after interruption, normalisation."""

import json

import numpy as np
import pytest

from superactivators.store.tokens import StoreInfo, StoreWriter, TokenStore


def _batches(rng, lengths, dim, layers):
    for lo in range(0, len(lengths), 3):
        ls = np.asarray(lengths[lo:lo + 3])
        t = int(ls.sum())
        yield {
            "tokens": {l: rng.normal(size=(t, dim)).astype(np.float32) for l in layers},
            "globals_": {l: rng.normal(size=(len(ls), dim)).astype(np.float32) for l in layers},
            "lengths": ls,
            "valid": rng.random(t) > 0.1,
            "char_spans": np.stack([np.arange(t), np.arange(t) + 1], axis=1),
        }


def _info(n, dim, layers):
    return StoreInfo(n_samples=n, dim=dim, layers=layers, concepts=["a", "b"], modality="text", dtype="float32",
                     model={"id": "x"})


def test_ragged_round_trip_over_several_shards(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [5, 1, 9, 3, 7, 2, 4, 8]
    labels = rng.integers(0, 2, size=(8, 2))
    splits = np.array(["train", "cal", "test", "train", "train", "cal", "test", "train"])
    batches = list(_batches(rng, lengths, 4, [1, 3]))
    w = StoreWriter(tmp_path, _info(8, 4, [1, 3]), labels, splits, shard_tokens=10)
    for b in batches:
        w.add(**b)
    store = w.close()
    assert len(store.shards) >= 3  # small shard size forces several shards
    assert store.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    for layer in (1, 3):
        got = np.concatenate([store.tokens(layer, s) for s in store.shards])
        np.testing.assert_array_equal(got, np.concatenate([b["tokens"][layer] for b in batches]))
        np.testing.assert_array_equal(store.globals(layer), np.concatenate([b["globals_"][layer] for b in batches]))
    # sample 2 owns rows offsets[2]:offsets[3]
    s2 = batches[0]["tokens"][1][6:15]
    rows = np.concatenate([store.tokens(1, s) for s in store.shards])[store.offsets[2]:store.offsets[3]]
    np.testing.assert_array_equal(rows, s2)
    assert store.sample_of_token.tolist() == np.repeat(np.arange(8), lengths).tolist()
    np.testing.assert_array_equal(store.splits, splits)


def test_normalisation_stats_use_valid_train_tokens_only(tmp_path):
    rng = np.random.default_rng(1)
    lengths = [3, 2, 4]
    batches = list(_batches(rng, lengths, 3, [1]))
    splits = np.array(["train", "cal", "train"])
    w = StoreWriter(tmp_path, _info(3, 3, [1]), np.zeros((3, 2)), splits, shard_tokens=4)
    for b in batches:
        w.add(**b)
    store = w.close()
    x = batches[0]["tokens"][1]
    valid = batches[0]["valid"]
    train_rows = np.r_[0:3, 5:9]
    sel = x[train_rows][valid[train_rows]]
    mean, scale = store.norm(1)
    np.testing.assert_allclose(mean, sel.mean(0), rtol=1e-5)
    assert scale == pytest.approx(np.linalg.norm(sel - sel.mean(0), axis=1).mean(), rel=1e-5)


def test_interrupted_write_resumes_and_never_looks_complete(tmp_path):
    rng = np.random.default_rng(2)
    lengths = [4, 4, 4, 4, 4, 4]
    batches = list(_batches(rng, lengths, 2, [2]))
    labels, splits = np.zeros((6, 2)), np.array(["train"] * 6)
    w = StoreWriter(tmp_path, _info(6, 2, [2]), labels, splits, shard_tokens=8)
    w.add(**batches[0])  # 12 tokens -> one shard flushed (samples 0..2)
    del w  # "crash": the buffered rest is lost, the manifest lists only completed shards
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    with pytest.raises(RuntimeError, match="incomplete"):
        TokenStore(tmp_path)
    w2 = StoreWriter(tmp_path, _info(6, 2, [2]), labels, splits, shard_tokens=8)
    assert w2.next_sample == 3
    w2.add(**batches[1])
    store = w2.close()
    got = np.concatenate([store.tokens(2, s) for s in store.shards])
    np.testing.assert_array_equal(got, np.concatenate([b["tokens"][2] for b in batches]))
    assert not list(tmp_path.rglob("*.tmp*"))


def test_resume_refuses_a_different_store(tmp_path):
    w = StoreWriter(tmp_path, _info(3, 2, [1]), np.zeros((3, 2)), np.array(["train"] * 3))
    w.add(**next(_batches(np.random.default_rng(0), [1, 1, 1], 2, [1])))
    with pytest.raises(ValueError, match="different store"):
        StoreWriter(tmp_path, _info(3, 5, [1]), np.zeros((3, 2)), np.array(["train"] * 3))


def test_non_finite_states_rejected(tmp_path):
    w = StoreWriter(tmp_path, _info(1, 2, [1]), np.zeros((1, 2)), np.array(["train"]))
    with pytest.raises(FloatingPointError, match="non-finite hidden states at layer 1"):
        w.add({1: np.array([[np.nan, 0.0]])}, {1: np.zeros((1, 2))}, np.array([1]), np.array([True]))


def test_states_past_float16_range_rejected_not_stored_as_inf(tmp_path):
    import dataclasses

    w = StoreWriter(tmp_path, dataclasses.replace(_info(1, 2, [1]), dtype="float16"), np.zeros((1, 2)),
                    np.array(["train"]))
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(70000.0))  # float16 tops out at 65504
    with pytest.raises(FloatingPointError, match="past the range of store_dtype float16"):
        w.add({1: np.array([[70000.0, 0.0]], np.float32)}, {1: np.zeros((1, 2))}, np.array([1]), np.array([True]))


# --------------------------------------------------------------------------- checksums and damaged files


def _small_store(path):
    rng = np.random.default_rng(3)
    lengths = [5, 1, 9, 3, 7, 2, 4, 8]
    w = StoreWriter(path, _info(8, 4, [1]), rng.integers(0, 2, size=(8, 2)),
                    np.array(["train", "cal", "test", "train", "train", "cal", "test", "train"]), shard_tokens=10)
    for b in _batches(rng, lengths, 4, [1]):
        w.add(**b)
    return w.close()


def test_checksums_recorded_match_an_independent_hash(tmp_path):
    import binascii

    from superactivators.store.tokens import NPY_HEADER_BYTES

    store = _small_store(tmp_path)
    sums = store.info.checksums
    shard = store.shards[0]
    raw = (tmp_path / "layer_01" / f"{shard.name}.npy").read_bytes()
    rec = sums[f"layer_01/{shard.name}.npy"]
    assert rec["size"] == len(raw) and rec["skip"] == NPY_HEADER_BYTES and rec["algo"] == "crc32"
    assert rec["blocks"] == [f"{binascii.crc32(raw[NPY_HEADER_BYTES:]):08x}"]
    idx = (tmp_path / "index" / f"{shard.name}.npz").read_bytes()
    assert sums[f"index/{shard.name}.npz"]["blocks"] == [f"{binascii.crc32(idx):08x}"]
    assert {"labels.npy", "splits.npy", "layer_01/mean.npy"} <= set(sums)
    assert TokenStore(tmp_path, verify="full").verify(full=True) == []


def test_block_hasher_splits_a_stream_into_4_mib_blocks(tmp_path):
    import binascii

    from superactivators.store.tokens import CHECK_BLOCK, BlockHasher, check_file

    data = np.random.default_rng(0).integers(0, 256, 2 * CHECK_BLOCK + 1000, dtype=np.uint8).tobytes()
    h = BlockHasher()
    for a in range(0, len(data), 3_000_001):  # chunks that straddle the block edges
        h.update(data[a:a + 3_000_001])
    expect = [f"{binascii.crc32(data[k:k + CHECK_BLOCK]):08x}" for k in range(0, len(data), CHECK_BLOCK)]
    assert h.blocks() == expect and len(expect) == 3
    f = tmp_path / "f.bin"
    f.write_bytes(b"HEAD" + data)
    assert check_file(f, h.record(skip=4)) is None
    f.write_bytes(b"HEAD" + data[:CHECK_BLOCK] + bytes([data[CHECK_BLOCK] ^ 1]) + data[CHECK_BLOCK + 1:])
    assert "block 1" in check_file(f, h.record(skip=4))


def test_stores_written_with_blake2b_checksums_still_verify(tmp_path):
    import hashlib

    from superactivators.store.tokens import check_file

    f = tmp_path / "old.bin"
    f.write_bytes(b"x" * 100)
    old = {"size": 100, "skip": 0, "blocks": [hashlib.blake2b(b"x" * 100, digest_size=16).hexdigest()]}  # no "algo"
    assert check_file(f, old) is None
    f.write_bytes(b"x" * 99 + b"y")
    assert "content differs" in check_file(f, old)


def test_shard_overwritten_in_place_is_refused_naming_it(tmp_path):
    from superactivators.store.tokens import NPY_HEADER_BYTES, StoreError

    store = _small_store(tmp_path)
    f = tmp_path / "layer_01" / f"{store.shards[1].name}.npy"
    raw = bytearray(f.read_bytes())
    raw[NPY_HEADER_BYTES:] = np.random.default_rng(9).normal(size=(len(raw) - NPY_HEADER_BYTES) // 4).astype(
        np.float32).tobytes()  # same size, same header, other values
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=rf"{f.name}: content differs from what was written"):
        TokenStore(tmp_path)
    from superactivators.cli import main

    assert main(["verify", str(tmp_path)]) == 1


@pytest.mark.parametrize("victim", ["token", "index", "manifest", "globals"])
def test_truncated_files_are_errors_naming_them(tmp_path, victim):
    from superactivators.store.tokens import StoreError

    store = _small_store(tmp_path)
    name = store.shards[0].name
    f = {"token": tmp_path / "layer_01" / f"{name}.npy", "index": tmp_path / "index" / f"{name}.npz",
         "manifest": tmp_path / "manifest.json", "globals": tmp_path / "layer_01" / f"globals_{name}.npy"}[victim]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(StoreError, match=str(f.name).replace(".", r"\.")):
        TokenStore(tmp_path)
    if victim != "manifest":  # also without checksums (sampling off): np.load errors name the file
        with pytest.raises(StoreError, match=str(f.name).replace(".", r"\.")):
            st = TokenStore(tmp_path, verify="none")
            st.tokens(1, st.shards[0]), st.globals(1)


def test_verify_command_passes_a_sound_store(tmp_path, capsys):
    from superactivators.cli import main

    _small_store(tmp_path / "run" / "stores" / "s")
    assert main(["verify", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "all files match" in out and "store" in out
