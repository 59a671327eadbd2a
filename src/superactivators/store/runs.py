"""The run folder's index: which stage folders and which token store a run used."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .artefacts import load_json, verify_artefacts
from .layout import RunLayout, StageFolder
from .tokens import MANIFEST, StoreError, TokenStore


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout: float = 0) -> Iterator[None]:
    """Hold ``run_dir`` for one run; another run on it (any process) refuses with a clear message.

    Why: two runs on one folder delete each other's temporary shards and mix their results.
    ``timeout`` > 0 waits that many seconds first. The lock is an OS file lock (``filelock``),
    released when the process ends, however it ends.
    """
    path = RunLayout(run_dir).lock
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
    run = RunLayout(run_dir)
    if run.stages_index.exists():
        items = load_json(run.stages_index)  # checked against its recorded checksum; damage names the file
        refs = [StageRef(int(i["layer"]), str(i["concept_type"]), run.root / i["dir"]) for i in items]
        return [r for r in refs if StageFolder(r.path).done]
    newest: dict[tuple[int, str], tuple[float, Path]] = {}
    for key, st in run.stage_folders():
        if not st.done:
            continue
        t = st.summary.stat().st_mtime
        if key not in newest or t > newest[key][0]:
            newest[key] = (t, st.path)
    return [StageRef(k[0], k[1], v[1]) for k, v in sorted(newest.items())]


def find_store(run_dir: Path) -> TokenStore:
    """The run's token store (``stages.json`` names it; else the newest complete one)."""
    run = RunLayout(run_dir)
    if run.stages_index.exists():
        items = load_json(run.stages_index)
        if items and items[0].get("store"):
            return TokenStore(run.root / items[0]["store"])
    cands = sorted(run.store_manifests(), key=lambda p: p.stat().st_mtime, reverse=True)
    for m in cands:
        try:
            return TokenStore(m.parent)
        except RuntimeError:
            continue
    raise FileNotFoundError(f"no complete token store under {run.stores}")


def verify_run(run_dir: Path) -> tuple[list[str], list[str]]:
    """Full check of a run folder (or one store folder): ``(what was checked, problems)``.

    Every token store file against the checksums recorded when it was written (every block),
    then every other artefact (:func:`superactivators.store.artefacts.verify_artefacts`: stage
    files, ``stages.json``, result tables, saved detectors; leftover temporary files).
    """
    run_dir = Path(run_dir)
    stores = [run_dir] if (run_dir / MANIFEST).exists() else [p.parent for p in RunLayout(run_dir).store_manifests()]
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
