"""Scratch Alembic projects for test_alembic_migrations.py: models, env.py from `init`, revision files.

A project is a folder holding `models.py` (SQLAlchemy Core tables on a MetaData with dbfoundation's
naming convention) and `migrations/` made by `dbfoundation.migrations.scaffold.init`, whose env.py is
edited to load `models.py` by path (a fresh module each run, so a test can change a model between
commands). Revision files are written by hand with fixed ids, so tests can name them.

Revisions can call helpers that the generated files import from this module's text:
- `log_event()` inserts (revision, pid) into the `events` table, so a test counts how often each ran;
- `slow(seconds)` sleeps inside the migration's transaction (pg_sleep on PostgreSQL, time.sleep on SQLite);
- `maybe_pause()` touches $DBF_TEST_PAUSE_FILE and sleeps for an hour, when that variable is set, so a
  test can SIGKILL the process mid-revision;
- `trace(word)` appends "word wall-clock-time" to $DBF_TEST_TRACE_FILE, when set.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from dbfoundation.migrations.scaffold import init

TESTS = Path(__file__).parent
CHILD = TESTS / "_alembic_child.py"
SRC = TESTS.parent / "src"

_ENV_LOADER = """\
import importlib.util
import pathlib

# Load models.py by path as a fresh module, so an edited model is seen by the next command.
_spec = importlib.util.spec_from_file_location(
    "scratch_models", pathlib.Path(__file__).resolve().parent.parent / "models.py"
)
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)
"""

_REVISION = '''\
"""{message}"""

import os
import pathlib
import time

import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def log_event():
    op.execute(
        sa.text("INSERT INTO events (revision, pid) VALUES (:revision, :pid)").bindparams(
            revision=revision, pid=os.getpid()
        )
    )


def slow(seconds):
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(f"SELECT pg_sleep({{seconds}})"))
    else:
        time.sleep(seconds)


def maybe_pause():
    pause_file = os.environ.get("DBF_TEST_PAUSE_FILE")
    if pause_file:
        pathlib.Path(pause_file).touch()
        time.sleep(3600)


def trace(word):
    trace_file = os.environ.get("DBF_TEST_TRACE_FILE")
    if trace_file:
        with open(trace_file, "a") as out:
            out.write(f"{{word}} {{time.time()!r}}\\n")


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''

CREATE_EVENTS = """\
op.create_table(
    "events",
    sa.Column("revision", sa.String(32), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
log_event()"""

EVENTS_MODEL = """\
events = Table(
    "events",
    metadata,
    Column("revision", String(32), nullable=False),
    Column("pid", Integer, nullable=False),
)
"""

_MODELS_HEADER = """\
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table

from dbfoundation.models import NAMING_CONVENTION

metadata = MetaData(naming_convention=NAMING_CONVENTION)

"""


@dataclass
class Project:
    """A scratch project: `root/models.py` and `root/migrations` (env.py, script.py.mako, versions/)."""

    root: Path

    @property
    def migrations(self) -> Path:
        return self.root / "migrations"

    def write_models(self, body: str) -> None:
        """Write models.py: the imports and `metadata`, then `body` (Table definitions on `metadata`)."""
        (self.root / "models.py").write_text(_MODELS_HEADER + textwrap.dedent(body))

    def write_revision(self, revision: str, down_revision: str | None, upgrade: str, downgrade: str = "pass") -> Path:
        """Write versions/<revision>.py whose upgrade() runs the `upgrade` source (helpers above available)."""
        path = self.migrations / "versions" / f"{revision}.py"
        path.write_text(
            _REVISION.format(
                message=f"revision {revision}",
                revision=revision,
                down_revision=down_revision,
                upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
                downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
            )
        )
        # A rewritten file of the same size within the same second would otherwise load from a stale .pyc.
        shutil.rmtree(path.parent / "__pycache__", ignore_errors=True)
        return path


def make_project(root: Path, models: str = "", *, write_alembic_ini: bool = False) -> Project:
    """Create a project under `root` with `models` (Table definitions) and an env.py made by `init`.

    `write_alembic_ini` writes alembic.ini into the current directory, as `dbf init` does.
    """
    root.mkdir(parents=True, exist_ok=True)
    project = Project(root)
    project.write_models(models)
    folder = project.migrations
    if write_alembic_ini:
        assert Path.cwd().resolve() == root.resolve(), "alembic.ini goes into the current directory"
        folder = Path("migrations")  # relative, as `dbf init` writes it
    init(folder, metadata="_models.metadata", write_alembic_ini=write_alembic_ini)
    env = project.migrations / "env.py"
    source = env.read_text()
    anchor = "from dbfoundation.migrations.alembic import run_migrations\n"
    assert anchor in source, "the env.py template changed; update the test project helper"
    env.write_text(source.replace(anchor, anchor + "\n" + _ENV_LOADER))
    return project


# -- looking at the database from outside ---------------------------------------------------------


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def fetch_all(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one query on a brand-new plain connection (sqlite3 or asyncpg) and return the rows."""
    if is_sqlite(url):
        connection = sqlite3.connect(sqlite_path(url))
        try:
            return [tuple(row) for row in connection.execute(sql).fetchall()]
        finally:
            connection.close()

    async def fetch() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(url)
        try:
            return [tuple(record) for record in await connection.fetch(sql)]
        finally:
            await connection.close()

    # Own thread and loop, so this works from sync and async tests alike.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, fetch()).result()


def table_names(url: str) -> set[str]:
    """The user tables, seen by a new connection."""
    if is_sqlite(url):
        rows = fetch_all(url, "SELECT name FROM sqlite_schema WHERE type = 'table'")
    else:
        rows = fetch_all(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(row[0]) for row in rows}


def version(url: str) -> list[str]:
    """The rows of alembic_version ([] when the table does not exist)."""
    if "alembic_version" not in table_names(url):
        return []
    return sorted(str(row[0]) for row in fetch_all(url, "SELECT version_num FROM alembic_version"))


def event_counts(url: str) -> dict[str, int]:
    """How many times each revision logged itself in `events`."""
    rows = fetch_all(url, "SELECT revision, count(*) FROM events GROUP BY revision")
    return {str(revision): int(count) for revision, count in rows}


# -- child processes ---------------------------------------------------------------------------------


def start_child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `_alembic_child.py` with `args` in a new Python process (dbfoundation importable)."""
    child_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    child_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args], env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def kill_hard(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child (nothing in it gets to clean up) and reap it."""
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)


def finish(child: subprocess.Popen[bytes], timeout_s: float = 60.0) -> str:
    """Wait for the child; fail with its stderr unless it exits 0; return its stdout."""
    stdout, stderr = child.communicate(timeout=timeout_s)
    assert child.returncode == 0, f"child {child.pid} exited {child.returncode}:\n{stderr.decode()}"
    return stdout.decode()


def read_json(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result
