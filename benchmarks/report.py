"""Per-scenario JSON -> RESULTS.md + one PNG per scenario.

Each `python -m benchmarks run` writes `results/<scenario>.<backend>.json` (replacing only that file), then
RESULTS.md is rendered again from every JSON present, so runs of other scenarios are kept.  A hand-written
reading for a scenario can be put in `notes/<scenario>.md`; it is included under that scenario's tables.
Markdown written by the standalone scripts (`results/*.md`, e.g. fixture_overhead.md) is appended as sections.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.adapters import IMPLS
from benchmarks.scenarios import CEILING, SCENARIOS

ORDER = list(SCENARIOS)
RAW_SUFFIXES = ("-raw", "-raw-batched")
COLORS = ["#1f77b4", "#aec7e8", "#ff7f0e", "#9467bd", "#8c564b", "#2ca02c", "#98df8a", "#d62728", "#17becf", "#e377c2"]


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by (variant, P, T, impl) and take medians over repeats."""
    groups: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["P"], r["T"], r["impl"]), []).append(r)
    rows = []
    for (variant, p, t, impl), rs in groups.items():
        good = [r for r in rs if "fatal" not in r]
        err_kinds = sorted({k for r in good for k in r["errors"]})
        row: dict[str, Any] = {
            "variant": variant,
            "P": p,
            "T": t,
            "impl": impl,
            "backend": rs[0]["backend"],
            "repeats": len(rs),
            "failed_runs": len(rs) - len(good),
            "fatal": [f for r in rs for f in r.get("fatal", [])],
            "throughput": _median([r["throughput"] for r in good]),
            "p50_ms": _median([r["p50_ms"] for r in good]),
            "p99_ms": _median([r["p99_ms"] for r in good]),
            "max_ms": _median([r["max_ms"] for r in good]),
            "cpu_ms": _median([r.get("cpu_ms_per_req") for r in good]),  # absent from runs before 2026-11-24
            "dup": _median([r["dup"] for r in good]),
            "locked": _median([r["locked"] for r in good]),
            "errors": {k: _median([r["errors"].get(k, 0) for r in good]) for k in err_kinds},
            "missing": sum(r["data_check"]["missing"] for r in good),
            "acknowledged": sum(r["data_check"]["acknowledged"] for r in good),
            "unacked_present": sum(r["data_check"]["unacknowledged_present"] for r in good),
            "journal_mode": good[0].get("journal_mode") if good else None,
        }
        rows.append(row)
    ceilings = {(r["variant"], r["P"], r["T"]): r["throughput"] for r in rows if r["impl"] == CEILING[r["backend"]]}
    for r in rows:
        c = ceilings.get((r["variant"], r["P"], r["T"]))
        r["ratio"] = (r["throughput"] / c) if (c and r["throughput"] is not None) else None
    return rows


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _count(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def load_all(results_dir: Path) -> list[dict[str, Any]]:
    docs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    docs.sort(key=lambda d: (ORDER.index(d["scenario"]) if d["scenario"] in ORDER else 99, d["backend"] != "sqlite"))
    return docs


def chart(doc_group: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str, list[dict[str, Any]]]] = []
    for doc in doc_group:
        rows = summarize(doc["runs"])
        for variant in dict.fromkeys(r["variant"] for r in rows):
            panels.append((doc["backend"], variant, [r for r in rows if r["variant"] == variant]))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for (backend, variant, rows), (ax_t, ax_p) in zip(panels, axes, strict=True):
        cells = sorted({(r["P"], r["T"]) for r in rows})
        labels = [f"{p}x{t}" for p, t in cells]
        for impl in dict.fromkeys(r["impl"] for r in rows):
            by_cell = {(r["P"], r["T"]): r for r in rows if r["impl"] == impl}
            xs = [i for i, c in enumerate(cells) if c in by_cell and by_cell[c]["throughput"] is not None]
            style = "--" if impl.startswith(("sqlite3-raw", "asyncpg-raw")) else "-"
            color = COLORS[list(IMPLS).index(impl) % len(COLORS)] if impl in IMPLS else None
            for ax, key in ((ax_t, "throughput"), (ax_p, "p99_ms")):
                ax.plot(xs, [by_cell[cells[i]][key] for i in xs], style, marker="o", label=impl, color=color)
        title = f"{doc_group[0]['scenario']} · {backend}" + (f" · {variant}" if variant != "default" else "")
        for ax, ylabel in ((ax_t, "acknowledged requests/s"), (ax_p, "p99 latency (ms)")):
            ax.set_xticks(range(len(cells)), labels)
            ax.set_xlabel("processes x tasks per process")
            ax.set_ylabel(ylabel)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(title)
        ax_t.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(out_dir: Path) -> Path:
    """Write `out_dir`/RESULTS.md and a chart per scenario from `out_dir`/results/*.json."""
    results_dir = out_dir / "results"
    for name, group in _by_scenario(load_all(results_dir)).items():
        chart(group, out_dir / "charts" / f"{name}.png")
    out = out_dir / "RESULTS.md"
    out.write_text(results_markdown(results_dir))
    return out


