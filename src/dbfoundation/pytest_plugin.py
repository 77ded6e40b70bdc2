"""pytest fixtures for real SQLite files and real PostgreSQL, registered through the `pytest11` entry point.

Installing dbfoundation is enough; every fixture is prefixed `dbf_` so none shadows a project's own `db`.

| fixture | scope | what it gives |
| --- | --- | --- |
| `dbf_database_url` | session | the session's database, built by running the project's Alembic migrations |
| `dbf_database` | function | a started `Database` on it, joined to an outer transaction rolled back after the test |
| `dbf_session` | function | an `AsyncSession` in that transaction; its commit/rollback only touch SAVEPOINTs |
| `dbf_app` / `dbf_client` | function | the app from the factory on `dbf_database`; an `httpx.AsyncClient` |
| `dbf_template_database` | function | the URL of a copy of the migrated database: commits, many processes |
| `dbf_empty_database_url` | function | the URL of a fresh, empty database (`dbfoundation.migration_checks`) |
| `dbf_migrations_path` | session | the configured migrations folder, or None |
| `dbf_plugin_settings` | session | the resolved options below (`PluginSettings`) |

Configuration, first found wins: command-line option, ini option, environment variable.

| what | option | ini | environment |
| --- | --- | --- | --- |
| database | `--dbf-url` | `dbf_url` | `DBF_TEST_DATABASE_URL` |
| migrations folder | `--dbf-migrations` | `dbf_migrations` | `DATABASE_MIGRATIONS_PATH` |
| app factory | `--dbf-app` | `dbf_app` | `DBF_APP` |

- Database: unset, or any `sqlite://` URL, is a SQLite file in pytest's temporary folder, one per xdist worker
  (the path in a SQLite URL is not used, so no real database file is ever touched). A PostgreSQL URL names a
  server and a maintenance database: the plugin creates its own database for the session (one per xdist worker,
  named `dbf_<random>_<worker>_session1`) and drops it at the end with `DROP DATABASE … WITH (FORCE)`
  (PostgreSQL 13+). An unreachable server skips the tests that need it, saying how to start it; under
  `CI=true` they fail instead.
- Migrations: the folder holding env.py (relative paths: to the ini file's folder for the ini option, to the
  working directory otherwise). With no folder configured the session database is empty and tests create the
  tables they need.
- App factory: "module:callable", called with the Database and returning the ASGI (FastAPI) app.

Isolation. `dbf_database` opens one connection on the writer engine, begins a transaction on it and joins the
Database to it (`Database.joined`): read(), write(), connection(), raw() and submit() all run in SAVEPOINTs of
that transaction, and so does `dbf_session`. Whatever the test and the code under test commit is visible to
both and gone after the test. Before the rollback the plugin checks deferred constraints (PostgreSQL
`SET CONSTRAINTS ALL IMMEDIATE`, SQLite `PRAGMA foreign_key_check`) and fails the test, at teardown, naming
what a real COMMIT would have refused. Everything shares that one connection: code that needs several
connections, threads or processes, or that must really commit, uses `dbf_template_database` instead.
The app's lifespan may stop its Database at shutdown: dbf_database ignores stop() until its own teardown.

Event loops (pytest-asyncio >= 1.0). `dbf_database`, `dbf_session`, `dbf_app` and `dbf_client` are async
fixtures (`pytest_asyncio.fixture`, so they also work in strict mode) that build their engines per test and
dispose of them at teardown in the same loop, so no engine ever crosses loops ("attached to a different
loop"). They run in the loop that `asyncio_default_fixture_loop_scope` selects, which must be the loop the
test runs in: keep the defaults (both "function"), or set `asyncio_default_fixture_loop_scope` and
`asyncio_default_test_loop_scope` to the same value. A test whose loop differs fails at setup saying so. The
session-scoped fixtures are synchronous and hand out URLs only (their work runs in a private loop on a worker
thread), so they fit every loop scope. A Database per test costs about 10 ms (engines, first connections,
PRAGMAs); benchmarks/results/fixture_overhead.md has the figures.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from dbfoundation.asgi_lifespan import run_lifespan, with_state
from dbfoundation.database import Database
from dbfoundation.joined import JoinedTransaction
from dbfoundation.plugin_databases import DatabaseServer, PluginSettings, run_private, worker_id
from dbfoundation.settings import DatabaseSettings, normalise_url

if TYPE_CHECKING:
    import httpx

__all__ = [
    "dbf_app",
    "dbf_client",
    "dbf_database",
    "dbf_database_url",
    "dbf_empty_database_url",
    "dbf_migrations_path",
    "dbf_session",
    "dbf_template_database",
    "isolated_database",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_STATE_KEY = "dbfoundation_database"  # dbfoundation.fastapi.STATE_KEY, without importing FastAPI here


def _missing_pytest_asyncio(function: F) -> F:
    name = function.__name__

    def unavailable() -> None:
        pytest.fail(f"{name} is an async fixture and needs pytest-asyncio: pip install 'pytest-asyncio>=1.0'")

    return pytest.fixture(name=name)(unavailable)  # type: ignore[return-value]  # stands in for the async fixture


try:
    import pytest_asyncio

    _async_fixture: Callable[[F], F] = pytest_asyncio.fixture  # type: ignore[assignment]  # its bare-decorator form
except ImportError:  # the plugin loads in every pytest run of a project that installs dbfoundation
    _async_fixture = _missing_pytest_asyncio


# -- configuration -------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbfoundation", "dbfoundation database fixtures")
    group.addoption(
        "--dbf-url",
        dest="dbf_url",
        default=None,
        help="Database for the dbf_ fixtures: a PostgreSQL server + maintenance database (the plugin creates its "
        "own database per session and worker), or unset for a SQLite file in a temporary folder. "
        "Also ini dbf_url, env DBF_TEST_DATABASE_URL.",
    )
    group.addoption(
        "--dbf-migrations",
        dest="dbf_migrations",
        default=None,
        help="Alembic migrations folder (with env.py) that builds the session database. "
        "Also ini dbf_migrations, env DATABASE_MIGRATIONS_PATH. Unset: the database starts empty.",
    )
    group.addoption(
        "--dbf-app",
        dest="dbf_app",
        default=None,
        help='App factory "module:callable", called with the Database, for dbf_app and dbf_client. '
        "Also ini dbf_app, env DBF_APP.",
    )
    parser.addini("dbf_url", "Database URL for the dbf_ fixtures (see --dbf-url).", default="")
    parser.addini(
        "dbf_migrations", "Alembic migrations folder, relative to the ini file (see --dbf-migrations).", default=""
    )
    parser.addini("dbf_app", 'App factory "module:callable" (see --dbf-app).', default="")


def _setting(config: pytest.Config, name: str, environment: str) -> tuple[str | None, str]:
    """(value, where it came from): 'option', 'ini' or 'env'."""
    option = config.getoption(name)
    if option:
        return str(option), "option"
    ini = str(config.getini(name) or "").strip()
    if ini:
        return ini, "ini"
    env = os.environ.get(environment, "").strip()
    return (env, "env") if env else (None, "")


def resolve_settings(config: pytest.Config) -> PluginSettings:
    """Read the three settings in precedence order: command line, ini file, environment."""
    raw_url, url_source = _setting(config, "dbf_url", "DBF_TEST_DATABASE_URL")
    variable = {"option": "--dbf-url", "ini": "dbf_url", "env": "DBF_TEST_DATABASE_URL"}.get(url_source, "dbf_url")
    url: URL | None = None
    if raw_url is not None and raw_url.rstrip("/") not in ("sqlite:", "sqlite+aiosqlite:"):
        url = normalise_url(variable, raw_url)
    raw_migrations, migrations_source = _setting(config, "dbf_migrations", "DATABASE_MIGRATIONS_PATH")
    migrations: Path | None = None
    if raw_migrations is not None:
        base = config.inipath.parent if migrations_source == "ini" and config.inipath else config.invocation_params.dir
        migrations = (base / raw_migrations).resolve()
    app_factory, _ = _setting(config, "dbf_app", "DBF_APP")
    return PluginSettings(url=url, migrations=migrations, app_factory=app_factory)


def _settings_for(url: str, migrations: Path | None) -> DatabaseSettings:
    values: dict[str, Any] = {"url": url, "sqlite_checkpoint_interval": 0}  # no background task per test
    if migrations is not None:
        values["migrations_path"] = str(migrations)
    return DatabaseSettings(**values)


async def _migrate(settings: DatabaseSettings, migrations: Path) -> None:
    from dbfoundation.migrations import upgrade  # Alembic loads only when there are migrations

    await upgrade(settings, "head", migrations_path=migrations)


# -- session fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbf_plugin_settings(pytestconfig: pytest.Config) -> PluginSettings:
    """The resolved --dbf-url / --dbf-migrations / --dbf-app settings."""
    return resolve_settings(pytestconfig)


@pytest.fixture(scope="session")
def dbf_migrations_path(dbf_plugin_settings: PluginSettings) -> Path | None:
    """The Alembic migrations folder the session database is built from, or None (an empty database)."""
    return dbf_plugin_settings.migrations


@pytest.fixture(scope="session")
def _dbf_server(dbf_plugin_settings: PluginSettings, tmp_path_factory: pytest.TempPathFactory) -> DatabaseServer:
    server = DatabaseServer(dbf_plugin_settings, tmp_path_factory.mktemp(f"dbf_{worker_id()}"))
    server.probe()
    return server


@pytest.fixture(scope="session")
def dbf_database_url(_dbf_server: DatabaseServer, dbf_migrations_path: Path | None) -> Iterator[str]:
    """The session's database, migrated to head by the project's Alembic migrations (empty without them).

    One per pytest-xdist worker. Tests never commit to it (dbf_database rolls back), so it stays the
    pristine template that dbf_template_database copies. Removed at the end of the session.
    """
    name = _dbf_server.session_name = _dbf_server.new_name("session")
    url = _dbf_server.create(name)
    try:
        if dbf_migrations_path is not None:
            run_private(_migrate(_settings_for(url, dbf_migrations_path), dbf_migrations_path))
        yield url
    finally:
        _dbf_server.drop(name)


# -- per-test databases ---------------------------------------------------------------------------------------


@pytest.fixture
def dbf_template_database(dbf_database_url: str, _dbf_server: DatabaseServer) -> Iterator[str]:
    """The URL of a per-test copy of the migrated database that allows real commits and many connections.

    PostgreSQL: `CREATE DATABASE … TEMPLATE` the session database; SQLite: a backup-API copy of its file.
    Several connections, threads and OS processes may write to it; it is removed after the test. Slower than
    dbf_database (a copy per test), so use it only where one shared connection cannot do.
    """
    assert _dbf_server.session_name is not None  # noqa: S101 - dbf_database_url set it
    name = _dbf_server.new_name("copy")
    url = _dbf_server.create(name, template=_dbf_server.session_name)
    try:
        yield url
    finally:
        _dbf_server.drop(name)


@pytest.fixture
def dbf_empty_database_url(_dbf_server: DatabaseServer) -> Iterator[str]:
    """The URL of a fresh, empty database (never migrated) on the configured backend, removed after the test."""
    name = _dbf_server.new_name("empty")
    url = _dbf_server.create(name)
    try:
        yield url
    finally:
        _dbf_server.drop(name)


@pytest.fixture
def _dbf_template_first(request: pytest.FixtureRequest) -> None:
    # CREATE DATABASE … TEMPLATE refuses a template with open connections, so a test taking both fixtures
    # gets its copy made before dbf_database connects to the session database.
    if "dbf_template_database" in request.fixturenames:
        request.getfixturevalue("dbf_template_database")


class TestDatabase(Database):
    """The Database of dbf_database: joined to the test's transaction, stopped only by the fixture.

    An app's lifespan (or the code under test) that calls stop() would otherwise close the engines under
    the outer transaction; here stop() waits for the fixture's teardown.
    """

    __test__ = False  # a class named Test… in a module pytest may collect

    def __init__(self, settings: DatabaseSettings) -> None:
        super().__init__(settings)
        self.joined_transaction: JoinedTransaction | None = None
        self.deferred_problems: list[str] = []
        """What check_deferred_constraints() found at the end of the test ([] when clean)."""
        self._stop_allowed = False

    async def stop(self) -> None:
        if self._stop_allowed:
            await super().stop()

    async def stop_for_fixture(self) -> None:
        self._stop_allowed = True
        await super().stop()


@contextlib.asynccontextmanager
async def isolated_database(settings: DatabaseSettings) -> AsyncIterator[TestDatabase]:
    """What dbf_database does, for use outside a fixture: a started TestDatabase joined to an outer transaction.

    On exit the deferred constraints are checked (their problems land in `db.deferred_problems`), the outer
    transaction is rolled back and the Database stopped, in this order, even when the block raised.
    """
    db = TestDatabase(settings)
    await db.start()
    try:
        async with db.engines.writer.connect() as outer:
            await outer.begin()
            try:
                async with db.joined(outer) as joined:
                    db.joined_transaction = joined
                    try:
                        yield db
                    finally:
                        db.deferred_problems = await joined.check_deferred_constraints()
            finally:
                db.joined_transaction = None
                await outer.rollback()
    finally:
        await db.stop_for_fixture()


def _ini_or_none(config: pytest.Config, name: str) -> str | None:
    try:
        value = config.getini(name)
    except ValueError:  # an older pytest-asyncio without this option
        return None
    return str(value) if value else None


def _require_same_loop(request: pytest.FixtureRequest) -> None:
    """Fail early, with the fix, when the test would run in another loop than the fixture's engines."""
    item = request.node
    if not inspect.iscoroutinefunction(getattr(item, "obj", None)):
        return
    marker = item.get_closest_marker("asyncio")
    marked = (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")) if marker is not None else None
    test_scope = marked or _ini_or_none(request.config, "asyncio_default_test_loop_scope") or "function"
    fixture_scope = _ini_or_none(request.config, "asyncio_default_fixture_loop_scope") or "function"
    if fixture_scope not in ("function", "class", "module", "package", "session"):
        fixture_scope = "function"  # pytest-asyncio's "match the fixture's scope"
    if test_scope != fixture_scope:
        pytest.fail(
            f"{item.nodeid} runs in the {test_scope!r} event loop but dbf_database's engines live in the "
            f"{fixture_scope!r} loop (asyncio_default_fixture_loop_scope); an engine cannot cross loops. Set "
            "asyncio_default_fixture_loop_scope and the test's loop scope to the same value.",
            pytrace=False,
        )


@_async_fixture
async def dbf_database(
    request: pytest.FixtureRequest,
    dbf_database_url: str,
    dbf_migrations_path: Path | None,
    _dbf_template_first: None,
) -> AsyncIterator[Database]:
    """A started Database on the session database, joined to a transaction that is rolled back after the test.

    read(), write(), connection(), raw() and submit() run in SAVEPOINTs of one outer transaction on one
    connection; what they commit is visible in the test (and through dbf_session) and gone afterwards. At
    teardown a deferred constraint the test left violated fails the test, naming it.
    """
    _require_same_loop(request)
    async with isolated_database(_settings_for(dbf_database_url, dbf_migrations_path)) as db:
        yield db
    problems = db.deferred_problems
    if problems:
        shown = "\n".join(f"  - {problem}" for problem in problems)
        pytest.fail(
            f"the test left data that COMMIT would refuse (deferred constraints):\n{shown}\n"
            "In production that commit raises ForeignKeyViolation; fix the code or the test's data.",
            pytrace=False,
        )


@_async_fixture
async def dbf_session(dbf_database: Database) -> AsyncIterator[AsyncSession]:
    """An AsyncSession in dbf_database's outer transaction: commit() and rollback() only touch SAVEPOINTs.

    The test sees what the app wrote through dbf_database and the app sees what the test flushed.
    """
    joined = dbf_database.joined_transaction if isinstance(dbf_database, TestDatabase) else None
    if joined is None:
        pytest.fail("dbf_session needs the plugin's dbf_database (it was overridden by a plain Database)")
    session = AsyncSession(bind=joined.connection, expire_on_commit=False, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        await session.close()


# -- app ------------------------------------------------------------------------------------------------------


def _load_factory(spec: str) -> Callable[[Database], Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise pytest.UsageError(f'dbf_app: {spec!r} is not "module:callable", e.g. "myapp.main:create_app"')
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise pytest.UsageError(f"dbf_app: {module_name} has no callable {attribute!r}")
    return factory  # type: ignore[no-any-return]  # checked callable above; the app's type is the user's


@_async_fixture
async def dbf_app(dbf_database: Database, dbf_plugin_settings: PluginSettings) -> Any:
    """The app from the factory (--dbf-app / dbf_app / DBF_APP), built on dbf_database, lifespan not run.

    The factory is called with dbf_database; the app's `app.state` Database is dbf_database either way.
    Override this fixture to build the app yourself; dbf_client uses whatever it returns.
    """
    if dbf_plugin_settings.app_factory is None:
        pytest.fail(
            'dbf_app needs an app factory "module:callable": --dbf-app, ini dbf_app or env DBF_APP', pytrace=False
        )
    factory = _load_factory(dbf_plugin_settings.app_factory)
    app = factory(dbf_database)
    if inspect.isawaitable(app):
        app = await app
    _attach(app, dbf_database)
    return app


def _attach(app: Any, db: Database) -> None:
    state = getattr(app, "state", None)
    if state is not None:
        setattr(state, _STATE_KEY, db)


@_async_fixture
async def dbf_client(dbf_app: Any, dbf_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient calling the app in-process (base_url http://test), its lifespan run around the test.

    Requests join the test's transaction: what a request writes the test reads, and it is gone after.
    """
    try:
        import httpx
    except ImportError:
        pytest.fail("dbf_client needs httpx: pip install httpx", pytrace=False)
    async with run_lifespan(dbf_app) as state:
        _attach(dbf_app, dbf_database)  # a lifespan that made its own Database must not win over the test's
        transport = httpx.ASGITransport(app=with_state(dbf_app, state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
