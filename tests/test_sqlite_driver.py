"""The SQLite statement path: how many thread hops a unit of work costs, and that the shortcuts keep meaning.

Each aiosqlite call is a round trip between the event loop and the connection's thread; the write path is
serialised, so the count per transaction is what every queued writer pays. These tests count the calls,
on the thread path (DATABASE_SQLITE_INLINE_WRITES=false, and always for readers) and inline (the default:
a writer whose turn is taken runs its statements on the loop's thread).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from dbfoundation import Database, DuplicateKeyError, ReadOnlyError
from dbfoundation.sqlite_driver import INLINE_MANY_ROWS

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("key", String, unique=True))


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """aiosqlite thread calls, by the name of the function each one runs."""
    counts: collections.Counter[str] = collections.Counter()
    real = aiosqlite.core.Connection._execute

    def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counts[getattr(fn, "__name__", type(fn).__name__)] += 1
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counting)
    return counts


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with _warm_database(tmp_path) as database:
        yield database


@pytest.fixture
async def threaded(tmp_path: Path) -> AsyncIterator[Database]:
    """A Database whose writer sends every statement to its thread."""
    async with _warm_database(tmp_path, sqlite_inline_writes=False) as database:
        yield database


@contextlib.asynccontextmanager
async def _warm_database(tmp_path: Path, **settings: Any) -> AsyncIterator[Database]:
    async with Database.from_url(f"sqlite:///{tmp_path / 'app.db'}", **settings) as database:
        async with database.connection() as connection:
            await connection.run_sync(metadata.create_all)
        async with database.write() as session:  # connect both pools, so no test counts a connect
            await session.execute(insert(items), {"key": "warm"})
        async with database.read() as session:
            await session.execute(select(items))
        yield database


@contextlib.asynccontextmanager
async def turns_of_another_task(every_s: float = 0.0) -> AsyncIterator[list[int]]:
    """Count the turns another task of the loop gets (one per `every_s` at most) while the block runs."""
    turns = [0]

    async def ticker() -> None:
        while True:
            turns[0] += 1
            await asyncio.sleep(every_s)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    turns[0] = 0
    try:
        yield turns
    finally:
        ticking.cancel()


async def test_a_one_statement_write_costs_two_hops(threaded: Database, hops: collections.Counter[str]) -> None:
    """BEGIN IMMEDIATE travels with the INSERT (one hop: execute, fetch, close), then COMMIT."""
    async with threaded.write() as session:
        await session.execute(insert(items), {"key": "a"})
    assert sum(hops.values()) == 2, hops
    async with threaded.read() as session:
        assert await session.scalar(select(items.c.id).where(items.c.key == "a")) is not None


async def test_each_further_statement_costs_one_hop_and_reads_its_rows(
    threaded: Database, hops: collections.Counter[str]
) -> None:
    async with threaded.write() as session:
        await session.execute(insert(items), [{"key": f"k{n}"} for n in range(5)])  # executemany
        changed = await session.execute(update(items).where(items.c.key.like("k%")).values(key=items.c.key + "!"))
        keys = (await session.scalars(select(items.c.key).where(items.c.key.like("k%")).order_by(items.c.key))).all()
    assert changed.rowcount == 5
    assert keys == ["k0!", "k1!", "k2!", "k3!", "k4!"]
    assert sum(hops.values()) == 4, hops  # three statements and the COMMIT


async def test_a_write_that_ran_nothing_costs_no_hop(db: Database, hops: collections.Counter[str]) -> None:
    async with db.write():
        pass
    assert sum(hops.values()) == 0, hops


async def test_a_read_costs_no_hop_and_its_commit_ends_the_snapshot_on_the_loop(
    db: Database, hops: collections.Counter[str], tmp_path: Path
) -> None:
    """A short read runs on the loop's thread (BEGIN, SELECT, COMMIT), and its COMMIT does end the
    snapshot: a checkpoint afterwards can copy every frame back."""
    async with db.write() as session:
        await session.execute(insert(items), {"key": "in-the-wal"})
    hops.clear()
    async with db.read() as session:
        assert len((await session.execute(select(items.c.key))).all()) == 2
    assert sum(hops.values()) == 0, hops
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as other:
        busy, wal_frames, copied = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0  # no reader still holds a snapshot
    assert (wal_frames, copied) == (0, 0)  # TRUNCATE reset the WAL


async def test_a_read_past_its_step_budget_runs_again_on_the_thread_in_the_same_snapshot(
    tmp_path: Path, hops: collections.Counter[str]
) -> None:
    async with _warm_database(tmp_path, sqlite_inline_read_steps=50) as database:
        async with database.write() as session:
            await session.execute(insert(items), [{"key": f"k{n:03}"} for n in range(200)])
        hops.clear()
        async with database.read() as session:
            assert await session.scalar(select(items.c.key).where(items.c.id == 1)) == "warm"  # inline
            assert sum(hops.values()) == 0, hops  # and the snapshot is taken
            with contextlib.closing(sqlite3.connect(tmp_path / "app.db", isolation_level=None)) as other:
                other.execute("INSERT INTO items (key) VALUES ('after-the-snapshot')")
            keys = (await session.scalars(select(items.c.key).order_by(items.c.id))).all()
            assert sum(hops.values()) == 1, hops  # 200 rows take more than 50 steps: stopped, then the thread
        assert keys == ["warm", *(f"k{n:03}" for n in range(200))]  # every row once, none committed later
        hops.clear()
        async with database.read() as session:  # a first statement stopped: BEGIN stays, the thread reads
            keys = (await session.scalars(select(items.c.key).order_by(items.c.id))).all()
        assert keys == ["warm", *(f"k{n:03}" for n in range(200)), "after-the-snapshot"]
        assert sum(hops.values()) == 1, hops
        hops.clear()
        async with database.read() as session:
            assert await session.scalar(select(func.count()).select_from(items)) == 202
        assert sum(hops.values()) == 1, hops  # count() is one VM step of any length: never inline


async def test_reads_go_to_the_thread_while_a_writer_waits_for_another_processs_lock_file(
    db: Database, hops: collections.Counter[str], tmp_path: Path
) -> None:
    """A loop that never waits comes round to its writer late once the lock file is free; while a writer of
    this process waits for it, reads take the hop (and give the loop idle moments) instead."""
    other = os.open(f"{tmp_path / 'app.db'}-writelock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # another process's writer has the turn
    try:

        async def write() -> None:
            async with db.write() as session:
                await session.execute(insert(items), {"key": "queued"})

        writing = asyncio.create_task(write())
        await asyncio.sleep(0.1)
        assert not writing.done()
        hops.clear()
        async with db.read() as session:
            assert await session.scalar(select(items.c.key).where(items.c.id == 1)) == "warm"
        assert sum(hops.values()) == 1, hops  # on the thread while the writer waits
        fcntl.flock(other, fcntl.LOCK_UN)
        async with asyncio.timeout(5):
            await writing
        hops.clear()
        async with db.read() as session:
            assert await session.scalar(select(items.c.key).where(items.c.key == "queued")) == "queued"
        assert sum(hops.values()) == 0, hops  # inline again
    finally:
        os.close(other)


async def test_a_reader_that_meets_a_lock_waits_on_the_thread_not_the_loop(
    tmp_path: Path, hops: collections.Counter[str]
) -> None:
    """In a rollback journal a writer's EXCLUSIVE lock keeps readers out (in WAL only a WAL being recovered
    can): the read tries once on the loop with the busy wait off, then waits on its thread with the
    configured busy timeout while the loop keeps running, and the busy timeout is back afterwards."""
    async with _warm_database(tmp_path, sqlite_journal_mode="DELETE") as database:
        exclusive = sqlite3.connect(tmp_path / "app.db", isolation_level=None, check_same_thread=False)
        exclusive.execute("BEGIN EXCLUSIVE")
        exclusive.execute("INSERT INTO items (key) VALUES ('exclusive')")

        async def read() -> list[str]:
            async with database.read() as session:
                return list((await session.scalars(select(items.c.key).order_by(items.c.id))).all())

        hops.clear()
        async with turns_of_another_task(every_s=0.005) as turns:
            reading = asyncio.create_task(read())
            await asyncio.sleep(0.3)
            assert not reading.done()
            assert turns[0] >= 20  # the loop was free while the read waited
            exclusive.execute("COMMIT")
            exclusive.close()
            assert await reading == ["warm", "exclusive"]
        assert sum(hops.values()) == 1, hops  # the try on the loop met the lock; the thread waited
        async with database.read() as session:
            await session.execute(select(items.c.id))
            assert await session.scalar(text("SELECT * FROM pragma_busy_timeout()")) == 5000


async def test_a_read_costs_two_hops_with_inline_writes_off(threaded: Database, hops: collections.Counter[str]) -> None:
    async with threaded.read() as session:
        assert (await session.execute(select(items.c.key))).all() == [("warm",)]
    assert sum(hops.values()) == 2, hops


async def test_orm_insert_gets_its_primary_key_back(db: Database) -> None:
    async with db.write() as session:
        result = await session.execute(insert(items).returning(items.c.id), {"key": "returned"})
        new_id = result.scalar_one()
        plain = await session.execute(insert(items), {"key": "plain"})
    assert plain.inserted_primary_key is not None
    assert plain.inserted_primary_key[0] == new_id + 1


async def test_a_failed_first_statement_leaves_no_transaction_open(db: Database) -> None:
    """The BEGIN ran, the INSERT failed: the rollback must still end the transaction before the next write."""
    with pytest.raises(DuplicateKeyError):
        async with db.write() as session:
            await session.execute(insert(items), {"key": "warm"})
    async with db.write() as session:
        await session.execute(insert(items), {"key": "after"})
    async with db.read() as session:
        assert sorted(await session.scalars(select(items.c.key))) == ["after", "warm"]


async def test_stream_keeps_its_server_side_cursor(db: Database) -> None:
    async with db.write() as session:
        await session.execute(insert(items), [{"key": f"s{n:03}"} for n in range(300)])
    async with db.read() as session:
        seen = [key async for key in await session.stream_scalars(select(items.c.key).where(items.c.key.like("s%")))]
    assert len(seen) == 300


async def test_raw_runs_inside_the_transaction_the_block_began(db: Database, tmp_path: Path) -> None:
    """db.raw() hands out the aiosqlite connection with BEGIN IMMEDIATE already sent: an error rolls back
    what the block wrote, and while the block runs no other connection can write."""
    with pytest.raises(RuntimeError):
        async with db.raw() as driver:
            await driver.execute("INSERT INTO items (key) VALUES ('raw')")
            other = sqlite3.connect(tmp_path / "app.db", timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
            raise RuntimeError("undo")
    async with db.read() as session:
        assert await session.scalar(text("SELECT count(*) FROM items WHERE key = 'raw'")) == 0


async def test_savepoints_travel_with_the_statements(threaded: Database, hops: collections.Counter[str]) -> None:
    """SAVEPOINT and RELEASE cost no hop of their own: a nested unit costs what its statements cost."""
    async with threaded.write() as session:
        async with session.begin_nested():
            await session.execute(insert(items), {"key": "kept"})
        with pytest.raises(IntegrityError):  # inside the block the driver's error; typed when the block ends
            async with session.begin_nested():
                await session.execute(insert(items), {"key": "undone"})
                await session.execute(insert(items), {"key": "warm"})  # fails: the savepoint is rolled back
        async with session.begin_nested():
            await session.execute(insert(items), {"key": "after"})
    assert sum(hops.values()) == 5, hops  # four INSERTs and the COMMIT
    async with threaded.read() as session:
        assert sorted(await session.scalars(select(items.c.key))) == ["after", "kept", "warm"]


async def test_a_rollback_to_savepoint_still_runs_before_the_commit(db: Database) -> None:
    """A unit that wrote, then failed in Python, is undone even when nothing runs after its rollback."""
    async with db.write() as session:
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                await session.execute(insert(items), {"key": "undone"})
                raise RuntimeError("the unit gives up")
    async with db.read() as session:
        assert sorted(await session.scalars(select(items.c.key))) == ["warm"]


async def test_submit_units_cost_their_statements_plus_one_commit(
    threaded: Database, hops: collections.Counter[str]
) -> None:
    async def unit(session: Any) -> None:
        await session.execute(insert(items), {"key": "by-unit"})

    await threaded.submit(unit)
    assert sum(hops.values()) == 2, hops


async def test_an_inline_write_costs_no_hop_and_only_a_large_executemany_goes_to_the_thread(
    db: Database, hops: collections.Counter[str]
) -> None:
    """With its turn taken the writer runs BEGIN, statements, savepoints and COMMIT on the loop's thread,
    and an executemany of up to INLINE_MANY_ROWS rows (a submit() batch); a larger one (bulk work) goes to
    the connection's thread."""
    async with db.write() as session:
        await session.execute(insert(items), {"key": "a"})
        async with session.begin_nested():
            await session.execute(insert(items), {"key": "b"})
        found = await session.scalar(select(items.c.id).where(items.c.key == "b"))
    assert found is not None
    assert sum(hops.values()) == 0, hops
    await db.submit(insert(items), {"key": "submitted"})
    assert sum(hops.values()) == 0, hops
    async with db.write() as session:
        await session.execute(insert(items), [{"key": f"m{n}"} for n in range(INLINE_MANY_ROWS)])
    assert sum(hops.values()) == 0, hops
    async with db.write() as session:
        await session.execute(insert(items), [{"key": f"bulk{n}"} for n in range(INLINE_MANY_ROWS + 1)])
    assert sum(hops.values()) == 1, hops
    async with db.read() as session:
        assert await session.scalar(text("SELECT count(*) FROM items")) == 4 + 2 * INLINE_MANY_ROWS + 1


