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
import contextlib
import contextvars
import fcntl
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from dbfoundation.errors import DatabaseUnavailable, WriteTimeout

__all__ = ["WAIT_IN_LINE", "KeptConnections", "PoolGate", "WriteAdmission", "describe_flock_holder"]

WAIT_IN_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("dbfoundation_wait_in_line", default=False)
"""True in a task whose wait for the lock file keeps its place in the kernel's line (see _FileLock): the
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
    """The write path of one SQLite file in this process: its writer connection and its write turn.

    Two steps, so that what a writer does before its first statement does not hold up other processes:

    - `acquire_local()`: this process's writer connection (FIFO `asyncio.Semaphore`: waiting costs no
      thread). With it the writer opens its session and lets the ORM build its statements; no SQL yet.
    - `acquire_write()`: the lock file, the turn among processes. The driver asks for it right before
      the transaction's first statement (see sqlite_driver.PendingBegin), and `release_write()` follows
      the COMMIT at once; the session's tidying up runs after.

    Each step returns or takes the loop-time deadline by which the writer must have begun; past it,
    `WriteTimeout`. Releases run in `finally`, so a cancelled or failing writer never leaks either.

    `held` keeps the writer's SQLAlchemy connection checked out between transactions (see
    transaction.TransactionScope): only the holder of `acquire_local()` may take it or put it back.
    """

    keeps_connections = True
    max_idle_s: float | None = None  # the writer's one connection to a local file: kept however long it sat

    def __init__(self, database_path: Path, *, use_lock_file: bool) -> None:
        self.database_path = database_path
        self._connection = asyncio.Semaphore(1)  # FIFO since Python 3.11.1
        self._file_lock = _FileLock(Path(f"{database_path}-writelock")) if use_lock_file else None
        self._holder: str | None = None
        self.held = KeptConnections()

    @property
    def lock_file(self) -> Path | None:
        return None if self._file_lock is None else self._file_lock.path

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
        """The writer connection of this process (FIFO); return the loop-time deadline for the rest."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout_s
        # A write whose statements and COMMIT all run inline (sqlite_driver) never yields to the event loop
        # otherwise: a task writing in a loop would hold up every other task until it stopped.
        await asyncio.sleep(0)
        if not self._connection.locked():
            await self._connection.acquire()  # free and nobody queued: no timer to arm
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._connection.acquire()
            except TimeoutError:
                raise WriteTimeout(str(self.database_path), loop.time() - started, self._holder) from None
        task = asyncio.current_task()  # the one a queued writer waits for, named when it times out
        self._holder = f"task {task.get_name()} in pid {os.getpid()}" if task else f"pid {os.getpid()}"
        return deadline

    def release_local(self) -> None:
        self._holder = None
        self._connection.release()

    async def acquire_write(self, deadline: float) -> None:
        """The lock file (needs acquire_local(): one writer of this process asks at a time). Pair with
        release_write()."""
        if self._file_lock is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._file_lock.acquire(deadline, in_line=WAIT_IN_LINE.get())
        except TimeoutError:
            holder = describe_flock_holder(self._file_lock.path) or "another process"
            raise WriteTimeout(str(self.database_path), loop.time() - started, holder) from None

    def release_write(self) -> None:
        """Done with the database file (committed or rolled back): let the next writer in, of any process.

        The lock file goes back to the kernel after every transaction. Keeping it for the next writer of
        this process (runs of up to 32) was measured slower since the turn shrank to the statements
        themselves: 4 processes x 64 tasks ran ~2,500 inserts/s with runs and ~3,000 without, because
        while one process writes the others prepare their next transaction on the other core."""
        if self._file_lock is not None:
            self._file_lock.release()

    def close(self) -> None:
        if self._file_lock is not None:
            self._file_lock.close()


_Handed = tuple[int, bool]  # an in-line wait's result: the descriptor holding the lock, whether it waited


