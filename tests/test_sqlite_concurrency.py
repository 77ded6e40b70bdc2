"""SQLite under concurrent writers: tasks, OS processes, foreign writers, cancellation, the event loop.

Every test here proves its writers really overlapped before trusting the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import multiprocessing
import os
import queue
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import _workers
from _lock_files import lock_file_is_free
from dbfoundation import Database, DatabaseSettings, ReadOnlyError, WriteTimeout, admission, lock_file
from dbfoundation.batching import IN_LINE_UNITS

SPAWN = multiprocessing.get_context("spawn")


def _make_counter(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
    connection.execute("INSERT INTO counter VALUES (1, 0)")
    connection.commit()
    connection.close()


def _counter_value(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0])
    finally:
        connection.close()


def _run_processes(target: Any, url: str, *, processes: int, tasks: int, seconds: float) -> list[dict[str, Any]]:
    barrier = SPAWN.Barrier(processes)
    out = SPAWN.Queue()
    workers = [SPAWN.Process(target=target, args=(url, barrier, seconds, tasks, out)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results: list[dict[str, Any]] = []
    give_up = time.monotonic() + 120
    while len(results) < processes:
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            # A child that died without reporting would otherwise leave us waiting for the timeout.
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not dead, f"a worker process failed with exit code {dead[0]}"
            assert time.monotonic() < give_up, "the worker processes did not finish in time"
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    return results


def _make_hits(path: Path) -> str:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE hits (n INTEGER NOT NULL)")
    connection.commit()
    connection.close()
    return f"sqlite:///{path}"


def test_four_processes_of_32_writers_lose_no_increment(tmp_path: Path) -> None:
    """4 processes x 32 tasks doing read-modify-write through db.write() see no error and lose no update,
    with the turn passed between writers of a process (runs, see test_write_runs) as well as between processes."""
    path = tmp_path / "app.db"
    _make_counter(path)
    results = _run_processes(
        _workers.counter_with_dbfoundation, f"sqlite:///{path}", processes=4, tasks=32, seconds=3.0
    )
    errors = [e for r in results for e in r["errors"]]
    acknowledged = sum(r["acks"] for r in results)
    assert errors == []
    assert all(r["acks"] > 0 for r in results)  # every process really wrote, so they overlapped
    assert all(r["runs"] for r in results)
    assert _counter_value(path) == acknowledged


def test_the_naive_deferred_pattern_hits_database_is_locked(tmp_path: Path) -> None:
    """The same workload with WAL + busy_timeout and deferred transactions fails: the test can fail."""
    path = tmp_path / "app.db"
    _make_counter(path)
    results = _run_processes(
        _workers.counter_the_naive_way, f"sqlite+aiosqlite:///{path}", processes=4, tasks=32, seconds=2.0
    )
    errors = [e for r in results for e in r["errors"]]
    assert any("database is locked" in e for e in errors)


async def test_overlapping_writers_queue_and_lose_nothing(tmp_path: Path) -> None:
    """Fifty writers released together all commit, one after another, and no row is lost."""
    async with Database(DatabaseSettings(url=f"sqlite:///{tmp_path / 'app.db'}")) as db:
        async with db.write() as session:
            await session.execute(text("CREATE TABLE hits (n INTEGER NOT NULL)"))
        gate = asyncio.Barrier(50)
        asked: list[float] = []
        held: list[tuple[float, float]] = []

        async def writer(n: int) -> None:
            await gate.wait()
            asked.append(time.monotonic())
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})
                began = time.monotonic()  # a writer's turn starts with its first statement
                await asyncio.sleep(0.005)  # keep the slot so the others must queue
                held.append((began, time.monotonic()))

        await asyncio.gather(*(writer(n) for n in range(50)))
        first_release = min(end for _, end in held)
        assert sum(t < first_release for t in asked) >= 25  # they really overlapped
        held.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(held))  # one writer at a time
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits")) == 50


async def test_foreign_writer_is_waited_for_then_the_write_succeeds(tmp_path: Path) -> None:
    """A plain sqlite3 process holding BEGIN IMMEDIATE for 1 s delays db.write(), which then commits."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url) as db:
        ready = SPAWN.Event()
        foreign = SPAWN.Process(target=_workers.hold_sqlite_write_lock, args=(str(tmp_path / "app.db"), 1.0, ready))
        foreign.start()
        assert await asyncio.to_thread(ready.wait, 20)
        async with db.write() as session:
            # Our transaction began after the foreign one committed: it already sees the foreign row.
            assert await session.scalar(text("SELECT count(*) FROM hits WHERE n = -1")) == 1
            await session.execute(text("INSERT INTO hits VALUES (1)"))
        await asyncio.to_thread(foreign.join, 20)
        async with db.read() as session:
            assert sorted(await session.scalars(text("SELECT n FROM hits"))) == [-1, 1]


