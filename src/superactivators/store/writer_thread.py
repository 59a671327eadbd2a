"""Store writes overlapped with the next forward pass: a :class:`StoreWriter` run on one thread.

:class:`WriteBehind` wraps a :class:`~superactivators.store.tokens.StoreWriter` and takes the
same calls (``add``, ``flush``, ``close``), in the same order, but ``add`` only queues the batch:
one writer thread converts it to store precision, writes and checksums the shard files and
accumulates the train sums while the caller runs the next batch through the model (NumPy casts,
file writes, ``fsync`` and CRC-32 release the GIL). Why: on a small model those writes were
~15 % of the embed stage, on the critical path.

- The store is the one the serial writer writes, byte for byte: the thread is the only one
  that touches the writer until ``flush`` / ``close`` wait for it, and it takes the calls in
  order; it stays resumable the same way (shards are listed once complete).
- Memory: the queue holds at most ``max_bytes`` of pending token states (one batch always
  passes), so the caller waits rather than piling up windows.
- An error in the thread (non-finite states, a full disk) is raised to the caller, as the same
  exception, at its next call; the batches queued after it are dropped (the store then resumes
  from its last complete shard).
- ``threaded=False`` runs every call at once, in the caller's thread (the serial reference).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

import numpy as np

from .tokens import StoreWriter, TokenStore

MAX_PENDING_BYTES = 512 << 20  # token states queued at most (one batch always passes)


def _nbytes(args: tuple, kwargs: dict) -> int:
    """Bytes of the token arrays in an ``add`` call's arguments (its first dict)."""
    tokens = args[0] if args else kwargs.get("tokens", {})
    return int(sum(np.asarray(x).nbytes for x in tokens.values())) if isinstance(tokens, dict) else 0


class WriteBehind:
    """A :class:`StoreWriter` whose ``add`` calls run on one background thread, in order."""

    def __init__(self, writer: StoreWriter, threaded: bool = True, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.writer = writer
        self.threaded = threaded
        self.max_bytes = max_bytes
        self._jobs: deque[tuple[Callable[..., Any], tuple, dict, int]] = deque()
        self._pending = 0  # bytes queued or being written
        self._busy = False  # the thread is running a job
        self._error: BaseException | None = None
        self._stop = False
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- what StoreWriter offers ----------------------------------------------------------
    @property
    def info(self):
        """The writer's manifest record (read it only with no write pending: :meth:`wait` first)."""
        return self.writer.info

    @property
    def next_sample(self) -> int:
        """First sample not yet in a completed shard, once the pending writes are done."""
        self.wait()
        return self.writer.next_sample

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Queue one :meth:`StoreWriter.add` (its arrays must not change afterwards)."""
        self.call(StoreWriter.add, *args, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(writer, *args, **kwargs)`` after the calls already queued (state the writer owns,
        such as its manifest record, is changed this way, never from the caller's thread)."""
        if not self.threaded:
            fn(self.writer, *args, **kwargs)
            return
        size = _nbytes(args, kwargs) if fn is StoreWriter.add else 0
        with self._cv:
            self._raise_pending()
            self._cv.wait_for(lambda: self._error is not None or self._pending == 0
                              or self._pending + size <= self.max_bytes)
            self._raise_pending()
            self._jobs.append((fn, args, kwargs, size))
            self._pending += size
            self._cv.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        """Until every queued call has run; raises the thread's error, if any."""
        if self._thread is None:
            self._raise_pending()
            return
        with self._cv:
            self._cv.wait_for(lambda: (not self._jobs and not self._busy) or self._error is not None)
            self._raise_pending()

    def flush(self) -> None:
        self.wait()
        self.writer.flush()

    def close(self) -> TokenStore:
        """Wait for the queued writes, stop the thread, then close the store (norm statistics, complete)."""
        try:
            self.wait()
        finally:
            self.stop()
        return self.writer.close()

    def stop(self) -> None:
        """End the thread (after the calls queued so far, or at once after an error); no error is raised."""
        if self._thread is None:
            return
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()
        self._thread = None

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- the thread ---------------------------------------------------------------------------
    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._jobs or self._stop)
                if self._error is not None or not self._jobs:  # an error drops the rest; stop once drained
                    self._jobs.clear()
                    self._pending = 0
                    self._cv.notify_all()
                    if self._stop:
                        return
                    continue
                fn, args, kwargs, size = self._jobs.popleft()
                self._busy = True
            try:
                fn(self.writer, *args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                with self._cv:
                    self._error = err
            finally:
                with self._cv:
                    self._busy = False
                    self._pending -= size
                    self._cv.notify_all()
