"""db.submit(): group commit, optimistic batches rerun with a SAVEPOINT per unit, on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint, event, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dbfoundation import Database, DuplicateKeyError, TransactionAborted
from dbfoundation.batch_units import Unit
from dbfoundation.database import _submit_lock_key

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(40), nullable=False, unique=True),
    Column("n", Integer, nullable=False, default=0),
)

pairs = Table(
    "pairs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("a", Integer, nullable=False),
    Column("b", String(10)),
    UniqueConstraint("a", "b"),
)


async def _setup(db: Database) -> list[int]:
    async with db.write() as session:
        await session.run_sync(lambda s: metadata.create_all(s.connection()))
    commits: list[int] = [0]

    @event.listens_for(db.engines.writer.sync_engine, "commit")
    def _count(_connection: Any) -> None:
        commits[0] += 1

    return commits


class UnitFailed(Exception):
    pass


async def test_thousand_units_with_failures_commit_exactly_the_successes(backend_url: str) -> None:
    """1,000 concurrent units, every 7th failing: successes are committed once, failures raise alone."""
    async with Database.from_url(backend_url) as db:
        commits = await _setup(db)
        seen_commits: dict[int, int] = {}

        async def unit(i: int) -> int:
            async def work(session: AsyncSession) -> int:
                seen_commits[i] = commits[0]
                await session.execute(insert(items).values(id=i, key=f"k{i}"))
                if i % 7 == 0:
                    raise UnitFailed(i)  # after writing its row: the row must vanish with the SAVEPOINT
                return i

            return await db.submit(work)

        results = await asyncio.gather(*(unit(i) for i in range(1000)), return_exceptions=True)
        failed = {i for i, r in enumerate(results) if isinstance(r, UnitFailed)}
        assert failed == {i for i in range(1000) if i % 7 == 0}
        assert all(r == i for i, r in enumerate(results) if i not in failed)
        # every caller was resumed only after a COMMIT that came after its unit ran
        assert all(commits[0] > seen for seen in seen_commits.values())
        assert commits[0] < 200  # units really shared transactions
        async with db.read() as session:
            stored = set((await session.execute(select(items.c.id))).scalars())
        assert stored == set(range(1000)) - failed


async def test_statement_units_run_together_and_a_duplicate_fails_alone(backend_url: str) -> None:
    """Same-shape INSERTs share one executemany; a duplicate key among them raises only to its caller."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        statement = insert(items)
        await db.submit(statement, {"id": 0, "key": "dup"})
        params = [{"id": i, "key": f"k{i}"} for i in range(1, 300)]
        params[150] = {"id": 150, "key": "dup"}
        results = await asyncio.gather(*(db.submit(insert(items), p) for p in params), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], DuplicateKeyError)
        assert results.count(1) == 298
        async with db.read() as session:
            assert await session.scalar(select(text("count(*)")).select_from(items)) == 299


