"""Checksums for every artefact a run or a saved detector writes, checked by name when read.

Each folder that holds artefacts (a stage folder, its ``concepts/``, the run folder's result
tables, a saved detector) carries one ``checksums.json``: ``{file name: record}`` with the
token store's per-block CRC-32 records (:func:`~superactivators.store.tokens.file_checksum`,
one hash helper for the whole project). Writers wrap each write in :func:`recording` (the old
record is dropped before the file is replaced and the new one added after, so a write killed
half-way leaves an unrecorded file, never a wrong record); readers go through
:func:`load_npz` / :func:`load_json` / :func:`check_file_named`, which compare the file with its
record first and turn any damage, or a parse error, into one :class:`ArtefactError` line naming
the file and saying how to rebuild it. Folders written before checksums existed have no
``checksums.json`` and are read as before (only parse errors are named).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..util.io import atomic_write_json
from .layout import RunLayout
from .tokens import MANIFEST, _pid_alive, check_file, file_checksum

SUMS = "checksums.json"
# files the pipeline writes at the top of a run folder (recorded there at the end of a run)
RUN_FILES = tuple(p.name for p in RunLayout(Path(".")).result_files)  # the run-level results


class ArtefactError(ValueError):
    """An artefact is missing, damaged or differs from what was written; one line per file."""


def rebuild_hint(path: Path) -> str:
    """How to get ``path`` back: delete its stage folder, save the detector again, or rerun."""
    path = Path(path)
    for anc in path.parents:
        if (anc / MANIFEST).exists():
            return f"delete {anc} to rebuild the token store"
        if anc.parent.name == "stages" or (anc.parent.name == "units" and anc.parent.parent.name == "stages"):
            if anc.name != "units":
                return f"delete {anc} and rerun the run's config to rebuild it"
        if (anc / "detector.json").exists():
            return f"save the detector again (superactivators detect RUN_DIR --save {anc})"
        if (anc / "config.yaml").exists() or (anc / "stages.json").exists():
            return f"rerun the run's config (superactivators run CONFIG) to rewrite {anc}"
    return "rewrite it"


def _sums(folder: Path) -> dict[str, dict] | None:
    """``folder``'s records, or None where the folder has none (written before checksums)."""
    p = Path(folder) / SUMS
    if not p.exists():
        return None
    try:
        out = json.loads(p.read_text())
        keys = {"size", "skip", "blocks"}
        if not isinstance(out, dict) or not all(isinstance(v, dict) and keys <= v.keys() for v in out.values()):
            raise ValueError("not a table of file checksums")
        return out
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtefactError(f"{p}: damaged checksum file ({err}); {rebuild_hint(p)}") from None


def _write_sums(folder: Path, sums: dict[str, dict]) -> None:
    atomic_write_json(Path(folder) / SUMS, sums)


def record(folder: Path, names: Iterable[str] | None = None) -> None:
    """Record the checksums of ``names`` in ``folder`` (None: every regular, non-hidden file not yet recorded)."""
    folder = Path(folder)
    sums = _sums(folder) or {}
    if names is None:
        names = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
                 and p.name != SUMS and p.name not in sums]
    names = [n for n in names if (folder / n).is_file()]
    if not names and (folder / SUMS).exists():
        return
    for n in names:
        sums[n] = file_checksum(folder / n)
    _write_sums(folder, sums)


def unrecord(folder: Path, names: Iterable[str]) -> None:
    """Drop the records of ``names`` (before they are rewritten)."""
    sums = _sums(Path(folder))
    if sums and any(n in sums for n in names):
        _write_sums(Path(folder), {k: v for k, v in sums.items() if k not in set(names)})


@contextlib.contextmanager
def recording(path: Path) -> Iterator[Path]:
    """Around one write of ``path``: its old record is dropped first, its new one added after."""
    path = Path(path)
    unrecord(path.parent, [path.name])
    yield path
    record(path.parent, [path.name])


def file_problem(path: Path) -> str | None:
    """Why ``path`` does not match the record in its folder's ``checksums.json`` (None: it matches,
    or nothing was recorded for it)."""
    path = Path(path)
    sums = _sums(path.parent)
    if not sums or path.name not in sums:
        return None if path.exists() else f"{path}: missing"
    return check_file(path, sums[path.name])


def check_file_named(path: Path) -> Path:
    """``path``, once it matches its record; else an :class:`ArtefactError` naming it and the fix."""
    why = file_problem(path)
    if why:
        raise ArtefactError(f"{why}; {rebuild_hint(path)}")
    return Path(path)


def load_json(path: Path) -> Any:
    """A checked JSON artefact; damage or a parse error names the file, not a JSON offset alone."""
    path = check_file_named(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtefactError(f"{path}: damaged JSON ({err}); {rebuild_hint(path)}") from None


class NpzArrays(dict):
    """Every member of an ``.npz`` read at once (a damaged member fails at load, named); ``files`` as np.load's."""

    @property
    def files(self) -> list[str]:
        return list(self.keys())


def load_npz(path: Path) -> NpzArrays:
    """A checked ``.npz`` artefact, every member read now; damage names the file, not a zip member."""
    path = check_file_named(path)
    try:
        with np.load(path) as z:
            return NpzArrays((k, z[k]) for k in z.files)
    except FileNotFoundError:
        raise ArtefactError(f"{path}: missing; {rebuild_hint(path)}") from None
    except Exception as err:  # BadZipFile, EOFError, ValueError, zlib.error, ...
        raise ArtefactError(f"{path}: damaged ({type(err).__name__}: {err}); {rebuild_hint(path)}") from None


def _store_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob(MANIFEST)}


