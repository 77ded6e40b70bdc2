"""SQLAlchemy's aiosqlite adapter, with one thread hop per statement instead of three or four.

aiosqlite runs every call on its connection's thread, and SQLAlchemy's adapter makes one call each for
the cursor, the execute, the fetch and the close. Each call is a round trip between the event loop and
that thread (two wake-ups, ~50 µs of CPU on the loop), and the writer is serialised, so the hops of every
queued writer add up. Here a statement runs on the thread in one call that executes it, reads its rows
and closes the sqlite3 cursor; the rows then come from memory, as they already did in SQLAlchemy's adapter
(it fetches everything right after execute). Server-side cursors (`stream()`) keep the stock path.

The transaction's BEGIN travels with its first statement (`defer_begin`): a one-statement write costs
two hops (BEGIN + statement, COMMIT) instead of three, and a transaction that ran nothing costs none.
A BEGIN IMMEDIATE that meets SQLITE_BUSY (only a writer outside our lock file can cause it) is retried
on the thread until the caller's deadline, then raised as `BeginBusy`.

A writer whose turn is taken (PendingBegin.admit) can skip the hops altogether (`inline`): no SQLite lock
can be waited for then, so BEGIN, its statements and, in WAL at synchronous NORMAL, its COMMIT run on the
event loop's thread in microseconds each; so does an executemany of at most INLINE_MANY_ROWS rows (a
db.submit() batch of INSERTs: 64 rows took ~0.2 ms in SQLite and ~0.7 ms more for the hop, which under
CPU contention waited for the scheduler while every process's writers waited for the lock file). A larger
executemany (bulk work), a COMMIT that fsyncs, and a BEGIN that meets a writer outside our lock file
(tried with the busy wait off) still go to the thread.

A reader's statement runs on the loop's thread too, within a budget of SQLite VM steps (`inline_read_steps`,
counted by a progress handler): a point read takes a few dozen steps, far less than the hop. A statement
that needs more is interrupted and runs again on the thread, which the snapshot makes safe: a read
transaction sees the same data however often it reads. A `count(` goes to the thread at once: counting a
whole table is a single step; so does every read while a writer of the process waits for another
process's lock file (WriteAdmission.waiting_for_lock_file). The statement that starts the snapshot runs
with SQLite's busy wait off, so the rare lock a reader can meet (WAL recovery, a connection in exclusive
locking mode) is waited for on the thread, never on the loop. A reader's COMMIT, which only ends its
snapshot, runs inline.

At a full disk, an I/O error or an `OR ROLLBACK` conflict SQLite rolls back the whole transaction, and
each later statement would commit on its own: after a statement error that left no transaction, the next
statement and the COMMIT raise TransactionAborted instead (the block caught the error and went on).

Installed with `create_async_engine(url, module=adapted_dbapi())`: the dialect stays
`sqlite+aiosqlite`, and `db.raw()` still hands out the plain aiosqlite connection (after `begin_now()`).
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

from dbfoundation.admission import let_next_writer_run
from dbfoundation.errors import TransactionAborted
from dbfoundation.sqlite_calls import (
    PendingBegin,
    begin_without_waiting,
    may_read_inline,
    read_inline,
    run_commit,
    run_prelude,
    run_statement,
)

__all__ = ["OneHopConnection", "adapted_dbapi"]

_DEFERRABLE = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")
INLINE_MANY_ROWS = 256  # an inline writer's executemany up to this many rows runs on the loop (batching.MAX_BATCH)


async def _no_wait() -> None:
    pass


def _ended(raw: sqlite3.Connection) -> bool:
    """Whether SQLite left no transaction open (False for a closed connection: its own error tells)."""
    try:
        return not raw.in_transaction
    except sqlite3.Error:
        return False


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A DBAPI cursor whose execute is one call on the aiosqlite thread; the rest is in memory."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: OneHopConnection) -> None:  # no aiosqlite cursor: no hop
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        pass  # the sqlite3 cursor is closed already; description stays readable

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._run(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._run(operation, seq_of_parameters, many=True)

    def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapted: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        if not many and not parameters and isinstance(operation, str) and operation.startswith(_DEFERRABLE):
            # SAVEPOINT / RELEASE / ROLLBACK TO return nothing and cannot fail in a live transaction: they
            # travel with the next statement (or the COMMIT), in order, instead of costing a hop each.
            adapted._prelude.append(operation)
            self._description, self._rowcount, self._lastrowid, self._rows = None, -1, None, deque()
            return
        if adapted._ended_by_sqlite:
            # Else this statement would run, and commit, on its own: what ran before it is gone.
            raise TransactionAborted(backend="sqlite")
        connection = self._connection
        begin = adapted._pending_begin
        if begin is not None and begin.admit is not None:
            await_(begin.admit())  # may raise WriteTimeout: nothing ran, the BEGIN stays pending
            adapted._on_commit = begin.done
            adapted._inline, adapted._inline_commit = begin.inline, begin.inline_commit
        elif begin is not None:  # a reader: statements inline within a budget, the COMMIT perhaps inline
            adapted._inline_commit = begin.inline_commit
            adapted._read_steps = begin.inline_read_steps
            adapted._reads_held_back = begin.inline_reads_held_back
        prelude, adapted._prelude = adapted._prelude, []
        state = adapted._thread_state
        state.pop("began", None)
        raw = connection._conn
        began_here = begin is not None  # the BEGIN runs with this statement (if it fails, state tells)
        try:
            if (
                adapted._inline
                and (not many or (isinstance(parameters, list | tuple) and len(parameters) <= INLINE_MANY_ROWS))
                and (begin is None or begin_without_waiting(raw, begin, state))
            ):
                # The writer's turn is taken, so no SQLite lock can be waited for: the statement costs
                # microseconds here, less than the hop to the thread would.
                outcome = run_statement(raw, None, state, prelude, operation, parameters, many)
                await_(_no_wait())  # AsyncConnection.execute requires one await; this one never yields
            elif (
                adapted._read_steps
                and not many
                and not prelude
                and may_read_inline(operation)
                and (adapted._reads_held_back is None or not adapted._reads_held_back())
                and (inline := read_inline(raw, begin, state, operation, parameters, adapted._read_steps)) is not None
            ):
                outcome = inline
                await_(_no_wait())
            else:  # the thread path: no turn (migrations), a large executemany, an outside writer, a long read
                if state.get("began"):  # a read that began inline and outgrew its budget
                    begin = None
                args = (raw, begin, state, prelude, operation, parameters, many)
                outcome = await_(connection._execute(run_statement, *args))
        except Exception as error:
            if begin is None or state.get("began"):
                adapted._pending_begin = None  # else BEGIN itself failed: rollback() has nothing to end
                adapted._began = adapted._began or began_here
                # A full disk, an I/O error or an OR ROLLBACK conflict rolls back the whole transaction.
                adapted._ended_by_sqlite = adapted._began and _ended(raw)
            adapted._handle_exception(error)
        adapted._pending_begin = None
        adapted._began = adapted._began or began_here
        adapted._statements += 1
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = deque(rows) if rows else deque()

    def nextset(self) -> None:
        raise NotImplementedError("sqlite3 has no multiple result sets")

    def setinputsizes(self, *inputsizes: Any) -> None:
        pass


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """The adapted connection: one-hop cursors, and a BEGIN that waits for the first statement."""

    __slots__ = (
        "_began",
        "_ended_by_sqlite",
        "_inline",
        "_inline_commit",
        "_on_commit",
        "_pending_begin",
        "_prelude",
        "_read_steps",
        "_reads_held_back",
        "_statements",
        "_thread_state",
    )
    _cursor_cls = OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._pending_begin: PendingBegin | None = None
        self._prelude: list[str] = []  # savepoint statements waiting for the next statement or the COMMIT
        self._thread_state: dict[str, int] = {}  # written on the aiosqlite thread, read after its hop
        self._on_commit: Callable[[int], bool] | None = None  # the admitted transaction's PendingBegin.done
        self._inline = self._inline_commit = False  # the admitted transaction's PendingBegin.inline*
        self._read_steps = 0  # the read transaction's PendingBegin.inline_read_steps
        self._reads_held_back: Callable[[], bool] | None = None  # and its inline_reads_held_back
        self._began = False  # the transaction's BEGIN ran (through a statement or begin_now())
        self._ended_by_sqlite = False  # a statement's error made SQLite roll back the whole transaction
        self._statements = 0  # statements the transaction ran (told to PendingBegin.done)

    def _end_modes(self) -> None:
        """Forget the transaction's inline modes (taken from its PendingBegin at the first statement) and
        whether it began."""
        self._inline = self._inline_commit = False
        self._read_steps = self._statements = 0
        self._began = self._ended_by_sqlite = False

    def cannot_commit(self) -> bool:
        """Whether SQLite ended the begun transaction by itself: a full disk, an I/O error or an `OR ROLLBACK`
        conflict roll all of it back, and the statements after would each commit on their own."""
        return self._pending_begin is None and not self._connection._conn.in_transaction

    def defer_begin(self, begin: PendingBegin) -> None:
        self._pending_begin = begin
        self._on_commit = None
        self._end_modes()

    async def begin_now(self) -> None:
        """Run a pending BEGIN and savepoint statements (one hop), for code about to use the aiosqlite
        connection directly."""
        begin, prelude = self._pending_begin, self._prelude
        if begin is not None and begin.admit is not None:
            await begin.admit()
            self._on_commit = begin.done  # the caller uses the aiosqlite connection: no inline statements
        if begin is not None or prelude:
            self._prelude = []
            await self._connection._execute(run_prelude, self._connection._conn, begin, self._thread_state, prelude)
            self._pending_begin = None
            self._began = self._began or begin is not None

    async def rollback_now(self) -> None:
        """End the transaction at the driver (a no-op when its BEGIN never ran), outside SQLAlchemy."""
        self._prelude = []
        self._on_commit = None
        self._end_modes()
        if self._pending_begin is not None:
            self._pending_begin = None
            return
        await self._connection.rollback()

    def commit(self) -> None:
        prelude, self._prelude = self._prelude, []
        if self._pending_begin is not None:  # nothing ran: there is no transaction to commit
            self._pending_begin = None
            return
        if self._ended_by_sqlite:
            self.rollback()
            raise TransactionAborted(backend="sqlite")
        inline, statements = self._inline_commit, self._statements
        self._end_modes()
        try:
            if inline:
                run_commit(self._connection._conn, prelude)
            elif not prelude:
                await_(self._connection.commit())
            else:  # the last RELEASE (or ROLLBACK TO) and the COMMIT in one hop
                await_(self._connection._execute(run_commit, self._connection._conn, prelude))
        except Exception as error:
            self._handle_exception(error)
        done, self._on_commit = self._on_commit, None
        if done is not None and done(statements):  # committed: the next writer may begin while this one tidies up
            await_(let_next_writer_run())

    def rollback(self) -> None:
        self._prelude = []  # whatever the savepoint statements would have done, the rollback undoes
        self._on_commit = None  # the owner releases its turn after a rollback itself
        self._end_modes()
        if self._pending_begin is not None:
            self._pending_begin = None
            return
        super().rollback()


class _OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def adapted_dbapi() -> Any:
    """The DBAPI module object to pass as `module=` to create_async_engine for a sqlite+aiosqlite URL."""
    return _OneHopDBAPI(aiosqlite, sqlite3)
