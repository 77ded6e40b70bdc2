"""Write admission: how a SQLite writer waits for its turn, across tasks, threads of one loop, and processes.

Order: the process's writer connection (FIFO, waiting costs no thread), with which the writer prepares its
statements; then, right before the first statement, an exclusive `flock` on the sidecar `<db>-writelock`
file, so writers of other processes wait on the kernel (a worker thread blocks until the file is free)
instead of polling SQLite's busy handler (measured 1.8x throughput and 20-50x lower worst case across 4
processes); a db.submit() batch keeps its place in the kernel's line (WAIT_IN_LINE); then `BEGIN
IMMEDIATE` (see sqlite_driver). One deadline covers all of it; past it, `WriteTimeout`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from dbfoundation.errors import DatabaseUnavailable, WriteTimeout
from dbfoundation.lock_file import LockFile, describe_flock_holder

__all__ = ["RUN_TURNS", "WAIT_IN_LINE", "KeptConnections", "PoolGate", "WriteAdmission", "let_next_writer_run"]

RUN_TURNS = 2
"""Turns in a row one process's writers take while the lock file stays theirs (see WriteAdmission)."""

WAIT_IN_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("dbfoundation_wait_in_line", default=False)
"""True in a task whose wait for the lock file keeps its place in the kernel's line (see lock_file.LockFile): the
group committer's larger batches, each the turn of many callers (batching.IN_LINE_UNITS)."""


