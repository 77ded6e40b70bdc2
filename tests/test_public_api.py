"""The package's public surface: an honest __all__, an import without side effects, a lazy Database."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import dbfoundation
from dbfoundation import Database, DatabaseSettings, SessionStateError


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is sorted and names every public, non-module attribute of the package."""
    public = sorted(
        name
        for name, value in vars(dbfoundation).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )
    assert dbfoundation.__all__ == sorted(dbfoundation.__all__)
    assert dbfoundation.__all__ == public


def test_all_names_resolve_and_match_design_core() -> None:
    """Every name in __all__ resolves, and the core names of DESIGN §2 and STYLE §2 are among them."""
    for name in dbfoundation.__all__:
        assert getattr(dbfoundation, name) is not None
    core = {
        "ConfigurationError",
        "Database",
        "DatabaseError",
        "DatabaseSettings",
        "MigrationLockTimeout",
        "WriteTimeout",
    }
    assert core <= set(dbfoundation.__all__)
    assert dbfoundation.DatabaseError is dbfoundation.errors.DatabaseError


_IMPORT_PROBE = """
import gc, json, sys, threading
import dbfoundation
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
engines = [o for o in gc.get_objects() if isinstance(o, (Engine, AsyncEngine))]
print(json.dumps({
    "modules": sorted(sys.modules),
    "engines": len(engines),
    "threads": threading.active_count(),
}))
"""


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    """`import dbfoundation` loads no FastAPI or pytest module, creates no engine, thread or file."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_")}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    loaded = set(report["modules"])
    forbidden = {"fastapi", "starlette", "pytest", "_pytest", "pytest_asyncio", "httpx", "uvicorn", "typer"}
    assert not (forbidden & {name.partition(".")[0] for name in loaded})
    assert "dbfoundation.fastapi" not in loaded
    assert "dbfoundation.pytest_plugin" not in loaded
    assert report["engines"] == 0
    assert report["threads"] == 1
    assert list(tmp_path.iterdir()) == []


def test_database_construction_creates_no_file_and_no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Database() from the default settings touches no file and builds no engine until it is started."""
    for name in list(os.environ):
        if name.startswith("DATABASE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    gc.collect()
    engines_before = sum(isinstance(o, AsyncEngine) for o in gc.get_objects())
    database = Database()
    explicit = Database(DatabaseSettings(url=f"sqlite:///{tmp_path / 'nested' / 'app.db'}"))
    assert database.state == explicit.state == "new"
    assert database.settings.sqlite_path == tmp_path / "data" / "app.db"
    assert list(tmp_path.iterdir()) == []
    assert sum(isinstance(o, AsyncEngine) for o in gc.get_objects()) == engines_before
    with pytest.raises(SessionStateError, match="not started"):
        _ = database.engines
