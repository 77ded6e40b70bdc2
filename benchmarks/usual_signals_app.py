"""`POST /signals` written the usual way, to compare with the reference service (benchmarks/service_http.py).

One `create_async_engine` from DATABASE_URL (SQLite: `PRAGMA journal_mode=WAL` and `synchronous=NORMAL` in a
`connect` event; default pysqlite-managed, deferred transactions), an `async_sessionmaker` session per request
as a FastAPI dependency, the same `signals` table as the service (created at start with `create_all`), and the
same dedup semantics: add + commit, and a unique violation on `signal_id` (IntegrityError) is answered 200 as a
duplicate. Run: `DATABASE_URL=... uvicorn --factory benchmarks.usual_signals_app:create_app --workers 4`.
"""

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from sqlalchemy import JSON, Boolean, DateTime, Integer, String, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Signal(Base):
    __tablename__ = "signals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    signal_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    processed: Mapped[bool] = mapped_column(Boolean, default=False)


def signal_key(body: dict[str, Any]) -> str:
    """The same dedup key as the service: the sender's `signal_id`, else a hash of the canonical body."""
    given = body.get("signal_id")
    if isinstance(given, str) and given:
        return given[:64]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def engine_url(raw: str) -> str:
    url = make_url(raw)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


def create_app() -> FastAPI:
    engine = create_async_engine(engine_url(os.environ["DATABASE_URL"]))
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Four workers start at once: a racing CREATE TABLE can fail in the loser; the table is there then.
        for attempt in range(5):
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                break
            except DBAPIError:
                if attempt == 4:
                    raise
        yield
        await engine.dispose()

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    app = FastAPI(lifespan=lifespan)

    @app.post("/signals", status_code=201)
    async def ingest_signal(
        request: Request, response: Response, session: Annotated[AsyncSession, Depends(get_session)]
    ) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPException(422, "a signal is a JSON object")
        key = signal_key(body)
        session.add(Signal(signal_id=key, payload=body, received_at=dt.datetime.now(dt.UTC)))
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            response.status_code = 200
            return {"signal_id": key, "duplicate": True}
        return {"signal_id": key, "duplicate": False}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    return app
