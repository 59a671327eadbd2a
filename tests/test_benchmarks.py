"""The benchmark harness runs end to end (``benchmarks/run.py --quick``): no timing is asserted here.

Speed is measured by ``make bench`` itself; this only keeps its phases (store build, concepts,
post-embedding, bare pass, embed, length buckets, bootstrap) importable and runnable as the code moves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_every_phase():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--reps", "1", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    for line in ("post-embedding / bare pass", "embed / bare forward", "buckets: in-order time / ours",
                 "buckets: ours / sorted bare", "bootstrap (all of it)", "seed-style time / ours",
                 "seed-style peak RSS / ours", "growth exponent of time"):
        assert line in out, line


def _compare_runs():
    """``benchmarks/compare_runs.compare`` (a script folder, not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from compare_runs import compare
    finally:
        sys.path.pop(0)
    return compare


def test_compare_runs_finds_a_changed_byte_and_a_missing_file(tmp_path):
    compare = _compare_runs()
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "stages" / "L01_mean_0123456789ab").mkdir(parents=True)
        (root / "detection_metrics.csv").write_text("method,f1\nsuperactivator,0.5\n")
        (root / "stages" / "L01_mean_0123456789ab" / "summary.npz").write_bytes(b"\x00\x01\x02")
        (root / "report").mkdir()
    (a / "report" / "index.html").write_text("made at 10:00")  # the report is left out by default
    (b / "report" / "index.html").write_text("made at 11:00")
    assert compare(a, b) == (2, [])
    (b / "stages" / "L01_mean_0123456789ab" / "summary.npz").write_bytes(b"\x00\x01\x03")
    (b / "best_layers.csv").write_text("x\n")
    n, problems = compare(a, b)
    assert n == 2
    assert problems == [f"only in {b}: best_layers.csv", "differs: stages/L01_mean_0123456789ab/summary.npz"]


def test_compare_runs_can_leave_out_a_timing_column(tmp_path):
    compare = _compare_runs()
    a, b = tmp_path / "a", tmp_path / "b"
    for root, secs in ((a, "1.5"), (b, "2.5")):
        root.mkdir()
        (root / "attribution_metrics.csv").write_text(f"method,f1,seconds\nsaliency,0.5,{secs}\n")
    assert compare(a, b)[1] == ["differs: attribution_metrics.csv"]
    assert compare(a, b, ignore_columns=("seconds",)) == (1, [])
    (b / "attribution_metrics.csv").write_text("method,f1,seconds\nsaliency,0.6,2.5\n")  # a number changed
    assert compare(a, b, ignore_columns=("seconds",))[1] == ["differs: attribution_metrics.csv"]
