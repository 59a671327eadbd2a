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
