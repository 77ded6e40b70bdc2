"""The README quick start: uvicorn examples.quickstart:app (tests/test_readme.py keeps the two equal)."""

import contextlib

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Mapped, mapped_column

from dbfoundation import Database
from dbfoundation.fastapi import ReadSession, WriteSession, health_router, install_exception_handlers, lifespan
from dbfoundation.models import Base, TimestampMixin, UUIDv7PrimaryKey


class Note(UUIDv7PrimaryKey, TimestampMixin, Base):
    __tablename__ = "notes"
    title: Mapped[str] = mapped_column(unique=True)


@contextlib.asynccontextmanager
async def create_tables(app: FastAPI):  # real projects: lifespan(db, migrate=True) with Alembic
    async with db.write() as session:
        await session.run_sync(lambda s: Base.metadata.create_all(s.connection()))
    yield


db = Database()  # DATABASE_URL; default sqlite:///./data/app.db, WAL, safe under concurrent writers
app = FastAPI(lifespan=lifespan(db, app_lifespan=create_tables))
install_exception_handlers(app)  # a duplicate title answers 409, a busy database 503 + Retry-After
app.include_router(health_router())  # /health/live, /health/ready


@app.post("/notes", status_code=201)
async def add_note(title: str, session: WriteSession) -> dict[str, str]:
    session.add(note := Note(title=title))  # committed before the response is sent
    await session.flush()
    return {"id": str(note.id), "title": note.title}


@app.get("/notes")
async def list_notes(session: ReadSession) -> list[str]:
    return list(await session.scalars(select(Note.title).order_by(Note.created_at)))
