"""What the adapted SQLite driver runs on a sqlite3 connection: plain functions of a `sqlite3.Connection`.

A statement with the transaction's pending BEGIN and savepoint statements before it, a reader's statement
within a budget of VM steps, a COMMIT. Plain functions, so that the same code runs on aiosqlite's thread
(one hop per statement) or on the event loop's thread (inline, see sqlite_driver for when).
"""

from __future__ import annotations

import functools
import random
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BeginBusy",
    "PendingBegin",
    "begin_without_waiting",
    "may_read_inline",
    "read_inline",
    "run_commit",
    "run_prelude",
    "run_statement",
]

_SQLITE_BUSY = 5
_SQLITE_INTERRUPT = 9

# What one statement leaves behind: description, rows (None for no result set), rowcount, lastrowid.
_Outcome = tuple[Any, list[Any] | None, int, int | None]


class BeginBusy(sqlite3.OperationalError):
    """BEGIN IMMEDIATE kept meeting SQLITE_BUSY until the deadline: another writer holds the file."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"database is locked (BEGIN IMMEDIATE retried for {waited_s:.3f} s)")
        self.waited_s = waited_s
        self.sqlite_errorcode = _SQLITE_BUSY


@dataclass
class PendingBegin:
    """A BEGIN to run on the thread right before the transaction's first statement.

    `admit` is awaited on the loop before that statement is sent (the writer's turn, see admission.py),
    so whatever the caller and the ORM do before their first statement does not hold up other writers;
    `done` is called right after a successful COMMIT, before the session tidies up, with the number of
    statements the transaction ran; True means the turn went to another writer of this process, which
    the driver lets run before it returns (admission.let_next_writer_run).
    """

    sql: str
    deadline: float | None = None  # time.monotonic() until which SQLITE_BUSY is retried (None: no retry)
    busy_timeout_ms: int | None = None  # the configured busy timeout, shortened to fit the deadline
    admit: Callable[[], Awaitable[None]] | None = None
    done: Callable[[int], bool] | None = None
    inline: bool = False  # once admitted, run statements on the calling (event loop) thread
    inline_commit: bool = False  # the COMMIT too (it writes the WAL without an fsync, or ends a read)
    inline_read_steps: int = 0  # a reader: run a statement on the calling thread up to this many VM steps
    inline_reads_held_back: Callable[[], bool] | None = None  # while True, a reader's statements go to the thread


def run_commit(raw: sqlite3.Connection, prelude: list[str]) -> None:
    run_prelude(raw, None, {}, prelude)
    raw.commit()


def _begin(raw: sqlite3.Connection, begin: PendingBegin, state: dict[str, int]) -> None:
    started = time.monotonic()
    if begin.busy_timeout_ms is not None and begin.deadline is not None:
        # SQLite's own busy wait must end by the caller's deadline; it only changes when that is near.
        wanted = max(1, min(begin.busy_timeout_ms, int((begin.deadline - started) * 1000)))
        if state.get("busy_timeout_ms", begin.busy_timeout_ms) != wanted:
            raw.execute(f"PRAGMA busy_timeout = {wanted}").close()
            state["busy_timeout_ms"] = wanted
    while True:
        try:
            raw.execute(begin.sql).close()
            state["began"] = 1
            return
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) != _SQLITE_BUSY or begin.deadline is None:
                raise
            if time.monotonic() >= begin.deadline:
                raise BeginBusy(time.monotonic() - started) from exc
        time.sleep(random.uniform(0.001, 0.005))  # noqa: S311 - jitter, not cryptography


def begin_without_waiting(raw: sqlite3.Connection, begin: PendingBegin, state: dict[str, int]) -> bool:
    """The BEGIN on the caller's thread with SQLite's busy wait off: False, and no transaction, when another
    connection holds the write lock (only a writer outside our lock file can); the thread path then waits."""
    if begin.busy_timeout_ms is None:  # nothing to restore the busy timeout to: let the thread begin
        return False
    raw.execute("PRAGMA busy_timeout = 0").close()
    try:
        raw.execute(begin.sql).close()
    except sqlite3.OperationalError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) != _SQLITE_BUSY:
            raise
        return False
    finally:
        raw.execute(f"PRAGMA busy_timeout = {begin.busy_timeout_ms}").close()
        state["busy_timeout_ms"] = begin.busy_timeout_ms
    state["began"] = 1
    return True


def run_prelude(raw: sqlite3.Connection, begin: PendingBegin | None, state: dict[str, int], prelude: list[str]) -> None:
    if begin is not None:
        _begin(raw, begin, state)
    for sql in prelude:
        raw.execute(sql).close()


# count() of a whole table is one VM step (OP_Count walks the b-tree in C), which no step budget can stop.
_ONE_STEP_SCAN = re.compile(r"\bcount\s*\(", re.IGNORECASE)


@functools.lru_cache(maxsize=512)
def may_read_inline(operation: str) -> bool:
    return _ONE_STEP_SCAN.search(operation) is None


def _interrupt() -> int:
    return 1  # called once a statement has used up its VM-step budget: stop it


def read_inline(
    raw: sqlite3.Connection,
    begin: PendingBegin | None,
    state: dict[str, int],
    operation: str,
    parameters: Any,
    steps: int,
) -> _Outcome | None:
    """A reader's statement on the calling (event loop's) thread, stopped after `steps` VM steps; None if it
    was stopped or met a lock, and then nothing of it remains: the caller runs it again on the thread."""
    restore = None if begin is None else begin.busy_timeout_ms
    if begin is not None:
        if restore is None:  # the busy wait could not be turned back on: let the thread begin
            return None
        raw.execute(begin.sql).close()  # a deferred BEGIN: it takes no lock, the first read does
        state["began"] = 1
        # The snapshot starts with this statement; it can meet a lock only then (a WAL being recovered),
        # and SQLite's busy wait would sleep on the loop's thread: off for this one statement.
        raw.execute("PRAGMA busy_timeout = 0").close()
    raw.set_progress_handler(_interrupt, steps)
    try:
        return run_statement(raw, None, state, [], operation, parameters, False)
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (_SQLITE_BUSY, _SQLITE_INTERRUPT):
            raise
        return None
    finally:
        raw.set_progress_handler(None, 0)
        if restore is not None:
            raw.execute(f"PRAGMA busy_timeout = {restore}").close()


def run_statement(
    raw: sqlite3.Connection,
    begin: PendingBegin | None,
    state: dict[str, int],
    prelude: list[str],
    operation: str,
    parameters: Any,
    many: bool,
) -> _Outcome:
    """On the connection's thread: the pending BEGIN and savepoint statements, then the statement: execute,
    fetch every row, close the cursor."""
    run_prelude(raw, begin, state, prelude)
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()