async def test_foreign_writer_past_the_write_timeout_raises_write_timeout(tmp_path: Path) -> None:
    """With DATABASE_WRITE_TIMEOUT=0.2 a 1 s foreign lock gives WriteTimeout in time, and the next write works."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url, write_timeout=0.2) as db:
        ready = SPAWN.Event()
        foreign = SPAWN.Process(target=_workers.hold_sqlite_write_lock, args=(str(tmp_path / "app.db"), 1.0, ready))
        foreign.start()
        assert await asyncio.to_thread(ready.wait, 20)
        with pytest.raises(WriteTimeout, match="DATABASE_WRITE_TIMEOUT") as caught:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (1)"))
        assert foreign.is_alive()  # gave up while the foreign writer still held the lock
        assert "outside" in str(caught.value.holder)
        await asyncio.to_thread(foreign.join, 20)
        async with db.write() as session:  # the slot and the connection are clean
            await session.execute(text("INSERT INTO hits VALUES (2)"))
        async with db.read() as session:
            assert sorted(await session.scalars(text("SELECT n FROM hits"))) == [-1, 2]


async def test_write_timeout_in_one_process_names_the_holding_task(tmp_path: Path) -> None:
    """A writer queued behind a slow writer of the same process times out naming the holder; the slot stays usable."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url, write_timeout=0.2) as db:
        inside = asyncio.Event()
        release = asyncio.Event()

        async def slow() -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (1)"))
                inside.set()
                await release.wait()

        holder = asyncio.create_task(slow(), name="slow-writer")
        await inside.wait()
        with pytest.raises(WriteTimeout, match="slow-writer"):
            async with db.write() as session:  # the turn is asked for with the first statement
                await session.execute(text("INSERT INTO hits VALUES (99)"))
        release.set()
        await holder
        async with db.write() as session:
            await session.execute(text("INSERT INTO hits VALUES (2)"))
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits")) == 2


async def test_readers_are_not_blocked_by_a_held_write_slot(tmp_path: Path) -> None:
    """While a writer holds the slot with uncommitted rows, reads complete and see the last committed state."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url) as db:
        inside = asyncio.Event()
        release = asyncio.Event()

        async def writer() -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (1)"))
                inside.set()
                await release.wait()

        task = asyncio.create_task(writer())
        await inside.wait()
        for _ in range(20):
            async with db.read() as session:
                assert await session.scalar(text("SELECT count(*) FROM hits")) == 0
        assert not task.done()  # the reads finished while the writer still held the slot
        release.set()
        await task
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits")) == 1


async def test_a_write_through_read_fails_fast_and_clearly(tmp_path: Path) -> None:
    """db.read() is query_only: an INSERT raises ReadOnlyError at once, even while a writer holds the slot."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url) as db:
        release = asyncio.Event()
        inside = asyncio.Event()

        async def writer() -> None:
            async with db.write():
                inside.set()
                await release.wait()

        task = asyncio.create_task(writer())
        await inside.wait()
        # query_only refuses before asking for a lock, so this does not wait for the writer's slot.
        with pytest.raises(ReadOnlyError, match=r"db\.write\(\)"):
            async with db.read() as session:
                await session.execute(text("INSERT INTO hits VALUES (1)"))
        release.set()
        await task


