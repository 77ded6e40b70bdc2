"""The pytest plugin, run for real: each test writes a small project into a pytester folder and runs pytest on it.

The inner project has Core models, two hand-written Alembic revisions, a FastAPI app factory and test files;
its ini sets pytest-asyncio's strict mode and `filterwarnings = error`, so a leaked connection fails it.
Inner runs are subprocesses (their event loops never meet the outer one), grouped so one run shows many
behaviours.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from conftest import POSTGRES_ADMIN_URL, require_postgres
from dbfoundation.migrations.scaffold import init

pytest_plugins = ["pytester"]

MODELS = """\
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table

from dbfoundation.models import NAMING_CONVENTION

metadata = MetaData(naming_convention=NAMING_CONVENTION)
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(200), nullable=False),{extra}
)
parents = Table("parents", metadata, Column("id", Integer, primary_key=True))
children = Table(
    "children",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer, ForeignKey("parents.id", deferrable=True, initially="DEFERRED"), nullable=False),
)
tags = Table("tags", metadata, Column("id", Integer, primary_key=True), Column("name", String(50), nullable=False))
"""

REVISION_1 = '''\
"""notes, parents and children (a foreign key checked at COMMIT)"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("body", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notes"),
    )
    op.create_table(
        "parents", sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint("id", name="pk_parents")
    )
    op.create_table(
        "children",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["parents.id"], name="fk_children_parent_id_parents", deferrable=True, initially="DEFERRED"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_children"),
    )


def downgrade():
    op.drop_table("children")
    op.drop_table("parents")
    op.drop_table("notes")
'''

REVISION_2 = '''\
"""tags"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tags"),
    )


def downgrade():
    op.drop_table("tags")
'''

ENV = """\
from dbfoundation.migrations.alembic import run_migrations
from models import metadata

run_migrations(metadata)
"""

APP = """\
from fastapi import FastAPI
from sqlalchemy import func, insert, select

from dbfoundation.fastapi import ReadSession, WriteSession, lifespan
from models import notes


def create_app(db):
    app = FastAPI(lifespan=lifespan(db))

    @app.post("/notes", status_code=201)
    async def add_note(body: dict[str, str], session: WriteSession) -> dict[str, str]:
        await session.execute(insert(notes).values(body=body["body"]))
        return body

    @app.get("/notes")
    async def count_notes(session: ReadSession) -> dict[str, int]:
        return {"count": int(await session.scalar(select(func.count()).select_from(notes)) or 0)}

    return app
"""

HELPERS = """\
from sqlalchemy import func, insert, select

from models import notes


async def count_notes(db):
    async with db.read() as session:
        return await session.scalar(select(func.count()).select_from(notes))


async def commit_twice_roll_back_once(dbf_session, dbf_database):
    await dbf_session.execute(insert(notes).values(body="one"))
    await dbf_session.commit()
    await dbf_session.execute(insert(notes).values(body="two"))
    await dbf_session.commit()
    await dbf_session.execute(insert(notes).values(body="three"))
    await dbf_session.rollback()
    async with dbf_database.write() as session:  # the code under test commits too
        await session.execute(insert(notes).values(body="four"))
    assert await count_notes(dbf_database) == 3
    assert await dbf_session.scalar(select(func.count()).select_from(notes)) == 3


async def nothing_left(dbf_session, dbf_database):
    assert await dbf_session.scalar(select(func.count()).select_from(notes)) == 0
    assert await count_notes(dbf_database) == 0
"""

ISOLATION_WRITES_FIRST = """\
import pytest

from helpers import commit_twice_roll_back_once, nothing_left

pytestmark = pytest.mark.asyncio


async def test_writes(dbf_session, dbf_database):
    await commit_twice_roll_back_once(dbf_session, dbf_database)


async def test_nothing_left(dbf_session, dbf_database):
    await nothing_left(dbf_session, dbf_database)
"""

ISOLATION_CHECK_FIRST = """\
import pytest

from helpers import commit_twice_roll_back_once, nothing_left

pytestmark = pytest.mark.asyncio


async def test_nothing_left(dbf_session, dbf_database):
    await nothing_left(dbf_session, dbf_database)


async def test_writes(dbf_session, dbf_database):
    await commit_twice_roll_back_once(dbf_session, dbf_database)


async def test_nothing_left_again(dbf_session, dbf_database):
    await nothing_left(dbf_session, dbf_database)
"""

APP_TESTS = """\
import pytest
from sqlalchemy import insert, select

from helpers import count_notes
from models import notes

pytestmark = pytest.mark.asyncio


async def test_request_is_seen_by_the_test(dbf_client, dbf_session, dbf_database):
    response = await dbf_client.post("/notes", json={"body": "from the app"})
    assert response.status_code == 201
    assert list(await dbf_session.scalars(select(notes.c.body))) == ["from the app"]
    assert await count_notes(dbf_database) == 1
    await dbf_session.execute(insert(notes).values(body="from the test"))
    await dbf_session.commit()
    assert (await dbf_client.get("/notes")).json() == {"count": 2}


