"""Plain SQLAlchemy 2.x models for the benchmark tables (used by `usual`, `sqlalchemy-asyncpg`, `dbf-*`).

They map the tables the parent creates in `benchmarks.targets`; nobody calls `create_all`.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Float, Integer, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

IdType = BigInteger().with_variant(Integer, "sqlite")


class BenchBase(DeclarativeBase):
    pass


class Signal(BenchBase):
    __tablename__ = "signals"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    signal_id: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)


class Counter(BenchBase):
    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Event(BenchBase):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    k: Mapped[int] = mapped_column(BigInteger)
    v: Mapped[str] = mapped_column(Text)


signals = cast(Table, Signal.__table__)
counters = cast(Table, Counter.__table__)
events = cast(Table, Event.__table__)
