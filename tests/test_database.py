"""Database: lifecycle, the units of work on both backends, PRAGMAs in effect, pools, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import traceback
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, event, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from conftest import create_postgres_database, drop_postgres_database, require_postgres
from dbfoundation import (
    Database,
    DatabaseSettings,
    DatabaseUnavailable,
    ReadOnlyError,
    SessionStateError,
    TransactionAborted,
)
from dbfoundation.admission import PoolGate
from dbfoundation.checkpoint import Checkpointer
from dbfoundation.engine import ALIVE_BYPASS_S

metadata = MetaData()
parents = Table("parents", metadata, Column("id", Integer, primary_key=True), Column("name", String(50)))
children = Table(
    "children",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", ForeignKey("parents.id"), nullable=False),
)


async def _create_tables(db: Database) -> None:
    async with db.write() as session:
        await session.run_sync(lambda s: metadata.create_all(s.connection()))


async def test_start_and_stop_are_idempotent_and_async_with_works(sqlite_url: str) -> None:
    """start() twice and stop() twice are no-ops; the state moves new → started → stopped."""
    db = Database.from_url(sqlite_url)
    assert db.state == "new"
    await db.start()
    await db.start()
    assert db.state == "started"
    await db.stop()
    await db.stop()
    assert db.state == "stopped"
    async with Database.from_url(sqlite_url) as again:
        assert again.state == "started"
    assert again.state == "stopped"


async def test_use_before_start_or_after_stop_names_the_call(sqlite_url: str) -> None:
    """read()/write()/submit() on a Database that is not started raise SessionStateError naming the call."""
    db = Database.from_url(sqlite_url)
    with pytest.raises(SessionStateError, match=r"db\.write\(\) cannot run: the Database is not started"):
        async with db.write():
            pass
    async with db:
        pass
    with pytest.raises(SessionStateError, match=r"db\.read\(\).*stopped"):
        async with db.read():
            pass
    with pytest.raises(SessionStateError, match=r"db\.start\(\)"):
        await db.start()


async def test_a_started_database_garbage_collected_warns(sqlite_url: str) -> None:
    """Dropping a started Database without stop() emits a ResourceWarning naming the fix."""
    db = Database.from_url(sqlite_url, sqlite_checkpoint_interval=0)
    await db.start()
    engines = db.engines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del db
        gc.collect()
    await engines.dispose()
    assert [str(w.message) for w in caught if w.category is ResourceWarning and "async with db" in str(w.message)]


async def test_write_commits_and_an_error_rolls_back(backend_url: str) -> None:
    """A write block commits at its end; an exception inside it leaves nothing behind and propagates."""
    async with Database.from_url(backend_url) as db:
        await _create_tables(db)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=1, name="kept"))
        with pytest.raises(RuntimeError, match="boom"):
            async with db.write() as session:
                await session.execute(insert(parents).values(id=2, name="lost"))
                raise RuntimeError("boom")
        async with db.read() as session:
            assert (await session.execute(select(parents.c.name))).scalars().all() == ["kept"]


async def test_session_commit_inside_write_keeps_working(backend_url: str) -> None:
    """Calling session.commit() inside db.write() commits; later statements in the block commit at its end."""
    async with Database.from_url(backend_url) as db:
        await _create_tables(db)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=1, name="a"))
            await session.commit()
            await session.execute(insert(parents).values(id=2, name="b"))
        async with db.read() as session:
            assert await session.scalar(select(parents.c.id).order_by(parents.c.id.desc())) == 2


async def test_a_block_that_handles_a_failed_statement_never_reports_a_commit_that_did_not_happen(
    backend_url: str,
) -> None:
    """The same block on both backends: it writes, then catches a duplicate key and goes on. SQLite undoes
    only the failed statement and commits the rest. PostgreSQL aborts the whole transaction, and its COMMIT
    would roll back without an error: db.write() raises TransactionAborted instead of returning normally.
    Inside a SAVEPOINT the handled error is undone alone and the block commits on both."""
    async with Database.from_url(backend_url) as db:
        await _create_tables(db)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=1, name="taken"))

        async def handles_the_duplicate(*, in_savepoint: bool, new_id: int) -> None:
            async with db.write() as session:
                await session.execute(insert(parents).values(id=new_id, name=f"written before {new_id}"))
                try:
                    if in_savepoint:
                        async with session.begin_nested():
                            await session.execute(insert(parents).values(id=1, name="duplicate"))
                    else:
                        await session.execute(insert(parents).values(id=1, name="duplicate"))
                except IntegrityError:  # inside the block statements raise SQLAlchemy's errors
                    pass

        if db.backend == "postgresql":
            with pytest.raises(TransactionAborted, match="begin_nested"):
                await handles_the_duplicate(in_savepoint=False, new_id=2)
        else:
            await handles_the_duplicate(in_savepoint=False, new_id=2)
        await handles_the_duplicate(in_savepoint=True, new_id=3)
        async with db.write() as session:  # the connection is clean again
            await session.execute(insert(parents).values(id=4, name="after"))
        async with db.read() as session:
            names = set((await session.execute(select(parents.c.name))).scalars())
        written = {"taken", "written before 3", "after"} | ({"written before 2"} if db.backend == "sqlite" else set())
        assert names == written


async def test_sqlite_a_block_that_handles_an_error_ending_the_transaction_gets_transaction_aborted(
    sqlite_url: str,
) -> None:
    """At a few errors (a full disk, an I/O error, an `OR ROLLBACK` conflict) SQLite rolls back the whole
    transaction, and each later statement would then commit on its own: a block that catches such an error
    and goes on must not half-commit. Its next statement raises TransactionAborted, as does its end when
    no statement follows; the writer is usable again afterwards."""
    async with Database.from_url(sqlite_url) as db:
        await _create_tables(db)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=1, name="taken"))
        or_rollback = text("INSERT OR ROLLBACK INTO parents (id, name) VALUES (1, 'duplicate')")

        with pytest.raises(TransactionAborted, match="SQLite rolls back the whole transaction"):
            async with db.write() as session:
                await session.execute(insert(parents).values(id=2, name="rolled back by SQLite"))
                with contextlib.suppress(IntegrityError):
                    await session.execute(or_rollback)
                await session.execute(insert(parents).values(id=3, name="would commit alone"))
        with pytest.raises(TransactionAborted):
            async with db.write() as session:
                await session.execute(insert(parents).values(id=4, name="rolled back by SQLite"))
                with contextlib.suppress(IntegrityError):
                    await session.execute(or_rollback)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=5, name="after"))
        async with db.read() as session:
            assert sorted(await session.scalars(select(parents.c.id))) == [1, 5]


async def test_postgres_a_client_side_error_does_not_abort_the_transaction(postgres_url: str) -> None:
    """asyncpg refuses a value it cannot encode before the server sees it: the transaction is intact and
    commits (only a server error aborts it)."""
    async with Database.from_url(postgres_url) as db:
        await _create_tables(db)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=1, name="kept"))
            with pytest.raises(DBAPIError, match="invalid input for query argument"):
                await session.execute(text("INSERT INTO parents (id, name) VALUES (:id, 'x')"), {"id": "one"})
        async with db.read() as session:
            assert (await session.execute(select(parents.c.name))).scalars().all() == ["kept"]


async def test_postgres_code_on_the_asyncpg_connection_that_handles_a_failed_statement_gets_transaction_aborted(
    postgres_url: str,
) -> None:
    """Statements sent on the asyncpg connection itself (db.raw(), or a session's driver connection) bypass
    SQLAlchemy's adapter; the COMMIT the server then answers with ROLLBACK raises TransactionAborted instead
    of returning as if the block had committed. A SAVEPOINT of asyncpg's own still works."""
    async with Database.from_url(postgres_url) as db:
        await _create_tables(db)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=1, name="taken"))

        with pytest.raises(TransactionAborted):
            async with db.raw() as driver:
                await driver.execute("INSERT INTO parents (id, name) VALUES (2, 'lost with the raw block')")
                with contextlib.suppress(asyncpg.UniqueViolationError):
                    await driver.execute("INSERT INTO parents (id, name) VALUES (1, 'duplicate')")

        with pytest.raises(TransactionAborted):
            async with db.write() as session:
                await session.execute(insert(parents).values(id=3, name="lost with the session"))
                driver = (await (await session.connection()).get_raw_connection()).driver_connection
                with contextlib.suppress(asyncpg.UniqueViolationError):
                    await driver.execute("INSERT INTO parents (id, name) VALUES (1, 'duplicate')")

        async with db.raw() as driver:
            await driver.execute("INSERT INTO parents (id, name) VALUES (4, 'kept')")
            with contextlib.suppress(asyncpg.UniqueViolationError):
                async with driver.transaction():  # a SAVEPOINT inside the raw block's transaction
                    await driver.execute("INSERT INTO parents (id, name) VALUES (1, 'duplicate')")
        async with db.read() as session:
            assert sorted((await session.execute(select(parents.c.name))).scalars()) == ["kept", "taken"]


