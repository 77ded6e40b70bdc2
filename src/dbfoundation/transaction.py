"""The transaction behind db.read(), db.write(), db.connection() and db.raw(), in as few steps as it can take.

Every writer is serialised, so whatever a write costs between taking the slot and freeing it is paid by
every writer queued behind it. The profile of the first version showed nine greenlet spawns and a task
per write besides the statements. This scope waits for the connection, checks it out and begins in one
greenlet (on SQLite the BEGIN, and the writer's turn across processes, wait for the first statement, see
sqlite_driver), hands out the session, and commits, closes and checks the connection back in in one more
greenlet; the SQLite turn ends right after the COMMIT. Only the error path pays for more: it runs to
completion even if the task is cancelled (see session.py), and the transaction is rolled back at the
driver before the slot is freed.

It also keeps connections: the SQLite writers' connections stay checked out between transactions
(`WriteAdmission.held`), as do the SQLite readers' and, up to pool_size - 1, PostgreSQL writers'
(`PoolGate.held`). As a BEGIN is only recorded until the first statement (the SQLite driver; asyncpg's
adapter begins lazily too), the next transaction begins on the event loop's thread with no greenlet and
no pool checkout or checkin (a third of an empty SQLite write, 8 % of a one-row PostgreSQL ORM insert).
An error the rollback does not clear hands the connection back to the pool, and so does a PostgreSQL
read that finds the pool dry (reads do not keep: their read-only option belongs to one checkout) or a
PostgreSQL writer whose kept connection sat past the ping window (the pool's checkout then pings it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool
from sqlalchemy.util.concurrency import greenlet_spawn

from dbfoundation.admission import PoolGate, WriteAdmission
from dbfoundation.driver_errors import translate
from dbfoundation.engine import BEGIN_LIMITS_KEY, KEPT_SINCE
from dbfoundation.errors import WriteTimeout
from dbfoundation.implicit_transactions import without_begin_for
from dbfoundation.session import new_session, run_to_completion
from dbfoundation.settings import DatabaseSettings
from dbfoundation.sqlite_calls import BeginBusy

__all__ = ["TransactionScope"]

FOREIGN_WRITER = "a writer outside dbfoundation's lock file (e.g. the sqlite3 shell or a backup tool)"
Handle = TypeVar("Handle", AsyncSession, AsyncConnection)


def _checkout_and_begin(
    engine: Any, limits: dict[str, Any] | None, stale: Connection | None, options: Mapping[str, Any] | None
) -> Connection:
    if stale is not None:  # a held connection that cannot begin (invalidated): back to the pool
        with contextlib.suppress(Exception):
            stale.close()
    connection: Connection = engine.connect()
    try:
        if options is not None:  # reset by SQLAlchemy when the connection goes back to the pool
            connection.execution_options(**options)
        if limits is not None:
            connection.info[BEGIN_LIMITS_KEY] = limits
        connection.begin()  # on SQLite only recorded: BEGIN runs with the first statement
    except BaseException:
        connection.info.pop(BEGIN_LIMITS_KEY, None)
        connection.close()
        raise
    return connection


def _inline_options(settings: DatabaseSettings) -> dict[str, bool]:
    # In WAL mode a statement never writes the database file, and at synchronous NORMAL or OFF a COMMIT
    # appends to the WAL and returns: the fsync waits for the checkpoint, which has its own thread.
    inline = settings.sqlite_inline_writes and settings.sqlite_journal_mode == "WAL"
    return {"inline": inline, "inline_commit": inline and settings.sqlite_synchronous in ("NORMAL", "OFF")}


def _begin_held(connection: Connection, limits: dict[str, Any] | None) -> bool:
    """BEGIN on a held SQLite connection, on the loop's thread: the driver only records it (no I/O, so
    no greenlet is needed). False if the connection cannot begin without I/O (invalidated, closed)."""
    if connection.closed or connection.invalidated or connection.in_transaction():
        return False
    connection.info[BEGIN_LIMITS_KEY] = limits
    try:
        connection.begin()
    except Exception:
        connection.info.pop(BEGIN_LIMITS_KEY, None)
        return False
    return True


def _commit_and_close(session: Session | None, connection: Connection, keep: bool) -> None:
    # On SQLite the driver ends the writer's turn right after the COMMIT (PendingBegin.done), before this
    # tidies up, so other processes' writers need not wait for it.
    if session is not None:
        adapted = without_begin_for(session, connection)  # a PostgreSQL write that is one INSERT
        if adapted is not None:
            with adapted.without_begin():
                session.flush()  # the INSERT commits itself; the COMMIT below then has nothing to send
        session.commit()  # flush + COMMIT of the connection's transaction (join_transaction_mode control_fully)
        session.close()
    if connection.in_transaction():  # no session, or a session that never used the connection
        connection.commit()  # costs nothing on SQLite when BEGIN never ran
    connection.info.pop(BEGIN_LIMITS_KEY, None)  # the info dict stays with the pooled connection
    if not keep:
        connection.close()


def _rollback_and_close(session: Session | None, connection: Connection, keep: bool) -> bool:
    """Roll back; return True if the connection is clean and kept (`keep`: a held SQLite connection),
    else it is closed (back to the pool)."""
    # Each step may fail on a broken connection; none may keep the next from running, nor hide the error
    # that brought us here. The driver-level rollback ends the transaction whatever SQLAlchemy's state.
    if session is not None:
        with contextlib.suppress(Exception):
            session.rollback()
        with contextlib.suppress(Exception):
            session.close()
    with contextlib.suppress(Exception):
        if not connection.closed and not connection.invalidated:
            adapted = connection.connection.dbapi_connection
            if adapted is not None:
                adapted.rollback()
    with contextlib.suppress(Exception):
        connection.info.pop(BEGIN_LIMITS_KEY, None)
    if keep:  # an error the rollback undid (a duplicate key, a failed check) leaves the connection as good
        with contextlib.suppress(Exception):
            if connection.in_transaction():  # a Core block: end SQLAlchemy's side of it too
                connection.rollback()
            if not (connection.closed or connection.invalidated or connection.in_transaction()):
                return True
    with contextlib.suppress(Exception):
        connection.close()
    return False


class TransactionScope(Generic[Handle]):
    """`async with TransactionScope(...) as handle:` a session (or Core connection) in a transaction.

    `admission` is the SQLite write slot for the writer or the PoolGate of a pool (PostgreSQL, SQLite readers).

    `connection_options`: execution options set on the checked-out connection (see Engines.read_checkout).

    `commit=True` commits when the block ends without error; `commit=False` leaves ending it to the block
    (an uncommitted transaction is rolled back). Errors are raised as dbfoundation's typed errors.
    """

    __slots__ = (
        "_admission",
        "_commit",
        "_connection",
        "_connection_options",
        "_deadline",
        "_engine",
        "_handle_connection",
        "_session",
        "_settings",
        "_timeout_s",
        "_turn_held",
        "_where",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        admission: WriteAdmission | PoolGate | None,
        settings: DatabaseSettings,
        *,
        where: str,
        session: bool,
        commit: bool = True,
        timeout_s: float | None = None,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._engine = engine
        self._connection_options = connection_options
        self._admission = admission
        self._settings = settings
        self._where = where
        self._session: Session | bool | None = session  # True until __aenter__ makes the session
        self._commit = commit
        self._timeout_s = settings.write_timeout if timeout_s is None else timeout_s
        self._connection: Connection | None = None
        self._handle_connection: AsyncConnection | None = None
        self._deadline = 0.0
        self._turn_held = False

    async def __aenter__(self) -> Handle:
        # Order: a connection (a pooled one, or on SQLite a writer connection) and the session.
        # No SQL yet: on SQLite the BEGIN and the writer's turn wait for the first statement (see
        # _take_turn), so other writers wait only for what needs the database file.
        admission = self._admission
        limits = None
        if admission is not None:
            self._deadline = await admission.acquire_local(self._timeout_s)
        if isinstance(admission, WriteAdmission):  # the SQLite writer: BEGIN IMMEDIATE retries until the deadline
            remaining = self._deadline - asyncio.get_running_loop().time()
            limits = {
                "deadline": time.monotonic() + remaining,
                "busy_timeout_ms": round(self._settings.sqlite_busy_timeout * 1000),
                "admit": self._take_turn,
                "done": self._end_turn,
                **_inline_options(self._settings),
            }
        held, stale = self._take_kept()
        try:
            if held is not None and stale is not None and _begin_held(stale, limits):
                connection = held
            else:
                sync = await greenlet_spawn(
                    _checkout_and_begin, self._engine.sync_engine, limits, stale, self._connection_options
                )
                connection = AsyncConnection(self._engine, sync)
        except BaseException as exc:
            if admission is not None:
                admission.release_local()
            typed = translate(exc, where=self._settings.masked_url) if isinstance(exc, Exception) else None
            if typed is not None:
                raise typed from exc
            raise
        self._handle_connection = connection
        self._connection = connection.sync_connection
        handle: Any = connection
        if self._session:
            handle = new_session(connection)
            self._session = handle.sync_session
        else:
            self._session = None
        return handle  # type: ignore[no-any-return]

    async def _take_turn(self) -> None:
        """The SQLite writer's turn, asked for by the driver right before the first statement."""
        if not self._turn_held and isinstance(self._admission, WriteAdmission):
            await self._admission.acquire_write(self._deadline)
            self._turn_held = True

    def _end_turn(self, statements: int | None = None) -> bool:
        """Called by the driver right after the COMMIT with the number of statements run, and on every way
        out (idempotent). A block that commits and goes on (db.connection()) asks for its turn again, with
        a fresh deadline. True if the turn went to another writer of this process."""
        handed = False
        if self._turn_held and isinstance(self._admission, WriteAdmission):
            self._turn_held = False
            handed = self._admission.release_write(statements)
            self._deadline = asyncio.get_running_loop().time() + self._timeout_s
            if self._connection is not None and not self._connection.closed:
                limits = self._connection.info.get(BEGIN_LIMITS_KEY)
                if limits is not None:
                    limits["deadline"] = time.monotonic() + self._timeout_s
        return handed

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        original = exc
        connection = self._connection
        session = self._session if isinstance(self._session, Session) else None
        assert connection is not None  # noqa: S101 - __aenter__ succeeded
        admission = self._admission
        keeper = self._keeper()
        try:
            if exc is None and self._commit:
                try:
                    await greenlet_spawn(_commit_and_close, session, connection, keeper is not None)
                    if keeper is not None:  # still admitted: the next transaction here takes it
                        await self._keep_or_close(keeper)
                    return
                except BaseException as failure:  # cancelled during COMMIT included: roll back below
                    exc = failure
            kept: list[bool] = []

            async def roll_back() -> None:
                kept.append(await greenlet_spawn(_rollback_and_close, session, connection, keeper is not None))

            try:
                await run_to_completion(roll_back)
            finally:  # also when cancelled meanwhile: run_to_completion raises only after roll_back ended
                if keeper is not None and kept and kept[0]:
                    await self._keep_or_close(keeper)
        finally:
            if admission is not None:
                self._end_turn()
                admission.release_local()
        if exc is None:
            return
        typed = typed_error(exc, where=self._where, settings=self._settings)
        if typed is not None:
            raise typed from exc
        if exc is not original:  # a failed COMMIT; the block's own exception propagates by itself
            raise exc

    def _keeper(self) -> WriteAdmission | PoolGate | None:
        """The gate that keeps this transaction's connection for the next one, if it keeps any. Not with
        execution options (PostgreSQL's read-only reads on the primary): they belong to one checkout."""
        admission = self._admission
        if admission is None or not admission.keeps_connections or self._connection_options is not None:
            return None
        return admission

    def _take_kept(self) -> tuple[AsyncConnection | None, Connection | None]:
        """(a kept connection to begin on, or None; a kept connection to give back to the pool, or None).

        A kept connection is ours until we put it back (the SQLite writer's, an SQLite reader's, a
        PostgreSQL writer's). One kept past the pool's ping window goes back to the pool, whose checkout
        pings it. A transaction that does not keep (a PostgreSQL read) gives one back when the pool has
        none idle: kept connections must never starve the transactions that check out.
        """
        admission = self._admission
        if admission is None or not admission.keeps_connections:
            return None, None
        keeper = self._keeper()
        pool = self._engine.sync_engine.pool
        if keeper is None and isinstance(pool, QueuePool) and pool.checkedin() > 0:
            return None, None
        held, kept_for = admission.held.take_with_age()
        if held is None:
            return None, None
        stale = held.sync_connection
        max_idle_s = admission.max_idle_s  # None: no pinging pool behind (SQLite), reuse however long it sat
        if keeper is not None and (max_idle_s is None or kept_for < max_idle_s):
            return held, stale
        with contextlib.suppress(Exception):  # back to the pool, with its last use (the pool's ping goes by it)
            stale.info[KEPT_SINCE] = time.monotonic() - kept_for
        return None, stale

    async def _keep_or_close(self, keeper: WriteAdmission | PoolGate) -> None:
        connection = self._handle_connection
        if connection is None or keeper.held.put(connection):
            return
        if keeper.held.drained:
            # The Database stopped during this transaction and closed its pools: close the connection
            # itself (checked in to a disposed pool it would stay open until garbage-collected).
            with contextlib.suppress(Exception):
                await run_to_completion(connection.invalidate)
        with contextlib.suppress(Exception):  # else as many as may be are kept: back to the pool
            await run_to_completion(connection.close)


def typed_error(exc: BaseException, *, where: str, settings: DatabaseSettings) -> Exception | None:
    """The dbfoundation error users act on for `exc`, or None to let `exc` propagate as it is."""
    waited = begin_busy_waited(exc)
    if waited is not None:
        return WriteTimeout(str(settings.sqlite_path), waited, FOREIGN_WRITER)
    return translate(exc, where=where) if isinstance(exc, Exception) else None


def begin_busy_waited(exc: BaseException) -> float | None:
    """How long BEGIN IMMEDIATE waited, if `exc` is (or wraps) a BeginBusy."""
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return None
        if isinstance(current, BeginBusy):
            return current.waited_s
        current = getattr(current, "orig", None) or current.__cause__
    return None
