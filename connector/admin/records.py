"""Admin commands on what the store records: people and their photos, lockouts, the audit log.

Listings print aligned columns, or with --json one object per line; times are ISO 8601 in UTC.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from faceid_core.logs import traced

from .. import validation
from ..config import load_config
from ..enrollment import audit_enrollment, enroll_image, outcome_of
from ..times import iso_time
from .common import (
    Exit,
    admin_audit,
    configured,
    known_serial,
    operator,
    print_json,
    print_table,
    runtime,
    whole_number,
)

#: --limit's bounds: SQLite takes no larger integer, and the log keeps far fewer entries.
MAX_LIMIT = 1_000_000
ONE_PER_LINE = "one JSON object per line"
#: The columns of each listing: field, heading.
PEOPLE_COLUMNS = {
    "name": "PERSON",
    "references": "PHOTOS",
    "created": "ENROLLED",
    "last_enrolled": "LAST PHOTO",
}
AUDIT_COLUMNS = {
    "time": "TIME",
    "serial": "SERIAL",
    "action": "ACTION",
    "outcome": "OUTCOME",
    "code": "CODE",
    "person": "PERSON",
    "score": "SCORE",
    "actor": "BY",
    "request_id": "REQUEST",
}


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("enroll", help="enroll a person on a device from an image file")
    p.add_argument("--serial", required=True)
    p.add_argument("--person", required=True)
    p.add_argument("--image", required=True, help="JPEG or PNG with exactly one face")

    p = sub.add_parser("people", help="list the people enrolled on a device")
    p.add_argument("--serial", required=True)
    p.add_argument("--json", action="store_true", help=ONE_PER_LINE)

    p = sub.add_parser("remove-person", help="remove a person and their reference photos")
    p.add_argument("--serial", required=True)
    p.add_argument("--person", required=True)

    p = sub.add_parser(
        "unlock-lockout", help="end a device's lockout and forget its failed attempts"
    )
    p.add_argument("--serial", required=True)

    p = sub.add_parser("audit", help="show the audit log, newest first")
    p.add_argument("--serial", help="this device's entries only (a removed device's too)")
    p.add_argument(
        "--limit", type=whole_number(MAX_LIMIT), default=50, help="at most this many (default 50)"
    )
    p.add_argument("--json", action="store_true", help=ONE_PER_LINE)


def enroll(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serial = known_serial(config, args.serial)
    if serial is None:
        return Exit.NOT_DONE
    try:
        with open(args.image, "rb") as f:
            data = f.read()
    except OSError as exc:
        print(f"Cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return Exit.NOT_DONE
    person = validation.person(args.person)
    request_id, actor = uuid.uuid4().hex, operator()
    with runtime(config, []) as rt, traced(request_id):
        # Its log lines join its audit entry, as a request's do.
        outcome = outcome_of(
            rt,
            serial,
            person,
            request_id,
            lambda: enroll_image(
                rt, serial, person, data, request_id, only_if_empty=False, actor=actor
            ),
        )
        audit_enrollment(rt, request_id, serial, person, outcome, actor=actor)
    print(f"{outcome.result}: {outcome.message}")
    return Exit.DONE if outcome.result == "enrolled" else Exit.NOT_DONE


def people(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serial = known_serial(config, args.serial)
    if serial is None:
        return Exit.NOT_DONE
    with runtime(config, []) as rt:
        enrolled = rt.store.people(serial)
    if not enrolled:
        print(f"Nobody is enrolled on {serial}.", file=sys.stderr)
    records = [
        dataclasses.asdict(info)
        | {"created": iso_time(info.created), "last_enrolled": iso_time(info.last_enrolled)}
        for info in enrolled
    ]
    _show(records, PEOPLE_COLUMNS, as_json=args.json)
    return Exit.DONE


def remove_person(args: argparse.Namespace, config_path: str) -> int:
    serial = validation.serial(args.serial)
    person = validation.person(args.person)
    with runtime(load_config(config_path), []) as rt:
        audit = admin_audit("remove_person", "done", serial, person=person)
        if not rt.store.remove_person(serial, person, audit=audit):
            print(f"No person {person!r} on {serial}.", file=sys.stderr)
            return Exit.NOT_DONE
    print(f"Removed {person} from {serial}.")
    return Exit.DONE


def unlock_lockout(args: argparse.Namespace, config_path: str) -> int:
    """Done whether or not the device was locked out: either way it may try again now."""
    config = load_config(config_path)
    serial = known_serial(config, args.serial)
    if serial is None:
        return Exit.NOT_DONE
    with runtime(config, []) as rt:
        said = rt.lockout.end(serial, audit=admin_audit("unlock_lockout", "done", serial))
    print(said)
    return Exit.DONE


def audit(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serial = validation.serial(args.serial) if args.serial else None
    with runtime(config, []) as rt:
        entries = rt.store.audit(limit=args.limit, serial=serial)
    if not entries:
        # A removed device's history stays readable; a serial never seen is a mistake.
        if serial is not None and not configured(config, serial):
            return Exit.NOT_DONE
        print("No audit entries" + (f" for {serial}." if serial else "."), file=sys.stderr)
    records = [entry.to_json() for entry in entries]
    for record in records:
        record["time"] = iso_time(record["time"])  # read back, an entry always has its time
    _show(records, AUDIT_COLUMNS, as_json=args.json)
    return Exit.DONE


def _show(records: list[dict[str, Any]], columns: Mapping[str, str], *, as_json: bool) -> None:
    """Both listings alike: a table of `columns`, or every field as JSON, one record a line."""
    if as_json:
        for record in records:
            print_json(record)
    elif records:
        print_table(list(columns.values()), [[_cell(r[k]) for k in columns] for r in records])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


COMMANDS: dict[str, Callable[[argparse.Namespace, str], int]] = {
    "enroll": enroll,
    "people": people,
    "remove-person": remove_person,
    "unlock-lockout": unlock_lockout,
    "audit": audit,
}