async def test_event_loop_stays_responsive_while_100_writers_queue(tmp_path: Path) -> None:
    """A 1 ms heartbeat shows no gap over 50 ms while 100 writers queue behind another process's write slot."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url) as db:
        ready = SPAWN.Event()
        other = SPAWN.Process(target=_workers.hold_write_slot, args=(url, 1.5, ready))
        other.start()
        assert await asyncio.to_thread(ready.wait, 30)
        gaps: list[float] = []
        done = asyncio.Event()

        async def heartbeat() -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.001)
                gaps.append(loop.time() - before)

        async def writer(n: int) -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})

        began = time.monotonic()
        writers = [asyncio.create_task(writer(n)) for n in range(100)]
        await asyncio.sleep(0.01)  # let them all reach the queue, then watch the loop while they wait
        beat = asyncio.create_task(heartbeat())
        await asyncio.gather(*writers)
        queued_for = time.monotonic() - began
        done.set()
        await beat
        await asyncio.to_thread(other.join, 20)
        assert queued_for > 0.5  # the writers really waited behind the other process
        assert len(gaps) > 100
        assert max(gaps) < 0.050
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits WHERE n >= 0")) == 100


async def test_cancelling_writers_mid_transaction_leaks_no_slot_and_no_partial_write(tmp_path: Path) -> None:
    """500 writers cancelled at random points under load: the slot stays free and no half transaction shows."""
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE parts (tx INTEGER NOT NULL, part INTEGER NOT NULL)")
    connection.close()
    async with Database.from_url(f"sqlite:///{path}", write_timeout=10.0) as db:
        tx_ids = itertools.count()
        current: asyncio.Task[None] | None = None

        async def writer() -> None:
            nonlocal current
            tx = next(tx_ids)
            async with db.write() as session:
                current = asyncio.current_task()
                try:
                    await session.execute(text("INSERT INTO parts VALUES (:tx, 1)"), {"tx": tx})
                    await asyncio.sleep(0.001)
                    await session.execute(text("INSERT INTO parts VALUES (:tx, 2)"), {"tx": tx})
                finally:
                    current = None

        cancelled = mid_transaction = 0
        while cancelled < 500:
            tasks = [asyncio.create_task(writer()) for _ in range(40)]
            while not all(t.done() for t in tasks):
                await asyncio.sleep(random.uniform(0, 0.002))
                if current is not None and not current.done():
                    current.cancel()  # cancelled between its two INSERTs, holding the slot
                    mid_transaction += 1
                queued = [t for t in tasks if not t.done() and t is not current]
                if queued and random.random() < 0.3:
                    random.choice(queued).cancel()  # cancelled while waiting for the slot
            results = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled += sum(isinstance(r, asyncio.CancelledError) for r in results)
            assert not [r for r in results if isinstance(r, Exception)]
        assert mid_transaction >= 200
        async with db.write() as session:  # a leaked slot would end in WriteTimeout here
            await session.execute(text("INSERT INTO parts VALUES (-1, 1)"))
            await session.execute(text("INSERT INTO parts VALUES (-1, 2)"))
        # Committed writes leave their connections held for the next ones (one per writer a run lets in at
        # once); every checked-out connection is one of them, so none leaked.
        assert db._admission is not None
        assert 1 <= len(db._admission.held) <= admission.RUN_TURNS
        assert db.engines.writer.pool.checkedout() == len(db._admission.held)  # type: ignore[attr-defined]
        async with db.read() as session:
            counts = set(await session.scalars(text("SELECT count(*) FROM parts GROUP BY tx")))
        assert counts == {2}  # every transaction is whole: both parts or nothing


def _open_descriptors(path: Path) -> int:
    """How many of this process's file descriptors are open on `path`."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return found


def _blocked_on(lock_path: Path) -> int:
    """How many flock requests wait in the kernel for `lock_path` (from /proc/locks: "->" lines)."""
    inode = lock_path.stat().st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and "FLOCK" in line and line.split()[6].endswith(f":{inode}"))


