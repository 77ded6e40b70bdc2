"""Migrations: Alembic under a migration lock, and a plain-SQL runner for projects without models.

The functions here are what `dbf` and `Database.migrate()` call. They take the settings (a started
Database is not needed: migrations use their own short-lived connections) and run from a running loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import render_python_code
from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.util.exc import CommandError

from dbfoundation.engine import connect_asyncpg
from dbfoundation.errors import MigrationError, MultipleHeadsError
from dbfoundation.migrations.alembic import alembic_config, current_heads, locked_connection, run_alembic, script_heads
from dbfoundation.pragmas import prepare_sqlite_file
from dbfoundation.settings import DatabaseSettings

__all__ = [
    "MigrationState",
    "check",
    "current",
    "downgrade",
    "history",
    "migration_state",
    "revision",
    "sql_connection",
    "upgrade",
]


@dataclass(frozen=True)
class MigrationState:
    """Where the database stands against the migration scripts."""

    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def is_at_head(self) -> bool:
        return set(self.current) == set(self.heads)

    @property
    def is_behind(self) -> bool:
        """Some script head is not applied (includes an empty database)."""
        return not self.is_at_head and not self.is_ahead

    @property
    def is_ahead(self) -> bool:
        """The database is at a revision these scripts do not know (an older release during a deploy)."""
        return bool(self.current) and not set(self.current) <= self.known

    known: frozenset[str] = frozenset()
    """Every revision in the scripts (to tell "ahead" from "behind")."""


def _settings(target: Any) -> DatabaseSettings:
    return target if isinstance(target, DatabaseSettings) else target.settings


async def migration_state(target: Any, *, migrations_path: str | Path | None = None) -> MigrationState | None:
    """The database's revisions beside the scripts' heads, or None when the project has no migrations.

    Read-only and lock-free: it is the fast path of upgrade() and what readiness probes report.
    `target` is a DatabaseSettings or a Database.
    """
    settings = _settings(target)
    try:
        config = alembic_config(settings, migrations_path=migrations_path)
    except MigrationError:
        return None
    except ValueError:  # ConfigurationError: no migrations folder → nothing to report
        return None
    from alembic.script import ScriptDirectory  # keeps import time of this module small

    script = ScriptDirectory.from_config(config)
    known = frozenset(rev.revision for rev in script.walk_revisions())
    async with locked_connection(settings, lock=False) as connection:
        current = await connection.run_sync(current_heads)
    return MigrationState(current=current, heads=script_heads(config), known=known)


async def upgrade(target: Any, revision: str = "head", *, migrations_path: str | Path | None = None) -> bool:
    """Upgrade to `revision` under the migration lock; returns False when it was already there.

    Already at head: returns at once without taking the lock (N replicas starting together do not queue).
    Raises MultipleHeadsError when "head" is ambiguous, MigrationLockTimeout past
    DATABASE_MIGRATION_LOCK_TIMEOUT, ConfigurationError when the migrations folder is missing.
    """
    settings = _settings(target)
    config = alembic_config(settings, migrations_path=migrations_path)
    heads = script_heads(config)
    if revision == "head" and len(heads) > 1:
        raise MultipleHeadsError(heads)
    if revision == "head":
        state = await migration_state(settings, migrations_path=migrations_path)
        if state is not None and state.is_at_head:
            return False
    return await run_alembic(settings, config, _upgrade_if_behind, revision)


def _upgrade_if_behind(config: Config, revision: str) -> bool:
    """Upgrade under the lock; False when another replica got there first (nothing ran here)."""
    connection = config.attributes["connection"]
    before = current_heads(connection)
    # Reading autobegan a transaction; end it, or Alembic would take it for the caller's and never commit.
    connection.commit()
    command.upgrade(config, revision)
    return current_heads(connection) != before


async def downgrade(target: Any, revision: str, *, migrations_path: str | Path | None = None) -> None:
    """Downgrade to `revision` (e.g. "-1" or "base") under the migration lock."""
    settings = _settings(target)
    config = alembic_config(settings, migrations_path=migrations_path)
    await run_alembic(settings, config, command.downgrade, revision)


async def current(target: Any, *, migrations_path: str | Path | None = None) -> tuple[str, ...]:
    """The revisions the database is at (empty for a database never migrated)."""
    state = await migration_state(target, migrations_path=migrations_path)
    if state is None:
        alembic_config(_settings(target), migrations_path=migrations_path)  # raises the folder error
    assert state is not None  # noqa: S101 - alembic_config raised otherwise
    return state.current


def history(target: Any, *, migrations_path: str | Path | None = None) -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message) from newest to oldest; reads files only."""
    from alembic.script import ScriptDirectory

    config = alembic_config(_settings(target), migrations_path=migrations_path)
    result = []
    for script in ScriptDirectory.from_config(config).walk_revisions():
        down = script.down_revision
        shown_down = ", ".join(down) if isinstance(down, tuple | list) else down
        result.append((script.revision, shown_down, script.doc or ""))
    return result