async def test_a_commit_that_fsyncs_goes_to_the_thread(tmp_path: Path, hops: collections.Counter[str]) -> None:
    """At synchronous=FULL a WAL COMMIT waits for an fsync: that must not hold up the event loop."""
    async with _warm_database(tmp_path, sqlite_synchronous="FULL") as db:
        hops.clear()
        async with db.write() as session:
            await session.execute(insert(items), {"key": "full"})
        assert sum(hops.values()) == 1, hops  # the statement inline, the COMMIT on the thread


async def test_a_foreign_writer_makes_the_begin_wait_on_the_thread_not_on_the_loop(
    db: Database, tmp_path: Path
) -> None:
    """A writer outside our lock file (the sqlite3 shell, a backup) holds the write lock: the inline BEGIN
    does not wait, the thread does, and the event loop keeps running meanwhile."""
    foreign = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    foreign.execute("BEGIN IMMEDIATE")

    async def write() -> None:
        async with db.write() as session:
            await session.execute(insert(items), {"key": "after-foreign"})

    async with turns_of_another_task(every_s=0.005) as turns:
        writing = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        assert not writing.done()
        assert turns[0] >= 20  # the loop was free while the BEGIN waited
        foreign.execute("COMMIT")
        foreign.close()
        await writing
    async with db.raw() as driver:  # the inline attempt turned SQLite's busy wait off and back on
        assert (await (await driver.execute("PRAGMA busy_timeout")).fetchone())[0] == 5000
    async with db.read() as session:
        assert await session.scalar(select(items.c.id).where(items.c.key == "after-foreign")) is not None


