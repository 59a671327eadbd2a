"""Data-parallel embedding with PyTorch's own launcher (``torchrun``).

``torchrun --nproc_per_node N -m superactivators embed run.yaml`` starts N processes; each
reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment (set by torchrun),
embeds one contiguous, disjoint slice of the samples and writes it as a *part* store under
``<store>/parts/``. After a barrier, rank 0 merges the parts into the store and computes the
normalisation statistics; a final barrier releases the other ranks. Multi-node runs are the
same command on every node with ``--nnodes``, ``--node_rank`` / ``--rdzv_endpoint`` (see
``docs/scaling.md``); the store folder must then be on a filesystem every node sees.

Why the result equals a single-process run, row for row and bit for bit:

- slices start on multiples of ``batch_size``, so every rank forms exactly the batches a
  single process would (padding, and therefore the floating-point path, is unchanged);
- shards are named by their first sample and parts cover disjoint, ordered sample ranges, so
  merging is moving files and shifting token offsets;
- the normalisation statistics are summed over fixed global row windows
  (:meth:`TokenStore.aligned_blocks`), independent of where shards begin and end.

(As for any two runs, identical values also need the same kernels: same device type, dtype and
thread count per process. ``torchrun`` sets ``OMP_NUM_THREADS=1`` per process by default.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..util.device import pick_device
from ..util.io import atomic_write_json
from .embed import _positives_without_tokens, embed_dataset, embed_unit
from .runs import RunLockedError, run_lock
from .tokens import MANIFEST, Shard, StoreInfo, StoreWriter, TokenStore, store_is_complete

log = logging.getLogger(__name__)

PARTS = "parts"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistEnv":
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (absent: a single process)."""
        try:
            rank = int(os.environ.get("RANK", 0))
            world = int(os.environ.get("WORLD_SIZE", 1))
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError as err:
            raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
        return cls(rank, world, local)


