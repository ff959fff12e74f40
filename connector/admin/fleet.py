"""Admin commands on devices: add (after checking everything), test, provision, give a new key,
remove. The running connector picks up each change of the file by itself (reload.py)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from faceid_core.errors import FaceIdError, bad_request
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .. import validation
from ..config import add_device as add_device_block
from ..config import load_config
from ..config import remove_device as remove_device_block
from ..device import DeviceAccess, DeviceClient, TlsPolicy
from ..onboarding import Examination, examine, presented_fingerprint
from ..protocol import encode_key, new_device_key
from ..provisioning import Outcome, Plan, plan_for, provision
from ..runtime import Runtime
from ..secretref import REF_HELP
from ..store import AuditEntry
from ..tls import display_fingerprint
from .common import (
    Exit,
    absolute_ref,
    admin_audit,
    known_serial,
    print_json,
    print_table,
    runtime,
    secret_option,
)

MARKS = {"ok": "✓", "warning": "!", "failed": "✗"}


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "add-device",
        help="check a device end to end, then add it to the config (prints its key once)",
    )
    p.add_argument("--host", required=True, help="device address, host or host:port")
    p.add_argument("--serial", help="default: the serial the device reports")
    p.add_argument("--username", help="its web account (default: device_defaults.username)")
    p.add_argument("--password-ref", help=f"{REF_HELP} (default: device_defaults.password)")
    p.add_argument("--name", help="display name")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", help="PEM file that signs the device's certificate")
    tls.add_argument("--fingerprint", help="SHA-256 fingerprint of the device's certificate")
    tls.add_argument("--insecure", action="store_true", help="do not verify the device (lab only)")
    p.add_argument(
        "--yes", action="store_true", help="pin the certificate the device presents without asking"
    )
    p.add_argument(
        "--show-key",
        action="store_true",
        help="print the device's key (for a macro installed by hand; provision installs it)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object with every check")

    p = sub.add_parser(
        "test-device", help="sign in, snapshot, find the faces, sign out; report each step"
    )
    p.add_argument("--serial", required=True)
    p.add_argument(
        "--save", metavar="FILE", help="write the snapshot to FILE, a new file (JPEG, mode 0600)"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("provision", help="put the macro on devices over their xAPI")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial")
    which.add_argument("--all", action="store_true", help="every configured device")
    _admin_account_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per device")

    p = sub.add_parser(
        "rotate-key", help="give a device a new key and provision it; enrollments are kept"
    )
    p.add_argument("--serial", required=True)
    p.add_argument(
        "--manual", action="store_true", help="only print the new key (a macro set up by hand)"
    )
    _admin_account_arguments(p)

    p = sub.add_parser("remove-device", help="remove a device and everyone enrolled on it")
    p.add_argument("--serial", required=True)


def _admin_account_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-user", default="admin", help="a device account with the Admin role")
    p.add_argument(
        "--admin-password-ref",
        help=f"{REF_HELP}; default: asked at the prompt (never stored)",
    )
    p.add_argument(
        "--allow-insecure",
        action="store_true",
        help="also send the admin password to devices whose certificate is not checked (lab only)",
    )


@dataclass(frozen=True)
class AdminAccount:
    """The device administrator of one run: never stored, and only sent to a device whose
    certificate is checked unless the run allows otherwise."""

    user: str
    password: str = field(repr=False)
    allow_insecure: bool = False


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_examination(result: Examination) -> None:
    for check in result.checks:
        print(f"  {MARKS[check.verdict]} {check.name:<12} {check.detail}")
        if check.fix and check.verdict != "ok":
            print(f"    fix: {check.fix}")


def _camera(rt: Runtime) -> DeviceClient:
    client = rt.device_client
    assert isinstance(client, DeviceClient)  # build_runtime's; only tests give memory fakes
    return client


# --- add-device -------------------------------------------------------------------------------


def add_device(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    defaults = config.device_defaults
    username = args.username or defaults.username
    password_ref = absolute_ref(args.password_ref) if args.password_ref else defaults.password
    if username is None or password_ref is None:
        print(
            "Give --username and --password-ref (or set them in [device_defaults]).",
            file=sys.stderr,
        )
        return Exit.NOT_DONE
    # Resolved before anything is sent or written: a reference that cannot be read stops here.
    password = secret_option(password_ref, "--password-ref")
    serial = validation.serial(args.serial) if args.serial else None
    if serial is not None and config.device(serial) is not None:
        print(f"Device {serial} is already configured.", file=sys.stderr)
        return Exit.NOT_DONE
    tls = TlsPolicy(
        ca_bundle=os.path.abspath(args.ca_bundle) if args.ca_bundle else None,
        fingerprint_sha256=args.fingerprint,
        insecure=args.insecure,
    )
    access = DeviceAccess(args.host, username, password, tls, serial=serial)
    with runtime(config, []) as rt:
        camera = _camera(rt)
        presented = None
        if tls.kind == "default_ca":  # nothing said: pin what it presents, once confirmed
            try:
                presented = presented_fingerprint(access, camera.connect_timeout_s)
            except FaceIdError as exc:
                unreachable = Examination(args.host)
                unreachable.failed("certificate", exc)
                _report(args, unreachable, None)
                return Exit.NOT_DONE
            if not _confirmed(args, presented):
                print("Nothing was written.", file=sys.stderr)
                return Exit.NOT_DONE
            tls = TlsPolicy(fingerprint_sha256=presented)
            access = DeviceAccess(args.host, username, password, tls, serial=serial)
        if not args.json:
            _progress(f"Checking the device at {args.host} ...")
        result = examine(camera, rt.function, access, expected_serial=serial, fingerprint=presented)
        found = result.serial
        if result.ok and found is not None and config.device(found) is not None:
            result.note("serial", "failed", f"{found} is already configured", "remove it first")
        if not result.ok or found is None:
            _report(args, result, None)
            print(
                "Nothing was written: fix what failed, then run add-device again.", file=sys.stderr
            )
            return Exit.NOT_DONE
        add_device_block(
            config_path,
            serial=found,
            host=args.host,
            username=args.username,
            password_ref=password_ref if args.password_ref else None,
            tls=tls,
            name=args.name,
        )
        key = new_device_key()
        rt.store.set_device_key(found, key, audit=admin_audit("add_device", "done", found))
    _report(args, result, encode_key(key) if args.show_key else None)
    print(
        f"Device {found} added; the running connector serves it within seconds. Next: "
        f"`admin provision --serial {found}` puts the macro and its key on it.",
        file=sys.stderr,
    )
    return Exit.DONE


def _confirmed(args: argparse.Namespace, presented: str) -> bool:
    shown = display_fingerprint(presented)
    print(
        f"The device at {args.host} presents a certificate with SHA-256\n  {shown}", file=sys.stderr
    )
    if args.yes:
        print(
            "Pinned without checking (--yes): compare it with the certificate the device shows "
            "on its own screen or web page, or pass --fingerprint next time.",
            file=sys.stderr,
        )
        return True
    if args.json or not sys.stdin.isatty():
        print("Pass --yes to pin it, or --fingerprint after checking it.", file=sys.stderr)
        return False
    answer = input("Is this the device's certificate (compare it on the device)? Pin it [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _report(args: argparse.Namespace, result: Examination, key: str | None) -> None:
    if args.json:
        print_json(result.to_json() | ({"device_key": key} if key is not None else {}))
        return
    _print_examination(result)
    if key is not None:
        print(f"The key of device {result.serial} (shown once; put it in SETTINGS.deviceKey):")
        print(key)


# --- test-device ------------------------------------------------------------------------------


def test_device(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serial = known_serial(config, args.serial)
    if serial is None:
        return Exit.NOT_DONE
    with runtime(config, [serial]) as rt:
        result = examine(
            _camera(rt), rt.function, rt.devices[serial].access, expected_serial=serial
        )
    if args.save and result.frame is not None:
        _save_frame(args.save, result.frame)
    if args.json:
        print_json(result.to_json())
    else:
        _print_examination(result)
    return Exit.DONE if result.ok else Exit.NOT_DONE


def _save_frame(path: str, frame: bytes) -> None:
    """A new file only, readable by its owner alone: never through a symbolic link, never over
    a file that might be read by others (the picture shows whoever is in the room)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise bad_request(f"cannot write the snapshot to {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(frame)
    print(f"The snapshot is in {path}.", file=sys.stderr)


# --- provision and rotate-key -----------------------------------------------------------------


def _admin_account(args: argparse.Namespace) -> AdminAccount:
    """The device administrator of this run; the password from a reference, else the prompt."""
    if args.admin_password_ref:
        password = secret_option(args.admin_password_ref, "--admin-password-ref")
    elif not sys.stdin.isatty():
        raise bad_request("give --admin-password-ref (no terminal to ask for the password at)")
    else:
        password = getpass.getpass(f"Password of the device account {args.admin_user!r}: ")
    return AdminAccount(args.admin_user, password, args.allow_insecure)


def _provision_one(
    rt: Runtime,
    plan: Plan,
    serial: str,
    admin: AdminAccount,
    *,
    new_key: bool,
    progress: Callable[[str], None],
) -> Outcome:
    device = rt.config.device(serial)
    assert device is not None
    if device.tls.insecure and not admin.allow_insecure:
        return Outcome(
            serial,
            failed="trust",
            why="its certificate is not checked (tls insecure): the admin password would go "
            "to whoever answers at its address",
            fix="pin its certificate (devices[].tls.fingerprint_sha256; `admin test-device` "
            "shows it), or pass --allow-insecure in a lab",
        )
    access = DeviceAccess(device.host, admin.user, admin.password, device.tls)
    return provision(
        _camera(rt),
        rt.store,
        access,
        serial,
        plan,
        new_key=new_key,
        audit=partial(_device_audit, serial),
        progress=progress,
    )


def _device_audit(serial: str, action: str, outcome: str, **fields: Any) -> AuditEntry:
    return admin_audit(action, outcome, serial, **fields)


def provision_command(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serials = [d.serial for d in config.devices] if args.all else [args.serial]
    if not args.all and known_serial(config, args.serial) is None:
        return Exit.NOT_DONE
    if not serials:
        print("No devices in the configuration.", file=sys.stderr)
        return Exit.NOT_DONE
    plan = plan_for(config)
    admin = _admin_account(args)
    with runtime(config, []) as rt:
        outcomes = list(_provision_all(rt, plan, serials, admin, quiet=args.json))
    if args.json:
        for outcome in outcomes:
            print_json(outcome.to_json())
    else:
        _print_outcomes(outcomes)
    return Exit.DONE if all(o.ok for o in outcomes) else Exit.NOT_DONE


def _provision_all(
    rt: Runtime, plan: Plan, serials: list[str], admin: AdminAccount, *, quiet: bool
) -> Iterator[Outcome]:
    with _bar(len(serials), quiet) as advance:
        for serial in serials:
            yield _provision_one(
                rt, plan, serial, admin, new_key=False, progress=partial(advance, serial)
            )
            advance(serial, None)


@contextmanager
def _bar(total: int, quiet: bool) -> Iterator[Callable[[str, str | None], None]]:
    """A progress bar on stderr: advance(serial, step) shows the step; step None: done."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("provisioning", total=total)

        def advance(serial: str, step: str | None) -> None:
            if step is None:
                bar.advance(task)
            else:
                bar.update(task, description=f"{serial}: {step}")

        yield advance
        bar.update(task, description="provisioned")


def _print_outcomes(outcomes: list[Outcome]) -> None:
    rows = [
        (o.serial, "ok" if o.ok else "FAILED", "; ".join(o.done), o.failed or "", o.why or "")
        for o in outcomes
    ]
    print_table(("DEVICE", "RESULT", "DONE", "FAILED", "WHY"), rows)
    for o in outcomes:
        if o.fix is not None:
            print(f"{o.serial}: fix: {o.fix}")


def rotate_key(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serial = known_serial(config, args.serial)
    if serial is None:
        return Exit.NOT_DONE
    if args.manual:
        with runtime(config, []) as rt:
            key = new_device_key()
            rt.store.set_device_key(serial, key, audit=admin_audit("rotate_key", "done", serial))
        print(f"The new key of device {serial} (shown once; put it in SETTINGS.deviceKey):")
        print(encode_key(key))
        print("The old key no longer works.", file=sys.stderr)
        return Exit.DONE
    plan = plan_for(config)
    admin = _admin_account(args)
    with runtime(config, []) as rt:
        outcome = _provision_one(rt, plan, serial, admin, new_key=True, progress=_step_line)
    _print_outcomes([outcome])
    if not outcome.ok and "new device key" not in outcome.done:
        print("The device keeps its old key.", file=sys.stderr)
    return Exit.DONE if outcome.ok else Exit.NOT_DONE


def _step_line(step: str) -> None:
    _progress(f"  {step} ...")


# --- remove-device ----------------------------------------------------------------------------


def remove_device(args: argparse.Namespace, config_path: str) -> int:
    serial = validation.serial(args.serial)
    with runtime(load_config(config_path), []) as rt:
        remove_device_block(config_path, serial)
        rt.store.remove_device(serial, audit=admin_audit("remove_device", "done", serial))
    print(f"Device {serial} removed with everyone enrolled on it.")
    return Exit.DONE


COMMANDS: dict[str, Callable[[argparse.Namespace, str], int]] = {
    "add-device": add_device,
    "test-device": test_device,
    "provision": provision_command,
    "rotate-key": rotate_key,
    "remove-device": remove_device,
}
