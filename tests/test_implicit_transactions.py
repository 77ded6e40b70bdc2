"""PostgreSQL: plain reads sent first and a write that is one ORM INSERT go without BEGIN and COMMIT;
anything else keeps its transaction.

The asyncpg connection's query logger sees the BEGIN, COMMIT and ROLLBACK the adapter sends (the
statements themselves go through prepared statements, which it does not log): an empty log means every
statement ran alone. The atomicity tests make a later statement fail and look for the earlier one's work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import ForeignKey, String, event, func, insert, literal, literal_column, select, text, union_all
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from dbfoundation import Database, DuplicateKeyError, NotNullViolation, ReadOnlyError
from dbfoundation.implicit_transactions import flush_is_one_insert, is_plain_read


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(50), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("parents.id"))


class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    items: Mapped[list[Item]] = relationship()  # no backref: adding an item changes only the parent


class Audit(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String(50))


class Strict(Base):
    __tablename__ = "strict"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), nullable=True)  # NOT NULL added in SQL below


@contextlib.asynccontextmanager
async def logged_write(db: Database, *, read: bool = False) -> AsyncIterator[tuple[AsyncSession, list[str]]]:
    """db.write() (db.read() with `read`), with the transaction statements (BEGIN, COMMIT, ROLLBACK) it
    sends in the list."""
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query.split()[0].rstrip(";"))

    driver = None
    try:
        async with db.read() if read else db.write() as session:
            driver = (await session.connection()).sync_connection.connection.driver_connection
            driver.add_query_logger(log)
            yield session, sent
    finally:
        await asyncio.sleep(0.01)  # asyncpg calls loggers with call_soon
        if driver is not None:
            driver.remove_query_logger(log)


@contextlib.asynccontextmanager
async def _started(url: str, *, on_checkout: Any = None) -> AsyncIterator[Database]:
    """A started Database with this module's tables; `on_checkout` sees every connection the writer uses."""
    async with Database.from_url(url) as db:
        if on_checkout is not None:  # before the first write: kept connections are checked out only once
            event.listen(db.engines.writer.sync_engine, "checkout", on_checkout)
        async with db.write() as session:
            await session.run_sync(lambda s: Base.metadata.create_all(s.connection()))
            await session.execute(text("ALTER TABLE strict ALTER COLUMN name SET NOT NULL"))
        yield db


async def _names(db: Database, entity: Any) -> list[str]:
    async with db.read() as session:
        column = entity.note if entity is Audit else entity.name
        return list((await session.execute(select(column).order_by(column))).scalars())


async def test_postgres_a_write_that_is_one_orm_insert_sends_no_begin_and_no_commit(postgres_url: str) -> None:
    async with _started(postgres_url) as db:
        async with logged_write(db) as (session, sent):
            item = Item(name="alone")
            session.add(item)
        assert sent == []
        assert item.id is not None  # RETURNING still reads the key back
        assert await _names(db, Item) == ["alone"]

        async with logged_write(db) as (session, sent):  # two rows: one transaction around both
            session.add_all([Item(name="b"), Item(name="c")])
        assert sent == ["BEGIN", "COMMIT"]
        async with logged_write(db) as (session, sent):  # a plain read first goes alone too
            assert await session.scalar(select(func.count()).select_from(Item)) == 3
            session.add(Item(name="d"))
        assert sent == []
        async with logged_write(db) as (session, sent):  # a locking read first: the block is one transaction
            assert (await session.scalars(select(Item).where(Item.name == "d").with_for_update())).one()
            session.add(Item(name="d2"))
        assert sent == ["BEGIN", "COMMIT"]
        async with logged_write(db) as (session, sent):  # Core inside the block: its end is not known
            await session.execute(insert(Item), {"name": "e"})
        assert sent == ["BEGIN", "COMMIT"]
        assert await _names(db, Item) == ["alone", "b", "c", "d", "d2", "e"]