def test_submit_batches_of_several_processes_get_the_lock_file_in_the_order_they_asked(tmp_path: Path) -> None:
    """A db.submit() batch of IN_LINE_UNITS waits for the lock file in the kernel's line and is handed it
    there, so batches of several processes go in the order they began to wait. (A writer that only waits
    for the lock to come free races for it at every release: whichever process is on a CPU wins.) Here the
    lock is held while four processes ask one after another; each is seen waiting in the kernel before the
    next asks."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = Path(f"{tmp_path / 'app.db'}-writelock")
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    out = SPAWN.Queue()
    readies, gos = [SPAWN.Event() for _ in range(4)], [SPAWN.Event() for _ in range(4)]
    workers = [
        SPAWN.Process(target=_workers.submit_when_told, args=(url, n, IN_LINE_UNITS, readies[n], gos[n], out))
        for n in range(4)
    ]
    try:
        for worker in workers:
            worker.start()
        for ready in readies:
            assert ready.wait(60), "a worker process did not start its Database"
        for n, go in enumerate(gos):
            go.set()
            give_up = time.monotonic() + 30
            while _blocked_on(lock_path) < n + 1:
                assert time.monotonic() < give_up, f"process {n} never waited for the lock file in the kernel"
                time.sleep(0.01)
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    assert sorted(out.get(timeout=60) for _ in workers) == [0, 1, 2, 3]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    connection = sqlite3.connect(tmp_path / "app.db")
    try:
        batches = [n // 100 for (n,) in connection.execute("SELECT n FROM hits ORDER BY rowid")]
    finally:
        connection.close()
    assert batches == [n for n in range(4) for _ in range(IN_LINE_UNITS)]


async def test_a_batch_that_goes_straight_to_the_line_takes_a_free_lock_file(tmp_path: Path) -> None:
    """After a batch had to wait in line, the next one asks through the watcher thread first (a lock found
    free is most often being passed on): with nobody else there it still gets the lock at once, and the
    one after that asks the kernel directly again."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = Path(f"{tmp_path / 'app.db'}-writelock")
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    insert = text("INSERT INTO hits VALUES (:n)")
    try:
        async with Database.from_url(url, write_timeout=5.0) as db:
            fcntl.flock(other, fcntl.LOCK_EX)
            first = asyncio.gather(*(db.submit(insert, {"n": 1}) for _ in range(IN_LINE_UNITS)))
            async with asyncio.timeout(5):
                while not _blocked_on(lock_path):  # noqa: ASYNC110 - the kernel's line has no event to await
                    await asyncio.sleep(0.01)
            fcntl.flock(other, fcntl.LOCK_UN)
            await first
            file_lock = db._admission._file_lock  # type: ignore[union-attr]
            assert file_lock._line_formed  # it met a held lock
            async with asyncio.timeout(2):
                await asyncio.gather(*(db.submit(insert, {"n": 2}) for _ in range(IN_LINE_UNITS)))
            assert not file_lock._line_formed  # through the watcher, which found the lock free
            async with db.read() as session:
                assert await session.scalar(text("SELECT count(*) FROM hits")) == 2 * IN_LINE_UNITS
        assert lock_file_is_free(tmp_path / "app.db")
    finally:
        os.close(other)