def _by_scenario(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_scenario.setdefault(d["scenario"], []).append(d)
    return by_scenario


def results_markdown(results_dir: Path) -> str:
    """The text of RESULTS.md: the tables from `results_dir`/*.json, with each scenario's notes/<name>.md."""
    notes_dir = Path(__file__).parent / "notes"
    lines = [
        "# dbfoundation benchmark results",
        "",
        "Generated by `python -m benchmarks` from `benchmarks/results/*.json` (one file per scenario and "
        "backend; a run replaces only its own). How to run and what each implementation is: "
        "[README.md](README.md). Throughput is acknowledged requests per second (a handled duplicate is an "
        "acknowledged answer); latencies are per request, measured in the worker; medians over repeats. "
        "`x ceiling` divides by the ceiling implementation (`sqlite3-raw` / `asyncpg-raw`) measured in the "
        "same cell of the same run. `CPU ms/req` = CPU time of the worker processes (every thread) in the "
        "measured window per request completed in it (client side: not the PostgreSQL server). "
        "`acked` = writes acknowledged to the client and `missing` = acknowledged "
        "writes not found afterwards (must be 0; in `counter`: lost updates), both summed over all repeats; "
        "`unacked present` = rows present whose request reported an error. `locked` and other errors are "
        "medians per run of the errors that completed inside the measured window.",
        "",
    ]
    for name, group in _by_scenario(load_all(results_dir)).items():
        scenario = SCENARIOS.get(name)
        lines += [f"## {name}", ""]
        if scenario:
            lines += [scenario.title + ".", ""]
        lines += [f"![{name}](charts/{name}.png)", ""]
        for doc in group:
            m = doc["machine"]
            lines += [
                f"### {name} on {doc['backend']}",
                "",
                f"- command: `{doc['command']}`",
                f"- date: {doc['date']}; mode: {doc['mode']}; warm-up {doc['warmup']} s, measured "
                f"{doc['duration']} s per run, {doc['repeats']} repeat(s), implementations interleaved",
                f"- machine: {m['cpus']} CPUs (os.cpu_count), Python {m['python']}, SQLite {m['sqlite']}, "
                f"PostgreSQL {m.get('postgres') or 'n/a'}, SQLAlchemy {m['sqlalchemy']}, aiosqlite "
                f"{m['aiosqlite']}, asyncpg {m['asyncpg']}, {m['platform']}",
                *_load_line(doc["runs"], m["cpus"]),
                "",
            ]
            rows = summarize(doc["runs"])
            for variant in dict.fromkeys(r["variant"] for r in rows):
                vrows = sorted(
                    (r for r in rows if r["variant"] == variant),
                    key=lambda r: (r["P"], r["T"], doc["impls"].index(r["impl"]) if r["impl"] in doc["impls"] else 99),
                )
                if variant != "default":
                    lines += [f"**variant: {variant}**", ""]
                lines += [
                    "| PxT | implementation | req/s | x ceiling | p50 ms | p99 ms | max ms | CPU ms/req | locked "
                    "| other errors | dups handled | acked (all runs) | missing (all runs) | unacked present "
                    "| journal |",
                    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
                    "| --- |",
                ]
                for r in vrows:
                    if r["failed_runs"] == r["repeats"]:
                        lines.append(f"| {r['P']}x{r['T']} | {r['impl']} | failed | | | | | | | see below | | | | | |")
                        continue
                    errs = ", ".join(f"{k}: {_count(v)}" for k, v in r["errors"].items() if v) or "0"
                    if r["failed_runs"]:
                        errs += f"; {r['failed_runs']} run(s) failed"
                    ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
                    lines.append(
                        f"| {r['P']}x{r['T']} | {r['impl']} | {_fmt(r['throughput'], 0)} | {ratio} | "
                        f"{_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | {_fmt(r['max_ms'], 1)} | "
                        f"{_fmt(r['cpu_ms'], 2)} | {_count(r['locked'])} | {errs} | {_count(r['dup'])} | "
                        f"{_count(r['acknowledged'])} | "
                        f"{r['missing']} | {r['unacked_present']} | {r['journal_mode'] or ''} |"
                    )
                lines.append("")
            lines += _reading(rows, doc["backend"], lost_updates=name == "counter")
            failures = [(r, f) for r in rows for f in r["fatal"]]
            if failures:
                lines += ["Failed runs (first lines of the worker traceback):", ""]
                for r, f in failures[:6]:
                    tail = "\n".join(f.strip().splitlines()[-6:])
                    lines += [f"- {r['impl']} {r['variant']} {r['P']}x{r['T']}:", "", "```", tail, "```", ""]
        note = notes_dir / f"{name}.md"
        if note.exists():
            lines += ["**Reading.**", "", note.read_text().strip(), ""]
    lines += _included_markdown(results_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_section(path: Path, lines: list[str]) -> None:
    """Write a standalone script's table (`results/<name>.md`, included in RESULTS.md by render)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {path}")


def _included_markdown(results_dir: Path) -> list[str]:
    """Each `results/*.md` as a section of RESULTS.md, its headings one level down (outside code fences)."""
    lines: list[str] = []
    for path in sorted(results_dir.glob("*.md")):
        fenced = False
        for line in path.read_text().strip().splitlines():
            if line.startswith("```"):
                fenced = not fenced
            lines.append("#" + line if line.startswith("#") and not fenced else line)
        lines.append("")
    return lines


def _reading(rows: list[dict[str, Any]], backend: str, *, lost_updates: bool = False) -> list[str]:
    """Mechanical facts about the table (the hand-written reading goes in notes/<scenario>.md)."""
    out = []
    ceiling = CEILING[backend]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vrows = [r for r in rows if r["variant"] == variant and r["throughput"] is not None]
        others = [
            r for r in vrows if not r["impl"].endswith(RAW_SUFFIXES) and r["ratio"] is not None and not r["missing"]
        ]
        if others:
            best = max(others, key=lambda r: r["ratio"])
            out.append(
                f"- {variant}: best library result with the data check holding: {best['impl']} at "
                f"{best['P']}x{best['T']} = {best['ratio']:.0%} of {ceiling}."
            )
        locked = sorted({r["impl"] for r in vrows if r["locked"]})
        if locked:
            out.append(f"- {variant}: `database is locked` surfaced in: {', '.join(locked)}.")
        bad = sorted({f"{r['impl']} {r['P']}x{r['T']} ({r['missing']})" for r in vrows if r["missing"]})
        what = "acknowledged but missing"
        if lost_updates:
            what = "lost updates (acknowledged increments minus final counter)"
        out.append(
            f"- {variant}: data check "
            + (f"FAILED, {what}: {', '.join(bad)}." if bad else "held in every run (0 missing).")
        )
    return [*out, ""] if out else []


def _load_line(runs: list[dict[str, Any]], cpus: int) -> list[str]:
    """Other work on the machine shows as a 1-minute load average above what the run itself adds."""
    loads = [r[k] for r in runs for k in ("loadavg_1m_before", "loadavg_1m_after") if k in r]
    if not loads:
        return []
    return [
        f"- 1-minute load average around the runs: median {statistics.median(loads):.1f}, max {max(loads):.1f} "
        f"on {cpus} CPUs (the benchmark's own P workers count in it)"
    ]
