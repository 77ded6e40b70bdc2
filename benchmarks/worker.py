"""One worker process: T asyncio tasks driving one adapter, released by a barrier shared with its peers.

Timeline after the barrier: ``warmup`` seconds (requests run, not measured), then ``duration`` seconds
measured: a request counts (throughput, latency, errors) when it *completes* inside the measured window.
Every acknowledged write counts for the data check, whenever it happened.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.adapters import DUP, IMPLS
from benchmarks.scenarios import CHECK_INSERT, EVENT, INCR, INSERT, OpSource

LOCKED = "locked"


def classify(exc: BaseException) -> str:
    """`database is locked` (anywhere in the cause chain) gets its own column; otherwise the type name."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if "database is locked" in str(e):
            return LOCKED
        e = e.__cause__ or e.__context__
    return type(exc).__name__


def _save_profile(profiler: Any, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".html").write_text(profiler.output_html())
    stem.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))


def worker_main(cfg: dict[str, Any], barrier: Any, queue: Any) -> None:
    try:
        result = asyncio.run(_run(cfg, barrier))
    except BaseException:
        barrier.abort()
        queue.put({"worker": cfg["worker"], "fatal": traceback.format_exc()})
        return
    queue.put(result)


async def _run(cfg: dict[str, Any], barrier: Any) -> dict[str, Any]:
    impl = IMPLS[cfg["impl"]]
    adapter = impl.load()(cfg["url"], cfg["workload"], cfg["variant"], cfg["tasks"])
    await asyncio.wait_for(adapter.setup(), 120)
    source = OpSource(
        cfg["workload"],
        cfg["variant"],
        cfg["tag"],
        cfg["worker"],
        cfg["seed_rows"],
        rng=random.Random(f"{cfg['tag']}:{cfg['worker']}"),
    )
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, barrier.wait, 180)

    t0 = time.perf_counter()
    win_start = t0 + cfg["warmup"]
    win_end = win_start + cfg["duration"]
    latencies = array("d")
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    errors_total: Counter[str] = Counter()
    examples: dict[str, str] = {}
    acked_seqs = array("q")
    acked_incr = 0

    async def task() -> None:
        nonlocal acked_incr
        while True:
            start = time.perf_counter()
            if start >= win_end:
                return
            op = source.next()
            try:
                outcome = await adapter.request(op)
            except Exception as exc:
                kind = classify(exc)
                errors_total[kind] += 1
                if kind not in examples:
                    examples[kind] = "".join(traceback.format_exception(exc))[-3000:]
                if win_start <= time.perf_counter() <= win_end:
                    errors[kind] += 1
                await asyncio.sleep(0)
                continue
            done = time.perf_counter()
            if outcome != DUP:
                if op.kind in (INSERT, CHECK_INSERT, EVENT):
                    acked_seqs.append(op.seq)
                elif op.kind == INCR:
                    acked_incr += 1
            if win_start <= done <= win_end:
                outcomes[outcome] += 1
                latencies.append(done - start)

    profiler = None
    profile_task = None
    if cfg.get("profile_dir"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")

        async def start_profiler() -> None:
            await asyncio.sleep(max(0.0, win_start - time.perf_counter()))
            profiler.start()

        profile_task = asyncio.create_task(start_profiler())

    async def cpu_in_window() -> float:
        """CPU seconds this process spent (every thread, user + system) inside the measured window."""
        await asyncio.sleep(max(0.0, win_start - time.perf_counter()))
        started = time.process_time()
        await asyncio.sleep(max(0.0, win_end - time.perf_counter()))
        return time.process_time() - started

    cpu_task = asyncio.create_task(cpu_in_window())
    tasks = [asyncio.create_task(task()) for _ in range(cfg["tasks"])]
    _, stuck = await asyncio.wait(tasks, timeout=cfg["warmup"] + cfg["duration"] + 60)
    for t in stuck:
        t.cancel()
    if stuck:
        errors_total["hung-request"] += len(stuck)
        examples["hung-request"] = f"{len(stuck)} tasks still inside adapter.request() 60 s after the window"
    cpu_s = await cpu_task
    if profiler is not None and profile_task is not None:
        await profile_task
        profiler.stop()
        _save_profile(profiler, Path(cfg["profile_dir"]) / f"{cfg['profile_name']}-w{cfg['worker']}")
    try:
        await asyncio.wait_for(adapter.teardown(), 60)
    except Exception as exc:
        kind = f"teardown:{classify(exc)}"
        errors_total[kind] += 1
        examples[kind] = "".join(traceback.format_exception(exc))[-3000:]
    return {
        "worker": cfg["worker"],
        "latencies": latencies.tobytes(),
        "outcomes": dict(outcomes),
        "errors": dict(errors),
        "errors_total": dict(errors_total),
        "examples": examples,
        "acked_seqs": acked_seqs.tolist(),
        "acked_incr": acked_incr,
        "window": cfg["duration"],
        "cpu_s": cpu_s,
    }
