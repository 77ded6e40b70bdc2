"""Run the reference service: python -m examples.service (HOST and PORT from the environment)."""

from __future__ import annotations

import os

import uvicorn

from dbfoundation import Database
from examples.service.app import create_app, service_settings


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    settings = service_settings()
    print(f"dbfoundation reference service: http://{host}:{port} (API docs at /docs, readiness at /health/ready)")
    print(f"database: {settings.masked_url}", flush=True)
    uvicorn.run(create_app(Database(settings)), host=host, port=port)


if __name__ == "__main__":
    main()
