"""Which paths may be opened at all: regular files only.

Why: opening a FIFO blocks until a writer comes (a ``text_path`` to one hung ``run``), and a
device or socket is never a dataset file. ``os.stat`` answers without opening the path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def regular_file_problem(path: str | Path) -> str | None:
    """None for a regular file (symlinks followed); else why not, in words ("not found", "a FIFO ..." )."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    for test, name in _KINDS:
        if test(mode):
            return f"is {name}, not a regular file"
    return "is not a regular file"
