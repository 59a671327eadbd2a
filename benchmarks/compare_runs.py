"""Are two run folders the same result? File by file, byte for byte.

    python benchmarks/compare_runs.py RUN_A RUN_B [--ignore GLOB ...] [--ignore-column NAME ...]

Used to show that a refactor changes no number: run the same demo before and after, then
compare the two run folders. Every regular file under either folder is compared by content
(SHA-256), by its path relative to the folder; the report/ folder (figures embed timestamps
and font metrics) and lock / temporary files are left out unless asked. Safetensors, npz and
CSV files differ only when a value, a name or an order differs. Exit status 0 when every file
matches, 1 otherwise (each differing, missing or extra file is listed).

``--ignore-column seconds`` compares CSV files without that column (wall-clock timings, which no
two runs share); every other column must still be equal as text.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import sys
from pathlib import Path

DEFAULT_IGNORE = ("report/*", "*.lock", ".*.tmp*", "*.tmp", "*/.tmp*", "*.log")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_of(root: Path, ignore: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, g) for g in ignore):
            continue
        out[rel] = p
    return out


def same_csv(a: Path, b: Path, drop: tuple[str, ...]) -> bool:
    """Two CSV files equal as text once the columns ``drop`` are left out (header order kept)."""
    import csv

    with a.open(newline="") as fa, b.open(newline="") as fb:
        ra, rb = list(csv.reader(fa)), list(csv.reader(fb))
    if not ra or not rb or ra[0] != rb[0] or len(ra) != len(rb):
        return False
    keep = [i for i, c in enumerate(ra[0]) if c not in drop]
    return all([x[i] for i in keep if i < len(x)] == [y[i] for i in keep if i < len(y)] for x, y in zip(ra, rb))


def compare(a: Path, b: Path, ignore: tuple[str, ...] = DEFAULT_IGNORE,
            ignore_columns: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """``(files compared, problems)`` between run folders ``a`` and ``b``."""
    fa, fb = files_of(a, ignore), files_of(b, ignore)
    problems = [f"only in {a}: {r}" for r in sorted(set(fa) - set(fb))]
    problems += [f"only in {b}: {r}" for r in sorted(set(fb) - set(fa))]
    same = sorted(set(fa) & set(fb))
    for r in same:
        if digest(fa[r]) == digest(fb[r]):
            continue
        if ignore_columns and r.endswith(".csv") and same_csv(fa[r], fb[r], ignore_columns):
            continue
        problems.append(f"differs: {r}")
    return len(same), problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--ignore", action="append", default=None,
                    help=f"glob of relative paths to leave out (default: {' '.join(DEFAULT_IGNORE)})")
    ap.add_argument("--ignore-column", action="append", default=[],
                    help="a CSV column left out of the comparison (e.g. seconds: wall-clock timings)")
    args = ap.parse_args(argv)
    ignore = tuple(args.ignore) if args.ignore is not None else DEFAULT_IGNORE
    n, problems = compare(args.a, args.b, ignore, tuple(args.ignore_column))
    for p in problems:
        print(p)
    print(f"{n} files compared, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
