"""The readiness report: its health+json shape (draft-inadarei-api-health-check-06) and how entries combine.

`status` is pass, warn or fail (HTTP 200, 200, 503); `checks` is keyed `component:measurement`, each a list
of entries; the report's status is the worst of its entries'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["HEALTH_MEDIA_TYPE", "HealthReport", "HealthStatus", "check_entry", "report_of", "timestamp"]

HealthStatus = Literal["pass", "warn", "fail"]
HEALTH_MEDIA_TYPE = "application/health+json"

_RANK: dict[HealthStatus, int] = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class HealthReport:
    """The readiness of one Database: `status`, and per-component `checks` in the health+json shape.

    `to_json()` is the `application/health+json` body; `http_status` is 200 for pass and warn, 503 for fail.
    `output` says why, when the status is not pass.
    """

    status: HealthStatus
    checks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    output: str | None = None

    @property
    def http_status(self) -> int:
        return 503 if self.status == "fail" else 200

    def to_dict(self) -> dict[str, Any]:
        """The body as plain JSON-ready values."""
        body: dict[str, Any] = {"status": self.status}
        if self.output is not None:
            body["output"] = self.output
        body["checks"] = self.checks
        return body

    def to_json(self) -> str:
        """The `application/health+json` body."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


def check_entry(
    component: str,
    component_type: str,
    status: HealthStatus,
    observed_value: Any,
    observed_unit: str | None,
    time: str,
    output: str | None,
) -> dict[str, Any]:
    """One entry of `checks`, its keys in the draft's order."""
    entry: dict[str, Any] = {
        "componentId": component,
        "componentType": component_type,
        "observedValue": observed_value,
    }
    if observed_unit is not None:
        entry["observedUnit"] = observed_unit
    entry["status"] = status
    entry["time"] = time
    if output is not None:
        entry["output"] = output
    return entry


def report_of(checks: dict[str, list[dict[str, Any]]]) -> HealthReport:
    """The report of these checks: the worst status of any entry, and every entry's output when not pass."""
    entries = [entry for values in checks.values() for entry in values]
    status: HealthStatus = max((entry["status"] for entry in entries), key=_RANK.__getitem__, default="pass")
    outputs = [f"{name}: {entry['output']}" for name, values in checks.items() for entry in values if "output" in entry]
    return HealthReport(status=status, checks=checks, output="; ".join(outputs) if status != "pass" else None)


def timestamp() -> str:
    """Now, in UTC, as an entry's `time` (ISO 8601 with milliseconds and a Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
