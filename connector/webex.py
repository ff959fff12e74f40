"""Webex messages to administrators (REFERENCE.md §5): which events are told, the markdown they
read (device, person, outcome, UTC time), and the one HTTP call that posts a message. Queueing
and retrying are notify.py's job; here one attempt is classified as sent, retry or failed.

A snapshot is attached only to a failed attempt, only when `attach_snapshots` is on, and only
from memory: it is never written to disk."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

from .config import ConnectorConfig, WebexConfig
from .metrics import Metrics
from .notify import Attempt, Notifier

MESSAGE_MAX_BYTES = 7439
CONNECT_TIMEOUT_S = 3.0
DEFAULT_429_WAIT_S = 10.0
ELLIPSIS = "…"
#: Inline markup only: every value sits after a label on its own line (names hold no newline), so
#: line-start markup (#, -, 1.) cannot trigger; escaping `[` and `<` rules out links and mentions.
MARKDOWN_SPECIAL_RE = re.compile(r"([\\`*_\[\]<>~|&])")
REFUSAL_HINTS = {
    401: "the bot token was refused: check webex.bot_token",
    403: "the bot may not post there: check that it is a member of the room",
    404: "no such room for this bot: check the room id",
}
HEADLINES = {
    ("verify", "match"): "Face login",
    ("verify", "no_match"): "Face login refused",
    ("verify", "error"): "Face login failed",
    ("enroll", "enrolled"): "Face enrolled",
    ("enroll", "refused"): "Enrollment refused",
    ("enroll", "error"): "Enrollment failed",
    ("unlock_code", "unlocked"): "Opened with an unlock code",
    ("unlock_code", "waiting"): "Wrong unlock codes",
    ("unlock_code", "refused"): "Unlock code reports dropped",
}
SUCCESSES = frozenset({"match", "enrolled", "unlocked"})
#: What the administrators are told about: a login attempt, an enrollment, or what a device
#: reports of its offline unlock codes (codeevents.py).
EventKind = Literal["verify", "enroll", "unlock_code"]
#: Told even with `webex.events = "failures"`: an unlock code bypasses face login, so each use
#: is worth an administrator's glance.
ALWAYS_TOLD = frozenset({"unlock_code"})
#: A login attempt's verdict (verification.Outcome): only "match" unlocks.
Verdict = Literal["match", "no_match", "error"]
#: An enrollment's result (enrollment.EnrollOutcome): "refused" by the rules or the picture.
EnrollResult = Literal["enrolled", "refused", "error"]
#: A device's report of its unlock codes (codeevents.py): one opened it, or wrong ones made it wait;
#: "refused": it reported more than the hourly cap, and the rest were dropped.
CodeOutcome = Literal["unlocked", "waiting", "refused"]
#: What the administrators should do about an outcome that is theirs to fix.
ACTIONS = {
    "reference_unusable": "A stored photo of this person has no usable face: remove the person "
    "(admin remove-person) and enroll them again",
}


@dataclass(frozen=True)
class Event:
    """One macro request as the administrators are told about it."""

    kind: EventKind
    serial: str
    device_name: str
    outcome: Verdict | EnrollResult | CodeOutcome  # by kind
    code: str | None
    person: str | None
    message: str  # what the person at the device read; for an unlock code, what happened
    trace: str
    at: float = field(default_factory=time.time)
    lockout_s: int | None = None  # a lockout this attempt started
    snapshot: bytes | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.outcome not in SUCCESSES

    @property
    def told(self) -> bool:
        """Worth a message with `webex.events = "failures"`."""
        return self.failed or self.kind in ALWAYS_TOLD


@dataclass(frozen=True)
class WebexMessage:
    room_id: str
    markdown: str
    trace: str
    attachment: bytes | None = field(default=None, repr=False)


def escape(text: str) -> str:
    """Shown as typed: a name cannot become a link, a mention or formatting."""
    return MARKDOWN_SPECIAL_RE.sub(r"\\\1", text)


def fit(text: str, limit: int = MESSAGE_MAX_BYTES) -> str:
    """At most `limit` UTF-8 bytes, cut on a character boundary and marked with an ellipsis."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(ELLIPSIS.encode("utf-8"))
    return data[:room].decode("utf-8", "ignore") + ELLIPSIS


