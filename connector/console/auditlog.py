"""The audit page: the store's audit log, newest first, filtered by device, person, action,
outcome, code and time (UTC), with each verify's stage timings, a page at a time (before_id: the
oldest entry shown, so new entries never shift the pages)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from faceid_core.errors import FaceIdError, bad_request
from flask import Blueprint, Response, request, url_for

from .. import validation
from .web import Console

PAGE_SIZE = 50
#: The exact-match filters, in the order of the form: field, label.
TEXT_FILTERS = {
    "serial": "Device (serial)",
    "person": "Person",
    "action": "Action",
    "outcome": "Outcome",
    "code": "Code",
}
TEXT_MAX_LEN = 64
#: The time filters: field, label (a browser's datetime-local input, read as UTC).
TIME_FILTERS = {"since": "From (UTC)", "until": "Until (UTC)"}
#: A verify's stages in the order they run (verification.py); others follow as recorded.
STAGE_ORDER = ("signin", "snapshot", "signout", "prepare", "function", "total")
#: How the page names a stage whose recorded name is not a word.
STAGE_LABELS = {"signin": "sign-in", "signout": "sign-out"}
#: How many hex digits of a request id the table shows (the whole id is its title).
SHORT_ID = 8


@dataclass(frozen=True)
class Filters:
    """What the form asks for, as typed (for the form and the paging links) and as read."""

    typed: Mapping[str, str]
    serial: str | None = None
    person: str | None = None
    action: str | None = None
    outcome: str | None = None
    code: str | None = None
    since: float | None = None
    until: float | None = None


def _text(name: str, value: str) -> str:
    if len(value) > TEXT_MAX_LEN:
        raise bad_request(f"{TEXT_FILTERS[name]}: at most {TEXT_MAX_LEN} characters")
    return validation.serial(value) if name == "serial" else value


def _time(name: str, value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"{TIME_FILTERS[name]}: not a date and time (YYYY-MM-DDTHH:MM)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_filters(args: Mapping[str, str]) -> Filters:
    """The filters of a query string; empty fields filter nothing. bad_request names the field."""
    typed = {
        name: args.get(name, "").strip()
        for name in (*TEXT_FILTERS, *TIME_FILTERS)
        if args.get(name, "").strip()
    }
    texts = {name: _text(name, typed[name]) for name in TEXT_FILTERS if name in typed}
    times = {name: _time(name, typed[name]) for name in TIME_FILTERS if name in typed}
    return Filters(
        typed,
        serial=texts.get("serial"),
        person=texts.get("person"),
        action=texts.get("action"),
        outcome=texts.get("outcome"),
        code=texts.get("code"),
        since=times.get("since"),
        until=times.get("until"),
    )


def before_id(args: Mapping[str, str]) -> int | None:
    value = args.get("before", "")
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise bad_request("'before' must be an audit entry's id")
    return int(value)


def stages(recorded: Mapping[str, float] | None) -> list[tuple[str, float]]:
    """A verify's timings, in the order its stages run, each under the name the page shows."""
    if not recorded:
        return []
    known = [name for name in STAGE_ORDER if name in recorded]
    ordered = known + [name for name in recorded if name not in STAGE_ORDER]
    return [(STAGE_LABELS.get(name, name), recorded[name]) for name in ordered]


def register(bp: Blueprint, console: Console) -> None:
    rt = console.rt

    def page(typed: Mapping[str, str], status: int = 200, **shown: Any) -> Response:
        html = console.render(
            "audit.html",
            fields=_fields(typed),
            serials=sorted(rt.devices),
            stages=stages,
            short_id=SHORT_ID,
            **{"refusal": None, "entries": [], "older": None, "newest": None, **shown},
        )
        return Response(html, status, mimetype="text/html")

    @bp.get("/audit")
    def audit_page() -> Response:
        try:
            filters = read_filters(request.args)
            before = before_id(request.args)
        except FaceIdError as exc:
            return page(request.args, 400, refusal=exc.message)
        wanted = {k: v for k, v in asdict(filters).items() if k != "typed" and v is not None}
        entries = rt.store.audit_page(**wanted, limit=PAGE_SIZE + 1, before_id=before)
        older = None
        if len(entries) > PAGE_SIZE:
            entries = entries[:PAGE_SIZE]
            older = _link({**filters.typed, "before": str(entries[-1].id)})
        newest = _link(filters.typed) if before is not None else None
        return page(filters.typed, entries=entries, older=older, newest=newest)


def _link(query: Mapping[str, str]) -> str:
    """This page with `query` (the filters as typed, and where a page starts)."""
    return url_for(".audit_page") + ("?" + urlencode(query) if query else "")


def _fields(typed: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """The form's inputs: name, label, input type, value as typed."""
    return [
        (name, label, "text", typed.get(name, "")[: TEXT_MAX_LEN * 2])
        for name, label in TEXT_FILTERS.items()
    ] + [
        (name, label, "datetime-local", typed.get(name, "")[:32])
        for name, label in TIME_FILTERS.items()
    ]
