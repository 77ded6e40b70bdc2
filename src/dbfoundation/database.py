"""Database: the lifecycle (start/stop) and the units of work read(), write(), connection(), raw(), submit()."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import Executable

from dbfoundation.admission import WAIT_IN_LINE, PoolGate, WriteAdmission
from dbfoundation.batching import GroupCommitter
from dbfoundation.checkpoint import Checkpointer
from dbfoundation.driver_errors import translate
from dbfoundation.engine import ALIVE_BYPASS_S, Engines, build_engines
from dbfoundation.errors import DatabaseUnavailable, SessionStateError, WriteTimeout
from dbfoundation.joined import JoinedTransaction
from dbfoundation.pragmas import prepare_sqlite_file
from dbfoundation.session import run_to_completion
from dbfoundation.settings import DatabaseSettings
from dbfoundation.sqlite_driver import OneHopConnection
from dbfoundation.transaction import TransactionScope, typed_error

if TYPE_CHECKING:
    from dbfoundation.health import HealthReport

__all__ = ["Database"]

T = TypeVar("T")
logger = logging.getLogger("dbfoundation")
State = Literal["new", "started", "stopped"]


class Database:
    """One database for one process: engines, pools, write admission and group commit.

    Create it explicitly (never at import time: connections must not cross a fork()), start it in the
    app's lifespan (`async with db:` or `await db.start()`), stop it once. On SQLite writes are
    serialised across tasks, threads and processes and never surface `database is locked`; on
    PostgreSQL the same calls run on one pooled engine.
    """

    def __init__(self, settings: DatabaseSettings | None = None) -> None:
        self.settings = settings if settings is not None else DatabaseSettings()
        self._state: State = "new"
        self._engines: Engines | None = None
        self._admission: WriteAdmission | None = None
        self._pool_gate: PoolGate | None = None  # PostgreSQL: the writer's pool
        self._read_gate: PoolGate | None = None  # the pool db.read() uses (the same gate when shared)
        self._committer = GroupCommitter(self._batch_transaction)
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoints: Checkpointer | None = None
        self._start_lock: asyncio.Lock | None = None
        self._joined: JoinedTransaction | None = None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Database:
        """A Database for `url`; other settings from keywords, then the environment, then defaults."""
        return cls(DatabaseSettings(url=url, **overrides))

    def __repr__(self) -> str:
        return f"Database({self.settings.masked_url!r}, state={self._state!r})"

    @property
    def state(self) -> State:
        return self._state

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return self.settings.backend

    @property
    def engines(self) -> Engines:
        """The engines (writer, reader); for integrations such as migrations and health checks."""
        return self._require_started("db.engines")

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, *, require_database: bool = True) -> None:
        """Create the folder and set WAL (SQLite), open the pools and check the database answers.

        Calling it again while started does nothing. Raises DatabaseUnavailable if the database cannot
        be reached, ConfigurationError if SQLite does not accept the PRAGMAs. With
        `require_database=False` an unreachable database is logged instead: the Database starts
        degraded, calls fail with DatabaseUnavailable until the database answers again, and the pools
        reconnect on their own (no restart needed).
        """
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._state == "started":
                return
            if self._state == "stopped":
                raise SessionStateError("db.start()", "stopped", "Create a new Database to start again.")
            settings = self.settings
            if settings.backend == "sqlite":
                await prepare_sqlite_file(settings)
                self._admission = WriteAdmission(settings.sqlite_path, use_lock_file=settings.sqlite_lock_file)
                self._read_gate = self._gate_of(
                    settings.sqlite_readers,
                    yield_first=settings.sqlite_inline_writes and settings.sqlite_inline_read_steps > 0,
                    keep=True,
                )
            else:
                # Writes keep their connection checked out for the next one (no pool checkout and checkin:
                # 8 % of a one-row ORM insert's instructions), leaving at least one in the pool; reads do
                # not (their read-only option belongs to one checkout) and give one back if the pool is dry.
                self._pool_gate = self._gate_of(
                    settings.pool_size + settings.max_overflow,
                    keep=True,
                    keep_limit=settings.pool_size - 1,
                    max_idle_s=ALIVE_BYPASS_S if settings.pool_pre_ping else None,
                )
                replica = settings.async_read_url is not None
                self._read_gate = (
                    self._gate_of(settings.pool_size + settings.max_overflow) if replica else self._pool_gate
                )
            admission = self._admission
            engines = build_engines(
                settings, reads_held_back=None if admission is None else admission.waiting_for_lock_file
            )
            try:
                await self._check_reachable(engines)
            except DatabaseUnavailable as exc:
                if require_database:
                    await engines.dispose()
                    self._close_admission()
                    raise
                logger.warning("database unreachable at start, serving degraded: %s", exc)
            except BaseException:
                await engines.dispose()
                self._close_admission()
                raise
            self._engines = engines
            self._state = "started"
            if settings.backend == "sqlite" and settings.sqlite_checkpoint_interval > 0:
                self._checkpoints = Checkpointer(
                    settings.sqlite_path,
                    truncate_every_s=settings.sqlite_checkpoint_interval,
                    size_limit=settings.sqlite_journal_size_limit,
                    truncate_in_write_slot=self._truncate_wal,
                )
                self._checkpointer = asyncio.create_task(self._checkpoints.run(), name="dbfoundation-checkpoint")
            logger.info("database started: %s", settings.masked_url)

    async def stop(self) -> None:
        """Finish queued submits, run PRAGMA optimize (SQLite), close every connection. Idempotent."""
        if self._state != "started" or self._engines is None:
            self._state = "stopped" if self._state == "new" else self._state
            return
        await self._committer.close()
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        if self._checkpoints is not None:
            await asyncio.to_thread(self._checkpoints.close)  # waits for a checkpoint still running
        if self.backend == "sqlite":
            with contextlib.suppress(Exception):  # optimize is advice to the planner; never fail a stop on it
                async with self._write_connection(timeout_s=1.0) as connection:  # nor hold a shutdown up
                    await connection.execute(text("PRAGMA optimize"))
                    await connection.commit()
        self._state = "stopped"
        # Kept connections go back to the pool before it closes; a transaction still running puts its
        # own back when it ends (held.put() refuses from now on).
        for gate in (self._admission, self._read_gate, self._pool_gate):
            for held in gate.held.drain() if gate is not None else []:
                with contextlib.suppress(Exception):
                    await held.close()
        await self._engines.dispose()
        self._engines = None
        self._close_admission()
        logger.info("database stopped: %s", self.settings.masked_url)

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "started":
            warnings.warn(
                f"{self!r} was garbage-collected while started; its connections were never closed. "
                "Use 'async with db:' or 'await db.stop()'.",
                ResourceWarning,
                stacklevel=2,
            )

    async def migrate(self, target: str = "head") -> bool:
        """Run the Alembic migrations in DATABASE_MIGRATIONS_PATH up to `target` under the migration lock.

        Works from a running loop (an app's lifespan, an async test). Returns False when the database was
        already at head, which costs one read and no lock. The Database need not be started.
        """
        from dbfoundation.migrations import upgrade  # Alembic loads only when migrating

        return await upgrade(self.settings, target)

    async def health(self, *, deadline_s: float = 0.5) -> HealthReport:
        """Report whether the database answers one cheap query within `deadline_s` seconds.

        Costs the same on a 10 MB and a 10 GB file (no scan, never the write slot); concurrent callers
        share one probe and a result is reused for 1 s. See dbfoundation.health.check_health.
        """
        from dbfoundation.health import check_health  # health imports Database for its types

        return await check_health(self, deadline_s=deadline_s)

    # -- units of work -----------------------------------------------------------------------------------

    def read(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """An AsyncSession for reads: the reader pool on SQLite (never waits for the writer), a read-only
        transaction on PostgreSQL (or the replica; plain SELECTs go without one, see implicit_transactions).
        A write through it raises ReadOnlyError."""
        engines = self._require_started("db.read()")
        if self._joined is not None:
            return self._joined.session(where="db.read()", read_only=True)
        return self._read_scope(engines, where="db.read()", session=True)

    def write(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """An AsyncSession in a write transaction: committed when the block ends, rolled back on error.

        SQLite: waits for the write slot (FIFO in this process, a lock file across processes), then
        BEGIN IMMEDIATE; raises WriteTimeout past DATABASE_WRITE_TIMEOUT. Keep the block short and free
        of network calls: every other writer waits for it. Unique, foreign-key, check and not-null
        violations raise DuplicateKeyError, ForeignKeyViolation, CheckViolation, NotNullViolation.
        """
        engines = self._require_started("db.write()")
        if self._joined is not None:
            return self._joined.session(where="db.write()", read_only=False)
        return TransactionScope(engines.writer, self._gate, self.settings, where="db.write()", session=True)

    @contextlib.asynccontextmanager
    async def connection(self, *, read_only: bool = False) -> AsyncIterator[AsyncConnection]:
        """A Core AsyncConnection: a write transaction (as write(), committed at the end) unless
        `read_only`, which gives a reader connection that begins on first use and rolls back at the end."""
        engines = self._require_started("db.connection()")
        if self._joined is not None:
            async with self._joined.nested_connection(where="db.connection()") as connection:
                yield connection
            return
        scope: TransactionScope[AsyncConnection] = (
            self._read_scope(engines, where="db.connection()", session=False, commit=False)
            if read_only
            else TransactionScope(engines.writer, self._gate, self.settings, where="db.connection()", session=False)
        )
        async with scope as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def raw(self, *, read_only: bool = False) -> AsyncIterator[Any]:
        """The driver connection, every PRAGMA applied, inside a transaction committed at the end.

        SQLite: an `aiosqlite.Connection` with `aiosqlite.Row` rows (write admission applies unless
        `read_only`). PostgreSQL: an `asyncpg.Connection`. For code that does not use SQLAlchemy. Driver
        errors raised in the block become the same typed errors as elsewhere (DuplicateKeyError, …).
        """
        async with self._raw(read_only=read_only) as driver:
            try:
                yield driver
            except Exception as exc:
                typed = typed_error(exc, where="db.raw()", settings=self.settings)
                if typed is not None:
                    raise typed from exc
                raise

    @contextlib.asynccontextmanager
    async def _raw(self, *, read_only: bool) -> AsyncIterator[Any]:
        engines = self._require_started("db.raw()")
        if self._joined is not None:
            async with self._joined.nested_connection(where="db.raw()") as connection:
                driver = await _driver(connection, begun=True)
                if self.backend == "sqlite":
                    driver.row_factory = _aiosqlite_row()
                try:
                    yield driver
                finally:
                    if self.backend == "sqlite":
                        driver.row_factory = None
            return
        if self.backend == "postgresql":
            engine = engines.reader if read_only else engines.writer
            async with engine.connect() as connection:
                driver = await _driver(connection)
                async with driver.transaction(readonly=read_only):
                    yield driver
            return
        scope = self.connection(read_only=True) if read_only else self._write_connection()
        async with scope as connection:
            driver = await _driver(connection, begun=True)
            driver.row_factory = _aiosqlite_row()
            try:
                yield driver
                await connection.commit()
            finally:
                driver.row_factory = None  # the pooled connection goes back to SQLAlchemy with plain tuples
                await run_to_completion(connection.rollback)

    @overload
    async def submit(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T: ...
    @overload
    async def submit(self, work: Executable, params: Mapping[str, Any] | None = None) -> int: ...
    async def submit(self, work: Any, params: Mapping[str, Any] | None = None) -> Any:
        """Run one small write in a shared transaction with other queued writes (group commit).

        `work` is an async function given a session, or a Core statement with its `params`
        (an INSERT returns 1; an UPDATE/DELETE returns its rowcount). A failing unit raises to its
        caller alone and leaves nothing behind: its batch is rolled back and runs again with a SAVEPOINT
        per unit, so a function may run more than once (only the run that commits counts). Returns only
        after the COMMIT that made the unit durable. Same-shape INSERTs run as one executemany.
        """
        self._require_started("db.submit()")
        if isinstance(work, Executable):
            return await self._committer.submit_statement(work, params)
        if params is not None:
            raise TypeError("params are for statements; a function unit gets its values by closure")
        return await self._committer.submit_function(work)

    @contextlib.asynccontextmanager
    async def joined(self, connection: AsyncConnection) -> AsyncIterator[JoinedTransaction]:
        """Route every unit of work through `connection`, already in a transaction, each in a SAVEPOINT.

        For test isolation (the pytest plugin uses it): read(), write(), connection(), raw() and submit()
        all see and add to the outer transaction, which the caller rolls back afterwards. Units are
        serialised on the one connection. Not for production: nothing here is ever committed.
        """
        self._require_started("db.joined()")
        if self._joined is not None:
            raise SessionStateError("db.joined()", "already joined to a transaction", "Leave the first one first.")
        self._joined = JoinedTransaction(connection)
        try:
            yield self._joined
        finally:
            self._joined = None

    # -- internals ------------------------------------------------------------------------------------------

    def _require_started(self, call: str) -> Engines:
        if self._state == "started" and self._engines is not None:
            return self._engines
        if self._state == "new":
            raise SessionStateError(call, "not started", "Use 'async with db:' or 'await db.start()' first.")
        raise SessionStateError(call, "stopped", "Create a new Database; a stopped one does not restart.")

    def _gate_of(self, size: int, *, yield_first: bool = False, keep: bool = False, **keeping: Any) -> PoolGate:
        settings = self.settings
        return PoolGate(
            size,
            timeout_s=settings.pool_timeout,
            where=settings.masked_url,
            yield_first=yield_first,
            keep=keep,
            **keeping,
        )

    def _idle_readers(self) -> int:
        """Reader connections checked out of the pool but idle: kept for the next read (SQLite)."""
        return len(self._read_gate.held) if self._read_gate is not None else 0

    @property
    def _gate(self) -> WriteAdmission | PoolGate | None:
        return self._admission if self._admission is not None else self._pool_gate

    def _read_scope(self, engines: Engines, *, where: str, session: bool, commit: bool = True) -> TransactionScope[Any]:
        engine, options = engines.read_checkout()
        return TransactionScope(
            engine,
            self._read_gate,
            self.settings,
            where=where,
            session=session,
            commit=commit,
            connection_options=options,
        )

    def _write_connection(self, timeout_s: float | None = None) -> TransactionScope[AsyncConnection]:
        """The writer connection in a begun transaction, inside the write slot; rolled back unless the
        block commits, before the slot is released, even when the task is cancelled."""
        engines = self._require_started("db.write()")
        return TransactionScope(
            engines.writer,
            self._gate,
            self.settings,
            where="db.write()",
            session=False,
            commit=False,
            timeout_s=timeout_s,
        )

    @contextlib.asynccontextmanager
    async def _batch_transaction(self, serialised: bool, in_line: bool) -> AsyncIterator[AsyncSession]:
        # A large batch waits for SQLite's lock file in line (see GroupCommitter); PostgreSQL ignores it.
        waits_in_line = WAIT_IN_LINE.set(in_line)
        try:
            if not serialised or self._joined is not None or self.backend == "sqlite":
                # SQLite batches are serialised anyway; on PostgreSQL, see batch_units.may_overlap.
                async with self.write() as session:
                    yield session
                return
            # PostgreSQL: batches of several processes would run side by side, and a function that reads
            # then writes (a counter) would lose updates. A transaction-level advisory lock taken first
            # serialises the batches of every process, as SQLite's write slot does; at READ COMMITTED each
            # later statement then sees what the previous batch committed. (REPEATABLE READ was tried: under
            # contention its serialization failures outran any sane number of retries.)
            async with self.write() as session:
                connection = await session.connection()
                await connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_submit_lock_key(self.settings)})")
                yield session
        finally:
            WAIT_IN_LINE.reset(waits_in_line)

    async def _check_reachable(self, engines: Engines) -> None:
        # Checking out a connection opens it and (SQLite) applies and verifies its PRAGMAs. No statement on
        # the writer: its transactions begin IMMEDIATE, so a query would queue behind any other writer.
        for engine, probe in ((engines.writer, False), (engines.reader, True)):
            try:
                async with engine.connect() as connection:
                    if probe:
                        await connection.execute(text("SELECT 1"))
            except Exception as exc:
                typed = translate(exc, where=self.settings.masked_url)
                if typed is None:
                    typed = DatabaseUnavailable(
                        self.settings.masked_url,
                        f"the first connection failed ({type(exc).__name__})",
                        "Check DATABASE_URL and that the database is running.",
                    )
                raise typed from exc

    async def _truncate_wal(self) -> None:
        """Checkpoint and truncate the WAL in the write slot (the checkpointer's answer to a WAL past
        journal_size_limit, which PASSIVE checkpoints cannot reset while readers overlap)."""
        admission = self._admission
        assert admission is not None  # noqa: S101 - the checkpointer runs on SQLite only
        with contextlib.suppress(WriteTimeout, SessionStateError):
            async with admission.slot(self.settings.write_timeout):
                held = admission.held.take()
                if held is not None:  # in the slot, so no writer is using it: back to the pool, for us
                    with contextlib.suppress(Exception):
                        await held.close()
                async with self.engines.writer.connect() as connection:
                    driver = await _driver(connection)
                    cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    await cursor.close()

    def _close_admission(self) -> None:
        if self._admission is not None:
            self._admission.close()
            self._admission = None


def _submit_lock_key(settings: DatabaseSettings) -> int:
    """The advisory-lock key that serialises submit() batches on one PostgreSQL database."""
    digest = hashlib.sha256(b"dbfoundation.submit\x00" + (settings.async_url.database or "").encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _driver(connection: AsyncConnection, *, begun: bool = False) -> Any:
    """The driver's own connection (aiosqlite or asyncpg) behind a pooled SQLAlchemy connection.

    `begun`: the caller will run SQL on it in the transaction SQLAlchemy began, so a BEGIN still waiting
    for the first statement (sqlite_driver) is sent now."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:  # only after invalidation, which our paths never hand out
        raise SessionStateError("db.raw()", "holding an invalidated connection", "Retry the call.")
    if begun and isinstance(raw.dbapi_connection, OneHopConnection):
        await raw.dbapi_connection.begin_now()
    return driver


def _aiosqlite_row() -> Any:
    import aiosqlite

    return aiosqlite.Row
