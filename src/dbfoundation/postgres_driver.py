# mypy: disable-error-code="no-untyped-call"
# (SQLAlchemy's asyncpg adapter, which this subclasses, has no annotations.)
"""SQLAlchemy's asyncpg adapter, refusing to COMMIT a transaction that PostgreSQL has already aborted.

PostgreSQL aborts a whole transaction at its first failed statement; a COMMIT afterwards rolls it back and
answers `ROLLBACK` without an error, and asyncpg returns from it normally. A block that catches a database
error and goes on (say, a duplicate key it means to ignore) would therefore be told that its transaction
committed while nothing in it was written; on SQLite the same code commits the rest. This adapter notes a
server error raised inside a transaction and raises TransactionAborted at COMMIT instead (after rolling
back). A successful `ROLLBACK TO SAVEPOINT` ends the aborted state, as it does on the server, so errors
handled inside `session.begin_nested()` are fine.

Statements sent on the asyncpg connection itself (db.raw(), or a session's driver connection) do not pass
through this adapter; for them the asyncpg connection class checks the COMMIT's answer: the server tags
the COMMIT of an aborted transaction `ROLLBACK`, and that raises TransactionAborted too.

Installed with `create_async_engine(url, module=adapted_dbapi())`, as sqlite_driver is for SQLite.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, NoReturn

from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_cursor,
    AsyncAdapt_asyncpg_dbapi,
    AsyncAdapt_asyncpg_ss_cursor,
)
from sqlalchemy.util.concurrency import await_

from dbfoundation.errors import TransactionAborted

__all__ = ["AbortAwareConnection", "adapted_dbapi"]

_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT"


def _sent_by_the_server(error: Exception) -> bool:
    """Only an error the server sent aborts its transaction. asyncpg raises some of its own client-side
    errors as PostgresError too (a value it cannot encode is a DataError, SQLSTATE 22000) before the server
    sees the statement; those carry no severity, which every server ErrorResponse has."""
    return getattr(error, "severity", None) is not None


class _WatchesRollbackTo:
    """Cursor mixin: a successful ROLLBACK TO SAVEPOINT ends the connection's aborted state, as on the server."""

    __slots__ = ()
    _adapt_connection: Any

    def execute(self, operation: Any, parameters: Any = None) -> None:
        super().execute(operation, parameters)  # type: ignore[misc]
        if isinstance(operation, str) and operation.startswith(_ROLLBACK_TO):
            self._adapt_connection._mark_aborted(False)


class _WatchingCursor(_WatchesRollbackTo, AsyncAdapt_asyncpg_cursor):
    __slots__ = ()


class _WatchingServerSideCursor(_WatchesRollbackTo, AsyncAdapt_asyncpg_ss_cursor):
    __slots__ = ()


class AbortAwareConnection(AsyncAdapt_asyncpg_connection):
    """The adapted connection; `_aborted` is True from a server error inside a transaction until the
    transaction ends or a ROLLBACK TO SAVEPOINT succeeds.

    Only while it is True do its cursors look at each statement (for that ROLLBACK TO SAVEPOINT): the
    stock cursors otherwise, so a statement costs what it did without this class.
    """

    __slots__ = ("_aborted", "_cursor_cls", "_ss_cursor_cls")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._mark_aborted(False)

    def _mark_aborted(self, aborted: bool) -> None:
        self._aborted = aborted
        self._cursor_cls = _WatchingCursor if aborted else AsyncAdapt_asyncpg_cursor
        self._ss_cursor_cls = _WatchingServerSideCursor if aborted else AsyncAdapt_asyncpg_ss_cursor

    def cannot_commit(self) -> bool:
        """Whether a server error aborted the open transaction (its COMMIT would only roll back)."""
        return self._aborted

    def may_read_without_begin(self) -> bool:
        """Whether the transaction has sent nothing yet (the adapter sends BEGIN with the first statement)
        and runs at READ COMMITTED, where a plain read sent alone sees what it would see inside."""
        return self._transaction is None and self.isolation_level in (None, "read_committed")

    def may_write_without_begin(self) -> bool:
        """As may_read_without_begin, and the transaction would be a plain read-write one."""
        return self.may_read_without_begin() and not self.readonly and not self.deferrable

    @contextlib.contextmanager
    def without_begin(self) -> Iterator[None]:
        """Send statements with no BEGIN before them: each commits on its own (see implicit_transactions)."""
        self.autocommit = True
        try:
            yield
        finally:
            self.autocommit = False  # back to the connection's isolation level, as set_isolation_level left it

    def _handle_exception(self, error: Exception) -> NoReturn:
        if self._transaction is not None and not self._aborted and _sent_by_the_server(error):
            self._mark_aborted(True)
        super()._handle_exception(error)

    def rollback(self) -> None:
        if self._aborted:
            self._mark_aborted(False)
        super().rollback()

    def commit(self) -> None:
        if self._aborted:
            self._mark_aborted(False)
            if self._transaction is not None:
                self.rollback()  # what the server's COMMIT would have done, without pretending it committed
                raise TransactionAborted()
        super().commit()


class _AbortAwareDBAPI(AsyncAdapt_asyncpg_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AbortAwareConnection:
        # SQLAlchemy's connect() with our class: its adapter cannot be re-wrapped afterwards (it consumes
        # these keyword arguments), nor can its __class__ change (the slots differ).
        creator_fn = kw.pop("async_creator_fn", self.asyncpg.connect)
        if creator_fn is self.asyncpg.connect:  # a creator of the caller's own may not take connection_class
            kw.setdefault("connection_class", _commit_checking_connection_class())
        prepared_statement_cache_size = kw.pop("prepared_statement_cache_size", 100)
        prepared_statement_name_func = kw.pop("prepared_statement_name_func", None)
        return await_(
            AbortAwareConnection.create(
                self,
                creator_fn(*arg, **kw),
                prepared_statement_cache_size=prepared_statement_cache_size,
                prepared_statement_name_func=prepared_statement_name_func,
            )
        )


@functools.cache
def _commit_checking_connection_class() -> type[Any]:
    import asyncpg  # only PostgreSQL users pay for importing it

    class CommitCheckingConnection(asyncpg.Connection):  # type: ignore[misc]
        """asyncpg's connection; a COMMIT the server answers with ROLLBACK raises TransactionAborted."""

        __slots__ = ()

        def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:
            # A plain method, not a coroutine around asyncpg's: every query but COMMIT costs one call more.
            if args or not query.startswith(("COMMIT", "commit")):
                return super().execute(query, *args, timeout=timeout)
            return self._checked_commit(query, timeout)

        async def _checked_commit(self, query: str, timeout: float | None) -> str:  # noqa: ASYNC109 - asyncpg's
            status: str = await super().execute(query, timeout=timeout)
            if status == "ROLLBACK":  # the server's answer to COMMIT of an aborted transaction
                raise TransactionAborted()
            return status

    return CommitCheckingConnection


def adapted_dbapi() -> Any:
    """The DBAPI module object to pass as `module=` to create_async_engine for a postgresql+asyncpg URL."""
    import asyncpg

    return _AbortAwareDBAPI(asyncpg)
