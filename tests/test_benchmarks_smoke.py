"""Smoke test of the benchmark suite: every adapter completes a tiny quick run and the data check holds.

Not a timing test: nothing here looks at throughput or latency. Runs `python -m benchmarks` in a
subprocess (its workers are spawned processes) and reads the JSON it writes to a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import POSTGRES_ADMIN_URL, require_postgres

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--quick", "--cells", "1x4", "--warmup", "0.1", "--duration", "0.5"]
SQLITE_IMPLS = [
    "sqlite3-raw",
    "sqlite3-raw-batched",
    "usual",
    "advanced-alchemy",
    "sqlmodel",
    "dbf-write",
    "dbf-submit",
    "orm-floor",
]
POSTGRES_IMPLS = ["asyncpg-raw", "sqlalchemy-asyncpg", "dbf-write", "dbf-submit"]


def run_bench(out: Path, *args: str) -> None:
    env = {**os.environ, "DBF_BENCH_POSTGRES_URL": POSTGRES_ADMIN_URL, "DBF_BENCH_WORKDIR": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", *args, *QUICK, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (out / "RESULTS.md").is_file()


def runs(out: Path, scenario: str, backend: str) -> list[dict[str, Any]]:
    doc = json.loads((out / "results" / f"{scenario}.{backend}.json").read_text())
    return list(doc["runs"])


def assert_completed(records: list[dict[str, Any]], impls: list[str]) -> None:
    assert sorted({r["impl"] for r in records}) == sorted(impls)
    for r in records:
        assert "fatal" not in r, (r["impl"], r.get("fatal"))
        assert r["completed"] > 0, r["impl"]
        assert r["cpu_ms_per_req"] > 0, r["impl"]  # the workers' CPU over the window, per request
        assert r["data_check"]["missing"] == 0, (r["impl"], r["data_check"])


def test_every_sqlite_adapter_completes_ingest_with_no_acknowledged_row_missing(tmp_path: Path) -> None:
    run_bench(tmp_path, "ingest", "--variant", "insert", "--impl", *SQLITE_IMPLS)
    assert_completed(runs(tmp_path, "ingest", "sqlite"), SQLITE_IMPLS)


def test_counter_equals_acknowledged_increments_for_serialized_writers(tmp_path: Path) -> None:
    impls = ["sqlite3-raw", "dbf-write", "dbf-submit"]
    run_bench(tmp_path, "counter", "write-tx", "--impl", *impls)
    counter = runs(tmp_path, "counter", "sqlite")
    assert_completed(counter, impls)
    for r in counter:
        assert r["data_check"]["unacknowledged_present"] == 0, (r["impl"], r["data_check"])
    assert_completed(runs(tmp_path, "write-tx", "sqlite"), impls)


@pytest.mark.postgres
def test_every_postgres_adapter_completes_ingest(tmp_path: Path) -> None:
    require_postgres()
    run_bench(tmp_path, "ingest", "--variant", "insert", "--backend", "postgres", "--impl", *POSTGRES_IMPLS)
    assert_completed(runs(tmp_path, "ingest", "postgres"), POSTGRES_IMPLS)


@pytest.mark.postgres
def test_counter_loses_no_increment_on_postgres(tmp_path: Path) -> None:
    """db.write() blocks run side by side at READ COMMITTED there: the adapter's FOR UPDATE keeps them exact."""
    require_postgres()
    impls = ["asyncpg-raw", "dbf-write", "dbf-submit"]
    run_bench(tmp_path, "counter", "--backend", "postgres", "--impl", *impls)
    assert_completed(runs(tmp_path, "counter", "postgres"), impls)


def test_published_results_are_rendered_from_their_sources() -> None:
    """benchmarks/RESULTS.md is generated from results/*.json and notes/*.md; an edit of either that was
    not rendered would publish a stale page (it happened once: three notes commits never reached it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "render", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
