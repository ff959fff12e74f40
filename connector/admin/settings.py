"""Admin commands on the configuration file itself."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..config import check
from .common import Exit, print_json


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        help="list every problem of the configuration file, its secrets included",
        description="Check the file as start-up (or a reload) would: every field, every secret "
        "reference resolved, the store key's length; the store is not opened.",
    )
    p.add_argument("--json", action="store_true", help='one JSON object: {"ok", "problems"}')


def check_config(args: argparse.Namespace, config_path: str) -> int:
    checked = check(config_path)
    if args.json:
        print_json({"ok": checked.ok, "problems": list(checked.problems)})
    elif checked.config is not None:
        print(f"configuration OK: {len(checked.config.devices)} devices")
    else:
        for problem in checked.problems:
            print(problem)
    return Exit.DONE if checked.ok else Exit.FAILED


COMMANDS: dict[str, Callable[[argparse.Namespace, str], int]] = {"check-config": check_config}
