"""FastAPI integration: the lifespan, ReadSession/WriteSession, opt-in error answers and the health router.

```python
from dbfoundation.fastapi import WriteSession, health_router, lifespan

app = FastAPI(lifespan=lifespan(db, migrate=True))   # composes with app_lifespan=your_own
app.include_router(health_router())                  # /health/live, /health/ready

@app.post("/signals", status_code=201)
async def ingest(body: SignalIn, session: WriteSession) -> SignalOut: ...
```

The dependencies find the Database on `app.state` (put there by `lifespan`), never in a module global. Both
sessions end before the response is sent (`Depends(scope="function")`): a WriteSession commits first, so a
commit that fails is a 5xx and never a 2xx for a write that did not happen; an exception or an
`HTTPException` in the handler rolls back. The cost: a session cannot be used from a `StreamingResponse`
body or a background task, which run after the handler; open `db.read()` / `db.write()` there instead.
Needs the `fastapi` extra: `pip install 'dbfoundation[fastapi]'`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from dbfoundation.errors import (
    DatabaseUnavailable,
    IntegrityViolation,
    MissingDependencyError,
    SessionStateError,
    WriteTimeout,
)

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from fastapi.routing import APIRouter
except ImportError as exc:  # pragma: no cover - the extra is installed in every test run
    raise MissingDependencyError("fastapi", "fastapi") from exc
from sqlalchemy.ext.asyncio import AsyncSession

from dbfoundation.database import Database
from dbfoundation.driver_errors import translate
from dbfoundation.health_report import HEALTH_MEDIA_TYPE, HealthReport

__all__ = [
    "STATE_KEY",
    "AppDatabase",
    "ReadSession",
    "WriteSession",
    "get_database",
    "health_router",
    "install_exception_handlers",
    "lifespan",
    "read_session",
    "write_session",
]

STATE_KEY = "dbfoundation_database"
"""The attribute of `app.state` that holds the app's Database."""

AppLifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]]
logger = logging.getLogger("dbfoundation.fastapi")


def lifespan(
    db: Database,
    *,
    migrate: bool | str = False,
    require_database: bool = True,
    app_lifespan: AppLifespan | None = None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]]:
    """A FastAPI lifespan that starts `db`, optionally migrates it, and stops it at shutdown.

    Pass it as `FastAPI(lifespan=lifespan(db))`. The app's own lifespan (`app_lifespan`) runs inside this
    one: the Database is started and on `app.state` before it runs and still open until it has finished;
    whatever state it yields is passed on.

    Args:
        db: the Database for this app; if this lifespan started it, it stops it at shutdown (a stopped
            Database cannot start again); one the caller had already started is left running.
        migrate: True runs `db.migrate("head")` after start; a string migrates to that revision; False
            (the default) leaves migrations to a deploy step such as `dbf upgrade`.
        require_database: False lets the app start while the database is unreachable: it serves,
            `/health/ready` fails, and everything recovers without a restart once the database answers.
            Migrating needs the database, so `migrate` still fails the start.
        app_lifespan: the app's own lifespan, as it would have been passed to FastAPI.

    Raises:
        ValueError: `migrate` is an empty string.
    """
    if isinstance(migrate, str) and not migrate.strip():
        raise ValueError("migrate must be True, False or a revision such as 'head'")
    target = "head" if migrate is True else (migrate or None)

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        # Stop only what we started: a Database the caller started (a test fixture, an app serving
        # several routers from one Database) stays theirs to stop.
        started_here = db.state == "new"
        await db.start(require_database=require_database)
        try:
            if isinstance(target, str):
                await db.migrate(target)
            setattr(app.state, STATE_KEY, db)
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as state:
                    yield state
        finally:
            if getattr(app.state, STATE_KEY, None) is db:
                delattr(app.state, STATE_KEY)
            if started_here:
                await db.stop()

    return run


def get_database(request: Request) -> Database:
    """The Database that `lifespan` put on this app; SessionStateError when there is none."""
    db = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(db, Database):
        raise SessionStateError(
            "a dbfoundation dependency",
            "not attached to this app",
            "Create the app with FastAPI(lifespan=dbfoundation.fastapi.lifespan(db)).",
        )
    return db


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One read session per request (`db.read()`), closed before the response is sent."""
    db = get_database(request)
    async with contextlib.AsyncExitStack() as stack:
        session = await _enter(stack, db.read(), db)
        yield session


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One write session per request (`db.write()`): committed before the response is sent, rolled back
    when the handler raises (an HTTPException included), closed once."""
    db = get_database(request)
    async with contextlib.AsyncExitStack() as stack:
        session = await _enter(stack, db.write(), db)
        yield session


