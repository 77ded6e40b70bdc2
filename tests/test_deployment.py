"""The deployment recipe: the compose file keeps the SQLite file on a named volume, the image runs the service.

There is no Docker engine here, so the files are checked as text; where the `docker-compose` client is
installed, its `config` command validates the compose file too (it needs no engine).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.setdefault(keyword.upper(), []).append(rest.strip())
    return instructions


def test_compose_mounts_a_named_volume_on_the_database_folder() -> None:
    """compose.yaml mounts a named (not anonymous, not bind) volume on the folder holding the SQLite file."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["service"]
    volume, _, target = service["volumes"][0].partition(":")
    assert volume in compose["volumes"]  # named, so `docker compose down` keeps it
    dockerfile = _dockerfile()
    workdir = dockerfile["WORKDIR"][-1]
    env = " ".join(dockerfile["ENV"])
    assert "DATABASE_URL=sqlite:///./data/app.db" in env
    assert target == f"{workdir}/data"  # ./data relative to WORKDIR is the mounted folder
    assert '"/app/data"' in dockerfile["VOLUME"][0]
    assert "sqlite:///./data/app.db" in service["environment"]["DATABASE_URL"]


def test_image_runs_the_reference_service_with_a_liveness_check() -> None:
    """The image's command is the README's service command and its health check uses /health/live."""
    dockerfile = _dockerfile()
    assert dockerfile["CMD"] == ['["python", "-m", "examples.service"]']
    assert "/health/live" in dockerfile["HEALTHCHECK"][0]
    assert any("HOST=0.0.0.0" in line for line in dockerfile["ENV"])


def test_docker_compose_config_accepts_the_file_where_the_client_is_installed() -> None:
    """`docker-compose config` (no engine needed) parses compose.yaml and resolves the volume."""
    client = shutil.which("docker-compose")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["services"]["service"]["build"] == "."
    if client is None:
        return  # the structural checks above still ran; CI machines may lack the client
    result = subprocess.run(
        [client, "-f", str(ROOT / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "service-data:/app/data" in result.stdout
