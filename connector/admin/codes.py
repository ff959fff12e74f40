"""`admin unlock-code`: a one-time code that opens a device whose connectors it cannot reach.

The code follows from the device's key and the time (connector/unlockcode.py): nothing is written
but the audit entry saying who asked for one, for which device, valid until when (never the code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..config import load_config
from ..times import iso_time
from ..unlockcode import DEFAULT_MINUTES, MAX_MINUTES, STEP_S, code_for, expires_step, grouped
from .common import Exit, admin_audit, known_serial, print_json, runtime, whole_number


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "unlock-code",
        help="print a one-time code that opens a device without its connector",
        description="The device checks the code itself, with no network: give it to the person "
        "at the device when face login cannot reach any connector. It opens that device once, "
        f"until the time printed (the end of a {STEP_S // 60}-minute step at least --minutes "
        "away). Nothing is stored; the audit names who asked for it.",
    )
    p.add_argument("--serial", required=True)
    p.add_argument(
        "--minutes",
        type=whole_number(MAX_MINUTES),
        default=DEFAULT_MINUTES,
        help=f"how long it stays valid, 1 to {MAX_MINUTES} (default {DEFAULT_MINUTES})",
    )
    p.add_argument(
        "--json", action="store_true", help='one JSON object: {"serial", "code", "valid_until"}'
    )


def unlock_code(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    serial = known_serial(config, args.serial)
    if serial is None:
        return Exit.NOT_DONE
    with runtime(config, []) as rt:
        key = rt.store.device_key(serial)
        if key is None:
            print(
                f"{serial} has no key yet, so it cannot check a code: provision it first "
                f"(admin provision --serial {serial}).",
                file=sys.stderr,
            )
            return Exit.NOT_DONE
        step = expires_step(rt.clock(), args.minutes)
        until = iso_time(step * STEP_S)
        rt.store.add_audit(
            admin_audit("unlock_code_issued", "issued", serial, code=f"valid_until_{until}")
        )
    code = code_for(key, serial, step)
    if args.json:
        print_json({"serial": serial, "code": code, "valid_until": until})
        return Exit.DONE
    print(f"Unlock code for {serial}: {grouped(code)}  ({code})")
    print(f"Valid until {until}")
    print(f"It works once, on {serial} only; read it to the person at the device.")
    return Exit.DONE


COMMANDS: dict[str, Callable[[argparse.Namespace, str], int]] = {"unlock-code": unlock_code}
