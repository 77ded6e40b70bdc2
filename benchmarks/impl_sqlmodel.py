"""The SQLModel tutorial pattern: `create_async_engine(url)`, `AsyncSession(engine)` per request,
`session.add(obj); await session.commit(); await session.refresh(obj)`.  No PRAGMAs (none in the tutorial)."""

from __future__ import annotations

import time

from sqlalchemy import BigInteger, Column, Integer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from benchmarks.adapters import DUP, OK, Adapter
from benchmarks.scenarios import CHECK_INSERT, COUNTER_ID, EVENT, EVENT_VALUE, INCR, INSERT, READ, Op

_ID = BigInteger().with_variant(Integer, "sqlite")


class SMSignal(SQLModel, table=True):
    __tablename__ = "signals"
    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True))
    signal_id: str = Field(max_length=64, unique=True)
    payload: str
    received_at: float


class SMCounter(SQLModel, table=True):
    __tablename__ = "counters"
    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True))
    value: int = Field(sa_column=Column(BigInteger))


class SMEvent(SQLModel, table=True):
    __tablename__ = "events"
    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True))
    k: int = Field(sa_column=Column(BigInteger))
    v: str


class SQLModelTutorial(Adapter):
    engine: AsyncEngine

    async def setup(self) -> None:
        if self.url.startswith("sqlite"):
            url = f"sqlite+aiosqlite:///{self.sqlite_path}"
        else:
            url = self.url.replace("postgresql://", "postgresql+asyncpg://", 1)
        self.engine = create_async_engine(url)

    async def request(self, op: Op) -> str:
        async with AsyncSession(self.engine) as session:
            if op.kind == READ:
                await session.get(SMSignal, op.row_id)
                return OK
            if op.kind == INCR:
                counter = await session.get(SMCounter, COUNTER_ID)
                assert counter is not None
                counter.value += 1
                session.add(counter)
                await session.commit()
                await session.refresh(counter)
                return OK
            if op.kind == EVENT:
                ev = SMEvent(k=op.k, v=EVENT_VALUE)
                session.add(ev)
                await session.commit()
                await session.refresh(ev)
                return OK
            if op.kind == CHECK_INSERT:
                found = (await session.exec(select(SMSignal.id).where(SMSignal.signal_id == op.signal_id))).first()
                if found is not None:
                    return DUP
            elif op.kind != INSERT:
                raise ValueError(op.kind)
            signal = SMSignal(signal_id=op.signal_id, payload=op.payload, received_at=time.time())
            session.add(signal)
            try:
                await session.commit()
            except IntegrityError:
                return DUP
            await session.refresh(signal)
            return OK

    async def teardown(self) -> None:
        await self.engine.dispose()