class KeptConnections:
    """Connections that transactions leave checked out for the next one (see transaction.TransactionScope).

    Only a task its gate admitted takes or puts one, so there are never more than the gate admits at once.
    After `drain()` (the Database stops) `put()` refuses, and the caller closes its connection instead;
    past `limit` it refuses too, and the connection goes back to the pool.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._connections: list[tuple[Any, float]] = []  # (AsyncConnection, monotonic time it was kept)
        self._limit = limit
        self.drained = False

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Any]:
        return (connection for connection, _since in self._connections)

    def take(self) -> Any:
        """A kept connection, or None."""
        return self.take_with_age()[0]

    def take_with_age(self) -> tuple[Any, float]:
        """A kept connection and the seconds it sat kept, or (None, 0.0)."""
        if not self._connections:
            return None, 0.0
        connection, since = self._connections.pop()
        return connection, time.monotonic() - since

    def put(self, connection: Any) -> bool:
        """Keep `connection` for the next transaction; False after drain() or past the limit (the caller
        closes it)."""
        if self.drained or (self._limit is not None and len(self._connections) >= self._limit):
            return False
        self._connections.append((connection, time.monotonic()))
        return True

    def drain(self) -> list[Any]:
        """Every kept connection, to check back in to the pool, and keep none from now on (stop)."""
        self.drained = True
        kept, self._connections = self._connections, []
        return [connection for connection, _since in kept]


class WriteAdmission:
    """The write path of one SQLite file in this process: its writer connections and its write turn.

    Two steps, so that what a writer does before its first statement does not hold up other processes:

    - `acquire_local()`: a writer connection of this process (FIFO: waiting costs no thread). With it the
      writer opens its session and lets the ORM build its statements; no SQL yet.
    - `acquire_write()`: the turn, right before the transaction's first statement (see
      sqlite_driver.PendingBegin): from the writer of this process before it, or from the lock file, the
      turn among processes. `release_write()` follows the COMMIT at once; the session's tidying up runs after.

    Each step returns or takes the loop-time deadline by which the writer must have begun; past it,
    `WriteTimeout`. Releases run in `finally`, so a cancelled or failing writer never leaks either.

    Runs. A writer whose block runs its own code between statements (check then insert, read then update)
    holds the turn through that code, so with several processes each turn costs a hand-over between
    processes as well (the lock file free while the next process wakes, ~75-120 us on a 2-vCPU VM) and
    runs on a CPU that idled meanwhile. While the last turns ran more than one statement, a second writer
    of the process prepares while the first waits, and takes the turn from it without letting go of the
    lock file (RUN_TURNS in a row); the first yields to it before tidying up. A turn of one statement
    (a plain insert) gains nothing from that, and the second writer's waits cost CPU: then one writer at a
    time prepares, and the lock file goes back to the kernel after every transaction. Measured at 4
    processes x 64 tasks (benchmarks/notes/ingest.md): check-then-insert +5-12 %, a read-then-update
    counter +10-15 %, plain inserts unchanged (two writers for them too: -15 %, though +18-30 % on a host
    three times slower, where a hand-over between processes costs more: which wins depends on the host).
    Without the yield the next writer waited ~80 us for the first one's tidying up; a third writer gained
    nothing.

    `held` keeps the writers' SQLAlchemy connections checked out between transactions (see
    transaction.TransactionScope): only a holder of `acquire_local()` may take one or put one back.
    """

    keeps_connections = True
    max_idle_s: float | None = None  # the writer's connections to a local file: kept however long they sat

    def __init__(self, database_path: Path, *, use_lock_file: bool) -> None:
        self.database_path = database_path
        self._writers = _Gate()
        self._file_lock = LockFile(Path(f"{database_path}-writelock")) if use_lock_file else None
        self._holder: str | None = None  # the writer with the turn, named when a queued one times out
        self._admitted: str | None = None  # else the writer let in last
        self.held = KeptConnections()
        self._turn_taken = False  # a writer of this process has the turn, or asks the lock file for it
        self._turn_line: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._run = 0  # turns in a row since the lock file was taken
        self._after_run = False  # a run just ended: the next writer of this process lets others go first
        self._taken_in_line = False  # the lock file was waited for in the kernel's line (WAIT_IN_LINE)
        self._code_in_turn = 0.0  # moving share of recent turns that ran more than one statement

    @property
    def lock_file(self) -> Path | None:
        return None if self._file_lock is None else self._file_lock.path

    @property
    def runs(self) -> bool:
        """Whether turns pass between writers of this process (see the class doc)."""
        return self._writers.limit > 1

    def waiting_for_lock_file(self) -> bool:
        """Whether a writer of this process waits for another process to let go of the lock file.

        Reads run on the loop's thread (sqlite_driver) only while this is False: a loop that never waits
        comes round to the writer, once the lock file is free, only after every ready task has run its
        read, and with every worker's loop that busy the lock sat free while writers waited (read-mostly,
        4 processes: write p99 0.5-0.9 s with inline reads throughout, ~0.2 s with reads on the thread).
        Sending reads to their threads meanwhile gives the loop idle moments in which the writer runs.
        """
        return self._file_lock is not None and self._file_lock.waiting

    @contextlib.asynccontextmanager
    async def slot(self, timeout_s: float) -> AsyncIterator[float]:
        deadline = await self.acquire(timeout_s)
        try:
            yield deadline
        finally:
            self.release()

    async def acquire(self, timeout_s: float) -> float:
        """A connection and the turn at once; return the deadline. A successful call needs one release()."""
        deadline = await self.acquire_local(timeout_s)
        try:
            await self.acquire_write(deadline)
        except BaseException:
            self.release_local()
            raise
        return deadline

    def release(self) -> None:
        try:
            self.release_write()
        finally:
            self.release_local()

    async def acquire_local(self, timeout_s: float) -> float:
        """A writer connection of this process (FIFO); return the loop-time deadline for the rest."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout_s
        # A write whose statements and COMMIT all run inline (sqlite_driver) never yields to the event loop
        # otherwise: a task writing in a loop would hold up every other task until it stopped.
        await asyncio.sleep(0)
        if not await self._writers.enter(deadline):
            raise WriteTimeout(str(self.database_path), loop.time() - started, self._holder or self._admitted)
        self._admitted = _task_name()
        return deadline

    def release_local(self) -> None:
        self._admitted = None
        self._writers.leave()

    async def acquire_write(self, deadline: float) -> None:
        """The turn: from the writer of this process before this one, or from the lock file. Needs
        acquire_local(); pair with release_write()."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self._turn_taken:
            waiter: asyncio.Future[bool] = loop.create_future()
            self._turn_line.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException as exc:
                self._leave_line(waiter)
                if isinstance(exc, TimeoutError):
                    raise WriteTimeout(str(self.database_path), loop.time() - started, self._holder) from None
                raise
            if handed:
                self._holder = _task_name()
                return
        self._turn_taken = True  # ours to take from the lock file; the writers after us wait in line
        if self._file_lock is None:
            return
        after_run, self._after_run = self._after_run, False
        in_line = WAIT_IN_LINE.get()
        try:
            await self._file_lock.acquire(deadline, in_line=in_line, via_watcher=after_run)
        except BaseException as exc:
            self._pass_on()
            if isinstance(exc, TimeoutError):
                holder = describe_flock_holder(self._file_lock.path) or "another process"
                raise WriteTimeout(str(self.database_path), loop.time() - started, holder) from None
            raise
        self._run = 0
        self._holder = _task_name()
        self._taken_in_line = in_line

    def release_write(self, statements: int | None = None) -> bool:
        """Done with the database file (committed or rolled back): let the next writer in. `statements`:
        how many the committed transaction ran (None: unknown). True if the turn went to another writer
        of this process, which the caller should let run (yield once) before it tidies up."""
        self._holder = None
        if statements is not None:
            self._count_turn(statements > 1)
        self._run += 1
        if self._file_lock is None or self._run < RUN_TURNS:
            while self._turn_line:
                waiter = self._turn_line.popleft()
                if not waiter.done():
                    waiter.set_result(True)
                    return True
        if self._file_lock is not None:
            self._file_lock.release()
            # Else the next writer here, which runs microseconds from now, would take the lock file back
            # before any other process's waiter has woken: it asks through the watcher, a thread hop later.
            self._after_run = bool(self._turn_line)
            if self._taken_in_line:
                _yield_cpu()
        self._pass_on()
        return False

    def _pass_on(self) -> None:
        """The turn is free in this process: the next writer in line asks the lock file for it."""
        while self._turn_line:
            waiter = self._turn_line.popleft()
            if not waiter.done():
                waiter.set_result(False)
                return
        self._turn_taken = False

    def _leave_line(self, waiter: asyncio.Future[bool]) -> None:
        """A writer in line gave up (timed out, cancelled): pass on whatever it was given meanwhile."""
        if not waiter.done() or waiter.cancelled():
            with contextlib.suppress(ValueError):
                self._turn_line.remove(waiter)
        elif waiter.result():  # handed the turn before it could resume
            self.release_write()
        else:  # told to ask the lock file
            self._pass_on()

    def _count_turn(self, code_in_turn: bool) -> None:
        self._code_in_turn += (float(code_in_turn) - self._code_in_turn) / 8
        self._writers.set_limit(RUN_TURNS if self._code_in_turn > 0.5 else 1)

    def close(self) -> None:
        if self._file_lock is not None:
            self._file_lock.close()


class _Gate:
    """A FIFO gate letting in up to `limit` tasks (1 or RUN_TURNS), changeable while tasks are inside."""

    def __init__(self) -> None:
        self.limit = 1
        self._inside = 0
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self, deadline: float) -> bool:
        """Wait for a place until the loop-time `deadline`; False if none came."""
        if self._inside < self.limit and not self._line:
            self._inside += 1  # free and nobody queued: no timer to arm
            return True
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(place)
        try:
            async with asyncio.timeout_at(deadline):
                await place
        except BaseException as exc:
            if place.done() and not place.cancelled():
                self.leave()  # let in just before giving up: pass the place on
            else:
                with contextlib.suppress(ValueError):
                    self._line.remove(place)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def leave(self) -> None:
        self._inside -= 1
        self._let_in()

    def set_limit(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self._let_in()

    def _let_in(self) -> None:
        while self._line and self._inside < self.limit:
            place = self._line.popleft()
            if not place.done():
                self._inside += 1
                place.set_result(None)


def _yield_cpu() -> None:
    """Give this thread's CPU to another runnable thread, if any (sched_yield).

    After a group-commit batch lets go of the lock file its callers resume in one burst of Python (64 at
    4 x 64 tasks), and the next process in the kernel's line, woken by the release, waited for a CPU behind
    such bursts: the lock file sat idle 1.5 ms at p90 and 2.8 ms at p99 between batches. Yielding once
    lets it run first. Alternating runs at 4 x 64: 31,021-36,476 against 27,819-35,362 req/s, p99
    15.7-19.6 against 17.4-20.9 ms. Not after db.write() turns: inserts lost 13-16 % (their next writer
    is often this process's own, and the CPU is what limits them).
    """
    sched_yield = getattr(os, "sched_yield", None)
    if sched_yield is not None:
        sched_yield()


def _task_name() -> str:
    task = asyncio.current_task()
    return f"task {task.get_name()} in pid {os.getpid()}" if task else f"pid {os.getpid()}"


async def let_next_writer_run() -> None:
    """Yield once, so that the writer of this process just handed the turn runs before this one tidies
    up; a cancellation that arrives meanwhile is delivered at the caller's next await instead (the
    transaction has committed)."""
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
            task.cancel()


class PoolGate:
    """FIFO admission to a pool of `size` connections, with WriteAdmission's interface.

    SQLAlchemy's asyncio pool hands a returned connection to whichever task asks next, so under load
    some requests lose the race again and again (p99 of seconds while p50 is milliseconds). A fair
    semaphore in front (asyncio.Semaphore is FIFO since Python 3.11.1) keeps the order of arrival.

    `keep` (SQLite readers, PostgreSQL writes): transactions leave their connection checked out in `held`
    for the next one (see transaction.TransactionScope), never more than `size` nor than `keep_limit`.
    `max_idle_s`: a connection kept longer than this goes back to the pool, whose checkout pings it.
    """

    def __init__(
        self,
        size: int,
        *,
        timeout_s: float,
        where: str,
        yield_first: bool = False,
        keep: bool = False,
        keep_limit: int | None = None,
        max_idle_s: float | None = None,
    ) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self._timeout_s = timeout_s
        self._where = where
        # SQLite reads that run on the loop's thread (sqlite_driver) never wait, so a task reading in a loop
        # would never let another task run; such a gate yields once per transaction.
        self._yield_first = yield_first
        self.keeps_connections = keep
        self.held = KeptConnections(keep_limit)
        self.max_idle_s = max_idle_s

    async def acquire_local(self, timeout_s: float) -> float:
        loop = asyncio.get_running_loop()
        if self._yield_first:
            await asyncio.sleep(0)
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # a connection is free and nobody queued: no timer to arm
        else:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise DatabaseUnavailable(
                    self._where,
                    "no pooled connection became free within DATABASE_POOL_TIMEOUT",
                    "Raise DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW, or keep sessions shorter.",
                ) from None
        return loop.time() + timeout_s

    def release_local(self) -> None:
        self._semaphore.release()