async def test_a_submit_batch_that_gave_up_waiting_in_line_leaves_the_lock_file_free(tmp_path: Path) -> None:
    """A batch that times out while waiting in the kernel's line leaves its request there: the watcher
    takes the lock when it comes free and lets go at once, so the next writer goes straight in."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = Path(f"{tmp_path / 'app.db'}-writelock")
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        async with Database.from_url(url, write_timeout=0.3) as db:
            batch = [db.submit(text("INSERT INTO hits VALUES (1)")) for _ in range(IN_LINE_UNITS)]
            outcomes = await asyncio.gather(*batch, return_exceptions=True)
            assert all(isinstance(outcome, WriteTimeout) for outcome in outcomes), outcomes
            assert _blocked_on(lock_path) == 1  # the abandoned request still waits in line
            fcntl.flock(other, fcntl.LOCK_UN)
            await db.submit(text("INSERT INTO hits VALUES (2)"))  # within write_timeout: nothing kept the lock
            async with db.read() as session:
                assert list(await session.scalars(text("SELECT n FROM hits"))) == [2]
        assert lock_file_is_free(tmp_path / "app.db")
    finally:
        os.close(other)


async def test_every_unit_of_a_batch_whose_turn_never_came_gets_write_timeout(tmp_path: Path) -> None:
    """A writer outside our lock file (the sqlite3 shell) keeps the database locked past write_timeout: each
    unit of the waiting db.submit() batch gets WriteTimeout naming it, not only the first (the others used
    to get SQLAlchemy's PendingRollbackError, or the raw `database is locked`), and nothing is written."""
    url = _make_hits(tmp_path / "app.db")
    foreign = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    foreign.execute("BEGIN IMMEDIATE")
    try:
        async with Database.from_url(url, write_timeout=0.3) as db:
            batch = [db.submit(text("INSERT INTO hits VALUES (:n)"), {"n": n}) for n in range(8)]
            outcomes = await asyncio.gather(*batch, return_exceptions=True)
            assert all(isinstance(outcome, WriteTimeout) for outcome in outcomes), outcomes
            assert all("outside dbfoundation" in str(outcome) for outcome in outcomes), outcomes[0]
            foreign.execute("COMMIT")
            await db.submit(text("INSERT INTO hits VALUES (99)"))
            async with db.read() as session:
                assert list(await session.scalars(text("SELECT n FROM hits"))) == [99]
    finally:
        foreign.close()


async def test_a_batch_waits_as_a_plain_writer_when_no_descriptor_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting in line takes a descriptor of its own; out of descriptors (EMFILE), the batch waits for the
    lock file to come free as any writer does instead of losing its watcher thread."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = Path(f"{tmp_path / 'app.db'}-writelock")
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    insert = text("INSERT INTO hits VALUES (:n)")

    async def release_once_waiting() -> None:
        while not _blocked_on(lock_path):  # noqa: ASYNC110 - the kernel's line has no event to await
            await asyncio.sleep(0.01)
        fcntl.flock(other, fcntl.LOCK_UN)

    try:
        async with Database.from_url(url, write_timeout=3.0) as db:
            fcntl.flock(other, fcntl.LOCK_EX)  # a first wait starts the watcher thread
            await asyncio.gather(db.submit(insert, {"n": 0}), release_once_waiting())

            def no_descriptor_left(path: Path) -> int:
                raise OSError(errno.EMFILE, "Too many open files")

            monkeypatch.setattr(lock_file, "_open", no_descriptor_left)
            fcntl.flock(other, fcntl.LOCK_EX)
            batch = asyncio.gather(*(db.submit(insert, {"n": 1}) for _ in range(IN_LINE_UNITS)))
            await asyncio.gather(batch, release_once_waiting())
            async with db.read() as session:
                assert await session.scalar(text("SELECT count(*) FROM hits")) == 1 + IN_LINE_UNITS
    finally:
        os.close(other)


async def test_lock_file_is_given_back_when_the_last_local_writer_leaves(tmp_path: Path) -> None:
    """After a burst of local writers the lock file is free."""
    url = _make_hits(tmp_path / "app.db")
    async with Database.from_url(url) as db:

        async def writer(n: int) -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})

        await asyncio.gather(*(writer(n) for n in range(100)))
        assert lock_file_is_free(tmp_path / "app.db")