@pytest.fixture
def pool_events(db: Database) -> collections.Counter[str]:
    """Checkouts and checkins of the writer pool."""
    counts: collections.Counter[str] = collections.Counter()
    for name in ("checkout", "checkin"):
        event.listen(db.engines.writer.sync_engine, name, lambda *_, name=name: counts.update([name]))
    return counts


def checked_out(database: Database) -> collections.Counter[str]:
    """From now on, connections checked out and not yet checked in, per pool ("reader", "writer")."""
    out: collections.Counter[str] = collections.Counter()
    for name, engine in (("reader", database.engines.reader), ("writer", database.engines.writer)):
        event.listen(engine.sync_engine, "checkout", lambda *_, name=name: out.update([name]))
        event.listen(engine.sync_engine, "checkin", lambda *_, name=name: out.subtract([name]))
    return out


async def test_writes_keep_the_writer_connection_between_them(
    db: Database, pool_events: collections.Counter[str]
) -> None:
    """The writer's connection stays checked out from one write to the next: no checkout, no checkin, and the
    same sqlite3 connection runs every transaction."""
    seen = set()
    for n in range(5):
        async with db.write() as session:
            await session.execute(insert(items), {"key": f"kept{n}"})
            raw = await (await session.connection()).get_raw_connection()
            seen.add(id(raw.driver_connection))
    async with db.connection() as connection:
        await connection.execute(insert(items), {"key": "core"})
    async with db.write():
        pass  # a write that ran nothing commits nothing and keeps the connection too
    assert pool_events == {}, pool_events
    assert len(seen) == 1
    async with db.read() as session:
        assert len(list(await session.scalars(select(items.c.key).where(items.c.key.like("kept%"))))) == 5