def _in_any(path: Path, dirs: set[Path]) -> bool:
    return any(d == path or d in path.parents for d in dirs)


def folder_problems(root: Path, missing_ok: bool = False) -> tuple[int, int, list[str], list[str]]:
    """Every recorded file under ``root`` (token stores aside: they keep their own checksums) read in
    full against its record: ``(files checked, folders without records, unrecorded files, problems)``.

    ``missing_ok``: a recorded file that is gone is no problem (its reader rebuilds it or names it)."""
    root = Path(root)
    stores = _store_dirs(root)
    n, legacy, loose, bad = 0, 0, [], []
    folders = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
    for d in folders:
        if _in_any(d, stores) or d.name == "report" or "report" in d.relative_to(root).parts:
            continue
        files = [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != SUMS]
        try:
            sums = _sums(d)
        except ArtefactError as err:
            bad.append(str(err))
            continue
        if sums is None:  # written before checksums: a run folder's top or a stage folder counts
            legacy += bool(files) and (d == root or "stages" in d.relative_to(root).parts)
            continue
        for name, rec in sorted(sums.items()):
            if missing_ok and not (d / name).exists():
                continue
            n += 1
            why = check_file(d / name, rec)
            if why:
                bad.append(f"{why}; {rebuild_hint(d / name)}")
        loose += [str(p) for p in files if p.name not in sums]
    return n, legacy, loose, bad


def require_intact(*paths: Path) -> None:
    """Raise one :class:`ArtefactError` listing every damaged file of these files / folders (recursively).

    A recorded file that was deleted is left to its reader (``report`` recomputes figure data, a
    loader names the missing file); ``verify`` reports it."""
    bad: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            bad += folder_problems(p, missing_ok=True)[3]
        else:
            why = file_problem(p)
            if why:
                bad.append(f"{why}; {rebuild_hint(p)}")
    if bad:
        raise ArtefactError("\n".join(bad))


def intact(folder: Path) -> Path:
    """``folder`` (a cached stage about to be reused), once every recorded file in it matches."""
    require_intact(folder)
    return Path(folder)


def leftover_temps(root: Path) -> list[Path]:
    """Temporary files (``.NAME.tmpPID...``) a killed writer left under ``root``; a live writer's are kept."""
    return sorted(p for p in Path(root).rglob(".*.tmp*") if p.is_file() and not _pid_alive(p.name))


def remove_leftover_temps(root: Path) -> list[Path]:
    """Delete :func:`leftover_temps` (only under the run lock, or with no run going); the removed paths."""
    out = []
    for p in leftover_temps(root):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            out.append(p)
    return out


def verify_artefacts(run_dir: Path) -> tuple[list[str], list[str]]:
    """``verify`` beyond the token stores: ``(what was checked, problems)``.

    Every file recorded in a ``checksums.json`` read in full against its record; every stage
    ``.npz`` / ``.json`` read (also in folders written before checksums); ``stages.json`` read
    and every stage folder it names present; leftover temporary files of killed writers removed
    (when no run holds the folder) or reported.
    """
    run_dir = Path(run_dir)
    checked: list[str] = []
    n, legacy, loose, bad = folder_problems(run_dir)
    if n:
        checked.append(f"artefacts with checksums: {n} files")
    if legacy:
        checked.append(f"{legacy} folder(s) written before checksums were recorded: read, not verifiable")
    if loose:
        checked.append(f"{len(loose)} file(s) without a checksum (an interrupted write, or not written by "
                       f"superactivators): {', '.join(loose[:5])}{' ...' if len(loose) > 5 else ''}")
    stores = _store_dirs(run_dir)
    n_stage = 0
    for f in sorted(run_dir.glob("stages/**/*")):
        if f.suffix not in (".npz", ".json") or f.name.startswith(".") or f.name == SUMS or _in_any(f, stores):
            continue
        n_stage += 1
        try:
            load_npz(f) if f.suffix == ".npz" else load_json(f)
        except ArtefactError as err:
            line = str(err)
            if line not in bad:
                bad.append(line)
    if n_stage:
        checked.append(f"stage files read: {n_stage}")
    idx = RunLayout(run_dir).stages_index
    if idx.exists():
        try:
            items = load_json(idx)
            missing = [i["dir"] for i in items if not (run_dir / i["dir"]).is_dir()]
            bad += [f"{idx}: names stage folder {m}, which is missing; {rebuild_hint(idx)}" for m in missing]
            checked.append(f"{RunLayout(run_dir).stages_index.name}: {len(items)} stages")
        except ArtefactError as err:
            if str(err) not in bad:
                bad.append(str(err))
        except (TypeError, KeyError) as err:
            bad.append(f"{idx}: not a list of stages ({type(err).__name__}: {err}); {rebuild_hint(idx)}")
    temps = leftover_temps(run_dir)
    if temps:
        from filelock import FileLock, Timeout  # noqa: PLC0415

        try:
            with FileLock(str(RunLayout(run_dir).lock), timeout=0) if (RunLayout(run_dir).lock).exists() \
                    else contextlib.nullcontext():
                removed = remove_leftover_temps(run_dir)
            checked.append(f"leftover temporary files: removed {len(removed)} left by an interrupted run: "
                           + ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
        except Timeout:
            checked.append(f"leftover temporary files: {len(temps)} kept, a run holds {run_dir}")
    return checked, bad
