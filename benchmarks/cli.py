"""Command line: `python -m benchmarks run [SCENARIO ...] [--quick] [--repeats N] [--backend ...] [--impl ...]`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sqlite3
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.adapters import IMPLS
from benchmarks.report import render, results_markdown, summarize
from benchmarks.runner import RunSpec, run_one
from benchmarks.scenarios import SCENARIOS
from benchmarks.targets import default_workdir, postgres_version

HERE = Path(__file__).resolve().parent


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "n/a"


def machine_facts(pg: str | None) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg,
        "sqlalchemy": _version("sqlalchemy"),
        "aiosqlite": _version("aiosqlite"),
        "asyncpg": _version("asyncpg"),
        "advanced_alchemy": _version("advanced_alchemy"),
        "sqlmodel": _version("sqlmodel"),
        "platform": platform.platform(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios and (re)write RESULTS.md")
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(SCENARIOS)}")
    run.add_argument("--quick", action="store_true", help="smoke mode: 1 repeat, ~2 s per run, results in .runs/")
    run.add_argument("--repeats", type=int, default=None, help="repeats per cell (default 3, quick 1)")
    run.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="sqlite")
    run.add_argument("--impl", nargs="+", metavar="NAME", choices=sorted(IMPLS), help="only these implementations")
    run.add_argument("--variant", nargs="+", metavar="NAME", help="only these variants (e.g. insert)")
    run.add_argument("--cells", nargs="+", metavar="PxT", help="override the scenario's cells, e.g. 1x64 4x64")
    run.add_argument("--duration", type=float, default=None, help="measured seconds per run")
    run.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run")
    run.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/, quick: .runs/quick)")
    run.add_argument("--workdir", type=Path, default=None, help="where SQLite files go (local disk)")
    run.add_argument("--profile", metavar="IMPL", choices=sorted(IMPLS), help="pyinstrument this impl's workers")
    render_cmd = sub.add_parser("render", help="re-render RESULTS.md and charts from benchmarks/results/*.json")
    render_cmd.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if RESULTS.md differs from what render writes"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "render":
        if args.check:
            return check_rendered(HERE)
        print(render(HERE))
        return 0
    return run(args, argv if argv is not None else sys.argv[1:])


def check_rendered(out_dir: Path) -> int:
    """RESULTS.md is generated; a notes/*.md or results/*.json edit that was not rendered leaves it stale."""
    if (out_dir / "RESULTS.md").read_text() == results_markdown(out_dir / "results"):
        print(f"{out_dir / 'RESULTS.md'} is up to date")
        return 0
    print(
        f"{out_dir / 'RESULTS.md'} differs from benchmarks/results/*.json and benchmarks/notes/*.md: "
        "run `python -m benchmarks render` and commit the result",
        file=sys.stderr,
    )
    return 1


def run(args: argparse.Namespace, argv: list[str]) -> int:
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    out_dir: Path = args.out or (HERE / ".runs" / "quick" if quick else HERE)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    workdir: Path = args.workdir or default_workdir()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    pg = postgres_version() if "postgres" in backends else None
    if "postgres" in backends and pg is None:
        print("PostgreSQL is not reachable (DBF_BENCH_POSTGRES_URL); skipping the postgres backend", file=sys.stderr)
        backends.remove("postgres")
    command = "python -m benchmarks " + shlex.join(argv)
    facts = machine_facts(pg)
    failed_checks = 0
    failed_runs = 0
    for name in names:
        scenario = SCENARIOS[name]
        for backend in backends:
            if backend not in scenario.impls:
                continue
            impls = [i for i in (args.impl or scenario.impls[backend]) if backend in IMPLS[i].backends]
            if not impls:
                continue
            cells = scenario.cells
            if args.cells:
                cells = tuple((int(c.split("x")[0]), int(c.split("x")[1])) for c in args.cells)
            warmup = args.warmup if args.warmup is not None else (0.3 if quick else 1.0)
            duration = args.duration or (1.5 if quick else scenario.full_duration)
            seed_rows = min(scenario.seed_rows, 2000) if quick else scenario.seed_rows
            doc: dict[str, Any] = {
                "scenario": name,
                "backend": backend,
                "command": command,
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "mode": "quick" if quick else "full",
                "warmup": warmup,
                "duration": duration,
                "repeats": repeats,
                "impls": impls,
                "machine": facts,
                "runs": [],
            }
            print(
                f"== {name} on {backend}: {len(scenario.variants)} variant(s) x {len(cells)} cell(s) x "
                f"{repeats} repeat(s) x {len(impls)} impl(s), {warmup}+{duration} s each",
                flush=True,
            )
            variants = [v for v in scenario.variants if not args.variant or v in args.variant]
            for variant in variants:
                for p, t in cells:
                    for rep in range(repeats):
                        for impl in impls:  # interleaved: A B C, A B C, ...
                            spec = RunSpec(
                                scenario,
                                backend,
                                impl,
                                variant,
                                p,
                                t,
                                rep,
                                warmup,
                                duration,
                                seed_rows,
                                workdir,
                                profile_dir=HERE / "profiles" if args.profile == impl else None,
                            )
                            t0 = time.monotonic()
                            rec = run_one(spec)
                            rec["wall_s"] = round(time.monotonic() - t0, 2)
                            doc["runs"].append(rec)
                            failed_runs += "fatal" in rec
                            failed_checks += bool(rec.get("data_check") and not rec["data_check"]["ok"])
                            print(_line(rec), flush=True)
            path = out_dir / "results" / f"{name}.{backend}.json"
            path.write_text(json.dumps(doc, indent=1))
            for row in summarize(doc["runs"]):
                if row["failed_runs"]:
                    print(
                        f"   !! {row['impl']} {row['variant']} {row['P']}x{row['T']}: "
                        f"{row['failed_runs']} failed run(s)",
                        flush=True,
                    )
    print(f"wrote {render(out_dir)}")
    print(f"summary: failed_runs={failed_runs} failed_data_checks={failed_checks}")
    return 1 if failed_runs else 0


def _line(rec: dict[str, Any]) -> str:
    head = f"  {rec['variant']:<17} {rec['P']}x{rec['T']:<3} r{rec['repeat']} {rec['impl']:<20}"
    if "fatal" in rec:
        return f"{head} FAILED: {rec['fatal'][0].strip().splitlines()[-1]}"
    dc = rec["data_check"]
    errs = ", ".join(f"{k}={v}" for k, v in rec["errors"].items())
    return (
        f"{head} {rec['throughput']:9.0f} req/s  p50 {rec['p50_ms'] or 0:7.2f}  p99 {rec['p99_ms'] or 0:8.2f}  "
        f"max {rec['max_ms'] or 0:8.1f} ms  cpu {rec.get('cpu_ms_per_req') or 0:5.2f} ms/req  "
        f"locked={rec['locked']} {errs}  dup={rec['dup']}  "
        f"acked={dc['acknowledged']} missing={dc['missing']} unacked_present={dc['unacknowledged_present']}"
        f"  [{rec['wall_s']} s]"
    )