async def test_a_write_the_rollback_undid_keeps_the_connection_and_leaves_nothing(
    db: Database, pool_events: collections.Counter[str]
) -> None:
    """A duplicate key (ORM session) and an exception in a Core block: both rolled back in full, and the
    connection, clean again, stays held for the next write."""
    with pytest.raises(DuplicateKeyError):
        async with db.write() as session:
            await session.execute(insert(items), {"key": "half"})
            await session.execute(insert(items), {"key": "warm"})
    with pytest.raises(ValueError, match="block failed"):
        async with db.connection() as connection:
            await connection.execute(insert(items), {"key": "core-half"})
            raise ValueError("block failed")
    assert db._admission is not None
    assert len(db._admission.held) == 1
    async with db.write() as session:
        await session.execute(insert(items), {"key": "after-failures"})
    assert pool_events == {}, pool_events
    async with db.read() as session:
        assert sorted(await session.scalars(select(items.c.key))) == ["after-failures", "warm"]


async def test_an_invalidated_held_connection_is_replaced_before_the_next_write(db: Database) -> None:
    assert db._admission is not None
    [kept] = db._admission.held
    await kept.invalidate()  # as after a disconnect error outside any transaction
    async with db.write() as session:
        await session.execute(insert(items), {"key": "on-a-new-connection"})
    async with db.read() as session:
        assert await session.scalar(select(items.c.id).where(items.c.key == "on-a-new-connection")) is not None