async def test_request_is_gone_after(dbf_client, dbf_database):
    assert (await dbf_client.get("/notes")).json() == {"count": 0}
    assert await count_notes(dbf_database) == 0
"""

DEFERRED_TESTS = """\
import pytest
from sqlalchemy import func, insert, select

from models import children

pytestmark = pytest.mark.asyncio


async def test_leaves_an_orphan(dbf_database):
    async with dbf_database.write() as session:  # passes: the foreign key is checked at COMMIT only
        await session.execute(insert(children).values(id=1, parent_id=999))


async def test_after_the_orphan(dbf_session):
    assert await dbf_session.scalar(select(func.count()).select_from(children)) == 0
"""

TEMPLATE_TESTS = """\
import asyncio
import subprocess
import sys

import pytest
from sqlalchemy import func, insert, select

from dbfoundation import Database
from helpers import count_notes
from models import notes

WRITER = '''
import asyncio, os, pathlib, sys, time
from sqlalchemy import insert
from dbfoundation import Database
from models import notes

async def main(url, gate, n):
    pathlib.Path(gate, f"ready-{n}").touch()
    while len(list(pathlib.Path(gate).glob("ready-*"))) < 3:  # all three start writing together
        time.sleep(0.01)
    async with Database.from_url(url) as db:
        for i in range(10):
            async with db.write() as session:
                await session.execute(insert(notes).values(body=f"{os.getpid()} {i}"))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
'''


async def bodies(url):
    async with Database.from_url(url) as db, db.read() as session:
        return list(await session.scalars(select(notes.c.body)))


def test_template_takes_commits_from_three_processes(dbf_template_database, tmp_path):
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, dbf_template_database, str(tmp_path), str(n)])
        for n in range(3)
    ]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0]
    rows = asyncio.run(bodies(dbf_template_database))
    assert len(rows) == 30
    assert len({row.split()[0] for row in rows}) == 3


@pytest.mark.asyncio
async def test_template_beside_the_rolled_back_database(dbf_database, dbf_template_database):
    async with Database.from_url(dbf_template_database) as copy:
        async with copy.write() as session:
            await session.execute(insert(notes).values(body="committed"))
    assert await bodies(dbf_template_database) == ["committed"]
    assert await count_notes(dbf_database) == 0


@pytest.mark.asyncio
async def test_session_database_untouched_by_copies(dbf_database):
    assert await count_notes(dbf_database) == 0
"""

CHECKS = """\
from dbfoundation.migration_checks import *  # noqa: F403
"""

INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
dbf_migrations = migrations
dbf_app = app_factory:create_app
"""


def write_project(root: Path, *, extra_column: bool = False) -> None:
    """The inner project: models, migrations (two revisions), app factory, helpers and ini."""
    extra = '\n    Column("color", String(20), nullable=True),' if extra_column else ""
    (root / "models.py").write_text(MODELS.format(extra=extra))
    cwd = Path.cwd()
    os.chdir(root)  # init() writes alembic.ini into the working directory
    try:
        init(root / "migrations", write_alembic_ini=False)
    finally:
        os.chdir(cwd)
    (root / "migrations" / "env.py").write_text(ENV)
    (root / "migrations" / "versions" / "0001_initial.py").write_text(REVISION_1)
    (root / "migrations" / "versions" / "0002_tags.py").write_text(REVISION_2)
    (root / "app_factory.py").write_text(APP)
    (root / "helpers.py").write_text(HELPERS)
    (root / "pytest.ini").write_text(INI)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder holding the inner project; the inner runs see no CI or xdist variables of ours."""
    for variable in ("CI", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS", "DBF_TEST_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    write_project(pytester.path)
    return pytester


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_args(request: pytest.FixtureRequest) -> list[str]:
    """Command-line arguments choosing the inner run's backend: none (SQLite file) or --dbf-url (PostgreSQL)."""
    if request.param == "sqlite":
        return []
    require_postgres()
    return [f"--dbf-url={POSTGRES_ADMIN_URL}"]


def test_plugin_isolates_tests_joins_the_app_and_fails_deferred_violations(
    project: pytest.Pytester, backend_args: list[str]
) -> None:
    """Commits in one test are gone in the next (both orders), app requests join the test's transaction, a
    deferred FK violation fails its test at teardown, template copies take commits from three processes, and
    the migration checks pass on a correct project."""
    project.makepyfile(
        test_a_writes_first=ISOLATION_WRITES_FIRST,
        test_b_check_first=ISOLATION_CHECK_FIRST,
        test_c_app=APP_TESTS,
        test_d_deferred=DEFERRED_TESTS,
        test_e_template=TEMPLATE_TESTS,
        test_f_checks=CHECKS,
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *backend_args, timeout=110)
    result.assert_outcomes(passed=16, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_an_orphan*",
            "*the test left data that COMMIT would refuse (deferred constraints)*",
        ]
    )
    passed = set(re.findall(r"^PASSED (\S+)", result.stdout.str(), flags=re.MULTILINE))
    assert "test_d_deferred.py::test_after_the_orphan" in passed
    assert "test_d_deferred.py::test_leaves_an_orphan" in passed  # the call passed; its teardown failed
    assert {f"test_f_checks.py::test_{name}" for name in ("single_head", "upgrade_from_empty")} <= passed
    assert {f"test_f_checks.py::test_{name}" for name in ("up_down_round_trip", "models_match_migrations")} <= passed


