"""The README quick start, runnable: python examples/quickstart.py (tests/test_readme.py keeps them equal)."""

import asyncio

from sqlalchemy import select
from sqlalchemy.orm import Mapped, mapped_column

from dbfoundation import Database, DatabaseSettings, DuplicateKeyError
from dbfoundation.models import Base, TimestampMixin, UUIDv7PrimaryKey


class Note(UUIDv7PrimaryKey, TimestampMixin, Base):
    __tablename__ = "notes"
    title: Mapped[str] = mapped_column(unique=True)


async def main() -> None:
    db = Database(DatabaseSettings())  # DATABASE_URL, default sqlite:///./data/app.db
    async with db:  # folder, WAL, PRAGMAs verified, pools opened
        async with db.write() as session:  # BEGIN IMMEDIATE after the write slot; commit at the end
            await session.run_sync(lambda s: Base.metadata.create_all(s.connection()))
            session.add(Note(title="hello"))
        try:
            async with db.write() as session:
                session.add(Note(title="hello"))
        except DuplicateKeyError as exc:  # typed, on SQLite and PostgreSQL alike
            print("duplicate:", exc)
        async with db.read() as session:  # reader pool: never waits for the writer
            print((await session.scalars(select(Note.title))).all())
        await db.submit(lambda s: s.execute(select(1)))  # group commit: many small writes, one COMMIT


asyncio.run(main())