async def test_postgres_a_lone_insert_that_fails_raises_the_usual_error_and_leaves_the_connection_clean(
    postgres_url: str,
) -> None:
    async with _started(postgres_url) as db:
        async with db.write() as session:
            session.add(Item(name="taken"))
        for _ in range(2):  # the second time on the connection the first failure left behind
            with pytest.raises(DuplicateKeyError):
                async with logged_write(db) as (session, sent):
                    session.add(Item(name="taken"))
            assert "BEGIN" not in sent
            with pytest.raises(NotNullViolation):
                async with db.write() as session:
                    session.add(Strict(name=None))
        async with logged_write(db) as (session, sent):
            session.add_all([Item(name="x"), Item(name="y")])
            await session.flush()
            assert await session.scalar(text("SELECT count(*) FROM items")) == 3
        assert sent == ["BEGIN", "COMMIT"]
        assert await _names(db, Item) == ["taken", "x", "y"]


async def test_postgres_sql_sent_by_an_insert_listener_stays_in_the_inserts_transaction(postgres_url: str) -> None:
    """A before_insert listener that writes an audit row: when the INSERT then fails, no audit row stays."""

    def audit(_mapper: Any, connection: Any, target: Item) -> None:
        connection.execute(insert(Audit), {"note": f"insert {target.name}"})

    event.listen(Item, "before_insert", audit)
    try:
        async with _started(postgres_url) as db:
            async with db.write() as session:
                session.add(Item(name="taken"))
            with pytest.raises(DuplicateKeyError):
                async with logged_write(db) as (session, sent):
                    session.add(Item(name="taken"))
            assert sent == ["BEGIN", "ROLLBACK"]
            assert await _names(db, Audit) == ["insert taken"]  # the first write's, not the failed one's
    finally:
        event.remove(Item, "before_insert", audit)


async def test_postgres_an_object_added_by_a_before_flush_listener_stays_in_the_transaction(
    postgres_url: str,
) -> None:
    async with _started(postgres_url) as db:
        async with db.write() as session:
            session.add(Item(name="taken"))
        with pytest.raises(DuplicateKeyError):
            async with logged_write(db) as (session, sent):

                @event.listens_for(session.sync_session, "before_flush")
                def _add_audit(flushing: Session, *_args: Any) -> None:
                    flushing.add(Audit(note="added in before_flush"))

                session.add(Item(name="taken"))
        assert sent == ["BEGIN", "ROLLBACK"]
        assert await _names(db, Audit) == []


async def test_postgres_a_new_object_holding_existing_ones_in_a_collection_is_one_transaction(
    postgres_url: str,
) -> None:
    """New parent, existing item put in its collection: an INSERT and an UPDATE of the item, so BEGIN."""
    async with _started(postgres_url) as db:
        async with db.write() as session:
            child = Item(name="child")
            session.add(child)
        async with logged_write(db) as (session, sent):
            parent = Parent(items=[await session.merge(child, load=False)])  # no SELECT: nothing sent yet
            session.add(parent)
        assert sent == ["BEGIN", "COMMIT"]
        async with db.read() as session:
            assert await session.scalar(select(Item.parent_id)) == parent.id


def test_only_a_lone_new_object_without_relationships_or_listeners_is_one_insert() -> None:
    session = Session()
    assert flush_is_one_insert(session) is False  # nothing to flush
    session.add(Item(name="a"))
    assert flush_is_one_insert(session) is True
    session.add(Audit(note="b"))
    assert flush_is_one_insert(session) is False
    session.expunge_all()
    session.add(Parent(items=[]))  # a collection set, even an empty one: the flush's shape is not checked
    assert flush_is_one_insert(session) is False
    session.expunge_all()
    session.add(Parent())
    assert flush_is_one_insert(session) is True


async def test_postgres_a_plain_read_goes_alone_and_anything_else_in_a_read_only_transaction(
    postgres_url: str,
) -> None:
    async with _started(postgres_url) as db:
        async with db.write() as session:
            await session.execute(
                text(
                    "CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS "
                    "$$ INSERT INTO audit (note) VALUES ('bumped') RETURNING id $$"
                )
            )
            session.add(Item(name="a"))
        async with logged_write(db, read=True) as (session, sent):
            item = await session.scalar(select(Item).where(Item.name == "a"))
            assert item is not None
            assert await session.get(Audit, 1) is None
            assert await session.scalar(select(func.count()).select_from(Item)) == 1
        assert sent == []
        with pytest.raises(ReadOnlyError):  # a function may write: it runs in the read-only transaction
            async with logged_write(db, read=True) as (session, sent):
                await session.scalar(select(func.bump()))
        assert sent[0] == "BEGIN"
        async with logged_write(db, read=True) as (session, sent):  # a server-side cursor needs a transaction
            assert [row.name async for row in await session.stream_scalars(select(Item))] == ["a"]
        assert sent == ["BEGIN", "COMMIT"]
        assert await _names(db, Audit) == []


