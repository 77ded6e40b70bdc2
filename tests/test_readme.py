"""The README stays true: its quick start is the file we run, and CI runs its test command verbatim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_quick_start_is_examples_quickstart() -> None:
    """The README's quick start code block is exactly the body of examples/quickstart.py."""
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S)
    assert block is not None
    assert (ROOT / "examples" / "quickstart.py").read_text().endswith(block.group(1))


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command line exactly as printed."""
    command = next(line for line in README.splitlines() if line.endswith("-m pytest"))
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_quick_start_runs_on_a_fresh_folder(tmp_path: Path) -> None:
    """The quick start creates ./data/app.db in the working directory and prints what it promises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "duplicate: unique constraint" in result.stdout
    assert "['hello']" in result.stdout
    assert (tmp_path / "data" / "app.db").exists()
