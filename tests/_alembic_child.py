"""A child process for the Alembic migration tests: runs `upgrade`, or holds the migration lock.

    python _alembic_child.py upgrade URL FOLDER RESULT_FILE [BARRIER_DIR INDEX]
    python _alembic_child.py hold-lock URL READY_FILE

upgrade (after meeting the other children at BARRIER_DIR, if given) runs
`dbfoundation.migrations.upgrade` with a 60 s lock timeout, then reads the migration state, and writes
a JSON result: {"upgraded", "current", "heads", "started", "finished", "pid"} or {"error"}.
hold-lock takes the migration lock the way upgrade does (a file lock on SQLite; a session advisory lock
on a dedicated connection named dbf-alembic-child on PostgreSQL), creates READY_FILE and sleeps until
it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import asyncpg

from dbfoundation import DatabaseSettings
from dbfoundation.migrations import migration_state, upgrade
from dbfoundation.migrations.lock import postgres_migration_lock, sqlite_migration_lock

APPLICATION_NAME = "dbf-alembic-child"


def meet(directory: Path, index: str) -> None:
    """Say this child is ready, then wait for the parent's go, so all children start together."""
    (directory / f"ready-{index}").touch()
    while not (directory / "go").exists():
        time.sleep(0.002)


async def run_upgrade(url: str, folder: str, result_file: Path, barrier: tuple[Path, str] | None) -> int:
    settings = DatabaseSettings(url=url, migrations_path=folder, migration_lock_timeout=60)
    if barrier is not None:
        await asyncio.to_thread(meet, *barrier)
    started = time.time()
    try:
        upgraded = await upgrade(settings)
        state = await migration_state(settings)
    except Exception as exc:  # reported to the parent, which asserts on the text
        result = {"error": f"{type(exc).__name__}: {exc}", "started": started, "finished": time.time()}
        await asyncio.to_thread(result_file.write_text, json.dumps(result))
        return 1
    assert state is not None
    result = {
        "upgraded": upgraded,
        "current": list(state.current),
        "heads": list(state.heads),
        "started": started,
        "finished": time.time(),
    }
    await asyncio.to_thread(result_file.write_text, json.dumps(result))
    return 0


async def hold_lock(url: str, ready: Path) -> None:
    if url.startswith("sqlite:"):
        async with sqlite_migration_lock(url.removeprefix("sqlite:///"), timeout_s=10):
            await asyncio.to_thread(ready.touch)
            await asyncio.sleep(3600)
        return
    connection = await asyncpg.connect(url, server_settings={"application_name": APPLICATION_NAME})
    async with postgres_migration_lock(connection, timeout_s=10):
        await asyncio.to_thread(ready.touch)
        await asyncio.sleep(3600)


def main(argv: list[str]) -> int:
    mode, url, *rest = argv
    if mode == "upgrade":
        folder, result_file, *barrier = rest
        meeting = (Path(barrier[0]), barrier[1]) if barrier else None
        return asyncio.run(run_upgrade(url, folder, Path(result_file), meeting))
    if mode == "hold-lock":
        asyncio.run(hold_lock(url, Path(rest[0])))
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