async def test_the_writer_engine_still_hands_out_a_connection_while_one_is_held(db: Database) -> None:
    """Code that asks the writer engine for its own connection (the pytest plugin's outer transaction) gets
    one at once instead of waiting for the pool timeout behind the held connection."""
    async with asyncio.timeout(2), db.engines.writer.connect() as own:
        assert (await own.execute(text("SELECT count(*) FROM items"))).scalar_one() == 1


async def test_stop_checks_the_held_connections_back_in(tmp_path: Path) -> None:
    """The writer's and the readers' kept connections go back to their pools at stop(). (The pools' own
    checkedout() cannot tell: a disposed pool reports 0 whatever is still out.)"""
    database = Database.from_url(f"sqlite:///{tmp_path / 'app.db'}")
    await database.start()
    out = checked_out(database)
    async with database.connection() as connection:
        await connection.run_sync(metadata.create_all)
    async with database.read() as session:
        await session.execute(select(items))
    assert out == {"reader": 1, "writer": 1}  # kept for the next read and write
    await database.stop()
    assert out == {"reader": 0, "writer": 0}, out


async def test_reads_keep_their_connections_between_them(tmp_path: Path) -> None:
    """A reader connection stays checked out from one read to the next (no checkout, no checkin), at most
    one per reader slot even when every slot reads at once."""
    async with _warm_database(tmp_path, sqlite_readers=3) as database:
        counts: collections.Counter[str] = collections.Counter()
        for name in ("checkout", "checkin"):
            event.listen(database.engines.reader.sync_engine, name, lambda *_, name=name: counts.update([name]))
        seen = set()
        for _ in range(5):
            async with database.read() as session:
                assert await session.scalar(select(items.c.key)) == "warm"
                raw = await (await session.connection()).get_raw_connection()
                seen.add(id(raw.driver_connection))
        assert (counts, len(seen)) == (collections.Counter(), 1)
        inside = asyncio.Barrier(3)

        async def read_together() -> None:
            async with database.read() as session:
                await session.execute(select(items))
                await inside.wait()  # every reader slot is in a read at once

        for _ in range(3):
            async with asyncio.timeout(5):
                await asyncio.gather(*(read_together() for _ in range(3)))
        assert database._read_gate is not None
        assert len(database._read_gate.held) == 3
        assert counts == {"checkout": 2}, counts  # the first round checked out two more, then none


