"""Build and dispose the engines: SQLite writer + reader pools, or the PostgreSQL engine (and replica).

SQLite gets two engines on one file: a writer pool of exactly one connection whose transactions begin
with `BEGIN IMMEDIATE`, and a reader pool whose connections are `query_only` and begin a deferred `BEGIN`
(a consistent snapshot that never upgrades to a write). PostgreSQL gets one engine; reads use it in
read-only transactions, or the replica engine when DATABASE_READ_URL is set.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, PoolProxiedConnection
from sqlalchemy.util.concurrency import await_

from dbfoundation import implicit_transactions, postgres_driver
from dbfoundation.admission import RUN_TURNS
from dbfoundation.errors import DatabaseUnavailable
from dbfoundation.pragmas import PragmaPlan, apply_pragmas
from dbfoundation.settings import DatabaseSettings
from dbfoundation.sqlite_calls import PendingBegin
from dbfoundation.sqlite_driver import OneHopConnection, adapted_dbapi

__all__ = ["BEGIN_LIMITS_KEY", "Engines", "build_engines", "build_migration_engine", "connect_asyncpg"]

# connection.info key: keyword arguments of the PendingBegin of each transaction the checked-out connection
# begins (deadline, busy timeout, the writer's admission hooks); set and removed by TransactionScope.
BEGIN_LIMITS_KEY = "dbf_begin_limits"


@dataclass(frozen=True)
class Engines:
    """The engines one Database owns. On PostgreSQL without a replica, `reader` shares `writer`'s pool."""

    writer: AsyncEngine
    reader: AsyncEngine
    owns_reader: bool
    # Set when `reader` is `writer` with these options: db.read() then checks out from `writer` and sets
    # them on the connection. The same transaction, but an OptionEngine's characteristics are applied by an
    # engine_connect listener, and a listener makes SQLAlchemy dispatch events on every statement the
    # engine runs (7 dispatches per point read).
    reader_options: Mapping[str, Any] | None = None

    def read_checkout(self) -> tuple[AsyncEngine, Mapping[str, Any] | None]:
        """The engine db.read() checks out from and the execution options it sets on the connection."""
        if self.reader_options is None:
            return self.reader, None
        return self.writer, self.reader_options

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.owns_reader:
            await self.reader.dispose()


def _common_options(settings: DatabaseSettings) -> dict[str, Any]:
    # hide_parameters keeps bound values (often personal data) out of error messages and logs; echo
    # is the explicit opt-in that shows them.
    return {"echo": settings.echo, "hide_parameters": not settings.echo}


def _sqlite_engine(
    settings: DatabaseSettings,
    *,
    reader: bool,
    migrations: bool = False,
    deferred: bool = False,
    reads_held_back: Callable[[], bool] | None = None,
) -> AsyncEngine:
    plan = PragmaPlan.from_settings(settings, reader=reader)
    if migrations:
        # Batch migrations copy and drop tables; with foreign keys on, the DROP's implicit DELETE fires
        # ON DELETE CASCADE and empties child tables. The pragma is a no-op inside a transaction, so it is
        # off for the whole connection; each migration runs foreign_key_check before its COMMIT instead.
        # No background checkpointer watches a migration connection, so SQLite checkpoints as usual.
        plan = dataclasses.replace(plan, foreign_keys=False, wal_autocheckpoint=1000)
    pool_options: dict[str, Any] = (
        {"poolclass": NullPool}
        if migrations
        else {
            "poolclass": AsyncAdaptedQueuePool,
            "pool_size": settings.sqlite_readers if reader else RUN_TURNS,  # the writers: see WriteAdmission
            # The Database keeps its connections checked out between transactions (transaction.py), so code
            # that asks an engine for a connection of its own (the health probe, the pytest plugin's outer
            # transaction, an integration) gets one more rather than waiting for the pool timeout.
            "max_overflow": 1,
            "pool_timeout": settings.pool_timeout,
            # Database always ends its transactions itself (commit, or a rollback on every error path, see
            # transaction.TransactionScope), so a rollback-on-return would be a wasted thread hop.
            "pool_reset_on_return": None,
        }
    )
    engine = create_async_engine(
        settings.async_url,
        # The busy timeout must be in force before any PRAGMA runs; connect(timeout=) does that.
        # The writer's statements and a reader's COMMIT may run on the event loop's thread
        # (DATABASE_SQLITE_INLINE_WRITES); a connection is still used by one thread at a time.
        connect_args={
            "timeout": settings.sqlite_busy_timeout,
            "check_same_thread": migrations or not settings.sqlite_inline_writes,
        },
        module=adapted_dbapi(),
        **pool_options,
        **_common_options(settings),
    )
    begin_sql = "BEGIN" if reader or deferred else "BEGIN IMMEDIATE"
    # A reader's COMMIT (query_only: it wrote nothing) only ends its snapshot, which never waits for a lock:
    # it runs on the loop's thread instead of costing a hop (with the writer's inline statements). Its
    # statements run there too up to a budget of VM steps (sqlite_driver._read_inline).
    pool_reader = reader and not migrations and settings.sqlite_inline_writes
    reader_limits: dict[str, Any] = {"inline_commit": pool_reader}
    if pool_reader and settings.sqlite_inline_read_steps > 0:
        reader_limits["inline_read_steps"] = settings.sqlite_inline_read_steps
        reader_limits["busy_timeout_ms"] = round(settings.sqlite_busy_timeout * 1000)
        reader_limits["inline_reads_held_back"] = reads_held_back

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        apply_pragmas(dbapi_connection, plan)

    # BEGIN IMMEDIATE takes the write lock at BEGIN: a deferred BEGIN that later writes can get SQLITE_BUSY
    # however long busy_timeout is (sqlite.org/c3ref/busy_handler.html). The pools of a Database send it
    # with the transaction's first statement (one thread hop saved per transaction); migrations, whose
    # code also talks to the driver directly, send it at once.
    def _do_begin(proxied: PoolProxiedConnection) -> None:
        adapted = proxied.dbapi_connection
        assert isinstance(adapted, OneHopConnection)  # noqa: S101 - the engine's module is adapted_dbapi()
        # .get, not .pop: a block that commits and goes on begins again under the same scope's limits.
        limits = proxied.info.get(BEGIN_LIMITS_KEY) or reader_limits
        adapted.defer_begin(PendingBegin(begin_sql, **limits))
        if migrations:
            await_(adapted.begin_now())

    # The dialect's do_begin (the DBAPI-level BEGIN hook; this engine owns its dialect instance), not a
    # "begin" event: any engine-level listener makes SQLAlchemy dispatch its execute events around every
    # statement, which was 15 % of a point read's instructions (benchmarks/notes/write-tx.md, (11)).
    setattr(engine.sync_engine.dialect, "do_begin", _do_begin)  # noqa: B010 - mypy forbids assigning a method

    return engine


