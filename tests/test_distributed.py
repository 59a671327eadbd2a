"""Data-parallel embedding: rank slices, part merging, and torchrun with 2 gloo processes vs 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from superactivators.cli import main
from superactivators.store.distributed import DistEnv, merge_parts, part_dir, rank_slices
from superactivators.store.tokens import StoreInfo, StoreWriter, TokenStore

from .conftest import write_small_emotions


def test_rank_slices_are_contiguous_batch_aligned_and_balanced():
    # 10 samples, batches of 3 -> batches [0,3) [3,6) [6,9) [9,10); 2 ranks get 2 batches each
    assert rank_slices(10, 2, 3) == [(0, 6), (6, 10)]
    # 4 batches over 3 ranks: the first rank takes the extra batch
    assert rank_slices(10, 3, 3) == [(0, 6), (6, 9), (9, 10)]
    # more ranks than batches: the last ones are empty
    assert rank_slices(5, 4, 2) == [(0, 2), (2, 4), (4, 5), (5, 5)]
    assert rank_slices(0, 2, 4) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError, match="batch_size"):
        rank_slices(5, 2, 0)


def test_dist_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert DistEnv.from_env() == DistEnv(3, 4, 1)
    assert DistEnv.from_env().is_distributed
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        DistEnv.from_env()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    assert DistEnv.from_env() == DistEnv(0, 1, 0) and not DistEnv.from_env().is_distributed


def _synthetic(n: int = 9, dim: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 7, size=n)
    x = rng.normal(size=(int(lengths.sum()), dim)).astype(np.float32) * 3 + 10
    labels = rng.integers(0, 2, size=(n, 2)).astype(np.uint8)
    splits = np.array(["train", "cal", "test"] * n)[:n]
    return lengths, x, labels, splits


def _write(path: Path, lengths, x, labels, splits, lo: int, hi: int, shard_tokens: int, n: int,
           upto: int | None = None):
    info = StoreInfo(n_samples=n, dim=x.shape[1], layers=[2], concepts=["a", "b"], modality="text",
                     dtype="float16", model={"id": "m"}, sample_range=None if (lo, hi) == (0, n) else [lo, hi])
    w = StoreWriter(path, info, labels, splits, shard_tokens=shard_tokens, first_sample=lo)
    off = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(lo, hi if upto is None else upto):
        rows = x[off[i]:off[i + 1]]
        w.add({2: rows}, {2: rows.mean(0, keepdims=True)}, lengths[i:i + 1], np.ones(len(rows), bool))
    return w


def _logical(store: TokenStore) -> dict[str, np.ndarray]:
    """Everything a reader sees, independent of how the rows are cut into shards."""
    mean, scale = store.norm(2)
    return {"tokens": np.concatenate([np.asarray(x) for _, x in store.iter_shards(2)]),
            "globals": store.globals(2), "offsets": store.offsets, "valid": store.valid,
            "labels": store.labels, "splits": store.splits, "mean": mean, "scale": np.array(scale)}


def test_merged_parts_equal_single_writer_bit_for_bit(tmp_path):
    lengths, x, labels, splits = _synthetic()
    n = len(lengths)
    single = _write(tmp_path / "single", lengths, x, labels, splits, 0, n, shard_tokens=7, n=n).close()
    out = tmp_path / "merged"
    slices = [(0, 4), (4, 9)]
    for lo, hi in slices:  # other shard sizes than the single run: shard boundaries differ
        _write(part_dir(out, lo, hi), lengths, x, labels, splits, lo, hi, shard_tokens=5, n=n).flush()
    merged = merge_parts(out, [part_dir(out, lo, hi) for lo, hi in slices])
    assert merged.info.complete and not (out / "parts").exists()
    assert [s.start for s in merged.shards] != [s.start for s in single.shards]
    a, b = _logical(single), _logical(merged)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    # token rows and offsets by hand: sample i owns x[offsets[i]:offsets[i+1]] (fp16 on disk)
    np.testing.assert_array_equal(b["offsets"], np.concatenate([[0], np.cumsum(lengths)]))
    np.testing.assert_array_equal(b["tokens"], x.astype(np.float16))
    assert merged.info.norm["2"]["n_train_tokens"] == int(lengths[splits == "train"].sum())


def test_merge_refuses_an_unfinished_part(tmp_path):
    lengths, x, labels, splits = _synthetic()
    out = tmp_path / "merged"
    _write(part_dir(out, 0, 4), lengths, x, labels, splits, 0, 4, shard_tokens=5, n=9).flush()
    _write(part_dir(out, 4, 9), lengths, x, labels, splits, 4, 9, shard_tokens=5, n=9, upto=7).flush()  # stopped
    with pytest.raises(RuntimeError, match="covers samples 4..7 of 4..9"):
        merge_parts(out, [part_dir(out, 0, 4), part_dir(out, 4, 9)])


def _config(tmp_path: Path, model: Path, data: Path, out: str) -> Path:
    cfg = {"name": "dp", "output_dir": str(tmp_path / out), "data": {"path": str(data)},
           "embed": {"model": str(model), "layers": "all", "batch_size": 8, "max_length": 64,
                     "shard_tokens": 300, "device": "cpu",
                     "bucket_window": 2}}  # windows of 16 texts: ranks get [0, 32) and [32, 40)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def test_torchrun_job_refuses_a_run_folder_held_by_another_run(tmp_path, tiny_bert):
    from superactivators.store.runs import run_lock

    data = write_small_emotions(tmp_path / "data", {"train": 8, "cal": 4, "test": 4})
    cfg = _config(tmp_path, tiny_bert, data, "held")
    run_dir = tmp_path / "held" / "dp"
    run_dir.mkdir(parents=True)
    with run_lock(run_dir):  # this process holds the folder, as a running `superactivators run` would
        job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "superactivators", "embed", "--quiet", str(cfg)],
                             env=_torchrun_env(), capture_output=True, text=True, timeout=300)
    assert job.returncode != 0
    assert job.stderr.count("is in use by another run") >= 2  # both ranks refuse, naming the lock
    stores = run_dir / "stores"
    assert not stores.exists() or not any(stores.rglob("*.npy"))  # no rank wrote a part


def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path, tiny_bert):
    data = write_small_emotions(tmp_path / "data", {"train": 20, "cal": 10, "test": 10})
    env = _torchrun_env()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "superactivators", "embed", "--quiet", str(_config(tmp_path, tiny_bert, data, "two"))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "token store:" in two.stdout and two.stdout.count("token store:") == 1  # rank 0 reports
    # the single-process reference, in this process with one thread like each torchrun rank
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["embed", "--quiet", str(_config(tmp_path, tiny_bert, data, "one"))]) == 0
    finally:
        torch.set_num_threads(threads)
    stores = [next((tmp_path / o / "dp" / "stores").iterdir()) for o in ("one", "two")]
    assert stores[0].name == stores[1].name  # same cache key: a later `run` reuses the store
    a, b = TokenStore(stores[0]), TokenStore(stores[1])
    assert a.n_samples == 40 and len(b.shards) > 2  # several shards, so boundaries are exercised
    for layer in a.layers:
        for k, (va, vb) in {
            "tokens": (np.concatenate([np.asarray(x) for _, x in a.iter_shards(layer)]),
                       np.concatenate([np.asarray(x) for _, x in b.iter_shards(layer)])),
            "globals": (a.globals(layer), b.globals(layer)),
            "mean": (a.norm(layer)[0], b.norm(layer)[0]),
        }.items():
            assert va.shape == vb.shape and va.tobytes() == vb.tobytes(), (layer, k)
        assert a.norm(layer)[1] == b.norm(layer)[1]
    for k in ("offsets", "valid", "char_spans", "_gt_bits", "labels", "splits"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes(), k