async def test_read_refuses_writes_on_both_backends(backend_url: str) -> None:
    """A write through db.read() raises ReadOnlyError, on SQLite (query_only) and PostgreSQL (read-only tx)."""
    async with Database.from_url(backend_url) as db:
        await _create_tables(db)
        with pytest.raises(ReadOnlyError):
            async with db.read() as session:
                await session.execute(insert(parents).values(id=1, name="x"))
        async with db.read() as session:
            assert await session.scalar(select(parents.c.id)) is None


async def test_connection_and_raw_give_core_and_driver_connections(backend_url: str) -> None:
    """connection() is a Core connection committing at the end; raw() is the driver's, rows by name."""
    async with Database.from_url(backend_url) as db:
        await _create_tables(db)
        async with db.connection() as connection:
            await connection.execute(insert(parents).values(id=1, name="core"))
        async with db.raw() as raw:
            if db.backend == "sqlite":
                await raw.execute("INSERT INTO parents (id, name) VALUES (2, 'raw')")
                async with raw.execute("SELECT name FROM parents ORDER BY id") as cursor:
                    names = [row["name"] for row in await cursor.fetchall()]
            else:
                await raw.execute("INSERT INTO parents (id, name) VALUES (2, 'raw')")
                names = [row["name"] for row in await raw.fetch("SELECT name FROM parents ORDER BY id")]
        assert names == ["core", "raw"]
        async with db.connection(read_only=True) as connection:
            assert (await connection.execute(select(parents.c.name))).scalars().all() == ["core", "raw"]


