"""A child process for the migration tests: holds the migration lock, or runs the SQL runner.

    python _sql_runner_child.py hold-lock URL READY_FILE
    python _sql_runner_child.py upgrade URL FOLDER RESULT_FILE [BARRIER_DIR INDEX] [--pause SIGNAL_FILE]

hold-lock takes the migration lock, creates READY_FILE and sleeps until it is killed. upgrade (after
meeting the others at BARRIER_DIR, if given) runs `sql_runner.upgrade` and writes a JSON result. With
--pause, the SQLite function `dbf_test_pause()` creates SIGNAL_FILE and sleeps, so a test can SIGKILL
the process in the middle of a migration file; without it the function does nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from dbfoundation.migrations import sql_runner
from dbfoundation.migrations.lock import postgres_migration_lock, sqlite_migration_lock

APPLICATION_NAME = "dbf-test-child"


async def connect(url: str, pause_signal: Path | None) -> Any:
    if url.startswith("sqlite:"):
        connection = await aiosqlite.connect(url.removeprefix("sqlite:///"), timeout=60)

        def pause() -> None:
            if pause_signal is not None:
                pause_signal.touch()
                time.sleep(3600)

        await connection.create_function("dbf_test_pause", 0, pause)
        return connection
    # client_connection_check_interval makes the server notice our SIGKILL during pg_sleep at once,
    # instead of when the sleep ends.
    settings = {"application_name": APPLICATION_NAME, "client_connection_check_interval": "100ms"}
    return await asyncpg.connect(url, server_settings=settings)


async def hold_lock(url: str, ready: Path) -> None:
    if url.startswith("sqlite:"):
        async with sqlite_migration_lock(url.removeprefix("sqlite:///"), timeout_s=10):
            await asyncio.to_thread(ready.touch)
            await asyncio.sleep(3600)
        return
    connection = await connect(url, None)
    async with postgres_migration_lock(connection, timeout_s=10):
        await asyncio.to_thread(ready.touch)
        await asyncio.sleep(3600)


def meet(directory: Path, index: str) -> None:
    """Say this child is ready, then wait for the parent's go, so all children start together."""
    (directory / f"ready-{index}").touch()
    while not (directory / "go").exists():
        time.sleep(0.002)


async def upgrade(
    url: str, folder: str, result_file: Path, barrier: tuple[Path, str] | None, pause: Path | None
) -> int:
    connection = await connect(url, pause)
    try:
        if barrier is not None:
            await asyncio.to_thread(meet, *barrier)
        started = time.time()
        try:
            applied = await sql_runner.upgrade(connection, folder, lock_timeout_s=60)
        except Exception as exc:  # reported to the parent, which asserts on the text
            result = {"error": f"{type(exc).__name__}: {exc}", "started": started, "finished": time.time()}
            await asyncio.to_thread(result_file.write_text, json.dumps(result))
            return 1
        result = {"applied": applied, "started": started, "finished": time.time()}
        await asyncio.to_thread(result_file.write_text, json.dumps(result))
        return 0
    finally:
        await connection.close()


def main(argv: list[str]) -> int:
    pause = None
    if "--pause" in argv:
        at = argv.index("--pause")
        pause = Path(argv[at + 1])
        del argv[at : at + 2]
    mode, url, *rest = argv
    if mode == "hold-lock":
        asyncio.run(hold_lock(url, Path(rest[0])))
        return 0
    folder, result_file, *barrier = rest
    barrier_args = (Path(barrier[0]), barrier[1]) if barrier else None
    return asyncio.run(upgrade(url, folder, Path(result_file), barrier_args, pause))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
