"""Scenarios, workloads and the operations a worker issues.

A *workload* decides what one request does (``Op``); a *scenario* names a workload, its variants, the
(P processes x T tasks) cells to measure and the implementations to compare by default.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

# What a request does.  Every adapter implements all five kinds.
INSERT = "insert"  # insert one signal row; a unique violation is a handled duplicate
CHECK_INSERT = "check-then-insert"  # SELECT by signal_id, INSERT only when absent
READ = "read"  # point read of a seeded signal row by primary key
INCR = "incr"  # read-modify-write increment of counters.id = 1
EVENT = "event"  # insert one small row into events (write-tx scenario)

COUNTER_ID = 1
RETRY_SHARE = 0.10  # ingest: share of requests that retry an earlier signal_id
READ_SHARE = 0.90  # read-mostly: share of point reads


@dataclass(slots=True)
class Op:
    kind: str
    seq: int = 0  # per-worker sequence number of the key (writes)
    signal_id: str = ""
    payload: str = ""
    row_id: int = 0  # READ: primary key to fetch
    k: int = 0  # EVENT: unique integer key


def signal_id_for(tag: str, worker: int, seq: int) -> str:
    """The signal_id a worker uses for its seq-th new signal (recomputed by the parent's data check)."""
    return hashlib.blake2b(f"{tag}:{worker}:{seq}".encode(), digest_size=16).hexdigest()


def event_key(worker: int, seq: int) -> int:
    return (worker << 32) | seq


_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def make_payload(rng: random.Random, signal_id: str, seq: int) -> str:
    """A webhook body of about 450 bytes of JSON."""
    body = {
        "signal_id": signal_id,
        "source": "bench-exchange",
        "symbol": rng.choice(("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")),
        "side": rng.choice(("buy", "sell")),
        "price": round(rng.uniform(10, 70000), 4),
        "quantity": round(rng.uniform(0.001, 5), 6),
        "sequence": seq,
        "strategy": "-".join(rng.choice(_WORDS) for _ in range(3)),
        "tags": [rng.choice(_WORDS) for _ in range(4)],
        "meta": {"region": "eu-west-1", "version": "2.4.1", "attempt": 1, "latency_ms": rng.randint(1, 900)},
        "note": "x" * 96,
    }
    return json.dumps(body, separators=(",", ":"))


EVENT_VALUE = "v" * 100


@dataclass
class OpSource:
    """Per-worker generator of requests for one workload/variant (shared by the worker's tasks)."""

    workload: str
    variant: str
    tag: str
    worker: int
    seed_rows: int
    rng: random.Random = field(default_factory=random.Random)
    next_seq: int = 0
    history: list[int] = field(default_factory=list)

    def _new_signal(self, kind: str) -> Op:
        seq = self.next_seq
        self.next_seq += 1
        self.history.append(seq)
        if len(self.history) > 4096:
            del self.history[:2048]
        sid = signal_id_for(self.tag, self.worker, seq)
        return Op(kind, seq=seq, signal_id=sid, payload=make_payload(self.rng, sid, seq))

    def _retry_signal(self, kind: str) -> Op:
        seq = self.rng.choice(self.history)
        sid = signal_id_for(self.tag, self.worker, seq)
        return Op(kind, seq=seq, signal_id=sid, payload=make_payload(self.rng, sid, seq))

    def next(self) -> Op:
        if self.workload == "ingest":
            kind = CHECK_INSERT if self.variant == "check-then-insert" else INSERT
            if self.history and self.rng.random() < RETRY_SHARE:
                return self._retry_signal(kind)
            return self._new_signal(kind)
        if self.workload == "read-mostly":
            if self.rng.random() < READ_SHARE:
                return Op(READ, row_id=self.rng.randint(1, self.seed_rows))
            return self._new_signal(INSERT)
        if self.workload == "counter":
            return Op(INCR)
        if self.workload == "write-tx":
            seq = self.next_seq
            self.next_seq += 1
            return Op(EVENT, seq=seq, k=event_key(self.worker, seq))
        raise ValueError(f"unknown workload {self.workload!r}")


@dataclass(frozen=True)
class Scenario:
    name: str
    workload: str
    title: str
    variants: tuple[str, ...]
    cells: tuple[tuple[int, int], ...]  # (processes, tasks per process)
    impls: dict[str, tuple[str, ...]]  # backend -> default implementations (first one is the ceiling)
    seed_rows: int = 0
    full_duration: float = 10.0


SQLITE_ALL = (
    "sqlite3-raw",
    "sqlite3-raw-batched",
    "usual",
    "advanced-alchemy",
    "sqlmodel",
    "dbf-write",
    "dbf-submit",
)
POSTGRES_ALL = ("asyncpg-raw", "sqlalchemy-asyncpg", "dbf-write", "dbf-submit")

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "ingest",
            "ingest",
            "Webhook ingest: one ~450-byte JSON row per request, 10 % retries of an earlier signal_id",
            ("insert", "check-then-insert"),
            ((1, 64), (4, 64)),
            {"sqlite": SQLITE_ALL, "postgres": POSTGRES_ALL},
        ),
        Scenario(
            "read-mostly",
            "read-mostly",
            "Read-mostly: 90 % point reads by primary key, 10 % signal inserts",
            ("default",),
            ((1, 64), (4, 64)),
            {"sqlite": SQLITE_ALL, "postgres": POSTGRES_ALL},
            seed_rows=10_000,
        ),
        Scenario(
            "counter",
            "counter",
            "Counter: read-modify-write increments of one row (lost-update check)",
            ("default",),
            ((1, 64), (4, 64)),
            {"sqlite": SQLITE_ALL, "postgres": POSTGRES_ALL},
        ),
        Scenario(
            "grid",
            "ingest",
            "Ingest (insert variant) over P in {1, 4} x T in {1, 16, 64}",
            ("insert",),
            ((1, 1), (1, 16), (1, 64), (4, 1), (4, 16), (4, 64)),
            {"sqlite": SQLITE_ALL, "postgres": POSTGRES_ALL},
            full_duration=4.0,
        ),
        Scenario(
            "write-tx",
            "write-tx",
            "Write transactions/s: one small row (int + 100 bytes) per transaction",
            ("default",),
            ((1, 64), (4, 64)),
            {"sqlite": ("sqlite3-raw", "dbf-write", "dbf-write-core", "dbf-submit")},
        ),
    )
}

CEILING = {"sqlite": "sqlite3-raw", "postgres": "asyncpg-raw"}
