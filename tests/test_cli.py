"""`dbf` end to end, as a subprocess on a scratch project: the commands users type, their output and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dbfoundation.cli import app

ROOT = Path(__file__).resolve().parent.parent
MODELS = """\
from sqlalchemy.orm import Mapped, mapped_column

from dbfoundation.models import Base


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
"""


def dbf(project: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["DATABASE_URL"] = url or f"sqlite:///{project / 'data' / 'app.db'}"
    env["COLUMNS"] = "200"  # keep Rich from wrapping lines the tests read
    return subprocess.run(
        [sys.executable, "-m", "dbfoundation", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path


def _init(project: Path, url: str | None = None) -> None:
    result = dbf(project, "init", "--metadata", "Base.metadata", url=url)
    assert result.returncode == 0, result.stderr
    env_py = project / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace("\ntarget_metadata =", "\nfrom models import Base\n\ntarget_metadata =", 1)
    )


def test_cli_init_revision_upgrade_check_then_a_model_change_fails_check(backend_url: str, project: Path) -> None:
    """init → revision --autogenerate → upgrade → check passes → a changed model makes check exit 1 with the diff."""
    url = backend_url
    _init(project, url)
    revision = dbf(project, "revision", "--autogenerate", "-m", "create things", url=url)
    assert revision.returncode == 0, revision.stderr
    assert "create_table('things'" in next((project / "migrations" / "versions").glob("*.py")).read_text()
    upgrade = dbf(project, "upgrade", url=url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "upgraded to" in upgrade.stdout
    assert "already at" in dbf(project, "upgrade", url=url).stdout
    current = dbf(project, "current", "--json", url=url)
    assert json.loads(current.stdout)["state"] == "at head"
    passing = dbf(project, "check", url=url)
    assert passing.returncode == 0, passing.stderr
    assert "models and migrations match" in passing.stdout
    models = project / "models.py"
    models.write_text(models.read_text() + "    color: Mapped[str | None]\n")
    failing = dbf(project, "check", url=url)
    assert failing.returncode == 1
    assert "add_column" in failing.stdout
    assert "color" in failing.stdout


def test_cli_check_on_a_database_behind_head_says_upgrade_first(project: Path) -> None:
    """check before upgrade is an error telling the user to upgrade first, not a false pass."""
    _init(project)
    assert dbf(project, "revision", "--autogenerate", "-m", "create things").returncode == 0
    assert dbf(project, "downgrade", "base").returncode == 0
    result = dbf(project, "check")
    assert result.returncode == 7
    assert "upgrade first" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_errors_are_one_line_with_a_hint_and_a_meaningful_exit_code(project: Path) -> None:
    """A missing migrations folder, a bad URL and an unreachable server each give one line, a hint, their code."""
    missing = dbf(project, "upgrade")
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: DATABASE_MIGRATIONS_PATH=migrations cannot be used")
    assert "Traceback" not in missing.stderr
    bad_url = dbf(project, "current", url="mysql://app:s3cr3t-pw@db/app")
    assert bad_url.returncode == 3
    assert "s3cr3t-pw" not in bad_url.stderr + bad_url.stdout
    _init(project)
    unreachable = dbf(project, "upgrade", url="postgresql://app:s3cr3t-pw@127.0.0.1:1/app")
    assert unreachable.returncode == 4
    assert "app:***@127.0.0.1:1" in unreachable.stderr
    assert "s3cr3t-pw" not in unreachable.stderr
    debug = dbf(project, "--debug", "upgrade", url="postgresql://app:s3cr3t-pw@127.0.0.1:1/app")
    assert "Traceback" in debug.stderr


def test_cli_sql_upgrade_status_and_repair(backend_url: str, project: Path) -> None:
    """dbf sql applies .sql files, reports them, refuses an edited file (exit 6) until repaired."""
    folder = project / "sql_migrations"
    folder.mkdir()
    (folder / "0001_notes.sql").write_text("CREATE TABLE notes (id integer PRIMARY KEY, body text);\n")
    first = dbf(project, "sql", "upgrade", url=backend_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_notes.sql" in first.stdout
    status = json.loads(dbf(project, "sql", "status", "--json", url=backend_url).stdout)
    assert [(row["name"], row["state"]) for row in status] == [("0001_notes.sql", "applied")]
    (folder / "0001_notes.sql").write_text("CREATE TABLE notes (id integer PRIMARY KEY, body text); -- edited\n")
    edited = dbf(project, "sql", "upgrade", url=backend_url)
    assert edited.returncode == 6
    assert "dbf sql repair --accept 0001" in edited.stderr
    assert dbf(project, "sql", "repair", "--accept", "0001", url=backend_url).returncode == 0
    assert "nothing to apply" in dbf(project, "sql", "upgrade", url=backend_url).stdout


def test_cli_doctor_reports_pragmas_masked_settings_and_migration_state(project: Path) -> None:
    """doctor --json shows the masked URL, the PRAGMAs of writer and reader, and the migration state."""
    _init(project)
    assert dbf(project, "revision", "--autogenerate", "-m", "create things").returncode == 0
    assert dbf(project, "upgrade").returncode == 0
    report = json.loads(dbf(project, "doctor", "--json").stdout)
    assert report["sqlite"]["pragmas (writer)"]["journal_mode"] == "wal"
    assert report["sqlite"]["pragmas (writer)"]["foreign_keys"] == 1
    assert report["sqlite"]["pragmas (reader)"]["query_only"] == 1
    assert report["migrations"]["state"] == "at head"
    assert report["warnings"] == []


def test_cli_doctor_and_health_never_show_the_password(postgres_url: str, project: Path) -> None:
    """With a password in DATABASE_URL, doctor and health print it masked; health exits 0 on pass."""
    url = postgres_url.replace("postgres@", "postgres:s3cr3t-pw@")  # trust auth ignores it
    doctor = dbf(project, "doctor", "--json", url=url)
    assert doctor.returncode == 0, doctor.stderr
    assert "s3cr3t-pw" not in doctor.stdout + doctor.stderr
    health = dbf(project, "health", url=url)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] in ("pass", "warn")
    assert "s3cr3t-pw" not in health.stdout + health.stderr


def test_cli_health_exits_1_when_the_database_is_unreachable(project: Path) -> None:
    """health against a closed port prints a fail report and exits 1."""
    result = dbf(project, "health", "--deadline", "0.5", url="postgresql://app:s3cr3t-pw@127.0.0.1:1/app")
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "fail"
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_every_command_has_help_and_is_in_the_readme() -> None:
    """Each dbf command (and sql subcommand) has a help text and is named in the README's CLI section."""
    readme = (ROOT / "README.md").read_text()
    assert app.registered_commands
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        assert (command.callback.__doc__ or "").strip(), name
        assert re.search(rf"`dbf {name}\b", readme), f"dbf {name} is not in the README"
    sql = next(group for group in app.registered_groups if group.name == "sql")
    for command in sql.typer_instance.registered_commands:
        assert re.search(rf"`dbf sql {command.name}\b", readme), f"dbf sql {command.name} is not in the README"
