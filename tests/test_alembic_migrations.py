"""Alembic under dbfoundation (issue 4): the migration lock, SQLite batch safety, and the entry points.

Every test builds a scratch project under tmp_path (models.py, a migrations folder made by `init`,
hand-written revisions with fixed ids; see _alembic_project.py) and migrates a real SQLite file or a
fresh PostgreSQL database. Races use real OS processes (`_alembic_child.py`) released together from a
barrier folder, and each race first proves that its runs overlapped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import text

from _alembic_project import (
    CREATE_EVENTS,
    EVENTS_MODEL,
    SRC,
    Project,
    event_counts,
    fetch_all,
    finish,
    is_sqlite,
    kill_hard,
    make_project,
    read_json,
    sqlite_path,
    start_child,
    table_names,
    version,
)
from _waiting import wait_for_file, wait_until
from conftest import create_postgres_database, drop_postgres_database
from dbfoundation import Database, DatabaseSettings
from dbfoundation.errors import ConfigurationError, MigrationError, MigrationLockTimeout, MultipleHeadsError
from dbfoundation.migrations import check, current, downgrade, migration_state, upgrade
from dbfoundation.migrations.lock import postgres_lock_key

THINGS = """\
op.create_table(
    "things",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
)
log_event()"""

THINGS_MODEL = """\
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)
"""

THINGS_WITH_NOTE_MODEL = """\
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
    Column("note", String(20)),
)
"""

PARENT_AND_CHILD = """\
op.create_table("p", sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.Integer))
op.create_table(
    "c",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("p_id", sa.Integer, sa.ForeignKey("p.id", ondelete="CASCADE"), nullable=False),
)"""

DROP_PARENT_X = """\
with op.batch_alter_table("p") as batch:
    batch.drop_column("x")"""


def settings_for(url: str, project: Project, **overrides: Any) -> DatabaseSettings:
    return DatabaseSettings(url=url, migrations_path=str(project.migrations), **overrides)


def slow_project(root: Path, seconds: float = 1.0) -> Project:
    """Two revisions, each logging itself in `events` and then sleeping `seconds` in its transaction."""
    project = make_project(root)
    project.write_revision("a1", None, f"{CREATE_EVENTS}\nslow({seconds})")
    project.write_revision("b2", "a1", f"{THINGS}\nslow({seconds})")
    return project


def sqlite_schema(url: str) -> list[tuple[Any, ...]]:
    return fetch_all(url, "SELECT type, name, sql FROM sqlite_schema ORDER BY name")


def column_names(url: str, table: str) -> list[str]:
    if is_sqlite(url):
        return [str(row[1]) for row in fetch_all(url, f"PRAGMA table_info({table})")]
    rows = fetch_all(
        url,
        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position",
    )
    return [str(row[0]) for row in rows]


async def race_upgrades(url: str, project: Project, tmp_path: Path, count: int) -> list[dict[str, Any]]:
    """Start `count` child processes, release them together into `upgrade`, return their results."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    results = [tmp_path / f"result-{n}.json" for n in range(count)]
    children = [
        start_child("upgrade", url, str(project.migrations), str(results[n]), str(barrier), str(n))
        for n in range(count)
    ]
    try:
        await wait_until(lambda: len(list(barrier.glob("ready-*"))) == count, f"{count} children at the barrier")
        (barrier / "go").touch()
        for child in children:
            await asyncio.to_thread(finish, child)
    finally:
        for child in children:
            kill_hard(child)
    return [read_json(path) for path in results]


# -- 1-4: the lock across processes and databases ------------------------------------------------------


async def test_upgrade_from_four_processes_runs_each_revision_once(backend_url: str, tmp_path: Path) -> None:
    """Four processes released together on an empty database all succeed, each revision runs once, all see head."""
    project = slow_project(tmp_path / "project")

    results = await race_upgrades(backend_url, project, tmp_path, 4)

    assert all("error" not in result for result in results), results
    assert max(r["started"] for r in results) < min(r["finished"] for r in results)  # they really overlapped
    assert event_counts(backend_url) == {"a1": 1, "b2": 1}
    assert version(backend_url) == ["b2"]
    assert all(result["current"] == result["heads"] == ["b2"] for result in results)
    assert sum(result["upgraded"] for result in results) == 1  # the others waited, then found head