async def test_raw_enforces_foreign_keys_and_rolls_back_on_error(backend_url: str) -> None:
    """raw() connections enforce foreign keys; an error in the block rolls the whole block back."""
    async with Database.from_url(backend_url) as db:
        await _create_tables(db)
        with pytest.raises(Exception, match=r"(?i)foreign key"):
            async with db.raw() as raw:
                await raw.execute("INSERT INTO parents (id, name) VALUES (1, 'p')")
                await raw.execute("INSERT INTO children (id, parent_id) VALUES (1, 999)")
        async with db.read() as session:
            assert await session.scalar(select(parents.c.id)) is None


async def test_sqlite_pragmas_are_in_effect_in_both_pools(sqlite_url: str) -> None:
    """Writer and reader sessions report foreign_keys=1, journal_mode=wal, synchronous, busy_timeout, query_only."""
    async with Database.from_url(sqlite_url, sqlite_synchronous="FULL", sqlite_busy_timeout=2.5) as db:
        sql = text(
            "SELECT (SELECT * FROM pragma_foreign_keys()), (SELECT * FROM pragma_journal_mode()),"
            " (SELECT * FROM pragma_synchronous()), (SELECT * FROM pragma_busy_timeout()),"
            " (SELECT * FROM pragma_query_only())"
        )
        async with db.write() as session:
            writer = tuple((await session.execute(sql)).one())
        async with db.read() as session:
            # Not as the first statement: the one that takes a read snapshot runs with the busy wait off
            # on the loop's thread (it moves to a thread if it meets a lock, see sqlite_driver).
            await session.execute(text("SELECT 1"))
            reader = tuple((await session.execute(sql)).one())
        assert writer == (1, "wal", 2, 2500, 0)
        assert reader == (1, "wal", 2, 2500, 1)


