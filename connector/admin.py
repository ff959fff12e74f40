"""Administrator commands: devices, people, the audit log and a device check."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from enum import IntEnum
from typing import Any

from faceid_core.errors import FaceIdError, Refusal
from faceid_core.logs import traced

from . import validation
from .config import add_device, load_config, remove_device
from .device import TlsPolicy
from .enrollment import audit_enrollment, enroll_image, outcome_of
from .protocol import encode_key, new_device_key
from .runtime import Runtime, build_runtime
from .store import AuditEntry


class Exit(IntEnum):
    """What a command's exit status tells a script."""

    DONE = 0
    NOT_DONE = 1  # refused, or nothing to act on (no such device or person)
    FAILED = 2  # an error stopped it: a setting, an argument, the store, a device


#: The exit status of a command an error stopped, by family (the first that matches).
EXIT_CODES: tuple[tuple[type[FaceIdError], Exit], ...] = (
    (Refusal, Exit.NOT_DONE),
    (FaceIdError, Exit.FAILED),
)


def exit_code(exc: FaceIdError) -> Exit:
    """The exit status for an error that stopped a command (EXIT_CODES)."""
    return next(code for family, code in EXIT_CODES if isinstance(exc, family))


def add_parsers(commands: Any) -> None:
    admin = commands.add_parser("admin", help="manage devices, people and the audit log")
    sub = admin.add_subparsers(dest="admin_command", required=True)

    p = sub.add_parser("add-device", help="add a device to the config; prints its key once")
    p.add_argument("--serial", required=True)
    p.add_argument("--host", required=True, help="device address, host or host:port")
    p.add_argument("--username", required=True)
    p.add_argument("--password-ref", required=True, help="env:NAME, file:PATH or gsm:projects/...")
    p.add_argument("--name", help="display name")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--ca-bundle", help="PEM file that signs the device's certificate")
    tls.add_argument("--fingerprint", help="SHA-256 fingerprint of the device's certificate")
    tls.add_argument("--insecure", action="store_true", help="do not verify the device (lab only)")

    p = sub.add_parser(
        "rotate-key", help="give a device a new key (prints it once); enrollments are kept"
    )
    p.add_argument("--serial", required=True)

    p = sub.add_parser("remove-device", help="remove a device and everyone enrolled on it")
    p.add_argument("--serial", required=True)

    p = sub.add_parser("enroll", help="enroll a person on a device from an image file")
    p.add_argument("--serial", required=True)
    p.add_argument("--person", required=True)
    p.add_argument("--image", required=True, help="JPEG or PNG with exactly one face")

    p = sub.add_parser("people", help="list the people enrolled on a device")
    p.add_argument("--serial", required=True)

    p = sub.add_parser("remove-person", help="remove a person and their reference photos")
    p.add_argument("--serial", required=True)
    p.add_argument("--person", required=True)

    p = sub.add_parser("audit", help="show the audit log, newest first")
    p.add_argument("--serial")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("test-device", help="sign in, take a snapshot, sign out, and report")
    p.add_argument("--serial", required=True)


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str))


def _new_key(rt: Runtime, serial: str, action: str) -> None:
    """Store a fresh key for the device and print it, the only time it is ever shown."""
    key = new_device_key()
    audit = AuditEntry(action, "done", serial=serial, request_id=uuid.uuid4().hex)
    rt.store.set_device_key(serial, key, audit=audit)
    print(f"The key of device {serial} (shown once; put it in SETTINGS.deviceKey of the macro):")
    print(encode_key(key))


def run(args: argparse.Namespace, config_path: str) -> int:
    command = args.admin_command
    if command == "add-device":
        new_serial = validation.serial(args.serial)
        tls = TlsPolicy(
            ca_bundle=args.ca_bundle, fingerprint_sha256=args.fingerprint, insecure=args.insecure
        )
        add_device(
            config_path,
            serial=new_serial,
            host=args.host,
            username=args.username,
            password_ref=args.password_ref,
            tls=tls,
            name=args.name,
        )
        rt = build_runtime(load_config(config_path), [])
        try:
            _new_key(rt, new_serial, "add_device")
        finally:
            rt.close()
        print(f"Device {new_serial} added. Restart the connector to load it.", file=sys.stderr)
        return Exit.DONE

    config = load_config(config_path)
    needs_device = ("enroll", "test-device", "rotate-key")
    if command in needs_device and config.device(args.serial) is None:
        print(f"No device {args.serial} in the configuration.", file=sys.stderr)
        return Exit.NOT_DONE
    # Only test-device talks to a device: the others need no device password at all.
    rt = build_runtime(config, [args.serial] if command == "test-device" else [])
    try:
        serial = validation.serial(args.serial) if getattr(args, "serial", None) else None
        if command == "rotate-key":
            assert serial is not None
            _new_key(rt, serial, "rotate_key")
            print("The old key no longer works.", file=sys.stderr)
        elif command == "remove-device":
            assert serial is not None
            remove_device(config_path, serial)
            rt.store.remove_device(serial)
            print(f"Device {serial} removed with everyone enrolled on it.")
        elif command == "enroll":
            assert serial is not None
            try:
                with open(args.image, "rb") as f:
                    data = f.read()
            except OSError as exc:
                print(f"Cannot read {args.image}: {exc.strerror}", file=sys.stderr)
                return Exit.NOT_DONE
            person = validation.person(args.person)
            request_id = uuid.uuid4().hex
            with traced(request_id):  # its log lines join its audit entry, as a request's do
                outcome = outcome_of(
                    rt,
                    serial,
                    person,
                    request_id,
                    lambda: enroll_image(rt, serial, person, data, request_id, only_if_empty=False),
                )
                audit_enrollment(rt, request_id, serial, person, outcome)
            print(f"{outcome.result}: {outcome.message}")
            return Exit.DONE if outcome.result == "enrolled" else Exit.NOT_DONE
        elif command == "people":
            assert serial is not None
            for info in rt.store.people(serial):
                print(f"{info.name}\t{info.references} photo(s)\tsince {info.created}")
        elif command == "remove-person":
            assert serial is not None
            if not rt.store.remove_person(serial, validation.person(args.person)):
                print(f"No person {args.person!r} on {serial}.", file=sys.stderr)
                return Exit.NOT_DONE
            print(f"Removed {args.person} from {serial}.")
        elif command == "audit":
            for entry in rt.store.audit(limit=args.limit, serial=serial):
                record = entry.to_json()
                if args.json:
                    _print_json(record)
                else:
                    print("\t".join(f"{k}={v}" for k, v in record.items() if v is not None))
        elif command == "test-device":
            assert serial is not None
            _print_json(rt.device_client.probe(rt.devices[serial].access))
        return Exit.DONE
    finally:
        rt.close()
