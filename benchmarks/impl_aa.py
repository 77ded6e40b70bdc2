"""advanced-alchemy with its defaults: SQLAlchemyAsyncConfig, BigIntBase models, a repository per request.

No PRAGMAs are set (advanced-alchemy sets none): on SQLite the file stays in the rollback-journal mode
it was created with (DELETE) at the driver's default synchronous=FULL.
"""

from __future__ import annotations

import time
from typing import Any

from advanced_alchemy.base import BigIntBase
from advanced_alchemy.config import SQLAlchemyAsyncConfig
from advanced_alchemy.exceptions import IntegrityError as AAIntegrityError
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import BigInteger, Float, String, Text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from benchmarks.adapters import DUP, OK, Adapter
from benchmarks.scenarios import CHECK_INSERT, COUNTER_ID, EVENT, EVENT_VALUE, INCR, INSERT, READ, Op


class AASignal(BigIntBase):
    __tablename__ = "signals"
    signal_id: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)


class AACounter(BigIntBase):
    __tablename__ = "counters"
    value: Mapped[int] = mapped_column(BigInteger)


class AAEvent(BigIntBase):
    __tablename__ = "events"
    k: Mapped[int] = mapped_column(BigInteger)
    v: Mapped[str] = mapped_column(Text)


class SignalRepository(SQLAlchemyAsyncRepository[AASignal]):
    model_type = AASignal


class CounterRepository(SQLAlchemyAsyncRepository[AACounter]):
    model_type = AACounter


class EventRepository(SQLAlchemyAsyncRepository[AAEvent]):
    model_type = AAEvent


class AdvancedAlchemy(Adapter):
    config: SQLAlchemyAsyncConfig

    async def setup(self) -> None:
        if self.url.startswith("sqlite"):
            url = f"sqlite+aiosqlite:///{self.sqlite_path}"
        else:
            url = self.url.replace("postgresql://", "postgresql+asyncpg://", 1)
        self.config = SQLAlchemyAsyncConfig(connection_string=url)

    async def request(self, op: Op) -> str:
        session: Any
        async with self.config.get_session() as session:
            if op.kind == READ:
                await SignalRepository(session=session).get_one_or_none(id=op.row_id)
                return OK
            if op.kind == INCR:
                counters = CounterRepository(session=session)
                counter = await counters.get(COUNTER_ID)
                counter.value += 1
                await counters.update(counter, auto_commit=True)
                return OK
            if op.kind == EVENT:
                await EventRepository(session=session).add(AAEvent(k=op.k, v=EVENT_VALUE), auto_commit=True)
                return OK
            repo = SignalRepository(session=session)
            if op.kind == CHECK_INSERT:
                if await repo.exists(signal_id=op.signal_id):
                    return DUP
            elif op.kind != INSERT:
                raise ValueError(op.kind)
            try:
                await repo.add(
                    AASignal(signal_id=op.signal_id, payload=op.payload, received_at=time.time()), auto_commit=True
                )
            except (AAIntegrityError, IntegrityError) as exc:
                if "database is locked" in str(exc):
                    raise
                return DUP
            return OK

    async def teardown(self) -> None:
        await self.config.get_engine().dispose()
