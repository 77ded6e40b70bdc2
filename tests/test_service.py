"""The reference service's acceptance tests, on SQLite and PostgreSQL, through httpx and a real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.service.app import create_app, service_settings
from examples.service.models import Signal
from sqlalchemy import func, select

from dbfoundation import Database

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def _client(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client,
    ):
        yield client


@pytest.fixture
async def client(backend_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(Database(service_settings(url=backend_url))) as c:
        yield c


def _webhook_bodies(distinct: int, duplicates: int) -> list[dict[str, Any]]:
    bodies = [{"event": "push", "n": n, "text": "x" * 400} for n in range(distinct)]
    retried = [dict(random.choice(bodies)) for _ in range(duplicates)]  # a retried delivery is the same body
    everything = bodies + retried
    random.shuffle(everything)
    return everything


async def _count_signals(url: str) -> tuple[int, int]:
    async with Database(service_settings(url=url)) as db, db.read() as session:
        total = await session.scalar(select(func.count()).select_from(Signal))
        distinct = await session.scalar(select(func.count(func.distinct(Signal.signal_id))))
    return int(total or 0), int(distinct or 0)


async def test_concurrent_webhooks_with_retries_store_each_signal_once(backend_url: str) -> None:
    """200 concurrent posts with 10 % retried duplicates: no 5xx, one row per signal, all there after a restart."""
    bodies = _webhook_bodies(180, 20)
    async with _client(Database(service_settings(url=backend_url))) as client:
        gate = asyncio.Event()

        async def post(body: dict[str, Any]) -> httpx.Response:
            await gate.wait()
            return await client.post("/signals", json=body)

        tasks = [asyncio.create_task(post(b)) for b in bodies]
        await asyncio.sleep(0)
        gate.set()
        responses = await asyncio.gather(*tasks)
    codes = [r.status_code for r in responses]
    assert not [c for c in codes if c >= 500]
    assert codes.count(201) == 180  # each distinct signal created exactly once
    assert all(r.json()["duplicate"] for r in responses if r.status_code == 200)
    acknowledged = {r.json()["signal_id"] for r in responses if r.status_code < 300}
    total, distinct = await _count_signals(backend_url)  # a new Database: what survived the app's shutdown
    assert (total, distinct) == (180, 180)
    assert len(acknowledged) == 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_uvicorn(url: str, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "examples.service.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


async def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(300):
            assert process.poll() is None, log.read_text()  # noqa: ASYNC240 - only on failure
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("uvicorn did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def test_uvicorn_with_four_workers_stores_each_signal_once(backend_url: str, tmp_path: Path) -> None:
    """Through a real uvicorn with 4 worker processes: no 5xx, no duplicate rows, every 2xx row survives restart."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn.log"
    server = _start_uvicorn(backend_url, port, workers=4, log=log)
    try:
        await _wait_ready(base, server, log)
        bodies = _webhook_bodies(180, 20)
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/signals", json=b) for b in bodies))
    finally:
        _stop(server)
    codes = [r.status_code for r in responses]
    assert not [c for c in codes if c >= 500]
    assert codes.count(201) == 180
    # Restart: a new server on the same database still serves every acknowledged signal.
    server = _start_uvicorn(backend_url, port, workers=1, log=log)
    try:
        await _wait_ready(base, server, log)
        async with httpx.AsyncClient(base_url=base) as client:
            listed = (await client.get("/signals", params={"limit": 1000})).json()
    finally:
        _stop(server)
    acknowledged = {r.json()["signal_id"] for r in responses if r.status_code < 300}
    assert {s["signal_id"] for s in listed} == acknowledged
    assert len(listed) == 180


async def test_signals_list_unprocessed_and_mark_processed(client: httpx.AsyncClient) -> None:
    """Unprocessed signals are listed oldest first; marking one processed moves it to the processed list."""
    first = (await client.post("/signals", json={"signal_id": "a", "v": 1})).json()
    await client.post("/signals", json={"signal_id": "b", "v": 2})
    assert [s["signal_id"] for s in (await client.get("/signals")).json()] == ["a", "b"]
    assert (await client.post(f"/signals/{first['signal_id']}/processed")).json()["processed"] is True
    assert [s["signal_id"] for s in (await client.get("/signals")).json()] == ["b"]
    assert [s["signal_id"] for s in (await client.get("/signals", params={"processed": True})).json()] == ["a"]
    assert (await client.post("/signals/nope/processed")).status_code == 404
    received = (await client.get("/signals")).json()[0]["received_at"]
    assert received.endswith("+00:00")  # UTC, aware, on both backends


async def test_channels_are_unique_and_never_leak_each_others_messages(client: httpx.AsyncClient) -> None:
    """channel_id is unique (409 on a second one); messages listed for a channel are only that channel's."""
    created = await client.post("/channels", json={"channel_id": "c1", "channel_name": "One"})
    assert created.status_code == 201
    assert len(created.json()["id"]) == 36  # a UUID primary key
    assert (await client.post("/channels", json={"channel_id": "c2", "channel_name": "Two"})).status_code == 201
    duplicate = await client.post("/channels", json={"channel_id": "c1", "channel_name": "Again"})
    assert duplicate.status_code == 409
    for n in range(3):
        await client.post("/channels/c1/messages", json={"body": f"one-{n}"})
    await client.post("/channels/c2/messages", json={"body": "two-0"})
    assert [m["body"] for m in (await client.get("/channels/c1/messages")).json()] == ["one-0", "one-1", "one-2"]
    assert [m["body"] for m in (await client.get("/channels/c2/messages")).json()] == ["two-0"]
    assert (await client.get("/channels/c3/messages")).json() == []
    before = (await client.get("/channels/c1")).json()
    patched = (await client.patch("/channels/c1", json={"is_active": False, "channel_name": "Uno"})).json()
    assert (patched["is_active"], patched["channel_name"]) == (False, "Uno")
    assert patched["updated_at"] > before["updated_at"]
    assert [c["channel_id"] for c in (await client.get("/channels", params={"active": True})).json()] == ["c2"]