class _FileLock:
    """An exclusive flock taken on the event loop's thread, with the waiting done on a watcher thread.

    The lock itself is only ever taken with a non-blocking `flock` on the loop, right when the writer runs,
    so the holder uses it at once and gives it back right after its COMMIT. When it is taken, the watcher
    thread blocks on its own descriptor until the lock is free, lets go of it at once, and wakes the
    writer, which tries again. Letting that thread keep the lock instead held it while the writer waited
    for its loop to come round (busy with other requests): in a read-mostly workload over 4 processes a
    write's p99 went from ~0.7 s to ~0.15-0.2 s, and check-then-insert ran ~20 % faster, this way.

    That way is first come, first served at every release: whichever process is on a CPU then takes the
    lock, and the kernel's line of blocked waiters (Linux keeps them in order) is lost. For a large group-
    commit batch (`in_line`), whose callers all wait and whose loop is idle, the order matters more than
    the moment the loop needs to come round: with 4 processes x 64 tasks of db.submit(), one process saw 0 to
    27 turns of the others between two of its own (fair: 3) and the p99 of a request was 30-36 ms. Such a
    waiter's watcher keeps the lock it waited for in line, on a descriptor of its own, and hands it over
    (p99 22 ms there, max 30-70 ms against 65-105). A waiter that gives up leaves its request behind: the
    watcher takes the lock when its turn comes and the loop lets go of it at once (_hand).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None  # the descriptor the lock is taken on by the loop
        self._held: int | None = None  # the descriptor the lock is held on now (ours, or one handed over)
        self._watcher: _FreeWatcher | None = None
        self.waiting = False  # a writer of this process waits for another process to let go
        self._line_formed = False  # our last wait in line met a held lock: others are likely waiting too

    async def acquire(self, deadline: float, *, in_line: bool = False) -> None:
        if self._fd is None:
            self._fd = _open(self.path)
        loop = asyncio.get_running_loop()
        # While a line forms, a lock found free is most often being passed on: its release woke the next in
        # line, which has not run yet. Asking through the watcher gives that waiter the head start of one
        # thread hop (4 x 64 tasks: p99 19-20 ms against 20.5-21.5).
        straight_to_line = in_line and self._line_formed
        while True:
            if not straight_to_line:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a syscall that never waits
                    self._held = self._fd
                    self._line_formed = False
                    return
                except BlockingIOError:
                    pass
            straight_to_line = False
            if self._watcher is None:
                self._watcher = _FreeWatcher(self.path)
            woken: asyncio.Future[_Handed | None] = loop.create_future()
            self._watcher.watch(loop, woken, in_line)
            self.waiting = True
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await woken  # a waiter that gives up leaves its request behind (see _hand)
            except BaseException:
                # Handed the lock, then cancelled (or timed out) before it resumed: let it go.
                if woken.done() and not woken.cancelled() and (got := woken.result()) is not None:
                    _let_go(got[0], close=True)
                raise
            finally:
                self.waiting = False
            if handed is not None:
                self._held, self._line_formed = handed
                return

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            _let_go(held, close=held != self._fd)

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None


class _FreeWatcher:
    """A daemon thread that waits for the lock file on the writers' behalf and wakes the futures that asked.

    A plain request: the thread blocks on its own descriptor until the lock is free, lets go at once and
    resolves the future (and every request made meanwhile) with None. An `in_line` request: the thread
    takes the lock on a fresh descriptor, blocking if it is held, and keeps it, resolving the future with
    (that descriptor, whether it had to wait).

    It resolves each future with one `call_soon_threadsafe`, so the writer runs two loop iterations after
    the lock came free; `asyncio.to_thread` behind a shield took four (the executor future, the task
    around to_thread, the shield, the writer), and with every worker's loop busy each iteration is many
    requests long: that is when the lock sat free while the writers that wanted it waited for their loops.
    A daemon thread also never holds up the interpreter's exit while it blocks on the lock.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = _open(path)
        self._requests: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[_Handed | None], bool] | None]
        self._requests = queue.SimpleQueue()
        threading.Thread(target=self._run, name="dbfoundation-writelock", daemon=True).start()

    def watch(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[_Handed | None], in_line: bool) -> None:
        self._requests.put((loop, future, in_line))

    def close(self) -> None:
        self._requests.put(None)  # the thread closes its descriptor and ends once it is not waiting

    def _run(self) -> None:
        try:
            while (request := self._requests.get()) is not None:
                loop, future, in_line = request
                handed = self._take_in_line() if in_line else None
                if handed is not None:
                    try:
                        loop.call_soon_threadsafe(_hand, future, handed)
                    except RuntimeError:  # that loop has closed: nobody is waiting
                        _let_go(handed[0], close=True)
                    continue
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                waiting = [request]
                while not self._requests.empty():  # one free lock answers every request made meanwhile
                    more = self._requests.get_nowait()
                    if more is None:
                        self._requests.put(None)
                        break
                    waiting.append(more)  # an in-line one among them just asks again
                for loop, future, _in_line in waiting:
                    with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                        loop.call_soon_threadsafe(_hand, future, None)
        finally:
            os.close(self._fd)

    def _take_in_line(self) -> _Handed | None:
        """The lock on a descriptor of its own, waited for in the kernel's line if it is held; None if no
        descriptor could be had (out of file descriptors): the request then waits as a plain one."""
        try:
            fd = _open(self._path)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, False
        except BlockingIOError:
            pass
        except OSError:
            os.close(fd)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # in the kernel's line; kept for the writer
        except OSError:
            os.close(fd)
            return None
        return fd, True


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _let_go(fd: int, *, close: bool) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    if close:
        os.close(fd)


def _hand(future: asyncio.Future[_Handed | None], handed: _Handed | None) -> None:
    """On the loop: tell the waiter the lock came free (None) or give it the lock (see _Handed); a waiter
    that timed out or was cancelled left its future behind, and a lock taken for it is let go."""
    if not future.done():
        future.set_result(handed)
    elif handed is not None:
        _let_go(handed[0], close=True)


def describe_flock_holder(path: Path) -> str | None:
    """Name the process holding an flock on `path`, from /proc/locks (Linux); None where unknown.

    Only called on the slow path (a timeout), so reading /proc costs nothing in normal operation.
    """
    try:
        inode = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4121 fd:01:1234567 0 EOF"; waiters carry "->" and are skipped.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            pid = fields[4]
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                command = ""
            return f"pid {pid}" + (f" ({command[:80]})" if command else "")
    return None


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
