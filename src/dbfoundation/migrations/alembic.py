"""Alembic under dbfoundation: the few-line env.py helper, and running commands under the migration lock.

A project's env.py is:

    from dbfoundation.migrations.alembic import run_migrations
    from myapp.models import Base

    run_migrations(Base.metadata)

It works in three ways: from `await db.migrate()` / `dbf upgrade` (we hand env.py a connection that is
already under the migration lock), from the plain `alembic` command (env.py builds the engine from
DatabaseSettings, takes the lock itself and runs the loop), and offline (`alembic upgrade --sql`).

Every migration runs in its own transaction. On SQLite that transaction is real, DDL included, because
our connections emit BEGIN themselves (Alembic assumes pysqlite cannot, and so would leave a failed
migration half-applied with a stray `_alembic_tmp_*` table); foreign keys are off on the migration
connection so a batch table copy cannot cascade-delete child rows, and `PRAGMA foreign_key_check` runs
before each COMMIT instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from dbfoundation.driver_errors import translate
from dbfoundation.engine import build_migration_engine
from dbfoundation.errors import ConfigurationError, DatabaseUnavailable, MigrationError
from dbfoundation.migrations.lock import postgres_migration_lock, sqlite_migration_lock
from dbfoundation.pragmas import set_journal_mode_once
from dbfoundation.settings import DatabaseSettings

__all__ = ["alembic_config", "locked_connection", "run_alembic", "run_migrations"]

T = TypeVar("T")
_LOCKED = "dbfoundation_locked"
# Alembic keeps the running environment in module globals (alembic.context, alembic.op), so two
# commands in two threads of one process would overwrite each other's: KeyError: 'script'.
_ALEMBIC_GLOBALS = threading.Lock()


def alembic_config(settings: DatabaseSettings, *, migrations_path: str | Path | None = None) -> Config:
    """An Alembic Config for the migrations folder, built in code (no alembic.ini needed).

    Raises ConfigurationError naming DATABASE_MIGRATIONS_PATH when the folder has no env.py.
    """
    folder = Path(migrations_path if migrations_path is not None else settings.migrations_path)
    if not (folder / "env.py").is_file():
        problem = "the folder does not exist" if not folder.exists() else "the folder has no env.py"
        raise ConfigurationError(
            "DATABASE_MIGRATIONS_PATH",
            str(folder),
            f"{problem}; run 'dbf init' to create it, or point the variable at your migrations folder.",
        )
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.attributes["dbfoundation_settings"] = settings
    return config


def script_heads(config: Config) -> tuple[str, ...]:
    return tuple(sorted(ScriptDirectory.from_config(config).get_heads()))


def _configure_kwargs(connection: Connection | None, dialect_name: str) -> dict[str, Any]:
    sqlite = dialect_name == "sqlite"
    kwargs: dict[str, Any] = {
        "compare_type": True,
        "compare_server_default": True,
        "render_as_batch": sqlite,
        "transaction_per_migration": True,
        # Our SQLite connections BEGIN themselves, so DDL rolls back like any other statement.
        "transactional_ddl": True,
    }
    if sqlite and connection is not None:
        kwargs["on_version_apply"] = _check_foreign_keys
    return kwargs


def _check_foreign_keys(*, ctx: MigrationContext, step: Any, **_: Any) -> None:
    # Runs inside the migration's transaction, after its DDL and version update and before its COMMIT.
    assert ctx.connection is not None  # noqa: S101 - online migrations always have a connection
    problems = ctx.connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    if problems:
        shown = ", ".join(f"{row[0]} row {row[1]} -> {row[2]}" for row in problems[:5])
        raise MigrationError(
            f"migration {step.up_revision_id or step.down_revision_ids} would leave rows pointing at missing "
            f"parents ({shown}{', …' if len(problems) > 5 else ''}); it was rolled back. Fix the data in the "
            "migration, then run it again."
        )


def run_migrations(target_metadata: MetaData | list[MetaData] | None, **configure: Any) -> None:
    """Run the migrations of the current Alembic command; call this from env.py, passing your metadata.

    Extra keywords go to `context.configure` (e.g. `include_object`). Settings come from the
    environment (DATABASE_*), or from the caller that invoked the command programmatically.
    """
    config = context.config
    settings: DatabaseSettings = config.attributes.get("dbfoundation_settings") or DatabaseSettings()
    connection: Connection | None = config.attributes.get("connection")
    if context.is_offline_mode():
        url = settings.async_url
        context.configure(
            url=url,
            target_metadata=target_metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            **{**_configure_kwargs(None, url.get_backend_name()), **configure},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    if connection is not None:
        _run_on(connection, target_metadata, configure)
        return
    # The plain `alembic` command: no loop is running here, so this is the one place asyncio.run is right.
    asyncio.run(_run_from_alembic_cli(settings, target_metadata, configure))


def _run_on(connection: Connection, target_metadata: Any, configure: dict[str, Any]) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        **{**_configure_kwargs(connection, connection.dialect.name), **configure},
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_alembic_cli(settings: DatabaseSettings, target_metadata: Any, configure: dict[str, Any]) -> None:
    async with locked_connection(settings) as connection:
        await connection.run_sync(_run_on, target_metadata, configure)


@contextlib.asynccontextmanager
async def locked_connection(settings: DatabaseSettings, *, lock: bool = True) -> AsyncIterator[AsyncConnection]:
    """A fresh migration connection (not in a transaction), held under the migration lock if `lock`.

    PostgreSQL: the session advisory lock is taken on a second, dedicated asyncpg connection, so the
    migration connection stays untouched and Alembic still commits its DDL (a lock query on it would
    autobegin a transaction that Alembic then treats as the caller's and never commits).
    """
    if settings.backend == "sqlite":
        # Same preparation as Database.start(): the folder, and WAL set once with retry.
        await asyncio.to_thread(
            set_journal_mode_once,
            settings.sqlite_path,
            settings.sqlite_journal_mode.lower(),
            settings.sqlite_busy_timeout,
        )
    engine = build_migration_engine(settings)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if lock:
                await stack.enter_async_context(_migration_lock(settings))
            try:
                connection = await stack.enter_async_context(engine.connect())
            except Exception as exc:
                raise (translate(exc, where=settings.masked_url) or exc) from exc
            yield connection
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _migration_lock(settings: DatabaseSettings) -> AsyncIterator[None]:
    timeout_s = settings.migration_lock_timeout
    if settings.backend == "sqlite":
        async with sqlite_migration_lock(settings.sqlite_path, timeout_s=timeout_s):
            yield
        return
    import asyncpg  # PostgreSQL only

    dsn = settings.async_url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        lock_connection = await asyncpg.connect(dsn, server_settings={"application_name": "dbfoundation-migrate"})
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            settings.masked_url,
            f"the connection for the migration lock failed ({type(exc).__name__})",
            "Check that the server is running and DATABASE_URL's host, port and database.",
        ) from exc
    try:
        async with postgres_migration_lock(lock_connection, timeout_s=timeout_s):
            yield
    finally:
        await lock_connection.close()


async def run_alembic(
    settings: DatabaseSettings,
    config: Config,
    command: Callable[..., T],
    *args: Any,
    lock: bool = True,
    **kwargs: Any,
) -> T:
    """Run an `alembic.command` function on a migration connection from a running event loop.

    The command runs in SQLAlchemy's greenlet bridge (`run_sync`), so no second event loop is needed and
    `asyncio.run() cannot be called from a running event loop` cannot happen.
    """
    async with locked_connection(settings, lock=lock) as connection:
        # A worker thread takes the process-wide lock, so waiting for it never blocks this loop.
        await asyncio.to_thread(_ALEMBIC_GLOBALS.acquire)
        try:
            return await connection.run_sync(_call_with_connection, config, command, args, kwargs)
        finally:
            _ALEMBIC_GLOBALS.release()


def _call_with_connection(
    connection: Connection, config: Config, command: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    config.attributes["connection"] = connection
    try:
        return command(config, *args, **kwargs)
    finally:
        config.attributes.pop("connection", None)


def current_heads(connection: Connection) -> tuple[str, ...]:
    """The revisions the database is at (read-only; no lock, no transaction left open)."""
    heads = MigrationContext.configure(connection).get_current_heads()
    return tuple(sorted(heads))