async def test_every_reader_connection_gets_the_pragmas(sqlite_url: str) -> None:
    """All connections of the reader pool (not only the first) have foreign keys on and query_only set."""
    async with Database.from_url(sqlite_url, sqlite_readers=3) as db:
        sessions = [db.read() for _ in range(3)]
        entered = [await s.__aenter__() for s in sessions]
        values = [
            tuple((await e.execute(text("SELECT * FROM pragma_foreign_keys(), pragma_query_only()"))).one())
            for e in entered
        ]
        for scope in sessions:
            await scope.__aexit__(None, None, None)
        assert values == [(1, 1)] * 3


async def test_postgres_pool_defaults_and_settings(postgres_url: str) -> None:
    """PostgreSQL pools default to size 10 and overflow 5, and take the configured values."""
    async with Database.from_url(postgres_url) as db:
        pool = db.engines.writer.pool
        assert (pool.size(), pool._max_overflow) == (10, 5)  # type: ignore[attr-defined]
    async with Database.from_url(postgres_url, pool_size=3, max_overflow=1) as db:
        pool = db.engines.writer.pool
        assert (pool.size(), pool._max_overflow) == (3, 1)  # type: ignore[attr-defined]


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ping that asyncpg's adapter sent."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    sent: list[int] = []
    real = AsyncAdapt_asyncpg_connection.ping

    def counting(self: Any) -> None:
        sent.append(1)
        real(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counting)
    return sent


async def test_postgres_pings_only_connections_that_sat_idle(postgres_url: str, pings: list[int]) -> None:
    """A connection back in the pool for less than ALIVE_BYPASS_S is handed out as it is (it just worked);
    one idle for longer is pinged first. With pool_pre_ping=False nothing is pinged."""
    async with Database.from_url(postgres_url, pool_size=1, max_overflow=0) as db:
        for _ in range(5):
            async with db.write() as session:
                await session.execute(text("SELECT 1"))
        assert pings == []
        await asyncio.sleep(ALIVE_BYPASS_S + 0.1)
        async with db.write() as session:
            await session.execute(text("SELECT 1"))
        assert pings == [1]
    async with Database.from_url(postgres_url, pool_size=1, max_overflow=0, pool_pre_ping=False) as db:
        await asyncio.sleep(ALIVE_BYPASS_S + 0.1)
        async with db.write() as session:
            await session.execute(text("SELECT 1"))
    assert pings == [1]


async def test_postgres_writes_keep_their_connection_and_reads_never_wait_for_kept_ones(
    postgres_url: str, pings: list[int]
) -> None:
    """A write leaves its connection checked out for the next write (no pool checkout or checkin), always
    leaving one in the pool. A read, which does not keep, takes a kept one back to the pool when the pool
    has none idle: two reads at once still get a connection each out of two. A connection kept past the
    ping window is pinged before its next use, as a pooled one is."""
    async with Database.from_url(postgres_url, pool_size=2, max_overflow=0, pool_timeout=2) as db:
        await _create_tables(db)
        checkouts: list[int] = []

        @event.listens_for(db.engines.writer.sync_engine, "checkout")
        def _count(*_args: Any) -> None:
            checkouts.append(1)

        for i in range(5):
            async with db.write() as session:
                await session.execute(insert(parents).values(id=i, name="kept"))
        assert len(checkouts) <= 1  # the first write may check out; the rest reuse the kept connection

        both_in = asyncio.Barrier(2)

        async def read() -> int:
            async with db.read() as session:
                await both_in.wait()  # both hold a connection at once
                return len((await session.execute(select(parents.c.id))).all())

        assert await asyncio.wait_for(asyncio.gather(read(), read()), 5) == [5, 5]
        async with db.write() as session:
            await session.execute(insert(parents).values(id=5, name="kept"))
        assert pings == []
        await asyncio.sleep(ALIVE_BYPASS_S + 0.1)
        async with db.write() as session:
            await session.execute(insert(parents).values(id=6, name="after the window"))
        assert pings == [1]


