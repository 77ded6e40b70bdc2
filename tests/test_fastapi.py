"""FastAPI integration: lifespan, ReadSession/WriteSession (commit before the response), error answers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, UniqueConstraint, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from dbfoundation import Database, DatabaseSettings, SessionStateError
from dbfoundation.errors import MissingDependencyError
from dbfoundation.fastapi import (
    STATE_KEY,
    AppDatabase,
    ReadSession,
    WriteSession,
    install_exception_handlers,
    lifespan,
)

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(100), nullable=False),
    UniqueConstraint("key", name="uq_items_key"),
)
parents = Table("parents", metadata, Column("id", Integer, primary_key=True))
# Checked at COMMIT on both backends, so a request can pass every statement and still fail to commit.
children = Table(
    "children",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", ForeignKey("parents.id", deferrable=True, initially="DEFERRED"), nullable=False),
)


class Seen:
    """The sessions handlers were given, kept alive so their ids stay unique while counted."""

    def __init__(self) -> None:
        self.sessions: list[AsyncSession] = []

    def add(self, session: AsyncSession) -> None:
        self.sessions.append(session)


def build_app(db: Database, seen: Seen, *, handlers: bool = False, require_database: bool = True) -> FastAPI:
    app = FastAPI(lifespan=lifespan(db, require_database=require_database))
    if handlers:
        install_exception_handlers(app)

    @app.post("/items", status_code=201)
    async def create_item(body: dict[str, str], session: WriteSession) -> dict[str, str]:
        seen.add(session)
        await session.execute(insert(items).values(key=body["key"]))
        return {"key": body["key"]}

    @app.get("/items")
    async def count_items(session: ReadSession) -> dict[str, int]:
        seen.add(session)
        return {"count": int(await session.scalar(select(func.count()).select_from(items)) or 0)}

    @app.post("/families", status_code=201)
    async def create_family(session: WriteSession) -> dict[str, str]:
        seen.add(session)
        await session.execute(insert(parents).values(id=1))
        await session.execute(insert(children).values(id=1, parent_id=999))  # no such parent: fails at COMMIT
        return {"created": "yes"}

    @app.post("/items/then-crash")
    async def crash(session: WriteSession) -> dict[str, str]:
        seen.add(session)
        await session.execute(insert(items).values(key="from-crash"))
        raise RuntimeError("handler bug")

    @app.post("/items/then-refuse")
    async def refuse(session: WriteSession) -> dict[str, str]:
        seen.add(session)
        await session.execute(insert(items).values(key="from-refuse"))
        raise HTTPException(status_code=418, detail="refused by the handler")

    @app.get("/database")
    async def which(db_from_app: AppDatabase) -> dict[str, str]:
        return {"state": db_from_app.state}

    return app


@contextlib.asynccontextmanager
async def serve(app: FastAPI, *, raise_app_exceptions: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, then give a client talking to it in-process."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=raise_app_exceptions)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        yield client


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many times each session was closed, by id of its AsyncSession, counted by wrapping the close()
    of the sync Session underneath (db.write() closes that one directly, inside its commit step)."""
    counts: Counter[int] = Counter()
    real_close = Session.close
    kept: list[Session] = []  # a counted session must outlive the test, or a new one could reuse its id()

    def counting_close(self: Session) -> None:
        counts[id(self)] += 1
        kept.append(self)
        real_close(self)

    monkeypatch.setattr(Session, "close", counting_close)
    return counts


async def create_tables(db: Database) -> None:
    async with db.write() as session:
        await session.run_sync(lambda s: metadata.create_all(s.connection()))


