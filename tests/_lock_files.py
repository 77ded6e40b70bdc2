"""The SQLite write lock file as another process sees it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_file_is_free(path: Path) -> bool:
    """Whether another open file description can take the write lock file of database `path` right now."""
    fd = os.open(f"{path}-writelock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