async def _enter(
    stack: contextlib.AsyncExitStack, scope: contextlib.AbstractAsyncContextManager[AsyncSession], db: Database
) -> AsyncSession:
    # Only the opening is translated here: a driver error raised while checking out a connection is the
    # database being unavailable, while an OSError from the handler's own code must stay what it is.
    try:
        return await stack.enter_async_context(scope)
    except Exception as exc:
        typed = translate(exc, where=db.settings.masked_url)
        if typed is None:
            raise
        raise typed from exc


AppDatabase = Annotated[Database, Depends(get_database)]
"""The app's Database, for handlers that call `db.submit()` or open their own units of work."""
ReadSession = Annotated[AsyncSession, Depends(read_session, scope="function")]
"""An AsyncSession for reads, one per request, closed before the response is sent."""
WriteSession = Annotated[AsyncSession, Depends(write_session, scope="function")]
"""An AsyncSession in a write transaction, committed before the response is sent; a failed commit is a 5xx."""


def install_exception_handlers(app: FastAPI, *, retry_after_s: int = 1) -> None:
    """Answer database errors a client can cause with a clear status instead of a bare 500.

    IntegrityViolation (DuplicateKeyError, ForeignKeyViolation, ...) gives 409 with the constraint's name
    and columns but never the values; WriteTimeout and DatabaseUnavailable give 503 with `Retry-After:
    retry_after_s`. Bodies never contain a URL, host or password; the full error is logged at WARNING.
    Note that a constraint checked at COMMIT (a deferred foreign key) then answers 409, not 500.
    """
    app.add_exception_handler(IntegrityViolation, _integrity_violation)
    app.add_exception_handler(WriteTimeout, _unavailable_handler(retry_after_s))
    app.add_exception_handler(DatabaseUnavailable, _unavailable_handler(retry_after_s))


async def _integrity_violation(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, IntegrityViolation):  # pragma: no cover - registered for this type only
        raise exc
    logger.warning("%s %s answered 409: %s", request.method, request.url.path, exc)
    code = exc.kind.replace(" ", "_").replace("-", "_") + "_violation"
    body = {"detail": str(exc), "error": code, "constraint": exc.constraint, "columns": list(exc.columns)}
    return JSONResponse(body, status_code=409)


def _unavailable_handler(retry_after_s: int) -> Callable[[Request, Exception], Any]:
    async def handler(request: Request, exc: Exception) -> Response:
        logger.warning("%s %s answered 503: %s", request.method, request.url.path, exc)
        if isinstance(exc, WriteTimeout):
            body = {"detail": "The database is busy with other writes; retry later.", "error": "write_timeout"}
        else:
            body = {"detail": "The database is unavailable; retry later.", "error": "database_unavailable"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after_s)})

    return handler


def health_router(*, prefix: str = "/health", deadline_s: float = 0.5) -> APIRouter:
    """`GET {prefix}/live` and `GET {prefix}/ready` as `application/health+json`, never cached.

    `live` never touches the database (a database outage must not get every replica restarted); it
    answers 200 while the file is deleted or locked. `ready` is `db.health(deadline_s=...)`: 200 for
    pass and warn, 503 for fail, answered within `deadline_s` seconds (keep it below the probe's
    timeout, 1 s by default in Kubernetes).
    """
    router = APIRouter(prefix=prefix, tags=["health"])
    headers = {"Cache-Control": "no-store"}

    @router.get("/live", response_class=Response, summary="Liveness: the process serves requests")
    async def live() -> Response:
        return Response('{"status":"pass"}', media_type=HEALTH_MEDIA_TYPE, headers=headers)

    @router.get("/ready", response_class=Response, summary="Readiness: the database answers in time")
    async def ready(request: Request) -> Response:
        db = getattr(request.app.state, STATE_KEY, None)
        if isinstance(db, Database):
            report = await db.health(deadline_s=deadline_s)
        else:
            report = HealthReport(status="fail", output="no Database is attached to this app (see lifespan(db))")
        return Response(report.to_json(), status_code=report.http_status, media_type=HEALTH_MEDIA_TYPE, headers=headers)

    return router