async def check(target: Any, *, migrations_path: str | Path | None = None) -> str | None:
    """Compare the models with the migrations; return the would-be migration as Python code, or None.

    The database must be at head first (autogenerate compares against it); otherwise MigrationError
    says to upgrade first. Uses compare_type and compare_server_default.
    """
    settings = _settings(target)
    config = alembic_config(settings, migrations_path=migrations_path)
    state = await migration_state(settings, migrations_path=migrations_path)
    if state is not None and not state.is_at_head:
        raise MigrationError(
            f"the database is at {', '.join(state.current) or 'no revision'} but the scripts' head is "
            f"{', '.join(state.heads)}; upgrade first (dbf upgrade), then check again."
        )
    captured: list[MigrationScript] = []

    def capture(_context: Any, _revision: Any, directives: list[MigrationScript]) -> None:
        captured.extend(directives)
        directives[:] = []  # never write a file

    try:
        await run_alembic(
            settings, config, command.revision, autogenerate=True, process_revision_directives=capture, lock=False
        )
    except CommandError as exc:
        raise MigrationError(f"cannot compare models with migrations: {exc}") from exc
    if not captured or not captured[0].upgrade_ops or captured[0].upgrade_ops.is_empty():
        return None
    return render_python_code(captured[0].upgrade_ops, render_as_batch=settings.backend == "sqlite")


async def revision(
    target: Any, message: str, *, autogenerate: bool = False, migrations_path: str | Path | None = None
) -> str:
    """Write a new revision file (autogenerated from the models if asked); return its path."""
    settings = _settings(target)
    config = alembic_config(settings, migrations_path=migrations_path)
    if autogenerate:
        state = await migration_state(settings, migrations_path=migrations_path)
        if state is not None and not state.is_at_head:
            raise MigrationError("the database is not at head; run 'dbf upgrade' before --autogenerate.")
        script = await run_alembic(settings, config, command.revision, message=message, autogenerate=True, lock=False)
    else:
        script = command.revision(config, message=message)
    scripts = script if isinstance(script, list) else [script]
    return ", ".join(s.path for s in scripts if s is not None)


@contextlib.asynccontextmanager
async def sql_connection(target: Any) -> AsyncIterator[Any]:
    """A raw driver connection for the plain-SQL runner: aiosqlite (foreign keys on, WAL) or asyncpg."""
    settings = _settings(target)
    if settings.backend == "sqlite":
        import aiosqlite

        await prepare_sqlite_file(settings)
        connection = await aiosqlite.connect(settings.sqlite_path, timeout=settings.sqlite_busy_timeout)
        try:
            connection.row_factory = aiosqlite.Row
            await connection.execute(f"PRAGMA foreign_keys = {'ON' if settings.sqlite_foreign_keys else 'OFF'}")
            yield connection
        finally:
            await connection.close()
        return
    connection = await connect_asyncpg(settings, application_name="dbfoundation-sql-migrations")
    try:
        yield connection
    finally:
        await connection.close()