def rank_slices(n_samples: int, world_size: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous, disjoint ``[lo, hi)`` sample ranges, one per rank, starting on batch boundaries.

    Whole batches are dealt out as evenly as possible (the first ranks take one more when they
    do not divide); a rank may get an empty range when there are fewer batches than ranks.
    """
    if n_samples < 0 or world_size < 1 or batch_size < 1:
        raise ValueError(f"need n_samples >= 0, world_size >= 1, batch_size >= 1; got "
                         f"{n_samples}, {world_size}, {batch_size}")
    n_batches = -(-n_samples // batch_size)
    per, extra = divmod(n_batches, world_size)
    bounds = np.cumsum([0] + [per + (r < extra) for r in range(world_size)]) * batch_size
    bounds = np.minimum(bounds, n_samples)
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(world_size)]


def part_dir(store_dir: Path, lo: int, hi: int) -> Path:
    return Path(store_dir) / PARTS / f"{lo:09d}-{hi:09d}"


def merge_parts(store_dir: str | Path, parts: list[Path]) -> TokenStore:
    """Move the parts' shard files into ``store_dir``, rebase token rows, finalise the store.

    Parts must cover ``0..n_samples`` in order, each complete. Idempotent: a file already
    moved by an interrupted merge is left where it is.
    """
    store_dir = Path(store_dir)
    infos = [StoreInfo(**json.loads((p / MANIFEST).read_text())) for p in parts]
    if not infos:
        raise ValueError(f"no parts to merge into {store_dir}")
    expect = 0
    for p, info in zip(parts, infos):
        lo, hi = info.sample_range or (0, info.n_samples)
        done = info.shards[-1]["stop"] if info.shards else lo
        if lo != expect or done != hi:
            raise RuntimeError(f"part {p} covers samples {lo}..{done} of {lo}..{hi}; expected to start at {expect}"
                               " (a rank failed or was interrupted: re-run the same command to resume)")
        expect = hi
    first = infos[0]
    if expect != first.n_samples:
        raise RuntimeError(f"parts cover {expect} of {first.n_samples} samples")
    shards, tokens_before = [], 0
    for p, info in zip(parts, infos):
        for sd in info.shards:
            shard = Shard(**sd)
            files = [Path("index") / f"{shard.name}.npz"]
            for layer in info.layers:
                files += [Path(f"layer_{layer:02d}") / f"{shard.name}.npy",
                          Path(f"layer_{layer:02d}") / f"globals_{shard.name}.npy"]
            for f in files:
                (store_dir / f).parent.mkdir(parents=True, exist_ok=True)
                if (p / f).exists():
                    os.replace(p / f, store_dir / f)
                elif not (store_dir / f).exists():
                    raise FileNotFoundError(f"shard file {f} is in neither {p} nor {store_dir}")
            shards.append(asdict(Shard(shard.start, shard.stop, shard.token_start + tokens_before,
                                       shard.token_stop + tokens_before)))
        tokens_before += info.shards[-1]["token_stop"] if info.shards else 0
    sums = {k: v for info in infos for k, v in info.checksums.items()}  # file names are global
    merged = StoreInfo(**{**asdict(first), "shards": shards, "sample_range": None, "complete": False, "norm": {},
                          "checksums": sums})
    for name in ("labels.npy", "splits.npy", "known.npy"):
        if name == "known.npy" and not (parts[0] / name).exists():
            continue
        shutil.copyfile(parts[0] / name, store_dir / f".{name}.tmp")
        os.replace(store_dir / f".{name}.tmp", store_dir / name)
    atomic_write_json(store_dir / MANIFEST, asdict(merged))
    labels, splits = np.load(store_dir / "labels.npy"), np.load(store_dir / "splits.npy")
    store = StoreWriter(store_dir, merged, labels, splits).close()  # norm statistics, complete=True
    shutil.rmtree(store_dir / PARTS, ignore_errors=True)
    return store


def embed_data_parallel(ds, cfg, out_dir: str | Path, env: DistEnv | None = None, encoder=None,
                        progress: bool = True, timeout_s: float = 24 * 3600,
                        lock_dir: str | Path | None = None) -> TokenStore:
    """Embed ``ds`` into ``out_dir`` with every rank of a torchrun job; returns the store on every rank.

    Without a distributed environment this is :func:`superactivators.store.embed.embed_dataset`.
    The backend is NCCL when embedding on CUDA (each rank on ``cuda:LOCAL_RANK``), else gloo.
    With ``lock_dir`` (a run folder), rank 0 holds its run lock for the whole job and tells the
    other ranks whether it got it: another run or job on that folder makes every rank refuse
    before any of them writes (one lock per rank would refuse the job's own ranks).
    """
    import torch
    import torch.distributed as dist

    env = env or DistEnv.from_env()
    out_dir = Path(out_dir)
    if not env.is_distributed:
        return embed_dataset(ds, cfg, out_dir, encoder=encoder, progress=progress)
    cfg = rank_embed_config(cfg, env)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    held = contextlib.ExitStack()
    try:
        if lock_dir is not None:
            refused: list[str | None] = [None]
            if env.rank == 0:
                try:
                    held.enter_context(run_lock(Path(lock_dir)))
                except RunLockedError as err:
                    refused = [str(err)]
            dist.broadcast_object_list(refused, src=0)
            if refused[0] is not None:
                raise RunLockedError(refused[0])
        if not store_is_complete(out_dir):
            unit = embed_unit(cfg, ds.modality)  # whole windows per rank: one process's batches, bit for bit
            lo, hi = rank_slices(len(ds), env.world_size, unit)[env.rank]
            if hi > lo:
                embed_dataset(ds, cfg, part_dir(out_dir, lo, hi), encoder=encoder, sample_range=(lo, hi),
                              progress=progress and env.rank == 0)
            dist.barrier()
            if env.rank == 0 and not store_is_complete(out_dir):
                parts = [part_dir(out_dir, a, b) for a, b in rank_slices(len(ds), env.world_size, unit)
                         if b > a]
                store = merge_parts(out_dir, parts)
                n_missing = _positives_without_tokens(store)
                if n_missing:
                    log.warning("%d positive (sample, concept) pairs have no in-concept token", n_missing)
            dist.barrier()
        return TokenStore(out_dir)
    finally:
        held.close()
        if own_group:
            dist.destroy_process_group()


def rank_embed_config(cfg, env: DistEnv):
    """The embed config of this rank: on CUDA, its own GPU ``cuda:LOCAL_RANK``."""

    if env.is_distributed and pick_device(cfg.device).type == "cuda":
        return dataclasses.replace(cfg, device=f"cuda:{env.local_rank}")
    return cfg

