"""How the connector writes a time for people and scripts, in one place (admin commands, the
console, Webex messages of device reports)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(t: float) -> str:
    """A stored time (epoch seconds) as ISO 8601 with its UTC offset, e.g.
    2026-12-01T13:45:07+00:00: unambiguous to a reader and to a script."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