WORKER_TESTS = """\
import asyncio
import os
import pathlib

import pytest
from sqlalchemy import insert

from helpers import count_notes
from models import notes


@pytest.mark.parametrize("n", range(8))
@pytest.mark.asyncio
async def test_record_database(n, dbf_database_url, dbf_database):
    record = pathlib.Path(os.environ["DBF_RECORD_DIR"]) / f"{n}.txt"
    record.write_text(os.environ["PYTEST_XDIST_WORKER"] + " " + dbf_database_url)
    async with dbf_database.write() as session:
        await session.execute(insert(notes).values(body=str(n)))
    await asyncio.sleep(0.05)  # overlap with the other workers' tests
    assert await count_notes(dbf_database) == 1
"""


def test_xdist_gives_each_worker_its_own_database(
    project: pytest.Pytester, backend_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `pytest -n 4` every worker builds and uses its own migrated database, named after the worker."""
    records = project.mkdir("records")
    monkeypatch.setenv("DBF_RECORD_DIR", str(records))
    project.makepyfile(test_workers=WORKER_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "4", *backend_args, timeout=110)
    result.assert_outcomes(passed=8)
    seen = [path.read_text().split(" ", 1) for path in records.iterdir()]
    url_of: dict[str, set[str]] = {}
    for worker, url in seen:
        url_of.setdefault(worker, set()).add(url)
    assert len(url_of) >= 2  # the tests really were spread over workers
    assert all(len(urls) == 1 for urls in url_of.values())  # one database per worker, all session long
    urls = [next(iter(urls)) for urls in url_of.values()]
    assert len(set(urls)) == len(urls)  # and no two workers share one
    assert all(f"_{worker}_" in url for worker, url in zip(url_of, urls, strict=True))


def test_migration_checks_show_the_missing_revision(project: pytest.Pytester) -> None:
    """A model column without a revision fails test_models_match_migrations with the would-be migration."""
    (project.path / "models.py").write_text(MODELS.format(extra='\n    Column("color", String(20), nullable=True),'))
    project.makepyfile(test_checks=CHECKS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_models_match_migrations*",
            "*the models differ from the migrations*",
            "*add_column*color*",
        ]
    )


NEEDS_DATABASE = """\
import pytest


@pytest.mark.asyncio
async def test_needs_the_database(dbf_database):
    pass
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_postgres_skips_with_the_start_command_and_fails_under_ci(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    """A PostgreSQL URL nobody answers skips with how to start the server; under CI=true it is an error."""
    if ci:
        monkeypatch.setenv("CI", ci)
    project.makepyfile(test_pg=NEEDS_DATABASE)
    closed = "postgresql://postgres:secret@127.0.0.1:1/postgres"
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-rs", f"--dbf-url={closed}", timeout=60)
    if ci:
        result.assert_outcomes(errors=1)
    else:
        result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*127.0.0.1:1/postgres is not reachable*pg_ctlcluster --skip-systemctl-redirect*"])
    assert "secret" not in result.stdout.str()


LOOP_MISMATCH = """\
import pytest


@pytest.mark.asyncio(loop_scope="module")
async def test_in_the_module_loop(dbf_database):
    pass
"""


def test_options_precede_ini_and_a_test_in_another_loop_fails_with_the_fix(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dbf-app wins over ini dbf_app, which wins over DBF_APP; and a test running in the module loop while
    dbf_database lives in the function loop fails at setup, saying why."""
    (project.path / "other_factory.py").write_text(
        textwrap.dedent(
            """\
            from fastapi import FastAPI


            def create_app(db):
                app = FastAPI()
                app.title = "other"
                return app
            """
        )
    )
    monkeypatch.setenv("DBF_APP", "nowhere:create_app")
    project.makepyfile(
        test_which=textwrap.dedent(
            """\
            import os

            import pytest


            @pytest.mark.asyncio
            async def test_title(dbf_app, dbf_database):
                assert dbf_app.title == os.environ["EXPECTED_TITLE"]
                assert dbf_app.state.dbfoundation_database is dbf_database
            """
        )
    )
    project.makepyfile(test_loops=LOOP_MISMATCH)
    monkeypatch.setenv("EXPECTED_TITLE", "FastAPI")  # the ini's app_factory:create_app
    result = project.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*runs in the 'module' event loop but dbf_database's engines live in the 'function'*"])
    monkeypatch.setenv("EXPECTED_TITLE", "other")
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--dbf-app=other_factory:create_app", "test_which.py", timeout=60
    )
    result.assert_outcomes(passed=1)
