"""Group commit behind db.submit(): queued write units share one transaction and one COMMIT.

Every caller is resumed after the COMMIT that made its unit durable, and a failing unit raises to its own
caller only, leaving nothing behind. A batch first runs with no SAVEPOINTs ("optimistic"): if no unit
fails, it commits as it is. If one fails, or a function swallowed a database error that left the
transaction unable to commit (PostgreSQL aborts a transaction at any failed statement; SQLite rolls it
back at a full disk), the batch is rolled back and runs again "carefully", each unit in its own
SAVEPOINT, which gives every unit its own outcome; the next few batches run carefully at once. There, a
function that returns normally from a transaction that can no longer commit fails with TransactionAborted
and its SAVEPOINT is rolled back; SQLite's whole-transaction rollbacks (a full disk, `OR ROLLBACK`) survive
no SAVEPOINT, so that unit fails alone and the batch runs again carefully without it. A SAVEPOINT
and its RELEASE are two round trips per unit on PostgreSQL and most of a small function's ORM work on
SQLite: running without them doubled `submit(fn)` throughput on both (benchmarks/RESULTS.md). So a
function may run more than once, as it may after a deadlock; only the run that commits counts.

A batch of one unit needs no rerun: if it fails, the transaction is rolled back and the caller gets the
error (a function that swallowed an error still goes through the careful run, which fails it with
TransactionAborted instead of reporting a write that is gone).

Statement units of the same shape (the same INSERT with different parameters) run as one `executemany`:
first one SELECT per unique key fails the units whose key is taken (retried deliveries), then the rest run
together; when run carefully, only if that still fails does each run alone. This is where write
throughput comes from: the per-transaction cost (admission, BEGIN, COMMIT, thread hops) is paid once per
batch, not per unit.

Units in a batch are independent (each caller awaits its own), so the batch runs same-shape INSERTs
together and in a fixed order, whatever order they were queued in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from dbfoundation.batch_units import Unit, group_key, may_overlap, runs
from dbfoundation.driver_errors import is_retryable, translate
from dbfoundation.errors import IntegrityViolation, TransactionAborted, WriteTimeout
from dbfoundation.implicit_transactions import writer_without_begin
from dbfoundation.taken_keys import refuse_taken_keys
from dbfoundation.transaction import begin_busy_waited

__all__ = ["GroupCommitter"]

MAX_BATCH = 256
IN_LINE_UNITS = 8  # a batch of this many units keeps its place in line for the write turn (see __init__)
_BATCH_ATTEMPTS = 5  # a batch hit by a PostgreSQL deadlock or serialization failure runs at most this often
_CAREFUL_AFTER_FAILURE = 8  # batches that run with SAVEPOINTs at once after an optimistic batch failed


class GroupCommitter:
    """One background task per Database drains the queue in batches of at most MAX_BATCH units.

    `transaction(serialised, in_line)` must yield a session inside a fresh write transaction and commit it
    on exit (the Database passes its write path, so admission and BEGIN IMMEDIATE apply to every batch).
    `serialised` is False for a batch that may run side by side with other processes' batches
    (PostgreSQL; SQLite serialises every write anyway), see `batch_units.may_overlap`. `in_line` is True
    for a batch of IN_LINE_UNITS or more: its wait for the write turn is the latency of all its callers,
    so it waits in order rather than racing other processes for a turn that has just come free (SQLite's
    lock file, see lock_file.LockFile); a smaller one races, which keeps the turn busy.
    """

    def __init__(self, transaction: Callable[[bool, bool], AbstractAsyncContextManager[AsyncSession]]) -> None:
        self._transaction = transaction
        self._queue: deque[Unit] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._careful_batches = 0  # after an optimistic batch failed: this many run with SAVEPOINTs at once

    async def submit_function(self, function: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        return await self._submit(Unit(asyncio.get_running_loop().create_future(), function=function))

    async def submit_statement(self, statement: Executable, params: Mapping[str, Any] | None) -> Any:
        # No local names the unit: see _submit.
        key = group_key(statement, params)
        return await self._submit(
            Unit(asyncio.get_running_loop().create_future(), statement=statement, params=params, group_key=key)
        )

    async def _submit(self, unit: Unit) -> Any:
        if self._closed:
            raise RuntimeError("GroupCommitter is closed")
        self._queue.append(unit)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="dbfoundation-group-commit")
        future = unit.future
        del unit
        # A caller cancelled while its unit still waits in the queue takes the unit with it (the batch
        # skips cancelled futures); once the batch has started, the unit commits regardless.
        try:
            return await future
        finally:
            # A failed unit's error holds this frame in its traceback: a frame holding the future, which
            # holds the error, would be a reference cycle per failure (a retried delivery refused as a
            # duplicate), left for the cyclic collector and adding to its full collections.
            del future

    async def close(self) -> None:
        """Let queued units finish, then stop the worker."""
        self._closed = True
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _drain(self) -> None:
        while self._queue:
            batch = [
                u
                for u in (self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue))))
                if not u.future.done()
            ]
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[Unit]) -> None:
        careful = self._careful_batches > 0
        if careful:
            self._careful_batches -= 1
        attempt = 1
        while True:
            for unit in batch:
                unit.outcome = None
            try:
                async with self._transaction(not may_overlap(batch), len(batch) >= IN_LINE_UNITS) as session:
                    await _run_units(session, batch, may_retry=attempt < _BATCH_ATTEMPTS, careful=careful)
            except _RunCarefully:
                # A unit failed with no SAVEPOINT to undo it alone: nothing committed; run the batch again
                # with one per unit (not a retry: the attempts are for deadlocks).
                careful = True
                self._careful_batches = _CAREFUL_AFTER_FAILURE
                continue
            except _RetryBatch:
                # A deadlock or serialization failure: our earlier units still hold their locks, so the
                # whole transaction must go before the other writer can finish. Roll back, wait, rerun all.
                await asyncio.sleep(random.uniform(0.005, 0.01) * 2**attempt)  # noqa: S311 - jittered backoff
                attempt += 1
                continue
            except _RollBackBatch:
                pass  # a lone unit failed and was rolled back: its caller gets the unit's own error
            except _RerunWithout as signal:
                # A careful unit left the transaction unable to commit: it alone gets the failure, the rest
                # (rolled back with it) run again without it.
                if not signal.unit.future.done():
                    signal.unit.future.set_exception(signal.error)
                batch = [unit for unit in batch if unit is not signal.unit]
                if batch:
                    continue
            except BaseException as exc:  # admission, BEGIN, COMMIT or the connection failed: nothing committed
                _fail_all(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for unit in batch:
                if unit.future.done() or unit.outcome is None:
                    continue
                ok, value = unit.outcome
                if ok:
                    unit.future.set_result(value)
                else:
                    unit.future.set_exception(value)
            return


class _RetryBatch(Exception):  # a control-flow signal, never seen by callers
    """A unit hit a deadlock or serialization failure: roll the batch back and run it again."""


class _RunCarefully(Exception):  # a control-flow signal, never seen by callers
    """A unit of an optimistic batch failed: roll back, run the batch again with a SAVEPOINT per unit."""


class _RerunWithout(Exception):  # a control-flow signal, never seen by callers
    """A unit of a careful batch left the transaction unable to commit: fail it, run the rest again."""

    def __init__(self, unit: Unit, error: Exception) -> None:
        super().__init__()
        self.unit, self.error = unit, error


class _RollBackBatch(Exception):  # a control-flow signal, never seen by callers
    """The only unit of a batch failed (its outcome says how): roll the transaction back."""


def _fail_all(batch: list[Unit], exc: BaseException) -> None:
    batch_error = (
        exc if isinstance(exc, Exception) else RuntimeError("the Database stopped before this write committed")
    )
    for unit in batch:
        own_failure = unit.outcome is not None and not unit.outcome[0]
        if not unit.future.done():
            unit.future.set_exception(unit.outcome[1] if own_failure else batch_error)  # type: ignore[index]


async def _run_units(session: AsyncSession, batch: list[Unit], *, may_retry: bool, careful: bool) -> None:
    if not careful:
        await _run_optimistically(session, batch, may_retry=may_retry)
        return
    pooled = await (await session.connection()).get_raw_connection()
    for grouped, units in runs(batch):
        if grouped and len(units) > 1:
            units = await _refuse_taken_keys(session, units)
            if len(units) > 1 and await _run_together(session, pooled, units, may_retry=may_retry):
                continue
        for unit in units:
            await _run_alone(session, pooled, unit, may_retry=may_retry)


async def _refuse_taken_keys(session: AsyncSession, units: list[Unit]) -> list[Unit]:
    """Fail, up front, the INSERTs whose unique key is already taken (see taken_keys); the rest run on."""
    table = getattr(units[0].statement, "table", None)
    if not isinstance(table, Table):
        return units
    refusals = await refuse_taken_keys(await session.connection(), table, [u.params or {} for u in units])
    survivors: list[Unit] = []
    for unit, refusal in zip(units, refusals, strict=True):
        if refusal is None:
            survivors.append(unit)
        else:
            unit.outcome = (False, refusal)
    return survivors


async def _run_together(session: AsyncSession, pooled: Any, units: list[Unit], *, may_retry: bool) -> bool:
    try:
        async with session.begin_nested():
            await _execute_group(session, units)
    except Exception as exc:
        if _no_turn(exc):
            raise
        if may_retry and is_retryable(exc):
            raise _RetryBatch from exc
        if _cannot_commit(pooled):
            raise  # SQLite rolled back everything (a full disk): the batch fails with the error itself
        return False  # one bad row sinks the executemany: rerun one SAVEPOINT per unit to find it
    for unit in units:
        unit.outcome = (True, 1)
    return True


async def _run_optimistically(session: AsyncSession, batch: list[Unit], *, may_retry: bool) -> None:
    """Every unit with no SAVEPOINT. A lone unit's failure rolls the transaction back; in a larger batch the
    first failure, or a transaction a function left unable to commit, sends the batch to run carefully."""
    pooled = await (await session.connection()).get_raw_connection()
    if len(batch) == 1:
        await _run_only(session, pooled, batch[0], may_retry=may_retry)
        return
    for grouped, units in runs(batch):
        if not grouped:
            (unit,) = units
            try:
                unit.outcome = (True, await _run_unit(session, unit))
            except Exception as exc:
                _raise_to_rerun(exc, may_retry=may_retry)
            if _cannot_commit(pooled):
                raise _RunCarefully
            continue
        units = await _refuse_taken_keys(session, units)
        if not units:
            continue
        try:
            await _execute_group(session, units)
        except Exception as exc:
            _raise_to_rerun(exc, may_retry=may_retry)
        for unit in units:
            unit.outcome = (True, 1)


def _cannot_commit(pooled: Any) -> bool:
    """Whether the transaction can no longer commit what it ran (see the drivers' `cannot_commit`)."""
    check = getattr(pooled.dbapi_connection, "cannot_commit", None)
    return check is not None and bool(check())


def _no_turn(exc: Exception) -> bool:
    """Whether `exc` says the batch never got its write turn (nothing ran): every unit gets that error."""
    return isinstance(exc, WriteTimeout) or begin_busy_waited(exc) is not None


def _raise_to_rerun(exc: Exception, *, may_retry: bool) -> NoReturn:
    if _no_turn(exc):
        raise exc
    if may_retry and is_retryable(exc):
        raise _RetryBatch from exc
    raise _RunCarefully from None


async def _run_only(session: AsyncSession, pooled: Any, unit: Unit, *, may_retry: bool) -> None:
    """The only unit of its batch, with no SAVEPOINT: on failure the whole transaction is rolled back.
    A statement that is all its transaction would hold goes without BEGIN on PostgreSQL (one round trip
    instead of three, see implicit_transactions): one statement is atomic on its own."""
    try:
        alone = writer_without_begin(pooled.dbapi_connection) if unit.function is None else None
        if alone is not None:
            with alone.without_begin():
                value = await _execute_statement(session, unit)
        else:
            value = await _run_unit(session, unit)
    except Exception as exc:
        _record_failure(unit, exc, may_retry=may_retry)
        raise _RollBackBatch from None  # no cause: the transaction scope must not translate it
    if unit.function is not None and _cannot_commit(pooled):
        raise _RunCarefully  # it swallowed an error: the careful run fails it with TransactionAborted
    unit.outcome = (True, value)


async def _run_alone(session: AsyncSession, pooled: Any, unit: Unit, *, may_retry: bool) -> None:
    """One unit of a careful batch in its own SAVEPOINT (a statement on SQLite needs none)."""
    await _run_in_savepoint(session, pooled, unit, may_retry=may_retry)
    if _cannot_commit(pooled):
        # Still unable to commit after its SAVEPOINT was rolled back: SQLite rolled back the whole
        # transaction (the units before this one too), which no SAVEPOINT can keep.
        outcome = unit.outcome
        failure = outcome[1] if outcome is not None and not outcome[0] else None
        raise _RerunWithout(unit, failure or _aborted("This db.submit() unit", session))


async def _run_in_savepoint(session: AsyncSession, pooled: Any, unit: Unit, *, may_retry: bool) -> None:
    try:
        if unit.function is None and session.bind is not None and session.bind.dialect.name == "sqlite":
            # One statement needs no SAVEPOINT on SQLite: a constraint violation undoes only its own
            # statement and the transaction goes on (sqlite.org/lang_conflict.html, ABORT), which saves two
            # round trips. Other errors (disk full, I/O) may end the whole transaction, so they fail the batch.
            try:
                unit.outcome = (True, await _execute_statement(session, unit))
            except Exception as exc:
                typed = translate(exc, where="db.submit()")
                if not isinstance(typed, IntegrityViolation):
                    raise
                typed.__cause__ = exc
                unit.outcome = (False, typed)
            return
        async with session.begin_nested():
            if unit.function is not None:
                value = await unit.function(session)
                if _cannot_commit(pooled):
                    # It swallowed an error that ended the transaction: rolling back to its SAVEPOINT
                    # recovers the transaction on PostgreSQL; the unit fails instead of reporting success.
                    raise _Swallowed
            else:
                value = await _execute_statement(session, unit)
        unit.outcome = (True, value)
    except _Swallowed:
        unit.outcome = (False, _aborted("This db.submit() function", session))
    except Exception as exc:
        _record_failure(unit, exc, may_retry=may_retry)


class _Swallowed(Exception):  # a control-flow signal, never seen by callers
    """A function returned normally from a transaction that can no longer commit."""


def _aborted(where: str, session: AsyncSession) -> TransactionAborted:
    sqlite = session.bind is not None and session.bind.dialect.name == "sqlite"
    return TransactionAborted(where, backend="sqlite" if sqlite else "postgresql")


def _record_failure(unit: Unit, exc: Exception, *, may_retry: bool) -> None:
    """The unit's own failure, typed, as its outcome; a deadlock or serialization failure reruns the batch,
    and a write turn that never came fails it."""
    if _no_turn(exc):
        raise exc
    if may_retry and is_retryable(exc):
        raise _RetryBatch from exc
    typed = translate(exc, where="db.submit()")
    if typed is not None:
        typed.__cause__ = exc
    unit.outcome = (False, typed or exc)


async def _run_unit(session: AsyncSession, unit: Unit) -> Any:
    return await unit.function(session) if unit.function is not None else await _execute_statement(session, unit)


async def _execute_group(session: AsyncSession, units: list[Unit]) -> None:
    """Same-shape INSERT units as one executemany."""
    statement = units[0].statement
    assert statement is not None  # noqa: S101 - group_key only groups statement units
    connection = await session.connection()
    await connection.execute(statement, [dict(u.params or {}) for u in units])


async def _execute_statement(session: AsyncSession, unit: Unit) -> Any:
    assert unit.statement is not None  # noqa: S101 - only statement units get here
    connection = await session.connection()
    result = await connection.execute(unit.statement, dict(unit.params or {}))
    return getattr(result, "rowcount", None)
