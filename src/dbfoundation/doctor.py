"""`dbf doctor`: what is in effect and what looks wrong, without changing anything the app relies on.

It reads settings (password masked), the PRAGMAs a writer and a reader connection really have, file and
WAL sizes, the filesystem under the SQLite file (WAL needs a local one), pool settings and the migration
state, and turns what it finds into plain warnings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dbfoundation.admission import RUN_TURNS
from dbfoundation.database import Database
from dbfoundation.pragmas import read_pragmas
from dbfoundation.settings import DatabaseSettings

__all__ = ["diagnose", "filesystem_type"]

_NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "glusterfs", "ceph", "afs"}


def filesystem_type(path: Path) -> str | None:
    """The filesystem type holding `path`, from /proc/mounts (Linux); None where unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path if path.exists() else path.parent)
    best: tuple[int, str] | None = None
    for line in mounts:
        fields = line.split()
        under = len(fields) >= 3 and (target == fields[1] or target.startswith(fields[1].rstrip("/") + "/"))
        if under and (best is None or len(fields[1]) > best[0]):
            best = (len(fields[1]), fields[2])
    return best[1] if best else None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


async def diagnose(settings: DatabaseSettings) -> dict[str, Any]:
    """Collect the doctor's report: sections of facts, and a list of warnings."""
    warnings: list[str] = []
    report: dict[str, Any] = {
        "settings": {
            "url": settings.masked_url,
            "read_url": None
            if settings.async_read_url is None
            else settings.async_read_url.render_as_string(hide_password=True),
            "backend": settings.backend,
            "echo": settings.echo,
            "write_timeout_s": settings.write_timeout,
            "migrations_path": settings.migrations_path,
            "sql_migrations_path": settings.sql_migrations_path,
        },
        "pool": (
            {
                "writer connections": f"1, {RUN_TURNS} while writes run code between statements",
                "reader connections": settings.sqlite_readers,
                "pool_timeout_s": settings.pool_timeout,
            }
            if settings.backend == "sqlite"
            else {
                "pool_size": settings.pool_size,
                "max_overflow": settings.max_overflow,
                "pool_pre_ping": settings.pool_pre_ping,
                "pool_timeout_s": settings.pool_timeout,
                "pool_recycle_s": settings.pool_recycle,
            }
        ),
    }
    if settings.backend == "sqlite":
        report["sqlite"] = await _sqlite_facts(settings, warnings)
    report["migrations"] = await _migration_facts(settings, warnings)
    if settings.echo:
        warnings.append("DATABASE_ECHO is on: SQL parameters (often personal data) are written to the logs.")
    report["warnings"] = warnings
    return report


async def _sqlite_facts(settings: DatabaseSettings, warnings: list[str]) -> dict[str, Any]:
    path = settings.sqlite_path
    wal = path.with_name(path.name + "-wal")
    facts: dict[str, Any] = {
        "file": str(path),
        "file_bytes": _size(path),
        "wal_bytes": _size(wal),
        "filesystem": filesystem_type(path),
        "lock_file": settings.sqlite_lock_file,
    }
    if facts["filesystem"] in _NETWORK_FILESYSTEMS:
        warnings.append(
            f"{path} is on a network filesystem ({facts['filesystem']}); SQLite's WAL and our lock file need a "
            "local disk. Move the file, or use PostgreSQL."
        )
    if settings.sqlite_synchronous == "OFF":
        warnings.append("DATABASE_SQLITE_SYNCHRONOUS=OFF: an OS crash or power loss can corrupt the database.")
    if not settings.sqlite_lock_file:
        warnings.append("DATABASE_SQLITE_LOCK_FILE is off: writers of several processes arbitrate by polling.")
    if not path.exists():
        warnings.append(f"{path} does not exist yet; it is created on the first start.")
        return facts
    limit = settings.sqlite_journal_size_limit
    if facts["wal_bytes"] and limit > 0 and facts["wal_bytes"] > 4 * limit:
        warnings.append(
            f"the WAL is {facts['wal_bytes']} bytes, over 4x DATABASE_SQLITE_JOURNAL_SIZE_LIMIT; long-running "
            "readers may be starving checkpoints."
        )
    async with Database(settings) as db:
        for role, read_only in (("writer", False), ("reader", True)):
            async with db.raw(read_only=read_only) as raw:
                facts[f"pragmas ({role})"] = await read_pragmas(raw)
    return facts


async def _migration_facts(settings: DatabaseSettings, warnings: list[str]) -> dict[str, Any]:
    from dbfoundation.migrations import migration_state

    try:
        state = await migration_state(settings)
    except Exception as exc:  # the database may be unreachable; the doctor reports, it does not fail
        warnings.append(f"could not read the migration state: {type(exc).__name__}")
        return {"state": "unknown"}
    if state is None:
        return {"state": f"no Alembic migrations at {settings.migrations_path}"}
    where = "at head" if state.is_at_head else "ahead of the scripts" if state.is_ahead else "behind head"
    if state.is_behind:
        warnings.append("the database is behind the migration scripts; run 'dbf upgrade'.")
    return {"current": ", ".join(state.current) or "base", "heads": ", ".join(state.heads), "state": where}
