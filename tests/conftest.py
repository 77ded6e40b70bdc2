"""Shared fixtures: real SQLite files under tmp_path and real PostgreSQL databases made per test.

PostgreSQL is found at DBF_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
When it cannot be reached a test skips with how to start it; under CI=true the same text fails the test,
because CI may never go green by skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

POSTGRES_ADMIN_URL = os.environ.get("DBF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")
START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(or point DBF_TEST_POSTGRES_URL at a server)"
)

_reachable: bool | None = None


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside an async test (on its own thread)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _postgres_reachable() -> bool:
    global _reachable
    if _reachable is None:

        async def probe() -> bool:
            try:
                conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                return False
            await conn.close()
            return True

        _reachable = _run(probe())
    return _reachable


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) the calling test when PostgreSQL is not reachable."""
    if _postgres_reachable():
        return
    message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable; {START_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _admin_url_for(database: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def create_postgres_database() -> str:
    """Create an empty database and return its plain postgresql:// URL."""
    name = f"dbf_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(create())
    return _admin_url_for(name)


def drop_postgres_database(url: str) -> None:
    name = url.rpartition("/")[2]

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(drop())


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (plain postgresql:// URL), dropped afterwards."""
    require_postgres()
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in this test's own temporary folder (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on a real SQLite file and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    require_postgres()
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)