def markdown(event: Event) -> str:
    headline = HEADLINES.get((event.kind, event.outcome), f"{event.kind} {event.outcome}")
    if event.person:
        person = escape(event.person)
    elif event.kind == "unlock_code":
        person = "not known (whoever had the code)"
    else:
        person = "not recognised" if event.outcome == "no_match" else "unknown"
    code = f" (`{event.code}`)" if event.code else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.at))
    said = "What happened" if event.kind == "unlock_code" else "Shown on the device"
    lines = [
        f"**{escape(headline)}** on **{escape(event.device_name)}** "
        f"(serial {escape(event.serial)})",
        f"- Person: {person}",
        f"- Outcome: {event.outcome}{code}",
        f"- {said}: {escape(event.message)}",
        f"- Time: {when}",
    ]
    if event.code in ACTIONS:
        lines.append(f"- To do: {ACTIONS[event.code]}")
    if event.lockout_s:
        lines.append(f"- The device is now locked for {event.lockout_s} s after repeated failures")
    lines.append(f"- Request: `{event.trace}`")
    return fit("\n".join(lines))


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _error_detail(response: requests.Response) -> str:
    """HTTP status, Webex's description and trackingId (what Webex support asks for)."""
    detail = f"HTTP {response.status_code}"
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else None
        text = first.get("description") if isinstance(first, dict) else None
        text = text or body.get("message")
        if isinstance(text, str) and text:
            detail += f": {text[:200]}"
        tracking = body.get("trackingId")
        if isinstance(tracking, str) and tracking:
            detail += f" (trackingId {tracking[:100]})"
    hint = REFUSAL_HINTS.get(response.status_code)
    return f"{detail}; {hint}" if hint else detail


class WebexClient:
    """POST /messages with the bot's token; used by one worker thread."""

    def __init__(self, api_url: str, bot_token: str) -> None:
        self._url = api_url.rstrip("/") + "/messages"
        self._headers = {"Authorization": f"Bearer {bot_token}"}
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def post(self, message: WebexMessage, timeout_s: float) -> Attempt:
        fields = {"roomId": message.room_id, "markdown": message.markdown}
        timeout = (min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)
        try:
            if message.attachment is None:
                response = self._session.post(
                    self._url, json=fields, headers=self._headers, timeout=timeout
                )
            else:
                files = {"files": ("snapshot.jpg", message.attachment, "image/jpeg")}
                response = self._session.post(
                    self._url, data=fields, files=files, headers=self._headers, timeout=timeout
                )
        except requests.Timeout:
            return Attempt("retry", f"Webex did not answer within {timeout_s:g} s")
        except requests.RequestException as exc:
            return Attempt("retry", f"Webex is unreachable ({type(exc).__name__})")
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return Attempt("sent")
            detail = _error_detail(response)
            wait = _retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return Attempt("retry", detail, DEFAULT_429_WAIT_S if wait is None else wait)
        if status >= 500:
            return Attempt("retry", detail, wait)
        return Attempt("failed", detail)  # 401, 403, 404 and any other refusal


class WebexNotices:
    """Chooses which events are told and where, and hands the message to the queue."""

    def __init__(
        self,
        config: WebexConfig,
        rooms: Mapping[str, str],
        notifier: Notifier[WebexMessage],
        client: WebexClient | None = None,
    ) -> None:
        self._config = config
        self._rooms = rooms
        self._notifier = notifier
        self._client = client

    def notify(self, event: Event) -> None:
        if self._config.events == "failures" and not event.told:
            return
        attach = self._config.attach_snapshots and event.failed
        self._notifier.submit(
            WebexMessage(
                room_id=self._rooms.get(event.serial, self._config.room_id),
                markdown=markdown(event),
                trace=event.trace,
                attachment=event.snapshot if attach else None,
            )
        )

    def close(self, deadline_s: float) -> int:
        dropped = self._notifier.close(deadline_s)
        if self._client is not None:
            self._client.close()
        return dropped


def _log_fields(message: WebexMessage) -> dict[str, Any]:
    return {"trace": message.trace, "attachment": message.attachment is not None}


def webex_notices(config: ConnectorConfig, metrics: Metrics) -> WebexNotices | None:
    """None without a [webex] section; resolves the bot token (a bad reference stops start-up)."""
    webex = config.webex
    if webex is None:
        return None
    client = WebexClient(webex.api_url, webex.resolve_bot_token())
    notifier: Notifier[WebexMessage] = Notifier(
        client.post,
        name="webex",
        queue_size=webex.queue_size,
        on_outcome=metrics.webex,
        describe=_log_fields,
    )
    rooms = {d.serial: d.webex_room_id or webex.room_id for d in config.devices}
    return WebexNotices(webex, rooms, notifier, client)
