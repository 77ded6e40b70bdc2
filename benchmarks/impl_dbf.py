"""dbfoundation adapters: `db.write()` per request (ORM or Core) and group commit through `db.submit()`."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from benchmarks.adapters import DUP, OK, Adapter
from benchmarks.models import Counter, Event, Signal, events, signals
from benchmarks.scenarios import CHECK_INSERT, COUNTER_ID, EVENT, EVENT_VALUE, INCR, INSERT, READ, Op


class _Dbf(Adapter):
    db: Any

    async def setup(self) -> None:
        from dbfoundation import Database
        from dbfoundation.errors import DuplicateKeyError

        self.duplicate = DuplicateKeyError
        self.db = Database.from_url(self.url, write_timeout=30.0)
        await self.db.start()

    async def read(self, op: Op) -> str:
        async with self.db.read() as session:
            await session.get(Signal, op.row_id)
        return OK

    async def teardown(self) -> None:
        await self.db.stop()

    def describe(self) -> str:
        return repr(self.db)


class DbfWrite(_Dbf):
    """The unit-of-work style the docs show: `async with db.write() as session: session.add(obj)`."""

    async def request(self, op: Op) -> str:
        if op.kind == READ:
            return await self.read(op)
        try:
            async with self.db.write() as session:
                if op.kind == INSERT:
                    session.add(Signal(signal_id=op.signal_id, payload=op.payload, received_at=time.time()))
                elif op.kind == CHECK_INSERT:
                    found = await session.scalar(select(Signal.id).where(Signal.signal_id == op.signal_id))
                    if found is not None:
                        return DUP
                    session.add(Signal(signal_id=op.signal_id, payload=op.payload, received_at=time.time()))
                elif op.kind == INCR:
                    await _increment(session)
                elif op.kind == EVENT:
                    session.add(Event(k=op.k, v=EVENT_VALUE))
                else:
                    raise ValueError(op.kind)
        except self.duplicate:
            return DUP
        return OK


class DbfWriteCore(DbfWrite):
    """db.write() with Core statements through the session (no ORM flush) for inserts."""

    async def request(self, op: Op) -> str:
        if op.kind not in (INSERT, EVENT):
            return await super().request(op)
        try:
            async with self.db.write() as session:
                if op.kind == INSERT:
                    await session.execute(
                        insert(signals),
                        {"signal_id": op.signal_id, "payload": op.payload, "received_at": time.time()},
                    )
                else:
                    await session.execute(insert(events), {"k": op.k, "v": EVENT_VALUE})
        except self.duplicate:
            return DUP
        return OK


async def _check_then_insert(session: AsyncSession, op: Op) -> bool:
    found = await session.scalar(select(Signal.id).where(Signal.signal_id == op.signal_id))
    if found is not None:
        return False
    await session.execute(
        insert(signals), {"signal_id": op.signal_id, "payload": op.payload, "received_at": time.time()}
    )
    return True


async def _increment(session: AsyncSession) -> None:
    # FOR UPDATE, as the README asks of a block that writes back what it read: PostgreSQL runs db.write()
    # blocks side by side at READ COMMITTED and would lose increments without it; SQLite's dialect renders
    # nothing (the write transaction is already serialised), so one function serves both backends.
    counter = await session.get(Counter, COUNTER_ID, with_for_update=True)
    assert counter is not None
    counter.value += 1
    await session.flush()


class DbfSubmit(_Dbf):
    """Group commit: Core statements for inserts (executemany per batch), callables for the rest."""

    async def request(self, op: Op) -> str:
        db = self.db
        if op.kind == READ:
            return await self.read(op)
        try:
            if op.kind == INSERT:
                await db.submit(
                    insert(signals), {"signal_id": op.signal_id, "payload": op.payload, "received_at": time.time()}
                )
            elif op.kind == EVENT:
                await db.submit(insert(events), {"k": op.k, "v": EVENT_VALUE})
            elif op.kind == CHECK_INSERT:
                inserted = await db.submit(lambda session: _check_then_insert(session, op))
                if not inserted:
                    return DUP
            elif op.kind == INCR:
                await db.submit(_increment)
            else:
                raise ValueError(op.kind)
        except self.duplicate:
            return DUP
        return OK