async def test_the_lock_file_is_held_from_the_first_statement_to_the_commit(tmp_path: Path) -> None:
    """What a block does before its first statement holds up no other process; a block that runs no
    statement never takes the lock file; the COMMIT gives it back before the block's session is tidied."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = tmp_path / "app.db"
    async with Database.from_url(url) as db:
        async with db.write() as session:
            assert lock_file_is_free(lock_path)
            await session.execute(text("INSERT INTO hits VALUES (1)"))
            assert not lock_file_is_free(lock_path)
        assert lock_file_is_free(lock_path)
        async with db.write():
            assert lock_file_is_free(lock_path)
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits")) == 1


async def test_a_writer_cancelled_while_waiting_for_the_lock_file_leaves_it_free(tmp_path: Path) -> None:
    """Cancelled at its first statement, queued behind another process's flock: once that process lets
    go the abandoned wait gives the lock file back, and the next writer goes straight in."""
    url = _make_hits(tmp_path / "app.db")
    other = os.open(f"{tmp_path / 'app.db'}-writelock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # another process's writer holds the turn
    try:
        async with Database.from_url(url) as db:

            async def writer() -> None:
                async with db.write() as session:
                    await session.execute(text("INSERT INTO hits VALUES (1)"))

            waiting = asyncio.create_task(writer())
            await asyncio.sleep(0.1)
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            fcntl.flock(other, fcntl.LOCK_UN)
            async with asyncio.timeout(5):
                async with db.write() as session:
                    await session.execute(text("INSERT INTO hits VALUES (2)"))
            async with db.read() as session:
                assert list(await session.scalars(text("SELECT n FROM hits"))) == [2]
        assert lock_file_is_free(tmp_path / "app.db")
    finally:
        os.close(other)


async def test_the_lock_file_watcher_wakes_the_writer_and_ends_with_the_database(tmp_path: Path) -> None:
    """While another process holds the lock file a watcher thread waits for it (a daemon: it cannot hold up
    the interpreter's exit); a waiter that timed out leaves only a stale request, the next writer is
    woken when the lock comes free, and stop() ends the thread and closes its descriptor."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = Path(f"{tmp_path / 'app.db'}-writelock")
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        async with Database.from_url(url, write_timeout=2.0) as db:

            async def write(n: int) -> None:
                async with db.write() as session:
                    await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})

            with pytest.raises(WriteTimeout):
                await write(1)
            (watcher,) = [t for t in threading.enumerate() if t.name == "dbfoundation-writelock"]
            assert watcher.daemon
            assert watcher.is_alive()
            waiting = asyncio.create_task(write(2))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            fcntl.flock(other, fcntl.LOCK_UN)
            async with asyncio.timeout(5):
                await waiting
            async with db.read() as session:
                assert list(await session.scalars(text("SELECT n FROM hits"))) == [2]
            assert _open_descriptors(lock_path) == 3  # the writer's, the watcher's and `other`
        await asyncio.to_thread(watcher.join, 5)
        assert not watcher.is_alive()
        assert _open_descriptors(lock_path) == 1  # only `other`
    finally:
        os.close(other)


async def test_a_connection_block_that_commits_and_goes_on_takes_its_turn_again(tmp_path: Path) -> None:
    """db.connection() may commit and keep writing: the second transaction takes the lock file again (and
    runs inline again), and the connection goes back to the pool without the scope's hooks."""
    url = _make_hits(tmp_path / "app.db")
    lock_path = tmp_path / "app.db"
    async with Database.from_url(url) as db:
        async with db.connection() as connection:
            await connection.execute(text("INSERT INTO hits VALUES (1)"))
            await connection.commit()
            assert lock_file_is_free(lock_path)
            await connection.execute(text("INSERT INTO hits VALUES (2)"))
            assert not lock_file_is_free(lock_path)
        assert lock_file_is_free(lock_path)
        async with db.engines.writer.connect() as plain:  # outside any scope: no stale limits left behind
            assert "dbf_begin_limits" not in plain.info
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT n FROM hits ORDER BY n"))) == [1, 2]


async def test_a_batch_taken_in_line_gives_up_the_cpu_after_its_release_and_a_db_write_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an in-line batch lets go of the lock file the process yields its CPU once (sched_yield), so
    the next process in the kernel's line runs before this one's callers resume; db.write() turns do not."""
    url = _make_hits(tmp_path / "app.db")
    yields: list[float] = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(time.monotonic()))
    async with Database.from_url(url) as db:
        for n in range(3):
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})
        assert yields == []
        insert = text("INSERT INTO hits VALUES (:n)")
        await asyncio.gather(*(db.submit(insert, {"n": 100 + n}) for n in range(IN_LINE_UNITS)))
        assert len(yields) == 1  # one batch, one release
        assert lock_file_is_free(tmp_path / "app.db")
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits")) == 3 + IN_LINE_UNITS