async def test_postgres_replaces_an_idle_connection_the_server_closed(postgres_url: str) -> None:
    """The server ends every connection of the pool; after the bypass window the next write gets a new one."""
    async with Database.from_url(postgres_url, pool_size=2, max_overflow=0) as db:
        async with db.write() as session:
            pids = {await session.scalar(text("SELECT pg_backend_pid()"))}
        killer = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
        try:
            for pid in pids:
                assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        await asyncio.sleep(ALIVE_BYPASS_S + 0.1)
        async with db.write() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) not in pids


async def test_reads_and_writes_run_without_sqlalchemy_event_dispatch(backend_url: str) -> None:
    """No engine-level listener on the engines db.read() and db.write() use: one would make SQLAlchemy
    dispatch its execute events around every statement (~15 % of a point read's instructions)."""
    async with Database.from_url(backend_url) as db:
        for scope in (db.read, db.write):
            async with scope() as session:
                connection = await session.connection()
                assert connection.sync_engine._has_events is False
                assert await session.scalar(text("SELECT 1")) == 1


async def test_postgres_reads_and_writes_share_one_connection_read_only_only_in_reads(postgres_url: str) -> None:
    """With one pooled connection, db.read() runs it read-only and hands it back writable."""
    async with Database.from_url(postgres_url, pool_size=1, max_overflow=0) as db:
        await _create_tables(db)
        for _ in range(2):
            async with db.read() as session:
                pid = await session.scalar(text("SELECT pg_backend_pid()"))
                assert await session.scalar(text("SHOW transaction_read_only")) == "on"
            with pytest.raises(ReadOnlyError):
                async with db.connection(read_only=True) as core:
                    await core.execute(insert(parents).values(id=9, name="no"))
            async with db.write() as session:
                assert await session.scalar(text("SELECT pg_backend_pid()")) == pid
                assert await session.scalar(text("SHOW transaction_read_only")) == "off"
                await session.execute(insert(parents).values(name="yes"))
        async with db.read() as session:
            assert (await session.execute(select(parents.c.name))).scalars().all() == ["yes", "yes"]


async def test_postgres_read_url_sends_reads_to_the_replica(postgres_url: str) -> None:
    """With DATABASE_READ_URL, db.read() runs on that database while writes go to DATABASE_URL."""
    replica = create_postgres_database()
    try:
        async with Database.from_url(postgres_url, read_url=replica) as db:
            async with db.write() as session:
                await session.execute(text("CREATE TABLE marker (name text)"))
                await session.execute(text("INSERT INTO marker VALUES ('primary')"))
            async with db.read() as session:
                assert await session.scalar(text("SELECT current_database()")) == replica.rpartition("/")[2]
    finally:
        drop_postgres_database(replica)


async def test_sqlite_folder_is_created_at_start(tmp_path: Path) -> None:
    """A SQLite file in a folder that does not exist yet gets its folder at start, and WAL on the file."""
    path = tmp_path / "nested" / "deeper" / "app.db"
    async with Database.from_url(f"sqlite:///{path}"):
        pass
    assert path.exists()
    assert path.with_name("app.db-writelock").exists()


async def test_unreachable_postgres_fails_at_start_with_a_masked_url() -> None:
    """A server that does not answer gives DatabaseUnavailable at start, naming the URL without its password."""
    db = Database.from_url("postgresql://app:s3cr3t-pw@127.0.0.1:1/app")
    with pytest.raises(DatabaseUnavailable) as caught:
        await db.start()
    text_of_error = "".join(traceback.format_exception(caught.value))
    assert "***" in str(caught.value)
    assert "s3cr3t-pw" not in text_of_error
    assert db.state == "new"


