"""The run folder's index: which stage folders and which token store a run used."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .artefacts import LOCK_FILE, STAGES_FILE, load_json
from .tokens import TokenStore


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout: float = 0) -> Iterator[None]:
    """Hold ``run_dir`` for one run; another run on it (any process) refuses with a clear message.

    Why: two runs on one folder delete each other's temporary shards and mix their results.
    ``timeout`` > 0 waits that many seconds first. The lock is an OS file lock (``filelock``),
    released when the process ends, however it ends.
    """
    path = Path(run_dir) / LOCK_FILE
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(
            f"run folder {run_dir} is in use by another run (lock {path}); wait for it to finish, "
            "or give this run another name or output_dir"
        ) from None
    try:
        yield
    finally:
        lock.release()

_STAGE_RE = re.compile(r"^L(\d+)_(.+)_([0-9a-f]{12})$")


@dataclass(frozen=True)
class StageRef:
    """Where the cached outputs of one (layer, concept type) live."""

    layer: int
    concept_type: str
    path: Path


def find_stages(run_dir: Path) -> list[StageRef]:
    """Stage folders of the run: from ``stages.json`` when the pipeline wrote it, else by name.

    Without the index, several folders of the same (layer, concept type) come from different
    configs; the one whose ``summary.npz`` is newest wins.
    """
    idx = run_dir / STAGES_FILE
    if idx.exists():
        items = load_json(idx)  # checked against its recorded checksum; damage names the file
        refs = [StageRef(int(i["layer"]), str(i["concept_type"]), run_dir / i["dir"]) for i in items]
        return [r for r in refs if (r.path / "summary.npz").exists()]
    newest: dict[tuple[int, str], tuple[float, Path]] = {}
    for d in sorted((run_dir / "stages").glob("L*_*")):
        m = _STAGE_RE.match(d.name)
        if not m or not (d / "summary.npz").exists():
            continue
        key = (int(m.group(1)), m.group(2))
        t = (d / "summary.npz").stat().st_mtime
        if key not in newest or t > newest[key][0]:
            newest[key] = (t, d)
    return [StageRef(k[0], k[1], v[1]) for k, v in sorted(newest.items())]


def find_store(run_dir: Path) -> TokenStore:
    """The run's token store (``stages.json`` names it; else the newest complete one)."""
    idx = run_dir / STAGES_FILE
    if idx.exists():
        items = load_json(idx)
        if items and items[0].get("store"):
            return TokenStore(run_dir / items[0]["store"])
    cands = sorted((run_dir / "stores").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for m in cands:
        try:
            return TokenStore(m.parent)
        except RuntimeError:
            continue
    raise FileNotFoundError(f"no complete token store under {run_dir / 'stores'}")


def verify_run(run_dir: Path) -> tuple[list[str], list[str]]:
    """Full check of a run folder (or one store folder): ``(what was checked, problems)``.

    Every token store file against the checksums recorded when it was written (every block),
    then every other artefact (:func:`superactivators.store.artefacts.verify_artefacts`: stage
    files, ``stages.json``, result tables, saved detectors; leftover temporary files).
    """
    from .artefacts import verify_artefacts
    from .tokens import MANIFEST, StoreError

    run_dir = Path(run_dir)
    stores = [run_dir] if (run_dir / MANIFEST).exists() else sorted(p.parent for p in run_dir.glob(f"stores/*/{MANIFEST}"))
    checked, bad = [], []
    for sd in stores:
        try:
            st = TokenStore(sd, require_complete=False, verify="full")
            n = len(st.info.checksums)
            checked.append(f"store {sd}: {n} files" + ("" if n else " (written before checksums were recorded: not verifiable)"))
        except StoreError as err:
            bad += str(err).splitlines()
    more, worse = verify_artefacts(run_dir)
    return checked + more, bad + worse
