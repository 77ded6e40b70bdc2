"""What services wrote by hand: SQLAlchemy async engine + a session per request (ORM unit of work)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from benchmarks.adapters import DUP, OK, Adapter
from benchmarks.models import Counter, Event, Signal
from benchmarks.scenarios import CHECK_INSERT, COUNTER_ID, EVENT, EVENT_VALUE, INCR, INSERT, READ, Op


async def orm_request(session_factory: async_sessionmaker[AsyncSession], op: Op) -> str:
    """One request as a hand-written service does it: open a session, do the work, commit."""
    async with session_factory() as session:
        if op.kind == READ:
            await session.get(Signal, op.row_id)
            return OK
        if op.kind == INCR:
            counter = await session.get(Counter, COUNTER_ID)
            assert counter is not None
            counter.value += 1
            await session.commit()
            return OK
        if op.kind == EVENT:
            session.add(Event(k=op.k, v=EVENT_VALUE))
            await session.commit()
            return OK
        if op.kind == CHECK_INSERT:
            found = await session.scalar(select(Signal.id).where(Signal.signal_id == op.signal_id))
            if found is not None:
                return DUP
        elif op.kind != INSERT:
            raise ValueError(op.kind)
        session.add(Signal(signal_id=op.signal_id, payload=op.payload, received_at=time.time()))
        try:
            await session.commit()
        except IntegrityError:
            return DUP
        return OK


class _SessionPerRequest(Adapter):
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    def make_engine(self) -> AsyncEngine:
        raise NotImplementedError

    async def setup(self) -> None:
        self.engine = self.make_engine()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def request(self, op: Op) -> str:
        return await orm_request(self.sessions, op)

    async def teardown(self) -> None:
        await self.engine.dispose()


class Usual(_SessionPerRequest):
    def make_engine(self) -> AsyncEngine:
        engine = create_async_engine(f"sqlite+aiosqlite:///{self.sqlite_path}")

        @event.listens_for(engine.sync_engine, "connect")
        def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine


class SQLAlchemyAsyncpg(_SessionPerRequest):
    def make_engine(self) -> AsyncEngine:
        url = self.url.replace("postgresql://", "postgresql+asyncpg://", 1)
        return create_async_engine(url, pool_size=10, max_overflow=5, pool_pre_ping=True)


class ORMFloor(Adapter):
    """Not a way to build a service: SQLAlchemy's synchronous ORM session per request on stdlib sqlite3, with
    no asyncio layer, no driver adapter and no thread (every call blocks the loop). What is left is the cost
    of SQLAlchemy's ORM itself, the floor any ORM-based async stack stands on (per_call, instructions)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session, sessionmaker

        self.sync_engine = create_engine(f"sqlite:///{self.sqlite_path}")

        @event.listens_for(self.sync_engine, "connect")
        def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        self.sync_sessions = sessionmaker(self.sync_engine, class_=Session, expire_on_commit=False)

    async def request(self, op: Op) -> str:
        with self.sync_sessions() as session:
            if op.kind == READ:
                session.get(Signal, op.row_id)
                return OK
            if op.kind != INSERT:
                raise ValueError(f"orm-floor runs inserts and reads only, not {op.kind}")
            session.add(Signal(signal_id=op.signal_id, payload=op.payload, received_at=time.time()))
            try:
                session.commit()
            except IntegrityError:
                return DUP
            return OK

    async def teardown(self) -> None:
        self.sync_engine.dispose()
