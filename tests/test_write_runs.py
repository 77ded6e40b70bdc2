"""Runs: while a process's write blocks run their own code between statements, a second writer prepares
and takes the turn from the first without the lock file changing hands (admission.WriteAdmission).

Every test that claims an order makes the writers overlap first (events), and checks the lock file from
another open file description, as another process would see it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from _lock_files import lock_file_is_free
from dbfoundation import Database, WriteTimeout
from dbfoundation.admission import RUN_TURNS, WriteAdmission
from dbfoundation.lock_file import LockFile


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


async def _create(db: Database) -> None:
    async with db.write() as session:
        await session.execute(text("CREATE TABLE hits (n INTEGER PRIMARY KEY)"))


async def _check_then_insert(db: Database, n: int) -> None:
    async with db.write() as session:
        if await session.scalar(text("SELECT n FROM hits WHERE n = :n"), {"n": n}) is None:
            await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})


async def _insert(db: Database, n: int) -> None:
    async with db.write() as session:
        await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})


def _runs(db: Database) -> bool:
    assert db._admission is not None
    return db._admission.runs


async def _start_runs(db: Database) -> None:
    for n in range(1000, 1010):
        await _check_then_insert(db, n)
    assert _runs(db)


async def _holding_the_turn(db: Database, let_go: asyncio.Event, *, name: str) -> asyncio.Task[None]:
    """A task whose block has run its first statement (row 1), so holds the turn, until `let_go` is set."""
    holds = asyncio.Event()

    async def hold() -> None:
        async with db.write() as session:
            await session.execute(text("INSERT INTO hits VALUES (1)"))
            holds.set()
            await let_go.wait()

    holder = asyncio.create_task(hold(), name=name)
    await holds.wait()
    return holder


async def test_runs_follow_what_the_turns_run(tmp_path: Path) -> None:
    """Turns of several statements switch runs on; turns of one statement (plain inserts) switch them off."""
    async with Database.from_url(_url(tmp_path / "app.db")) as db:
        await _create(db)
        assert not _runs(db)
        for n in range(3):
            await _check_then_insert(db, n)
        assert not _runs(db)  # a few do not decide it
        await _start_runs(db)
        for n in range(10, 20):
            await _insert(db, n)
        assert not _runs(db)
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM hits")) == 23


async def test_a_second_writer_prepares_and_takes_the_turn_without_the_lock_file_changing_hands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With runs on: the second writer enters its block while the first holds the turn, and takes the turn
    from it while another process waits for the lock file; after RUN_TURNS turns the lock file goes back."""
    path = tmp_path / "app.db"
    async with Database.from_url(_url(path)) as db:
        await _create(db)
        await _start_runs(db)
        assert db._admission is not None
        assert db._admission._file_lock is not None
        lock = db._admission._file_lock
        releases: list[float] = []
        release = lock.release
        monkeypatch.setattr(lock, "release", lambda: (releases.append(time.monotonic()), release()))
        first_holds, let_first_go, second_in_block = asyncio.Event(), asyncio.Event(), asyncio.Event()
        seen: dict[str, object] = {}

        async def first() -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (1)"))
                first_holds.set()
                await let_first_go.wait()
                await session.execute(text("INSERT INTO hits VALUES (2)"))

        async def second() -> None:
            async with db.write() as session:
                second_in_block.set()  # in its block while the first still holds the turn
                await session.execute(text("INSERT INTO hits VALUES (3)"))
                seen["releases in the second turn"] = len(releases)
                seen["other process still waiting"] = not other.done()
                await session.execute(text("INSERT INTO hits VALUES (4)"))
            seen["releases after the second turn"] = len(releases)

        def other_process_takes_the_lock() -> None:
            fd = os.open(f"{path}-writelock", os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until our writers let go
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        writers = [asyncio.create_task(first())]
        await first_holds.wait()
        other = asyncio.ensure_future(asyncio.to_thread(other_process_takes_the_lock))
        writers.append(asyncio.create_task(second()))
        async with asyncio.timeout(5):
            await second_in_block.wait()
        await asyncio.sleep(0.05)  # the second writer waits for the turn, the other process for the lock file
        assert not other.done()
        let_first_go.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*writers, other)
        assert RUN_TURNS == 2, "the second writer's turn is the last of the run"
        assert seen == {
            "releases in the second turn": 0,  # the turn passed without the lock file changing hands
            "other process still waiting": True,
            "releases after the second turn": 1,  # the run ended: the lock file went back
        }
        assert lock_file_is_free(path)
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT n FROM hits WHERE n < 10 ORDER BY n"))) == [1, 2, 3, 4]


