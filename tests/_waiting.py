"""Waiting for child processes in tests: poll a condition, or a file a child writes, with a bounded wait."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_file(path: Path, child: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Wait until the child creates `path`; fail with the child's stderr if it exits first."""

    def ready() -> bool:
        if child.poll() is not None:
            _, stderr = child.communicate()
            raise AssertionError(f"child exited with {child.returncode} before {path.name}:\n{stderr.decode()}")
        return path.exists()

    await wait_until(ready, f"{path.name} from pid {child.pid}", timeout_s)