async def test_metadata_devices_webhooks_and_preferences(client: httpx.AsyncClient) -> None:
    """Devices upsert and record last-seen; webhooks filter by event; preferences store JSON per user and key."""
    await client.put("/devices/d1", json={"name": "Sensor", "kind": "temp"})
    await client.put("/devices/d1", json={"name": "Sensor 1", "kind": "temp"})
    seen = (await client.post("/devices/d1/seen")).json()
    devices = (await client.get("/devices")).json()
    assert [(d["device_id"], d["name"]) for d in devices] == [("d1", "Sensor 1")]
    assert devices[0]["last_seen_at"] == seen["last_seen_at"]
    hook = (await client.post("/webhooks", json={"url": "https://example.com/h", "event": "push"})).json()
    await client.post("/webhooks", json={"url": "https://example.com/o", "event": "other"})
    assert [w["url"] for w in (await client.get("/webhooks", params={"event": "push"})).json()] == [
        "https://example.com/h"
    ]
    assert (await client.delete(f"/webhooks/{hook['id']}")).status_code == 204
    assert (await client.get("/webhooks", params={"event": "push"})).json() == []
    await client.put("/users/u1/preferences/theme", json={"value": {"mode": "dark"}})
    await client.put("/users/u1/preferences/theme", json={"value": {"mode": "light", "contrast": [1, 2]}})
    await client.put("/users/u2/preferences/theme", json={"value": {"mode": "dark"}})
    assert (await client.get("/users/u1/preferences")).json() == {"theme": {"mode": "light", "contrast": [1, 2]}}


async def test_metadata_database_can_live_at_data_metadata_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configured with DATABASE_URL=sqlite:///./data/metadata.db the service keeps its data in that file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///./data/metadata.db")
    async with _client(Database(service_settings())) as client:
        await client.put("/devices/d1", json={"name": "Sensor", "kind": "temp"})
    assert (tmp_path / "data" / "metadata.db").exists()
    async with (
        Database.from_url("sqlite:///./data/metadata.db") as db,
        db.raw(read_only=True) as raw,
        raw.execute("SELECT device_id FROM devices") as cursor,
    ):
        assert [row["device_id"] for row in await cursor.fetchall()] == ["d1"]


async def test_interviews_run_on_raw_connections_with_foreign_keys(client: httpx.AsyncClient) -> None:
    """Sessions, utterances, graph, scores and concepts work over raw driver connections; FKs are enforced."""
    session = (await client.post("/interviews", json={"candidate": "Ada", "role": "engineer"})).json()
    sid = session["id"]
    for body in ("Hello", "Tell me about graphs"):
        assert (
            await client.post(f"/interviews/{sid}/utterances", json={"speaker": "me", "body": body})
        ).status_code == 201
    orphan = await client.post("/interviews/nope/utterances", json={"speaker": "me", "body": "lost"})
    assert orphan.status_code == 404  # the foreign key refused it
    node_a = (await client.post(f"/interviews/{sid}/graph/nodes", json={"label": "graphs"})).json()
    node_b = (await client.post(f"/interviews/{sid}/graph/nodes", json={"label": "trees"})).json()
    edge = {"source_id": node_a["id"], "target_id": node_b["id"], "relation": "generalises"}
    assert (await client.post(f"/interviews/{sid}/graph/edges", json=edge)).status_code == 201
    bad_edge = {**edge, "target_id": "missing"}
    assert (await client.post(f"/interviews/{sid}/graph/edges", json=bad_edge)).status_code == 404
    graph = (await client.get(f"/interviews/{sid}/graph")).json()
    assert [n["label"] for n in graph["nodes"]] == ["graphs", "trees"]
    assert len(graph["edges"]) == 1
    for score in (4, 7.5):
        await client.post(f"/interviews/{sid}/scores", json={"concept": "graphs", "score": score})
    assert [s["score"] for s in (await client.get(f"/interviews/{sid}/scores")).json()] == [4, 7.5]
    await client.put("/concepts/graphs/elements", json={"element": "nodes", "weight": 1})
    await client.put("/concepts/graphs/elements", json={"element": "nodes", "weight": 2})
    assert (await client.get("/concepts/graphs/elements")).json() == [{"element": "nodes", "weight": 2.0}]
    full = (await client.get(f"/interviews/{sid}")).json()
    assert [u["body"] for u in full["utterances"]] == ["Hello", "Tell me about graphs"]
    assert (await client.delete(f"/interviews/{sid}")).status_code == 204
    assert (await client.get(f"/interviews/{sid}")).status_code == 404
    assert (await client.get(f"/interviews/{sid}/graph")).status_code == 404  # cascaded with its session


async def test_readiness_reports_the_service_database_at_head(client: httpx.AsyncClient) -> None:
    """The service's /health/ready passes with its migrations at head and shows no password."""
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.headers["content-type"].startswith("application/health+json")
    assert ready.json()["checks"]["migrations:head"][0]["status"] == "pass"


def test_service_models_match_their_migrations(tmp_path: Path) -> None:
    """The service's Alembic revisions produce exactly its models (dbf check passes after upgrade)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", "PYTHONPATH": str(ROOT)}
    folder = ["--migrations", str(ROOT / "examples" / "service" / "migrations")]
    for command in ("upgrade", "check"):
        result = subprocess.run(
            [sys.executable, "-m", "dbfoundation", *folder, command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
