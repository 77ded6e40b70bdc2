"""Parent side of one run: fresh database, P spawned workers behind a barrier, merge, data check."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scenarios import Scenario
from benchmarks.targets import SQLiteTarget, make_target
from benchmarks.worker import LOCKED, worker_main


@dataclass
class RunSpec:
    scenario: Scenario
    backend: str
    impl: str
    variant: str
    processes: int
    tasks: int
    repeat: int
    warmup: float
    duration: float
    seed_rows: int
    workdir: Path
    profile_dir: Path | None = None


def run_one(spec: RunSpec) -> dict[str, Any]:
    target = make_target(spec.backend, spec.workdir)
    record: dict[str, Any] = {
        "impl": spec.impl,
        "backend": spec.backend,
        "variant": spec.variant,
        "P": spec.processes,
        "T": spec.tasks,
        "repeat": spec.repeat,
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
    }
    try:
        target.setup(spec.seed_rows)
        tag = uuid.uuid4().hex[:8]
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(spec.processes + 1)
        results_q = ctx.Queue()
        profile_name = f"{spec.scenario.name}-{spec.variant}-{spec.backend}-{spec.impl}-P{spec.processes}xT{spec.tasks}"
        procs = []
        for w in range(spec.processes):
            cfg = {
                "impl": spec.impl,
                "url": target.url,
                "workload": spec.scenario.workload,
                "variant": spec.variant,
                "tasks": spec.tasks,
                "worker": w,
                "tag": tag,
                "seed_rows": spec.seed_rows,
                "warmup": spec.warmup,
                "duration": spec.duration,
                "profile_dir": str(spec.profile_dir) if spec.profile_dir else None,
                "profile_name": profile_name,
            }
            p = ctx.Process(target=worker_main, args=(cfg, barrier, results_q), daemon=True)
            p.start()
            procs.append(p)
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed in setup: see the queue
            barrier.wait(timeout=240)
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + spec.warmup + spec.duration + 200
        while len(results) < spec.processes and time.monotonic() < deadline:
            try:
                results.append(results_q.get(timeout=1.0))
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs) and results_q.empty():
                    break
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        fatal = [r["fatal"] for r in results if "fatal" in r]
        if fatal or len(results) < spec.processes:
            missing = spec.processes - len(results)
            record["fatal"] = fatal + ([f"{missing} worker(s) produced no result (crashed or hung)"] if missing else [])
            return record
        record["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        record.update(_merge(results, spec.duration))
        check = target.data_check(spec.scenario.workload, tag, results, spec.seed_rows)
        record["data_check"] = {**asdict(check), "ok": check.ok}
        if isinstance(target, SQLiteTarget):
            record["journal_mode"] = target.journal_mode()
        return record
    finally:
        try:
            target.destroy()
        except Exception as exc:  # a failed cleanup must not hide the measurement
            record.setdefault("warnings", []).append(f"cleanup failed: {exc!r}")


def _merge(results: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    lat = np.concatenate([np.frombuffer(r["latencies"], dtype=np.float64) for r in results]) * 1000.0
    outcomes: dict[str, int] = {}
    errors: dict[str, int] = {}
    errors_total: dict[str, int] = {}
    examples: dict[str, str] = {}
    for r in results:
        for src, dst in ((r["outcomes"], outcomes), (r["errors"], errors), (r["errors_total"], errors_total)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for k, v in r["examples"].items():
            examples.setdefault(k, v)
    completed = int(lat.size)
    cpu_s = sum(r["cpu_s"] for r in results)
    return {
        "throughput": completed / duration,
        # Client side only (the worker processes, every thread): the PostgreSQL server's share is not in it.
        "cpu_ms_per_req": 1000.0 * cpu_s / completed if completed else None,
        "completed": completed,
        "ok": outcomes.get("ok", 0),
        "dup": outcomes.get("dup", 0),
        "p50_ms": float(np.percentile(lat, 50)) if completed else None,
        "p99_ms": float(np.percentile(lat, 99)) if completed else None,
        "max_ms": float(lat.max()) if completed else None,
        "locked": errors.get(LOCKED, 0),
        "errors": {k: v for k, v in errors.items() if k != LOCKED},
        "locked_total": errors_total.get(LOCKED, 0),
        "errors_total": {k: v for k, v in errors_total.items() if k != LOCKED},
        "error_examples": examples,
    }