async def test_a_read_and_a_write_still_running_when_the_database_stops_hand_their_connections_back(
    tmp_path: Path,
) -> None:
    """stop() checks the kept connections in; a read and a write that end after it close theirs rather
    than keep them for a next transaction that will not come (or leave them open in a closed pool)."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'app.db'}")
    await database.start()
    out = checked_out(database)
    async with database.connection() as connection:
        await connection.run_sync(metadata.create_all)
    inside, finish = asyncio.Barrier(3), asyncio.Event()
    in_flight: list[sqlite3.Connection] = []

    async def read() -> None:
        async with database.read() as session:
            await session.execute(select(items))
            in_flight.append((await (await session.connection()).get_raw_connection()).driver_connection._conn)
            await inside.wait()
            await finish.wait()

    async def write() -> None:
        async with database.write() as session:
            await session.execute(insert(items), {"key": "during-stop"})
            in_flight.append((await (await session.connection()).get_raw_connection()).driver_connection._conn)
            await inside.wait()
            await finish.wait()

    async with asyncio.timeout(10):
        running = [asyncio.create_task(read()), asyncio.create_task(write())]
        await inside.wait()
        await database.stop()  # its PRAGMA optimize gives up on the write slot after 1 s
        finish.set()
        await asyncio.gather(*running)
    assert out == {"reader": 0, "writer": 0}, out
    for connection in in_flight:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")


async def test_a_read_that_failed_leaves_its_kept_connection_clean(db: Database, tmp_path: Path) -> None:
    """A write refused in db.read() and an exception in a read block: each rolled back, the connection kept
    for the next read with no snapshot left open (a checkpoint can truncate the WAL)."""
    async with db.write() as session:
        await session.execute(insert(items), {"key": "in-the-wal"})
    with pytest.raises(ReadOnlyError):
        async with db.read() as session:
            await session.execute(insert(items), {"key": "refused"})
    with pytest.raises(ValueError, match="block failed"):
        async with db.read() as session:
            await session.execute(select(items))
            raise ValueError("block failed")
    assert db._read_gate is not None
    assert len(db._read_gate.held) == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    async with db.read() as session:
        assert sorted(await session.scalars(select(items.c.key))) == ["in-the-wal", "warm"]


async def test_a_task_writing_in_a_loop_lets_other_tasks_run(db: Database) -> None:
    """Inline statements and COMMIT never wait, so without a yield per write a task that writes in a loop
    would keep every other task of the process (requests, health checks) waiting until it stopped."""
    async with turns_of_another_task() as turns:
        for n in range(200):
            async with db.write() as session:
                await session.execute(insert(items), {"key": f"loop{n}"})
    assert turns[0] >= 200  # at least one turn of the other task per write


async def test_a_task_reading_in_a_loop_lets_other_tasks_run(db: Database, hops: collections.Counter[str]) -> None:
    """Short reads run on the loop's thread and never wait either: one yield per read, as for writes."""
    async with turns_of_another_task() as turns:
        for _ in range(200):
            async with db.read() as session:
                await session.execute(select(items.c.key).where(items.c.id == 1))
    assert sum(hops.values()) == 0, hops  # the reads were inline
    assert turns[0] >= 200  # at least one turn of the other task per read
