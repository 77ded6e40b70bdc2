"""The transaction behind db.read(), db.write(), db.connection() and db.raw(), in as few steps as it can take.

Every writer is serialised, so whatever a write costs between taking the slot and freeing it is paid by
every writer queued behind it. The profile of the first version showed nine greenlet spawns and a task
per write besides the statements. This scope takes the slot, checks out the writer connection and
begins in one greenlet (on SQLite the BEGIN itself waits for the first statement, see sqlite_driver),
hands out the session, and commits, closes and checks the connection back in in one more greenlet. Only
the error path pays for more: it runs to completion even if the task is cancelled (see session.py), and
the transaction is rolled back at the driver before the slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util.concurrency import greenlet_spawn

from dbfoundation.admission import PoolGate, WriteAdmission
from dbfoundation.driver_errors import translate
from dbfoundation.engine import BEGIN_LIMITS_KEY
from dbfoundation.errors import WriteTimeout
from dbfoundation.session import new_session, run_to_completion
from dbfoundation.settings import DatabaseSettings
from dbfoundation.sqlite_driver import BeginBusy

__all__ = ["TransactionScope"]

FOREIGN_WRITER = "a writer outside dbfoundation's lock file (e.g. the sqlite3 shell or a backup tool)"
Handle = TypeVar("Handle", AsyncSession, AsyncConnection)


def _checkout_and_begin(engine: Any, limits: tuple[float, int] | None) -> Connection:
    connection: Connection = engine.connect()
    try:
        if limits is not None:
            connection.info[BEGIN_LIMITS_KEY] = limits
        connection.begin()  # on SQLite only recorded: BEGIN runs with the first statement
    except BaseException:
        connection.close()
        raise
    return connection


def _commit_and_close(session: Session | None, connection: Connection, committed: Callable[[], None]) -> None:
    if session is not None:
        session.commit()  # flush + COMMIT of the connection's transaction (join_transaction_mode control_fully)
    else:
        connection.commit()
    committed()  # other processes' writers may go on while this one tidies up
    if session is not None:
        session.close()
    connection.close()  # an untouched transaction is rolled back here, which costs nothing if BEGIN never ran


def _rollback_and_close(session: Session | None, connection: Connection) -> None:
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
        connection.close()


class TransactionScope(Generic[Handle]):
    """`async with TransactionScope(...) as handle:` a session (or Core connection) in a transaction.

    `admission` is the SQLite write slot for the writer, the PostgreSQL pool gate, or None (SQLite readers).

    `commit=True` commits when the block ends without error; `commit=False` leaves ending it to the block
    (an uncommitted transaction is rolled back). Errors are raised as dbfoundation's typed errors.
    """

    __slots__ = (
        "_admission",
        "_commit",
        "_connection",
        "_engine",
        "_file_released",
        "_session",
        "_settings",
        "_timeout_s",
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
    ) -> None:
        self._engine = engine
        self._admission = admission
        self._settings = settings
        self._where = where
        self._session: Session | bool | None = session  # True until __aenter__ makes the session
        self._commit = commit
        self._timeout_s = settings.write_timeout if timeout_s is None else timeout_s
        self._connection: Connection | None = None
        self._file_released = False

    async def __aenter__(self) -> Handle:
        # Order: this process's turn, the connection and session (no SQL yet, and the BEGIN waits for the
        # first statement), then the lock file. Other processes' writers wait only for what needs the file.
        admission = self._admission
        limits = None
        if admission is not None:
            deadline = await admission.acquire_local(self._timeout_s)
        if isinstance(admission, WriteAdmission):  # the SQLite writer: BEGIN IMMEDIATE retries until the deadline
            remaining = deadline - asyncio.get_running_loop().time()
            limits = (time.monotonic() + remaining, round(self._settings.sqlite_busy_timeout * 1000))
        try:
            self._connection = await greenlet_spawn(_checkout_and_begin, self._engine.sync_engine, limits)
        except BaseException as exc:
            if admission is not None:
                admission.release_local()
            typed = translate(exc, where=self._settings.masked_url) if isinstance(exc, Exception) else None
            if typed is not None:
                raise typed from exc
            raise
        connection = AsyncConnection(self._engine, self._connection)
        handle: Any = connection
        if self._session:
            handle = new_session(connection)
            self._session = handle.sync_session
        else:
            self._session = None
        if admission is not None:
            try:
                await admission.acquire_file(deadline)
            except BaseException:
                await run_to_completion(lambda: greenlet_spawn(_rollback_and_close, None, self._connection))
                admission.release_local()
                raise
        return handle  # type: ignore[no-any-return]

    def _release_file(self) -> None:
        if self._admission is not None and not self._file_released:
            self._file_released = True
            self._admission.release_file()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        original = exc
        connection = self._connection
        session = self._session if isinstance(self._session, Session) else None
        assert connection is not None  # noqa: S101 - __aenter__ succeeded
        admission = self._admission
        try:
            if exc is None and self._commit:
                try:
                    await greenlet_spawn(_commit_and_close, session, connection, self._release_file)
                    return
                except BaseException as failure:  # cancelled during COMMIT included: roll back below
                    exc = failure
            await run_to_completion(lambda: greenlet_spawn(_rollback_and_close, session, connection))
        finally:
            if admission is not None:
                self._release_file()
                admission.release_local()
        if exc is None:
            return
        typed = typed_error(exc, where=self._where, settings=self._settings)
        if typed is not None:
            raise typed from exc
        if exc is not original:  # a failed COMMIT; the block's own exception propagates by itself
            raise exc


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