async def test_a_writer_waiting_for_the_turn_times_out_naming_the_holder_and_leaves_no_trace(
    tmp_path: Path,
) -> None:
    """With runs on, a second writer waits for the turn inside its block: past the write timeout it gets
    WriteTimeout naming the writer with the turn; the turn, the lock file and the rows stay right."""
    path = tmp_path / "app.db"
    async with Database.from_url(_url(path), write_timeout=0.3) as db:
        await _create(db)
        await _start_runs(db)
        let_go = asyncio.Event()
        holder = await _holding_the_turn(db, let_go, name="slow-writer")
        with pytest.raises(WriteTimeout, match="slow-writer"):
            await _insert(db, 99)
        let_go.set()
        await holder
        assert lock_file_is_free(path)
        async with asyncio.timeout(5):
            await _insert(db, 2)
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT n FROM hits WHERE n < 100 ORDER BY n"))) == [1, 2]


async def test_a_writer_cancelled_while_waiting_for_the_turn_leaves_no_trace(tmp_path: Path) -> None:
    """With runs on, a second writer cancelled while it waits for the turn inside its block leaves the turn,
    the lock file and the rows as they were."""
    path = tmp_path / "app.db"
    async with Database.from_url(_url(path)) as db:
        await _create(db)
        await _start_runs(db)
        let_go = asyncio.Event()
        holder = await _holding_the_turn(db, let_go, name="holder")
        waiting = asyncio.create_task(_insert(db, 99))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        let_go.set()
        await holder
        async with asyncio.timeout(5):
            await _insert(db, 2)
        assert lock_file_is_free(path)
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT n FROM hits WHERE n < 100 ORDER BY n"))) == [1, 2]


async def test_a_turn_handed_to_a_writer_cancelled_before_it_resumed_goes_on(tmp_path: Path) -> None:
    """The turn set aside for a writer that is cancelled before it runs is passed on, not kept."""
    path = tmp_path / "app.db"
    gate = WriteAdmission(path, use_lock_file=True)
    try:
        for _ in range(8):
            gate._count_turn(code_in_turn=True)  # as after turns of several statements: runs on
        assert gate.runs
        deadline = await gate.acquire_local(5.0)
        await gate.acquire_write(deadline)
        second = asyncio.create_task(gate.acquire_write(await gate.acquire_local(5.0)))
        await asyncio.sleep(0.01)
        assert not second.done()  # in line for the turn
        assert gate.release_write(statements=2) is True  # handed over, the lock file still ours
        assert not lock_file_is_free(path)
        second.cancel()  # before it could resume
        with pytest.raises(asyncio.CancelledError):
            await second
        assert lock_file_is_free(path)
        async with asyncio.timeout(1):
            await gate.acquire_write(deadline)  # nobody else has the turn
        assert gate.release_write() is False
    finally:
        gate.close()


async def test_a_cancellation_while_the_next_writer_runs_is_delivered_after_the_commit(tmp_path: Path) -> None:
    """The writer that hands the turn on yields to the next before tidying up. Cancelled during that yield,
    its block still ends committed, and the cancellation arrives at its next await."""
    path = tmp_path / "app.db"
    async with Database.from_url(_url(path)) as db:
        await _create(db)
        await _start_runs(db)
        first_holds, let_first_go = asyncio.Event(), asyncio.Event()
        reached: list[str] = []

        async def first() -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (1)"))
                first_holds.set()
                await let_first_go.wait()
            reached.append("after the block")
            await asyncio.sleep(0)
            reached.append("after the next await")

        async def second() -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO hits VALUES (2)"))  # runs while the first yields
                reached.append("second's turn")
                first_task.cancel()

        first_task = asyncio.create_task(first())
        await first_holds.wait()
        second_task = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        let_first_go.set()
        await second_task
        with pytest.raises(asyncio.CancelledError):
            await first_task
        assert reached == ["second's turn", "after the block"]  # the second went before the first tidied up
        assert lock_file_is_free(path)
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT n FROM hits WHERE n < 10 ORDER BY n"))) == [1, 2]


async def test_after_a_run_the_next_writer_asks_through_the_watcher_and_gets_a_free_lock_file(tmp_path: Path) -> None:
    """The writer after a run lets other processes go first by asking the watcher thread; with nobody else
    waiting it still gets the lock file."""
    lock = LockFile(Path(f"{tmp_path / 'app.db'}-writelock"))
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            await lock.acquire(loop.time() + 5, via_watcher=True)
        assert not lock_file_is_free(tmp_path / "app.db")
        assert lock._watcher is not None  # it went through the watcher thread, not straight to the kernel
        lock.release()
        assert lock_file_is_free(tmp_path / "app.db")
    finally:
        lock.close()
