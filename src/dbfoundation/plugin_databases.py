"""The pytest plugin's databases: its configuration, and the SQLite files or PostgreSQL databases it creates,
copies (templates) and drops."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sqlite3
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import URL

from dbfoundation.settings import mask_url

__all__ = ["START_HINT", "DatabaseServer", "PluginSettings", "run_private", "worker_id"]

T = TypeVar("T")

START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(or point --dbf-url / DBF_TEST_DATABASE_URL at a running server)"
)


@dataclass(frozen=True)
class PluginSettings:
    """What the options resolved to: the server or SQLite choice, the migrations folder, the app factory."""

    url: URL | None
    """A PostgreSQL server (maintenance database) or a SQLite file; None for a SQLite file in a temp folder."""
    migrations: Path | None
    app_factory: str | None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url is None or self.url.get_backend_name() == "sqlite" else "postgresql"


def run_private(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in a private loop on a worker thread: safe from sync fixtures whatever loop is running."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbf-plugin") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _unreachable(shown_url: str, reason: str) -> None:
    message = f"PostgreSQL at {shown_url} is not reachable ({reason}); {START_HINT}"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)  # CI must not go green by skipping
    pytest.skip(message)


class DatabaseServer:
    """Creates and removes the plugin's databases: files in a temp folder, or databases on a PostgreSQL server."""

    def __init__(self, settings: PluginSettings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        # Unique per process, so two runs (or leftovers of a killed one) on one server never collide.
        self.prefix = f"dbf_{uuid.uuid4().hex[:8]}_{worker_id()}".lower()
        self._counter = itertools.count(1)
        self.session_name: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.settings.backend == "postgresql"

    def _admin_dsn(self) -> str:
        assert self.settings.url is not None  # noqa: S101 - only called for PostgreSQL
        return self.settings.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def url_for(self, name: str) -> str:
        """The plain URL (password included: it is handed to the test) of a database or file named `name`."""
        if self.is_postgres:
            assert self.settings.url is not None  # noqa: S101 - PostgreSQL always has a URL
            return self.settings.url.set(database=name).render_as_string(hide_password=False)
        return f"sqlite+aiosqlite:///{self._sqlite_file(name)}"

    def _sqlite_file(self, name: str) -> Path:
        return self.folder / name / "app.db"

    def probe(self) -> None:
        """Skip (or fail under CI=true) when the PostgreSQL server does not answer."""
        if not self.is_postgres:
            return
        import asyncpg

        async def connect() -> str | None:
            try:
                connection = await asyncpg.connect(self._admin_dsn(), timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                return type(exc).__name__
            await connection.close()
            return None

        assert self.settings.url is not None  # noqa: S101 - PostgreSQL always has a URL
        reason = run_private(connect())
        if reason is not None:
            _unreachable(mask_url(self.settings.url), reason)

    def new_name(self, kind: str) -> str:
        return f"{self.prefix}_{kind}{next(self._counter)}"

    def create(self, name: str, *, template: str | None = None) -> str:
        """Create an empty database (or a copy of `template`) and return its URL."""
        if not self.is_postgres:
            target = self._sqlite_file(name)
            target.parent.mkdir(parents=True)
            if template is not None:
                _copy_sqlite(self._sqlite_file(template), target)
            return self.url_for(name)
        # template0 is empty by definition (template1 may hold whatever an admin added); a template
        # database must have no open connections, which the plugin guarantees for its session database.
        source = template or "template0"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return self.url_for(name)

    def drop(self, name: str) -> None:
        if not self.is_postgres:
            shutil.rmtree(self._sqlite_file(name).parent, ignore_errors=True)
            return
        # FORCE ends connections a test left open (PostgreSQL 13+), so the drop never waits on them.
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import asyncpg

        async def execute() -> None:
            connection = await asyncpg.connect(self._admin_dsn(), timeout=10)
            try:
                await connection.execute(statement)
            finally:
                await connection.close()

        run_private(execute())


def _copy_sqlite(source: Path, target: Path) -> None:
    """Copy a SQLite database with the backup API: consistent even with its WAL not yet checkpointed."""
    source_connection = sqlite3.connect(source)
    try:
        target_connection = sqlite3.connect(target)
        try:
            source_connection.backup(target_connection)
        finally:
            target_connection.close()
    finally:
        source_connection.close()