async def test_password_never_reaches_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """With SQL echo and debug logging on, the URL's password shows up in no log line, repr or error."""
    require_postgres()
    url = create_postgres_database()
    secret_url = url.replace("postgres@", "postgres:s3cr3t-pw@")  # trust auth ignores the password
    try:
        caplog.set_level(logging.DEBUG)
        db = Database(DatabaseSettings(url=secret_url, echo=True))
        texts = [repr(db), repr(db.settings), str(db.settings)]
        async with db:
            async with db.write() as session:
                await session.execute(text("CREATE TABLE t (id int primary key)"))
            try:
                async with db.write() as session:
                    await session.execute(text("SELECT no_such_column FROM t"))
            except Exception as exc:
                texts.append("".join(traceback.format_exception(exc)))
        texts.append(caplog.text)
        assert caplog.text  # echo really logged
        assert not [t for t in texts if "s3cr3t-pw" in t]
    finally:
        drop_postgres_database(url)


async def test_bound_parameters_stay_out_of_errors_unless_echo_is_on(sqlite_url: str) -> None:
    """A failing statement's error text carries no bound parameter value when echo is off."""
    email = "alice" + "@example.com"
    async with Database.from_url(sqlite_url) as db:
        await _create_tables(db)
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any error; we check its text
            async with db.write() as session:
                await session.execute(text("INSERT INTO parents (id, name) VALUES (:id, :n)"), {"id": 1, "n": email})
                await session.execute(text("INSERT INTO parents (id, name) VALUES (:id, :n)"), {"id": 1, "n": email})
        chain: list[BaseException] = []
        error: BaseException | None = caught.value
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        assert len(chain) >= 2  # our error and the driver's
        assert not [e for e in chain if email in str(e)]


async def test_background_checkpointer_truncates_a_wal_past_its_limit(tmp_path: Path) -> None:
    """A WAL grown past DATABASE_SQLITE_JOURNAL_SIZE_LIMIT is checkpointed and truncated in the background."""
    path = tmp_path / "app.db"
    settings = {"sqlite_journal_size_limit": 65_536, "sqlite_checkpoint_interval": 0.05}
    async with Database.from_url(f"sqlite:///{path}", **settings) as db:
        async with db.write() as session:
            await session.execute(text("CREATE TABLE blobs (b BLOB)"))
            for _ in range(200):  # ~2 MB: under the 1,000-page auto-checkpoint, over our limit
                await session.execute(text("INSERT INTO blobs VALUES (randomblob(10000))"))
        wal = path.with_name("app.db-wal")
        assert wal.stat().st_size > 65_536
        for _ in range(100):
            if wal.stat().st_size == 0:
                break
            await asyncio.sleep(0.05)
        assert wal.stat().st_size == 0
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM blobs")) == 200


async def test_checkpointer_truncates_only_a_wal_that_stopped_restarting(tmp_path: Path) -> None:
    """A WAL past the limit that has not restarted since the last size check (readers starve it, or it sat
    idle) is TRUNCATEd in the write slot; one that restarted meanwhile is left to SQLite, which truncates
    it to journal_size_limit at the commit that restarts it: a TRUNCATE would stop every writer while it
    copies and syncs (350-500 ms at 20,000 inserts/s)."""
    path = tmp_path / "app.db"
    writer = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "wal_autocheckpoint = 0", "journal_size_limit = 65536"):
        writer.execute(f"PRAGMA {pragma}")
    writer.execute("CREATE TABLE blobs (b BLOB)")
    truncations: list[int] = []

    async def truncate_in_write_slot() -> None:
        truncations.append(1)

    def grow_wal() -> int:
        writer.execute("BEGIN")
        for _ in range(50):
            writer.execute("INSERT INTO blobs VALUES (randomblob(10000))")
        writer.execute("COMMIT")
        return path.with_name("app.db-wal").stat().st_size

    checkpointer = Checkpointer(
        path, truncate_every_s=60, size_limit=65_536, truncate_in_write_slot=truncate_in_write_slot
    )
    try:
        await checkpointer._limit_size(grow_wal())  # past the limit, same WAL as before: truncate
        assert truncations == [1]
        checkpointer._passive()  # everything copied: the next commit restarts the WAL ...
        writer.execute("INSERT INTO blobs VALUES (1)")
        assert path.with_name("app.db-wal").stat().st_size <= 65_536  # ... and SQLite trims it itself
        await checkpointer._limit_size(grow_wal())  # past the limit again, but it restarted meanwhile
        assert truncations == [1]
        await checkpointer._limit_size(path.with_name("app.db-wal").stat().st_size)  # no restart since
        assert truncations == [1, 1]
    finally:
        checkpointer.close()
        writer.close()