async def test_postgres_a_transaction_level_lock_taken_by_a_select_lasts_until_the_commit(postgres_url: str) -> None:
    async with _started(postgres_url) as db:
        other = await asyncpg.connect(postgres_url)
        try:
            async with logged_write(db) as (session, sent):
                await session.execute(select(func.pg_advisory_xact_lock(7)))
                assert await other.fetchval("SELECT pg_try_advisory_lock(7)") is False
                session.add(Item(name="under the lock"))
            assert sent == ["BEGIN", "COMMIT"]
            assert await other.fetchval("SELECT pg_try_advisory_lock(7)") is True
        finally:
            await other.close()


async def test_postgres_a_failed_plain_read_the_block_handles_aborts_nothing(postgres_url: str) -> None:
    """Sent alone, the failed read ended its own implicit transaction: what follows commits, as on SQLite."""
    async with _started(postgres_url) as db:
        async with db.write() as session:
            with pytest.raises(DBAPIError, match="division by zero"):
                await session.scalar(select(literal(1) / literal(0)))
            session.add(Item(name="after the failed read"))
        assert await _names(db, Item) == ["after the failed read"]


def _plain(statement: Any) -> bool:
    return is_plain_read(statement.compile(dialect=postgresql_asyncpg.dialect()))


def test_only_selects_that_change_lock_and_call_nothing_are_plain_reads() -> None:
    class Mine(ColumnElement[int]):  # an application's own construct: it may render any SQL
        inherit_cache = True

    @compiles(Mine)
    def _render(*_args: Any, **_kw: Any) -> str:
        return "bump()"

    plain = [
        select(Item).where(Item.id == 1),
        select(func.count()).select_from(Item),
        select(Item.name, func.lower(Item.name)).where(Item.name.in_(["a", "b"])).order_by(Item.id).limit(3),
        select(Parent).join(Parent.items).where(Item.id.in_(select(Item.id).where(Item.name.is_(None)))),
        union_all(select(Item.id), select(Audit.id)).subquery().select(),
    ]
    assert [_plain(statement) for statement in plain] == [True] * len(plain)
    not_plain = [
        select(Item).with_for_update(),
        select(Item).where(Item.id.in_(select(Item.id).with_for_update().scalar_subquery())),
        select(func.now()),
        select(func.pg_advisory_xact_lock(1)),
        select(func.nextval("items_id_seq")),
        select(func.myschema.count(Item.id)),  # a function of the application's, whatever its name
        select(Item).join(Parent, Parent.id == func.bump()),
        select(text("1")),
        select(literal_column("bump()")),
        select(Item).prefix_with("/* anything */"),
        select(Item.id).where(Item.name.op("~~*")("a%")),
        select(Mine()),
        select(Item.id).where(Item.id == select(func.bump()).scalar_subquery()),
        insert(Item).values(name="x"),
        text("SELECT 1"),
    ]
    assert [_plain(statement) for statement in not_plain] == [False] * len(not_plain)


async def test_postgres_a_submitted_statement_alone_in_its_batch_is_sent_without_begin(postgres_url: str) -> None:
    sent: list[str] = []
    drivers: list[Any] = []

    def log(record: Any) -> None:
        sent.append(record.query.split()[0].rstrip(";"))

    def watch(dbapi_connection: Any, *_args: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver not in drivers:
            drivers.append(driver)
            driver.add_query_logger(log)

    try:
        async with _started(postgres_url, on_checkout=watch) as db:
            await asyncio.sleep(0.01)
            sent.clear()  # creating the tables
            assert await db.submit(insert(Item), {"name": "alone"}) == 1
            with pytest.raises(DuplicateKeyError):
                await db.submit(insert(Item), {"name": "alone"})
            await asyncio.sleep(0.01)
            assert drivers
            assert sent == []
            await asyncio.gather(*(db.submit(insert(Item), {"name": f"n{i}"}) for i in range(5)))
            await asyncio.sleep(0.01)
            assert "BEGIN" in sent  # several units in a batch: one transaction
            assert len(await _names(db, Item)) == 6
    finally:
        for driver in drivers:
            driver.remove_query_logger(log)