async def test_inserts_into_one_table_run_together_only_when_their_sql_is_the_same(backend_url: str) -> None:
    """A plain `insert(table)` is grouped by its table alone; one with a prefix (or anything else added)
    renders other SQL, so it runs in its own executemany, never folded into the plain ones."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        sent: list[tuple[str, int]] = []

        @event.listens_for(db.engines.writer.sync_engine, "before_cursor_execute")
        def _record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, executemany: bool) -> None:
            if statement.startswith("INSERT"):
                sent.append((statement, len(parameters) if executemany else 1))

        tagged = insert(items).prefix_with(TAG)
        units = [(tagged if i % 2 else insert(items), {"key": f"k{i}", "n": i}) for i in range(20)]
        assert await asyncio.gather(*(db.submit(statement, row) for statement, row in units)) == [1] * 20
        rows_by_sql: dict[bool, int] = {}
        for statement, rows in sent:
            rows_by_sql[TAG in statement] = rows_by_sql.get(TAG in statement, 0) + rows
        assert rows_by_sql == {True: 10, False: 10}
        assert any(rows > 1 for _statement, rows in sent)  # the plain ones still ran together


TAG = "/* tagged */"


async def test_a_batch_refuses_rows_whose_two_column_key_is_taken_and_only_those(backend_url: str) -> None:
    """A key of two columns is looked up as a pair: taken in the table, or claimed earlier in the batch,
    refuses the row; the same `a` with another `b` runs, and a NULL in the key never collides."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        await db.submit(insert(pairs), {"a": 1, "b": "x"})
        sent: list[str] = []

        @event.listens_for(db.engines.writer.sync_engine, "before_cursor_execute")
        def _record(_c: Any, _cur: Any, statement: str, _parameters: Any, _ctx: Any, executemany: bool) -> None:
            sent.append(("many " if executemany else "") + statement.split()[0])

        rows = [
            {"a": 1, "b": "x"},  # taken in the table
            {"a": 1, "b": "y"},
            {"a": 2, "b": "x"},
            {"a": 2, "b": "x"},  # claimed by the row before
            {"a": 3, "b": None},
            {"a": 3, "b": None},
        ]
        results = await asyncio.gather(*(db.submit(insert(pairs), row) for row in rows), return_exceptions=True)
        refused = [i for i, result in enumerate(results) if isinstance(result, DuplicateKeyError)]
        assert refused == [0, 3] or refused == [0, 2], results  # which of two equal rows wins is the batch's
        assert [r for r in results if not isinstance(r, DuplicateKeyError)] == [1] * 4
        async with db.read() as session:
            stored = (await session.execute(select(pairs.c.a, pairs.c.b).order_by(pairs.c.id))).all()
        assert sorted(stored, key=repr) == sorted([(1, "x"), (1, "y"), (2, "x"), (3, None), (3, None)], key=repr)
        # Found up front: one SELECT, then the four others in one executemany, no SAVEPOINT, no rerun.
        assert [s for s in sent if s != "SELECT"] == ["many INSERT"], sent


async def test_same_shape_inserts_run_in_the_order_of_their_unique_key(backend_url: str) -> None:
    """A group of same-shape INSERTs runs sorted by the table's unique key, whatever order the values come
    in and were queued in: every process then takes that index's locks in one order, so two such batches
    cannot deadlock (on PostgreSQL they run side by side)."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        sent: list[Any] = []

        @event.listens_for(db.engines.writer.sync_engine, "before_cursor_execute")
        def _record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, executemany: bool) -> None:
            if executemany and statement.startswith("INSERT"):
                sent.extend(parameters)

        keys = ["m", "c", "x", "a", "q"]
        rows = [{"n": 9 - i, "key": key} for i, key in enumerate(keys)]  # n falls as the keys go unsorted
        assert await asyncio.gather(*(db.submit(insert(items), row) for row in rows)) == [1] * 5
        key_of = {row["n"]: row["key"] for row in rows}
        # Positional parameters follow the table's columns (key, n); look the key up by n, a dict or not.
        names = [key_of[p["n"] if isinstance(p, dict) else p[1]] for p in sent]
        assert names == sorted(keys)


async def test_units_run_without_savepoints_until_one_fails(backend_url: str) -> None:
    """A batch runs with no SAVEPOINT (two round trips per unit on PostgreSQL, most of a small function's ORM
    work on SQLite): alone or together, statements and functions. A failing unit sends its batch back to run
    with a SAVEPOINT per unit: the others still commit, and a function that ran twice counts once."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        statements: list[str] = []

        @event.listens_for(db.engines.writer.sync_engine, "before_cursor_execute")
        def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        def savepoints() -> list[str]:
            return [s for s in statements if "SAVEPOINT" in s.upper()]

        runs: dict[int, int] = {}

        def function(i: int, *, fails: bool = False) -> Any:
            async def work(session: AsyncSession) -> int:
                runs[i] = runs.get(i, 0) + 1
                await session.execute(insert(items).values(id=i, key=f"k{i}"))
                if fails:
                    raise UnitFailed(i)
                return i

            return work

        assert await db.submit(insert(items), {"id": 1, "key": "first"}) == 1
        assert await db.submit(update(items).where(items.c.id == 1).values(n=5)) == 1
        assert await db.submit(function(2)) == 2
        assert await asyncio.gather(*(db.submit(function(i)) for i in range(3, 8))) == [3, 4, 5, 6, 7]
        assert savepoints() == [], statements
        assert runs == dict.fromkeys(range(2, 8), 1)

        batch = [db.submit(function(i, fails=i == 10)) for i in range(8, 13)]  # queued together: one batch
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert results[:2] + results[3:] == [8, 9, 11, 12]
        assert isinstance(results[2], UnitFailed)
        assert savepoints(), "the batch with a failing unit runs again, carefully"
        assert runs[8] == runs[9] == runs[10] == 2  # the optimistic run stopped at the failure
        assert runs[11] == runs[12] == 1
        async with db.read() as session:
            rows = sorted(await session.execute(select(items.c.id, items.c.n)))
        assert rows == [(1, 5)] + [(i, 0) for i in (2, 3, 4, 5, 6, 7, 8, 9, 11, 12)]