async def test_commits_leave_checkpoints_to_the_background_checkpointer(tmp_path: Path) -> None:
    """The writer never checkpoints inside a COMMIT (wal_autocheckpoint = 0); the background checkpointer
    copies the WAL into the database file soon after, off the write path. Without it, SQLite's default holds."""
    path = tmp_path / "app.db"

    def rows_in_main_file() -> int:
        # immutable=1 reads the database file alone, ignoring the WAL: it shows what was checkpointed.
        # It also ignores locks, so a read that overlaps a checkpoint may see a half-copied file
        # ("malformed") or no table yet: both mean "not checkpointed yet", and the caller polls again.
        main_file = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(main_file.execute("SELECT count(*) FROM blobs").fetchone()[0])
        except sqlite3.DatabaseError:
            return -1
        finally:
            main_file.close()

    async with Database.from_url(f"sqlite:///{path}") as db:
        async with db.raw() as driver:
            assert (await (await driver.execute("PRAGMA wal_autocheckpoint")).fetchone())[0] == 0
        async with db.write() as session:
            await session.execute(text("CREATE TABLE blobs (b BLOB)"))
        for _ in range(30):  # ~1,500 pages in all: past the 1,000 at which a COMMIT would checkpoint itself
            async with db.write() as session:
                await session.execute(text("INSERT INTO blobs VALUES (randomblob(4000))"), [{}] * 50)
        checkpointed = -1
        for _ in range(100):
            checkpointed = rows_in_main_file()
            if checkpointed == 1500:
                break
            await asyncio.sleep(0.05)
        assert checkpointed == 1500
    async with Database.from_url(f"sqlite:///{path}", sqlite_checkpoint_interval=0) as db, db.raw() as driver:
        assert (await (await driver.execute("PRAGMA wal_autocheckpoint")).fetchone())[0] == 1000


async def test_pool_gate_hands_connections_out_in_arrival_order() -> None:
    """A task that arrives just as a connection comes back waits behind those already queued. A plain
    asyncio.Queue pool (what SQLAlchemy's async pool is) would hand it the connection first."""
    gate = PoolGate(1, timeout_s=5, where="test")
    await gate.acquire_local(5)
    entered: list[str] = []

    async def take(name: str) -> None:
        await gate.acquire_local(5)
        entered.append(name)
        await asyncio.sleep(0)
        gate.release_local()

    queued = []
    for n in range(5):
        queued.append(asyncio.create_task(take(f"queued-{n}")))
        await asyncio.sleep(0)  # each task reaches the gate, and waits, before the next is made
    gate.release_local()
    await gate.acquire_local(5)  # a late arrival asks in the very step the connection came back
    entered.append("late")
    gate.release_local()
    await asyncio.gather(*queued)
    assert entered == [f"queued-{n}" for n in range(5)] + ["late"]


async def test_full_pool_fails_after_the_pool_timeout_with_a_clear_error(tmp_path: Path) -> None:
    """db.read() on a reader pool that stays full raises DatabaseUnavailable naming the setting to raise;
    the requests queued in front of it are served in their order once the holder lets go."""
    async with Database.from_url(f"sqlite:///{tmp_path / 'app.db'}", sqlite_readers=1, pool_timeout=0.3) as db:
        release = asyncio.Event()
        order: list[int] = []

        async def hold() -> None:
            async with db.read() as session:
                await session.execute(text("SELECT 1"))
                await release.wait()

        async def read(n: int) -> None:
            async with db.read() as session:
                await session.execute(text("SELECT 1"))
                order.append(n)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        with pytest.raises(DatabaseUnavailable, match=r"DATABASE_POOL_SIZE|DATABASE_POOL_TIMEOUT"):
            await read(-1)
        readers = []
        for n in range(4):
            readers.append(asyncio.create_task(read(n)))
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(holder, *readers)
        assert order == [0, 1, 2, 3]
