"""What every console page shares: the signed-in administrator, the audit entry of an action,
one-time notices, and the page's template context."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import abort, g, render_template

from ..runtime import Device, Runtime
from ..store import AuditEntry
from ..times import iso_time
from .auth import ConsoleAuth, ConsoleSession
from .memo import Expiring

#: The blueprint's name: endpoints are "console.<view>".
CONSOLE = "console"
#: Notices wait this long for the page after the action (post, redirect, get).
NOTICE_TTL_S = 300.0
NOTICES_KEPT = 1000

NoticeKind = Literal["done", "refused", "error"]


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    text: str


@dataclass
class Console:
    """The console's state: the runtime, the accounts, and what it holds in memory."""

    rt: Runtime
    auth: ConsoleAuth
    notices: Expiring[list[Notice]] = field(
        default_factory=lambda: Expiring(NOTICE_TTL_S, NOTICES_KEPT)
    )

    @staticmethod
    def session() -> ConsoleSession:
        """The administrator signed in (the guard in views.py let only them in)."""
        session: ConsoleSession = g.console_session
        return session

    def device(self, serial: str) -> Device:
        """A configured device, else 404: a serial in a URL is never trusted."""
        device = self.rt.devices.get(serial)
        if device is None:
            abort(404)
        return device

    def entry(self, action: str, outcome: str, serial: str | None, **fields: Any) -> AuditEntry:
        """The audit entry of this administrator's action (its request id joins its log lines)."""
        return AuditEntry(
            action,
            outcome,
            serial=serial,
            request_id=request_id(),
            actor=self.session().admin,
            **fields,
        )

    def say(self, kind: NoticeKind, text: str) -> None:
        """A notice for the next page this administrator sees."""
        token = self.session().token
        self.notices.put([*(self.notices.get(token) or []), Notice(kind, text)], key=token)

    def render(self, template: str, **context: Any) -> str:
        """A page, with what base.html needs: the administrator, the form token, the notices."""
        session: ConsoleSession | None = g.get("console_session")
        shown = self.notices.pop(session.token) if session is not None else None
        return render_template(
            template,
            admin=session.admin if session is not None else None,
            csrf=session.csrf if session is not None else "",
            notices=shown or [],
            **context,
        )


def request_id() -> str:
    """The id the app gave this request (app.py), else a new one."""
    value: str | None = g.get("request_id")
    return value or uuid.uuid4().hex


def iso(t: float | None) -> str:
    """A stored time in ISO 8601 (UTC), for a <time datetime> attribute."""
    return "" if t is None else iso_time(t)


def when(t: float | None, zone: bool = True) -> str:
    """A stored time as the admin commands print it (ISO 8601, UTC), for the templates; without
    "UTC" (zone=False) where the page says it once for a whole table."""
    if t is None:
        return ""
    return iso_time(t).replace("T", " ").replace("+00:00", " UTC" if zone else "")


def ago(clock: Callable[[], float]) -> Callable[[float | None], str]:
    """The template filter "ago": how long before `clock()` a time was, in words."""

    def filter_(t: float | None) -> str:
        if t is None:
            return ""
        seconds = clock() - t
        if seconds < 0:
            return "just now"
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size:
                return f"{int(seconds // size)} {unit} ago"
        return f"{int(seconds)} s ago"

    return filter_