async def test_a_statement_alone_that_fails_rolls_back_and_the_next_one_runs(backend_url: str) -> None:
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        assert await db.submit(insert(items), {"id": 1, "key": "kept"}) == 1
        with pytest.raises(DuplicateKeyError):
            await db.submit(insert(items), {"id": 2, "key": "kept"})
        assert await db.submit(insert(items), {"id": 3, "key": "after-the-duplicate"}) == 1
        async with db.read() as session:
            assert sorted(await session.scalars(select(items.c.key))) == ["after-the-duplicate", "kept"]


def _swallowing(backend: str) -> str:
    """A statement whose error a function catches, and after which the transaction cannot commit: PostgreSQL
    aborts it at any failed statement; SQLite rolls all of it back at `OR ROLLBACK` (as at a full disk)."""
    if backend == "postgresql":
        return "INSERT INTO items (id, key) VALUES (99, 'taken')"
    return "INSERT OR ROLLBACK INTO items (id, key) VALUES (99, 'taken')"


async def test_a_function_that_swallows_an_error_ending_the_transaction_fails_alone(backend_url: str) -> None:
    """A function catches an error that left the transaction unable to commit, and returns normally. Its
    caller gets TransactionAborted instead of being told it committed, and the other units of the batch
    still commit: the optimistic run and then a SAVEPOINT per unit (which on SQLite cannot keep what ran
    before such an error) find the culprit and run the others again without it."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        await db.submit(insert(items), {"id": 1, "key": "taken"})
        swallowed = _swallowing(db.backend)

        def function(i: int) -> Any:
            async def work(session: AsyncSession) -> int:
                await session.execute(insert(items).values(id=10 + i, key=f"k{i}"))
                if i == 2:
                    with contextlib.suppress(DBAPIError, IntegrityError, DuplicateKeyError):
                        await session.execute(text(swallowed))
                return i

            return work

        results = await asyncio.gather(*(db.submit(function(i)) for i in range(5)), return_exceptions=True)
        assert [r if isinstance(r, int) else type(r) for r in results] == [0, 1, TransactionAborted, 3, 4]
        assert "This db.submit() function was rolled back" in str(results[2])
        with pytest.raises(TransactionAborted):  # alone in its batch
            await db.submit(function(2))
        async with db.read() as session:
            assert set(await session.scalars(select(items.c.id))) == {1, 10, 11, 13, 14}
        await db.submit(insert(items), {"id": 20, "key": "after"})  # the writer is clean again


async def test_update_units_return_their_rowcount(backend_url: str) -> None:
    """An UPDATE submitted as a statement returns how many rows it changed."""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        for i in range(3):
            await db.submit(insert(items), {"id": i, "key": f"k{i}"})
        changed = await db.submit(update(items).where(items.c.id < 2).values(n=items.c.n + 1))
        unchanged = await db.submit(update(items).where(items.c.id > 100).values(n=1))
        assert (changed, unchanged) == (2, 0)


async def test_submit_rejects_params_for_a_function_unit(sqlite_url: str) -> None:
    """Params belong to statements; passing them with a function is a TypeError, not a silent drop."""
    async with Database.from_url(sqlite_url) as db:

        async def work(session: AsyncSession) -> None:
            return None

        with pytest.raises(TypeError, match="params are for statements"):
            await db.submit(work, {"a": 1})  # type: ignore[call-overload]


async def test_stop_finishes_queued_units(sqlite_url: str) -> None:
    """Units queued when stop() is called are committed before the connections close."""
    db = Database.from_url(sqlite_url)
    await db.start()
    await _setup(db)
    pending = [asyncio.create_task(db.submit(insert(items), {"id": i, "key": f"k{i}"})) for i in range(50)]
    await asyncio.sleep(0)
    await db.stop()
    assert [t.result() for t in pending] == [1] * 50
    async with Database.from_url(sqlite_url) as again, again.read() as session:
        assert await session.scalar(select(text("count(*)")).select_from(items)) == 50


async def test_same_shape_inserts_from_two_databases_do_not_deadlock(postgres_url: str) -> None:
    """Two databases' batches inserting the same keys in opposite orders: each key stored once, no deadlock error.

    A repeated first key makes each batch's executemany fail, so both fall back to one SAVEPOINT per unit,
    the shape in which earlier units keep their row locks while later ones wait.
    """
    async with Database.from_url(postgres_url) as first, Database.from_url(postgres_url) as second:
        await _setup(first)
        keys = list(range(200))

        async def submit_all(db: Database, order: list[int]) -> list[Any]:
            return await asyncio.gather(
                *(db.submit(insert(items), {"id": k, "key": f"k{k}"}) for k in order), return_exceptions=True
            )

        results = await asyncio.gather(submit_all(first, [0, *keys]), submit_all(second, [199, *keys[::-1]]))
        outcomes = [r for batch in results for r in batch]
        assert [r for r in outcomes if r != 1 and not isinstance(r, DuplicateKeyError)] == []
        assert outcomes.count(1) == 200
        async with first.read() as session:
            assert await session.scalar(select(text("count(*)")).select_from(items)) == 200


async def test_postgres_only_insert_batches_that_cannot_deadlock_overlap_other_processes_batches(
    postgres_url: str,
) -> None:
    """An advisory lock makes submit() batches of every process take turns (a function may read what it
    then writes). Batches of same-shape INSERTs into a table with at most one unique key among their values
    change nothing anyone read and cannot deadlock: they skip it. While another session holds it, as
    another process's batch would, such a batch commits at once; a function, an UPDATE, or INSERTs that
    give two unique keys wait for it."""
    async with contextlib.AsyncExitStack() as stack:
        # One Database per waiting unit: each is its own batch, as from its own process.
        db, other, *waiters = [await stack.enter_async_context(Database.from_url(postgres_url)) for _ in range(5)]
        await _setup(db)
        await db.submit(insert(items), {"id": 100, "key": "counter"})
        async with other.write() as holder:
            lock = text("SELECT pg_advisory_xact_lock(:k)")
            await holder.execute(lock, {"k": _submit_lock_key(db.settings)})
            assert await asyncio.wait_for(db.submit(insert(items), {"key": "one unique key"}), 5) == 1

            async def function(session: AsyncSession) -> str:
                await session.execute(insert(items).values(id=3, key="function"))
                return "committed"

            waiting = [
                asyncio.ensure_future(waiters[0].submit(function)),
                asyncio.ensure_future(
                    waiters[1].submit(update(items).where(items.c.id == 100).values(n=items.c.n + 1))
                ),
                asyncio.ensure_future(waiters[2].submit(insert(items), {"id": 4, "key": "two unique keys"})),
            ]
            done, _pending = await asyncio.wait(waiting, timeout=0.5)
            assert not done  # behind the lock the other session holds
        assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == ["committed", 1, 1]
        async with db.read() as session:
            rows = (await session.execute(select(items.c.key, items.c.n))).all()
        assert sorted(rows) == [("counter", 1), ("function", 0), ("one unique key", 0), ("two unique keys", 0)]


async def test_postgres_deadlocks_between_batches_are_retried_not_raised(postgres_url: str) -> None:
    """Function units locking rows in opposite orders deadlock on PostgreSQL; the losing batch is rerun whole.

    Every caller ends with its own result (or DuplicateKeyError for the key the other side stored first),
    never a deadlock error, and every key is stored once.
    """
    async with Database.from_url(postgres_url) as first, Database.from_url(postgres_url) as second:
        await _setup(first)
        keys = list(range(20))

        def unit(k: int) -> Any:
            async def work(session: AsyncSession) -> int:
                await session.execute(insert(items).values(id=k, key=f"k{k}"))
                return k

            return work

        async def submit_all(db: Database, order: list[int]) -> list[Any]:
            return await asyncio.gather(*(db.submit(unit(k)) for k in order), return_exceptions=True)

        results = await asyncio.gather(submit_all(first, keys), submit_all(second, keys[::-1]))
        outcomes = [r for batch in results for r in batch]
        assert [r for r in outcomes if not isinstance(r, int | DuplicateKeyError)] == []
        assert sorted(r for r in outcomes if isinstance(r, int)) == keys
        async with first.read() as session:
            assert await session.scalar(select(text("count(*)")).select_from(items)) == 20


async def test_postgres_an_insert_batch_chosen_as_deadlock_victim_is_rerun(postgres_url: str) -> None:
    """An insert batch that skips the advisory lock can still deadlock with a db.write() block taking the
    same keys in the other order. The batch waits first, so PostgreSQL's deadlock check (after
    deadlock_timeout) fires in it and aborts it: the batch is rolled back and runs again, and its callers
    get their own outcomes, never the deadlock."""
    async with Database.from_url(postgres_url) as db, Database.from_url(postgres_url) as other:
        await _setup(db)
        retried: list[int] = []

        @event.listens_for(db.engines.writer.sync_engine, "rollback")
        def _count(_connection: Any) -> None:
            retried.append(1)

        block_holds_k2 = asyncio.Event()
        batch_waits = asyncio.Event()

        async def block() -> None:
            async with other.write() as session:
                await session.execute(insert(items).values(key="k2"))
                block_holds_k2.set()
                await batch_waits.wait()
                await asyncio.sleep(0.3)  # the batch is now waiting for k2, holding k1
                await session.execute(insert(items).values(key="k1"))  # deadlock: the batch waited first

        async def batch() -> list[Any]:
            await block_holds_k2.wait()
            units = [db.submit(insert(items), {"key": key}) for key in ("k2", "k3", "k1")]  # runs as k1, k2, k3
            waiting = asyncio.gather(*units, return_exceptions=True)
            batch_waits.set()
            return await waiting

        _, outcomes = await asyncio.wait_for(asyncio.gather(block(), batch()), 30)
        # The block committed k2 and k1 once the batch let go of k1; the batch's rerun refuses them.
        kinds = [type(o) if isinstance(o, BaseException) else o for o in outcomes]
        assert kinds == [DuplicateKeyError, 1, DuplicateKeyError]
        assert retried  # the deadlocked run was rolled back before the one that committed
        async with db.read() as session:
            assert sorted(await session.scalars(select(items.c.key))) == ["k1", "k2", "k3"]


async def test_postgres_read_modify_write_units_lose_no_update_across_databases(postgres_url: str) -> None:
    """Counter increments through submit(fn) from two databases at once (as two processes would) lose nothing.

    Side by side at READ COMMITTED the read-then-write races would drop updates; submit() serialises the
    PostgreSQL batches of every process with an advisory lock.
    """
    async with Database.from_url(postgres_url) as first, Database.from_url(postgres_url) as second:
        await _setup(first)
        await first.submit(insert(items), {"id": 1, "key": "counter", "n": 0})

        async def increment(session: AsyncSession) -> None:
            value = await session.scalar(select(items.c.n).where(items.c.id == 1))
            await session.execute(update(items).where(items.c.id == 1).values(n=value + 1))

        results = await asyncio.gather(
            *(db.submit(increment) for _ in range(100) for db in (first, second)), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        async with first.read() as session:
            assert await session.scalar(select(items.c.n).where(items.c.id == 1)) == 200


async def test_a_unit_refused_in_a_batch_leaves_no_reference_cycle(backend_url: str) -> None:
    """A unit of a batch refused as a duplicate raises to its caller and leaves nothing for the cyclic
    collector: its error's traceback holds the frames that awaited it, and a frame holding the unit's
    future (which holds the error) would make a cycle per refusal. Retried deliveries make refusals common,
    and such garbage made the collector run ~6x as often in 4 processes x 64 tasks of db.submit(), with a
    full collection of 30-70 ms every few seconds. (A lone unit's error comes from the database through
    SQLAlchemy, whose frames hold it: that path leaves cycles of SQLAlchemy's own.)"""
    async with Database.from_url(backend_url) as db:
        await _setup(db)
        await db.submit(insert(items), {"key": "taken"})
        outcomes: list[str] = []

        async def deliver(key: str) -> None:
            try:
                await db.submit(insert(items), {"key": key})
                outcomes.append("ok")
            except DuplicateKeyError:
                outcomes.append("refused")

        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await asyncio.gather(deliver("new-1"), *(deliver("taken") for _ in range(10)), deliver("new-2"))
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage if isinstance(o, DuplicateKeyError | asyncio.Future | Unit)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert sorted(outcomes) == ["ok"] * 2 + ["refused"] * 10
        assert left == []