def assert_names_lock_and_holder(error: MigrationLockTimeout, url: str, holder: str) -> None:
    """The error names the lock (file, or advisory key and database) and who holds it."""
    message = str(error)
    assert error.waited_s >= 0.5
    if is_sqlite(url):
        assert error.lock == sqlite_path(url) + "-migratelock"
        assert f"held by {holder} on " in message
    else:
        database = url.rpartition("/")[2]
        assert f"pg_advisory_lock({postgres_lock_key(database)}) of database {database}" in message
        assert "held by PostgreSQL backend pid " in message
        assert f"application_name {holder!r}" in message


def pausing_project(root: Path) -> Project:
    """a1 creates `events`; b2 creates `half`, logs itself, then pauses when $DBF_TEST_PAUSE_FILE is set."""
    project = make_project(root)
    project.write_revision("a1", None, CREATE_EVENTS)
    project.write_revision(
        "b2",
        "a1",
        """\
        op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
        log_event()
        maybe_pause()""",
    )
    return project


def start_paused_upgrade(url: str, project: Project, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    pause = tmp_path / "paused"
    child = start_child(
        "upgrade", url, str(project.migrations), str(tmp_path / "result.json"), env={"DBF_TEST_PAUSE_FILE": str(pause)}
    )
    return child, pause


async def test_upgrade_times_out_naming_the_lock_and_its_holder(backend_url: str, tmp_path: Path) -> None:
    """While another process holds the migration lock, upgrade fails after its timeout naming lock and holder."""
    project = pausing_project(tmp_path / "project")
    ready = tmp_path / "ready"
    holder = start_child("hold-lock", backend_url, str(ready))
    try:
        await wait_for_file(ready, holder)

        with pytest.raises(MigrationLockTimeout) as caught:
            await upgrade(settings_for(backend_url, project, migration_lock_timeout=0.5))

        assert_names_lock_and_holder(
            caught.value, backend_url, f"pid {holder.pid}" if is_sqlite(backend_url) else "dbf-alembic-child"
        )
    finally:
        kill_hard(holder)
    assert version(backend_url) == []


async def test_upgrade_behind_a_slow_revision_times_out_on_the_lock(backend_url: str, tmp_path: Path) -> None:
    """A waiter behind a revision longer than busy_timeout gets MigrationLockTimeout, not 'database is locked'."""
    project = pausing_project(tmp_path / "project")
    holder, pause = start_paused_upgrade(backend_url, project, tmp_path)
    try:
        await wait_for_file(pause, holder)  # a1 committed, b2 half done in its open transaction

        with pytest.raises(MigrationLockTimeout) as caught:
            await upgrade(settings_for(backend_url, project, migration_lock_timeout=0.5, sqlite_busy_timeout=1))

        assert_names_lock_and_holder(
            caught.value, backend_url, f"pid {holder.pid}" if is_sqlite(backend_url) else "dbfoundation-migrate"
        )
    finally:
        kill_hard(holder)


async def test_upgrade_after_kill_9_mid_revision_resumes_from_before_it(backend_url: str, tmp_path: Path) -> None:
    """kill -9 mid-revision releases the lock, leaves nothing of that revision, and the next upgrade completes it."""
    project = pausing_project(tmp_path / "project")
    holder, pause = start_paused_upgrade(backend_url, project, tmp_path)
    try:
        await wait_for_file(pause, holder)
    finally:
        kill_hard(holder)

    assert version(backend_url) == ["a1"]  # the half-done revision left nothing behind
    assert "half" not in table_names(backend_url)
    assert event_counts(backend_url) == {"a1": 1}

    assert await upgrade(settings_for(backend_url, project, migration_lock_timeout=30)) is True

    assert version(backend_url) == ["b2"]
    assert "half" in table_names(backend_url)
    assert event_counts(backend_url) == {"a1": 1, "b2": 1}


async def test_upgrade_ddl_is_visible_to_a_new_connection(backend_url: str, tmp_path: Path) -> None:
    """After a locked upgrade a brand-new plain connection sees the new tables and the version row."""
    project = make_project(tmp_path / "project")
    project.write_revision("a1", None, CREATE_EVENTS)
    project.write_revision("b2", "a1", THINGS)

    assert await upgrade(settings_for(backend_url, project)) is True

    assert {"alembic_version", "events", "things"} <= table_names(backend_url)
    assert version(backend_url) == ["b2"]
    assert fetch_all(backend_url, "SELECT count(*) FROM things") == [(0,)]
    if is_sqlite(backend_url):
        lock_file = Path(sqlite_path(backend_url) + "-migratelock")
        assert await asyncio.to_thread(lock_file.exists)  # the file lock was taken


async def test_upgrade_of_two_postgres_databases_runs_concurrently(postgres_url: str, tmp_path: Path) -> None:
    """Two databases on one server migrate at the same time: both are inside their slow revision at once."""
    second_url = create_postgres_database()
    try:
        project = make_project(tmp_path / "project")
        project.write_revision("a1", None, 'trace("enter")\nslow(1)\ntrace("exit")')
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        traces = [tmp_path / "trace-0", tmp_path / "trace-1"]
        children = [
            start_child(
                "upgrade",
                url,
                str(project.migrations),
                str(tmp_path / f"result-{n}.json"),
                str(barrier),
                str(n),
                env={"DBF_TEST_TRACE_FILE": str(traces[n])},
            )
            for n, url in enumerate([postgres_url, second_url])
        ]
        try:
            await wait_until(lambda: len(list(barrier.glob("ready-*"))) == 2, "2 children at the barrier")
            (barrier / "go").touch()
            for child in children:
                await asyncio.to_thread(finish, child)
        finally:
            for child in children:
                kill_hard(child)

        marks = [dict(line.split() for line in path.read_text().splitlines()) for path in traces]
        assert max(float(m["enter"]) for m in marks) < min(float(m["exit"]) for m in marks)  # both inside at once
        assert version(postgres_url) == version(second_url) == ["a1"]
    finally:
        drop_postgres_database(second_url)


# -- 5: threads of one process -------------------------------------------------------------------------


def _upgrade_in_threads(settings: list[DatabaseSettings]) -> list[tuple[float, float]]:
    """Run `upgrade` for each settings in its own thread and event loop, released together."""
    gate = threading.Barrier(len(settings))
    spans: list[tuple[float, float]] = []
    errors: list[str] = []

    def worker(one: DatabaseSettings) -> None:
        gate.wait()
        began = time.monotonic()
        try:
            asyncio.run(upgrade(one))
        except BaseException:
            errors.append(traceback.format_exc())
        spans.append((began, time.monotonic()))

    threads = [threading.Thread(target=worker, args=(one,)) for one in settings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(spans) == len(settings)
    return spans


def test_upgrade_from_two_threads_serialises_on_one_database(backend_url: str, tmp_path: Path) -> None:
    """Two threads upgrading one database at once take turns: no KeyError 'script', each revision runs once."""
    project = slow_project(tmp_path / "project", seconds=0.3)
    settings = settings_for(backend_url, project)

    spans = _upgrade_in_threads([settings, settings])

    assert max(began for began, _ in spans) < min(ended for _, ended in spans)  # they really overlapped
    assert event_counts(backend_url) == {"a1": 1, "b2": 1}
    assert version(backend_url) == ["b2"]


def test_upgrade_from_two_threads_migrates_two_sqlite_databases(tmp_path: Path) -> None:
    """Two threads upgrading two SQLite files at once both reach head, without KeyError 'script'."""
    project = slow_project(tmp_path / "project", seconds=0.3)
    urls = [f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"]

    spans = _upgrade_in_threads([settings_for(url, project) for url in urls])

    assert max(began for began, _ in spans) < min(ended for _, ended in spans)
    for url in urls:
        assert event_counts(url) == {"a1": 1, "b2": 1}
        assert version(url) == ["b2"]


# -- 6-8: SQLite batch safety --------------------------------------------------------------------------


async def test_sqlite_batch_migration_keeps_cascade_children(sqlite_url: str, tmp_path: Path) -> None:
    """A batch change of a parent keeps all 1,000 ON DELETE CASCADE children, and the app keeps foreign keys on."""
    project = make_project(tmp_path / "project")
    project.write_revision("a1", None, PARENT_AND_CHILD)
    settings = settings_for(sqlite_url, project)
    await upgrade(settings)
    async with Database(settings) as db, db.write() as session:
        await session.execute(text("INSERT INTO p (id, x) VALUES (:id, 0)"), [{"id": n} for n in range(1, 101)])
        await session.execute(
            text("INSERT INTO c (id, p_id) VALUES (:id, :p_id)"),
            [{"id": n, "p_id": n % 100 + 1} for n in range(1, 1001)],
        )
    children_before = fetch_all(sqlite_url, "SELECT id, p_id FROM c ORDER BY id")
    assert len(children_before) == 1000
    project.write_revision("b2", "a1", DROP_PARENT_X)

    assert await upgrade(settings) is True

    assert column_names(sqlite_url, "p") == ["id"]  # the table really was copied and dropped
    assert fetch_all(sqlite_url, "SELECT id, p_id FROM c ORDER BY id") == children_before
    assert fetch_all(sqlite_url, "PRAGMA foreign_key_check") == []
    async with Database(settings) as db:
        async with db.write() as session:
            assert await session.scalar(text("PRAGMA foreign_keys")) == 1
            await session.execute(text("DELETE FROM p WHERE id = 1"))  # and they cascade again
        async with db.read() as session:
            assert await session.scalar(text("PRAGMA foreign_keys")) == 1
            assert await session.scalar(text("SELECT count(*) FROM c")) == 990


async def test_sqlite_failed_batch_migration_leaves_schema_untouched(sqlite_url: str, tmp_path: Path) -> None:
    """A revision that creates, batch-alters, then raises leaves sqlite_schema as it was, and re-runs once fixed."""
    project = make_project(tmp_path / "project")
    project.write_revision(
        "a1",
        None,
        """\
        op.create_table("a", sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.Integer))
        op.execute("INSERT INTO a (id, x) VALUES (1, 10), (2, 20)")""",
    )
    settings = settings_for(sqlite_url, project)
    await upgrade(settings)
    schema_before = sqlite_schema(sqlite_url)
    steps = """\
        op.create_table("newt", sa.Column("id", sa.Integer, primary_key=True))
        with op.batch_alter_table("a") as batch:
            batch.drop_column("x")
        """
    project.write_revision("b2", "a1", steps + 'raise RuntimeError("b2 is broken")')

    with pytest.raises(RuntimeError, match="b2 is broken"):
        await upgrade(settings)

    assert sqlite_schema(sqlite_url) == schema_before
    assert not any(str(name).startswith("_alembic_tmp") for _, name, _ in sqlite_schema(sqlite_url))
    assert version(sqlite_url) == ["a1"]
    assert fetch_all(sqlite_url, "SELECT id, x FROM a ORDER BY id") == [(1, 10), (2, 20)]

    project.write_revision("b2", "a1", steps)
    assert await upgrade(settings) is True

    assert version(sqlite_url) == ["b2"]
    assert "newt" in table_names(sqlite_url)
    assert fetch_all(sqlite_url, "SELECT * FROM a ORDER BY id") == [(1,), (2,)]


async def test_sqlite_batch_migration_that_orphans_rows_fails_and_rolls_back(sqlite_url: str, tmp_path: Path) -> None:
    """A batch migration that leaves child rows without a parent fails naming the table and changes nothing."""
    project = make_project(tmp_path / "project")
    project.write_revision(
        "a1",
        None,
        PARENT_AND_CHILD
        + """
op.execute("INSERT INTO p (id, x) VALUES (1, 0), (2, 0), (3, 0)")
op.execute("INSERT INTO c (id, p_id) VALUES (10, 1), (20, 2), (30, 3)")""",
    )
    settings = settings_for(sqlite_url, project)
    await upgrade(settings)
    schema_before = sqlite_schema(sqlite_url)
    project.write_revision("b2", "a1", DROP_PARENT_X + '\nop.execute("DELETE FROM p WHERE id = 2")')

    with pytest.raises(MigrationError) as caught:
        await upgrade(settings)

    assert "c row 20 -> p" in str(caught.value)
    assert "b2" in str(caught.value)
    assert sqlite_schema(sqlite_url) == schema_before
    assert version(sqlite_url) == ["a1"]
    assert fetch_all(sqlite_url, "SELECT id, x FROM p ORDER BY id") == [(1, 0), (2, 0), (3, 0)]


# -- 9-10: fast path and heads -------------------------------------------------------------------------


async def test_upgrade_at_head_returns_false_without_taking_the_lock(backend_url: str, tmp_path: Path) -> None:
    """At head, upgrade returns False at once even while another process holds the migration lock."""
    project = make_project(tmp_path / "project")
    project.write_revision("a1", None, CREATE_EVENTS)
    assert await upgrade(settings_for(backend_url, project)) is True
    impatient = settings_for(backend_url, project, migration_lock_timeout=0.5)
    ready = tmp_path / "ready"
    holder = start_child("hold-lock", backend_url, str(ready))
    try:
        await wait_for_file(ready, holder)

        assert await upgrade(impatient) is False
        assert await Database(impatient).migrate() is False

        with pytest.raises(MigrationLockTimeout):  # the lock really is held: anything that takes it waits
            await downgrade(impatient, "base")
    finally:
        kill_hard(holder)
    assert event_counts(backend_url) == {"a1": 1}


async def test_upgrade_refuses_two_heads_naming_both(backend_url: str, tmp_path: Path) -> None:
    """Two heads in the scripts make upgrade raise MultipleHeadsError naming both, before touching the database."""
    project = make_project(tmp_path / "project")
    project.write_revision("a1", None, CREATE_EVENTS)
    project.write_revision("b2", "a1", "log_event()")
    project.write_revision("c3", "a1", "log_event()")

    with pytest.raises(MultipleHeadsError) as caught:
        await upgrade(settings_for(backend_url, project))

    assert caught.value.heads == ("b2", "c3")
    assert "b2" in str(caught.value)
    assert "c3" in str(caught.value)
    assert version(backend_url) == []


# -- 11: entry points ----------------------------------------------------------------------------------


async def test_db_migrate_works_inside_a_running_event_loop(backend_url: str, tmp_path: Path) -> None:
    """`await db.migrate()` from an async test upgrades, then reports False once at head."""
    project = slow_project(tmp_path / "project", seconds=0)
    db = Database(settings_for(backend_url, project))

    assert await db.migrate() is True
    assert await db.migrate() is False

    assert event_counts(backend_url) == {"a1": 1, "b2": 1}


async def test_db_migrate_works_from_a_fastapi_lifespan(backend_url: str, tmp_path: Path) -> None:
    """A FastAPI lifespan that awaits db.migrate() starts, and its endpoints see the migrated tables."""
    project = slow_project(tmp_path / "project", seconds=0)
    db = Database(settings_for(backend_url, project))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await db.migrate()
        async with db:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/events")
    async def events(_request: Request) -> dict[str, int]:
        async with db.read() as session:
            return {"count": int(await session.scalar(text("SELECT count(*) FROM events")) or 0)}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client,
    ):
        response = await client.get("/events")

    assert response.status_code == 200
    assert response.json() == {"count": 2}


def test_env_py_works_from_the_plain_alembic_command(
    backend_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env.py that init writes runs `alembic upgrade head` and `alembic current` with DATABASE_URL set."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    project = make_project(root, write_alembic_ini=True)
    project.write_revision("a1", None, CREATE_EVENTS)
    project.write_revision("b2", "a1", THINGS)
    assert (root / "alembic.ini").is_file()
    env = dict(os.environ, DATABASE_URL=backend_url, PYTHONPATH=str(SRC))

    def alembic(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *args], cwd=root, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    alembic("upgrade", "head")
    assert "b2 (head)" in alembic("current")

    assert version(backend_url) == ["b2"]
    assert event_counts(backend_url) == {"a1": 1, "b2": 1}
    assert "things" in table_names(backend_url)


# -- 12-13: check and configuration --------------------------------------------------------------------


async def test_check_reports_model_drift_and_refuses_a_database_behind_head(backend_url: str, tmp_path: Path) -> None:
    """check() is None when models match, renders a diff for a column without revision, says upgrade first if behind."""
    project = make_project(tmp_path / "project", EVENTS_MODEL + THINGS_MODEL)
    project.write_revision("a1", None, CREATE_EVENTS)
    project.write_revision("b2", "a1", THINGS)
    settings = settings_for(backend_url, project)
    await upgrade(settings)

    assert await check(settings) is None

    project.write_models(EVENTS_MODEL + THINGS_WITH_NOTE_MODEL)
    diff = await check(settings)
    assert diff is not None
    assert "add_column" in diff
    assert "'note'" in diff

    project.write_revision("c3", "b2", 'op.add_column("things", sa.Column("note", sa.String(20)))')
    with pytest.raises(MigrationError, match="upgrade first"):
        await check(settings)

    await upgrade(settings)
    assert await check(settings) is None


async def test_missing_migrations_folder_names_the_setting(sqlite_url: str, tmp_path: Path) -> None:
    """A missing migrations folder is a ConfigurationError naming DATABASE_MIGRATIONS_PATH and the folder."""
    missing = tmp_path / "no-such-folder"
    settings = DatabaseSettings(url=sqlite_url, migrations_path=str(missing))

    attempts = (upgrade, current, check, lambda one: Database(one).migrate())
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as caught:
            await attempt(settings)
        assert caught.value.variable == "DATABASE_MIGRATIONS_PATH"
        assert str(missing) in str(caught.value)
        assert "dbf init" in str(caught.value)
    assert await migration_state(settings) is None  # readiness probes report "no migrations", not an error
