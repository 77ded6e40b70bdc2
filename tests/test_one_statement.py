"""A PostgreSQL write that is one ORM INSERT is sent alone (no BEGIN, no COMMIT); anything more is not.

The asyncpg connection's query logger sees the BEGIN and COMMIT the adapter sends (the statements
themselves go through prepared statements, which it does not log): an empty log means the INSERT
committed on its own. The atomicity tests make the second statement fail and look for the first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from dbfoundation import Database, DuplicateKeyError, NotNullViolation
from dbfoundation.one_statement import flush_is_one_insert


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
async def logged_write(db: Database) -> AsyncIterator[tuple[AsyncSession, list[str]]]:
    """db.write(), with the transaction statements (BEGIN, COMMIT, ROLLBACK) it sends in the list."""
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query.split()[0].rstrip(";"))

    driver = None
    try:
        async with db.write() as session:
            driver = (await session.connection()).sync_connection.connection.driver_connection
            driver.add_query_logger(log)
            yield session, sent
    finally:
        await asyncio.sleep(0.01)  # asyncpg calls loggers with call_soon
        if driver is not None:
            driver.remove_query_logger(log)


async def _database(url: str) -> Database:
    db = Database.from_url(url)
    await db.start()
    async with db.write() as session:
        await session.run_sync(lambda s: Base.metadata.create_all(s.connection()))
        await session.execute(text("ALTER TABLE strict ALTER COLUMN name SET NOT NULL"))
    return db


async def _names(db: Database, entity: Any) -> list[str]:
    async with db.read() as session:
        column = entity.note if entity is Audit else entity.name
        return list((await session.execute(select(column).order_by(column))).scalars())


async def test_postgres_a_write_that_is_one_orm_insert_sends_no_begin_and_no_commit(postgres_url: str) -> None:
    db = await _database(postgres_url)
    try:
        async with logged_write(db) as (session, sent):
            item = Item(name="alone")
            session.add(item)
        assert sent == []
        assert item.id is not None  # RETURNING still reads the key back
        assert await _names(db, Item) == ["alone"]

        async with logged_write(db) as (session, sent):  # two rows: one transaction around both
            session.add_all([Item(name="b"), Item(name="c")])
        assert sent == ["BEGIN", "COMMIT"]
        async with logged_write(db) as (session, sent):  # a statement ran first: the block is one transaction
            assert await session.scalar(select(func.count()).select_from(Item)) == 3
            session.add(Item(name="d"))
        assert sent == ["BEGIN", "COMMIT"]
        async with logged_write(db) as (session, sent):  # Core inside the block: its end is not known
            await session.execute(insert(Item), {"name": "e"})
        assert sent == ["BEGIN", "COMMIT"]
        assert await _names(db, Item) == ["alone", "b", "c", "d", "e"]
    finally:
        await db.stop()


async def test_postgres_a_lone_insert_that_fails_raises_the_usual_error_and_leaves_the_connection_clean(
    postgres_url: str,
) -> None:
    db = await _database(postgres_url)
    try:
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
    finally:
        await db.stop()


async def test_postgres_sql_sent_by_an_insert_listener_stays_in_the_inserts_transaction(postgres_url: str) -> None:
    """A before_insert listener that writes an audit row: when the INSERT then fails, no audit row stays."""
    db = await _database(postgres_url)

    def audit(_mapper: Any, connection: Any, target: Item) -> None:
        connection.execute(insert(Audit), {"note": f"insert {target.name}"})

    event.listen(Item, "before_insert", audit)
    try:
        async with db.write() as session:
            session.add(Item(name="taken"))
        with pytest.raises(DuplicateKeyError):
            async with logged_write(db) as (session, sent):
                session.add(Item(name="taken"))
        assert sent == ["BEGIN", "ROLLBACK"]
        assert await _names(db, Audit) == ["insert taken"]  # the first write's, not the failed one's
    finally:
        event.remove(Item, "before_insert", audit)
        await db.stop()


async def test_postgres_an_object_added_by_a_before_flush_listener_stays_in_the_transaction(
    postgres_url: str,
) -> None:
    db = await _database(postgres_url)
    try:
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
    finally:
        await db.stop()


async def test_postgres_a_new_object_holding_existing_ones_in_a_collection_is_one_transaction(
    postgres_url: str,
) -> None:
    """New parent, existing item put in its collection: an INSERT and an UPDATE of the item, so BEGIN."""
    db = await _database(postgres_url)
    try:
        async with db.write() as session:
            child = Item(name="child")
            session.add(child)
        async with logged_write(db) as (session, sent):
            parent = Parent(items=[await session.merge(child, load=False)])  # no SELECT: nothing sent yet
            session.add(parent)
        assert sent == ["BEGIN", "COMMIT"]
        async with db.read() as session:
            assert await session.scalar(select(Item.parent_id)) == parent.id
    finally:
        await db.stop()


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
