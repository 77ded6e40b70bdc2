"""Helpers shared by test_sql_runner.py and test_migration_lock.py: raw connections and child processes.

The children are real OS processes running `_sql_runner_child.py`, so locks, crashes and races are the
operating system's and the database server's, not a simulation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

TESTS = Path(__file__).parent
CHILD = TESTS / "_sql_runner_child.py"
SRC = TESTS.parent / "src"
CHILD_APPLICATION_NAME = "dbf-test-child"


def sqlite_path(url: str) -> str:
    """The file path inside a `sqlite:///path` URL."""
    return url.removeprefix("sqlite:///")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


@asynccontextmanager
async def raw_connection(url: str, application_name: str = "dbf-test") -> AsyncIterator[Any]:
    """An aiosqlite or asyncpg connection to `url`, closed afterwards."""
    if is_sqlite(url):
        async with aiosqlite.connect(sqlite_path(url)) as connection:
            yield connection
        return
    connection = await asyncpg.connect(url, server_settings={"application_name": application_name})
    try:
        yield connection
    finally:
        await connection.close()


async def fetch_all(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one query on a fresh connection and return its rows as tuples."""
    async with raw_connection(url) as connection:
        if is_sqlite(url):
            return [tuple(row) for row in await connection.execute_fetchall(sql)]
        return [tuple(record) for record in await connection.fetch(sql)]


async def table_names(url: str) -> set[str]:
    """The user tables of the database."""
    if is_sqlite(url):
        rows = await fetch_all(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await fetch_all(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(row[0]) for row in rows}


def write_files(folder: Path, files: dict[str, str]) -> Path:
    """Create `folder` (if needed) holding the given migration files; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def start_child(*args: str) -> subprocess.Popen[bytes]:
    """Start `_sql_runner_child.py` with `args` in a new Python process (dbfoundation importable)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def kill_hard(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child (no cleanup of any kind runs in it) and reap it."""
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)


def read_result(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result