def _postgres_engine(settings: DatabaseSettings, url: Any) -> AsyncEngine:
    engine = create_async_engine(
        url,
        module=postgres_driver.adapted_dbapi(),  # COMMIT of an aborted transaction raises, see there
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_recycle=settings.pool_recycle,
        pool_timeout=settings.pool_timeout,
        isolation_level="READ COMMITTED",
        **_common_options(settings),
    )
    if settings.pool_pre_ping:
        _ping_when_idle(engine)
    # As do_begin on SQLite: the dialect hook, not an execute event (see there). Plain reads sent before
    # the transaction's first other statement go without BEGIN (implicit_transactions).
    setattr(engine.sync_engine.dialect, "do_execute", implicit_transactions.do_execute)  # noqa: B010
    return engine


ALIVE_BYPASS_S = 0.5  # as HikariCP's aliveBypassWindowMs: a connection returned this recently is not pinged
_LAST_USED = "dbf_last_used"
KEPT_SINCE = "dbf_kept_since"  # on a connection kept out of the pool (transaction.py): when it was last used


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pre-ping, but only connections that sat in the pool for ALIVE_BYPASS_S or longer.

    SQLAlchemy's pool_pre_ping pings on every checkout, and asyncpg's ping is three round trips
    (BEGIN, `;`, ROLLBACK), more than the one-row INSERT it guards. Under load a connection comes back
    within milliseconds, and one that just worked is alive; an idle one (after a server restart, a
    failover, an idle-connection timeout) is still tested, and replaced before use if it is dead.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        kept_since = record.info.pop(KEPT_SINCE, None)  # kept idle outside the pool since then
        record.info[_LAST_USED] = time.monotonic() if kept_since is None else kept_since

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_LAST_USED, 0.0) < ALIVE_BYPASS_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool's documented answer to a dead connection: discard it, check out another.
            raise DisconnectionError("pooled connection failed its ping") from exc


def build_migration_engine(settings: DatabaseSettings, *, read_only: bool = False) -> AsyncEngine:
    """A connection-per-use engine for migrations: no pool to outlive them, and on SQLite foreign keys
    off with transactions that begin IMMEDIATE (so DDL is transactional and can be rolled back).

    `read_only` (state checks outside the lock) begins deferred instead, so reading alembic_version never
    queues for the write lock that a running migration holds.
    """
    if settings.backend == "sqlite":
        return _sqlite_engine(settings, reader=False, migrations=True, deferred=read_only)
    return create_async_engine(settings.async_url, poolclass=NullPool, **_common_options(settings))


async def connect_asyncpg(settings: DatabaseSettings, *, application_name: str) -> Any:
    """A plain asyncpg connection (no pool) for work outside SQLAlchemy: migration locks, the SQL runner.

    Raises DatabaseUnavailable naming the masked URL when the server cannot be reached.
    """
    import asyncpg

    dsn = settings.async_url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return await asyncpg.connect(dsn, server_settings={"application_name": application_name})
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            settings.masked_url,
            f"the connection failed ({type(exc).__name__})",
            "Check that the server is running and DATABASE_URL's host, port and database.",
        ) from exc


def build_engines(settings: DatabaseSettings, *, reads_held_back: Callable[[], bool] | None = None) -> Engines:
    """Create (but do not connect) the engines for `settings`; connections open on first use.

    `reads_held_back` (SQLite): while it returns True, read statements go to the reader threads instead of
    running on the loop's thread (see WriteAdmission.waiting_for_lock_file)."""
    if settings.backend == "sqlite":
        return Engines(
            writer=_sqlite_engine(settings, reader=False),
            reader=_sqlite_engine(settings, reader=True, reads_held_back=reads_held_back),
            owns_reader=True,
        )
    writer = _postgres_engine(settings, settings.async_url)
    replica = settings.async_read_url
    if replica is not None:
        return Engines(writer=writer, reader=_postgres_engine(settings, replica), owns_reader=True)
    # Same pool, read-only transactions: a write through db.read() fails fast, as on SQLite.
    read_only = {"postgresql_readonly": True}
    return Engines(
        writer=writer, reader=writer.execution_options(**read_only), owns_reader=False, reader_options=read_only
    )