async def row_counts(db: Database) -> dict[str, int]:
    async with db.read() as session:
        return {
            t.name: int(await session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (items, parents, children)
        }


async def test_write_session_commits_before_the_response_and_closes_once(
    backend_url: str, closes: Counter[int]
) -> None:
    """A 201 from a WriteSession handler means the row is committed, and each request's session closed once."""
    db, seen = Database.from_url(backend_url), Seen()
    async with serve(build_app(db, seen)) as client:
        await create_tables(db)
        created = await client.post("/items", json={"key": "a"})
        assert created.status_code == 201
        # closed (after its commit) before the client got the answer
        assert closes[id(seen.sessions[0].sync_session)] == 1
        assert (await client.get("/items")).json() == {"count": 1}
        assert (await row_counts(db))["items"] == 1
    assert [closes[id(s.sync_session)] for s in seen.sessions] == [1, 1]


async def test_failed_commit_is_a_5xx_and_writes_nothing(backend_url: str, closes: Counter[int]) -> None:
    """A commit refused by a deferred foreign key answers 500, never 2xx, and neither row of the request stays."""
    db, seen = Database.from_url(backend_url), Seen()
    async with serve(build_app(db, seen)) as client:
        await create_tables(db)
        answer = await client.post("/families")
        assert answer.status_code == 500
        assert await row_counts(db) == {"items": 0, "parents": 0, "children": 0}
        assert (await client.post("/items", json={"key": "after"})).status_code == 201  # the writer is usable again
    assert [closes[id(s.sync_session)] for s in seen.sessions] == [1, 1]


async def test_handler_errors_roll_back_and_http_exceptions_keep_their_status(
    backend_url: str, closes: Counter[int]
) -> None:
    """A handler that raises (an exception, or HTTPException 418) leaves no row behind; the 418 reaches the client."""
    db, seen = Database.from_url(backend_url), Seen()
    async with serve(build_app(db, seen)) as client:
        await create_tables(db)
        crashed = await client.post("/items/then-crash")
        refused = await client.post("/items/then-refuse")
        assert crashed.status_code == 500
        assert (refused.status_code, refused.json()) == (418, {"detail": "refused by the handler"})
        assert (await row_counts(db))["items"] == 0
    assert [closes[id(s.sync_session)] for s in seen.sessions] == [1, 1]


async def test_concurrent_requests_each_close_their_session_exactly_once(sqlite_url: str, closes: Counter[int]) -> None:
    """Sixty overlapping requests of every outcome get sixty distinct sessions, each closed exactly once."""
    db, seen = Database.from_url(sqlite_url), Seen()
    async with serve(build_app(db, seen)) as client:
        await create_tables(db)
        calls = []
        for n in range(15):
            calls += [
                client.post("/items", json={"key": f"k{n}"}),
                client.get("/items"),
                client.post("/items/then-refuse"),
                client.post("/families"),
            ]
        answers = await asyncio.gather(*calls)
        assert Counter(a.status_code for a in answers) == {201: 15, 200: 15, 418: 15, 500: 15}
        assert (await row_counts(db))["items"] == 15
    assert len({id(s) for s in seen.sessions}) == 60
    assert all(closes[id(s.sync_session)] == 1 for s in seen.sessions)


async def test_integrity_violations_answer_409_naming_the_constraint_not_the_values(backend_url: str) -> None:
    """With the handlers a duplicate key (or a deferred FK at commit) is a 409 naming the constraint, not the values."""
    db, seen = Database.from_url(backend_url), Seen()
    async with serve(build_app(db, seen, handlers=True)) as client:
        await create_tables(db)
        assert (await client.post("/items", json={"key": "secret-value-7"})).status_code == 201
        duplicate = await client.post("/items", json={"key": "secret-value-7"})
        family = await client.post("/families")
        assert (await row_counts(db)) == {"items": 1, "parents": 0, "children": 0}
    assert duplicate.status_code == 409
    body = duplicate.json()
    assert body["error"] == "unique_violation"
    assert body["constraint"] == "uq_items_key" or body["columns"] == ["items.key"]  # SQLite names columns only
    assert "secret-value-7" not in duplicate.text
    assert (family.status_code, family.json()["error"]) == (409, "foreign_key_violation")


async def test_write_timeout_answers_503_with_retry_after(tmp_path: Path) -> None:
    """A request that misses the write slot by DATABASE_WRITE_TIMEOUT answers 503 with Retry-After, then works."""
    db = Database(DatabaseSettings(url=f"sqlite:///{tmp_path / 'app.db'}", write_timeout=0.05))
    async with serve(build_app(db, Seen(), handlers=True)) as client:
        await create_tables(db)
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold_the_slot() -> None:
            async with db.write():
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_slot())
        await holding.wait()
        busy = await client.post("/items", json={"key": "a"})
        release.set()
        await holder
        assert (await client.post("/items", json={"key": "a"})).status_code == 201
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"] == "write_timeout"
    assert str(tmp_path) not in busy.text


async def test_unreachable_database_answers_503_without_the_dsn() -> None:
    """Started degraded on a closed port, reads and writes answer 503 with Retry-After and no URL or password."""
    url = "postgresql://app_user:hunter2-secret@127.0.0.1:1/appdb"
    db = Database.from_url(url)
    async with serve(build_app(db, Seen(), handlers=True, require_database=False)) as client:
        answers = [await client.get("/items"), await client.post("/items", json={"key": "a"})]
    for answer in answers:
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"] == "database_unavailable"
        for secret in ("hunter2", "app_user", "127.0.0.1", "appdb"):
            assert secret not in answer.text


async def test_lifespan_composes_with_the_app_lifespan_and_stops_the_database(sqlite_url: str) -> None:
    """The app's own lifespan runs inside ours with the Database started; its state passes through; stop comes last."""
    db = Database.from_url(sqlite_url)
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append(f"app start, db {db.state}, on app {getattr(app.state, STATE_KEY) is db}")
        yield {"greeting": "hello"}
        events.append(f"app stop, db {db.state}")

    app = FastAPI(lifespan=lifespan(db, app_lifespan=app_lifespan))

    @app.get("/database")
    async def which(db_from_app: AppDatabase) -> dict[str, str]:
        return {"state": db_from_app.state}

    async with app.router.lifespan_context(app) as state:
        assert state == {"greeting": "hello"}
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/database")).json() == {"state": "started"}
    assert events == ["app start, db started, on app True", "app stop, db started"]
    assert db.state == "stopped"
    assert not hasattr(app.state, STATE_KEY)


async def test_dependency_without_the_lifespan_names_the_fix() -> None:
    """A session dependency on an app that was not given lifespan(db) raises SessionStateError saying what to do."""
    app = FastAPI()

    @app.get("/")
    async def index(session: ReadSession) -> dict[str, str]:
        return {}

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        with pytest.raises(SessionStateError, match=r"FastAPI\(lifespan=dbfoundation\.fastapi\.lifespan\(db\)\)"):
            await client.get("/")


def test_lifespan_refuses_an_empty_migration_target() -> None:
    """migrate='' is neither a revision nor a yes/no, so lifespan() refuses it at once."""
    with pytest.raises(ValueError, match="migrate must be"):
        lifespan(Database.from_url("sqlite:///./unused.db"), migrate=" ")


def test_import_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing dbfoundation.fastapi without FastAPI installed raises MissingDependencyError with the pip command."""
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what Python does for a package that is not installed
    monkeypatch.delitem(sys.modules, "dbfoundation.fastapi")
    with pytest.raises(MissingDependencyError, match=r"pip install 'dbfoundation\[fastapi\]'"):
        importlib.import_module("dbfoundation.fastapi")
