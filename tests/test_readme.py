"""The README stays true: its quick start is the file we run, and CI runs its test command verbatim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

QUICKSTART_CHECK = """
import asyncio, httpx
from examples.quickstart import app

async def main():
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://app"
    ) as client:
        assert (await client.post("/notes", params={"title": "hello"})).status_code == 201
        assert (await client.post("/notes", params={"title": "hello"})).status_code == 409
        assert (await client.get("/notes")).json() == ["hello"]
        assert (await client.get("/health/ready")).status_code == 200
    print("quick start ok")

asyncio.run(main())
"""


def test_readme_quick_start_is_examples_quickstart() -> None:
    """The README's quick start code block is exactly the body of examples/quickstart.py."""
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S)
    assert block is not None
    assert (ROOT / "examples" / "quickstart.py").read_text().endswith(block.group(1))


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command line exactly as printed."""
    command = next(line for line in README.splitlines() if line.endswith("-m pytest"))
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_quick_start_serves_notes_in_a_fresh_folder(tmp_path: Path) -> None:
    """The quick start app creates ./data/app.db, stores a note, answers 409 on a duplicate and is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", QUICKSTART_CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "quick start ok" in result.stdout
    assert (tmp_path / "data" / "app.db").exists()


def test_readme_service_command_starts_the_service(tmp_path: Path) -> None:
    """The README's first command's last step, python -m examples.service, prints its URL and serves."""
    command = next(line for line in README.splitlines() if line.endswith("-m examples.service"))
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env |= {"PYTHONPATH": str(ROOT), "PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.service"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "dbfoundation reference service: http://127.0.0.1:" in first
        lines = [first]
        for line in process.stdout:
            lines.append(line)
            if "Application startup complete" in line:
                break
        assert any("Application startup complete" in line for line in lines), "".join(lines)
        assert (tmp_path / "data" / "app.db").exists()
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
