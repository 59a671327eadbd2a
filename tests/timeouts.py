"""A hang is a test failure, not a stuck suite: ``with deadline(20): ...``."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def deadline(seconds: int):
    """Raise ``TimeoutError`` if the block runs past ``seconds`` (a FIFO opened for reading blocks
    until a writer comes; a fuzzed input must never hang)."""
    def _boom(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
