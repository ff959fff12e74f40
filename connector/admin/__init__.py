"""`python -m connector admin ...`: the administrator's commands, one module per concern.

fleet.py adds, checks, provisions and removes devices; records.py works on people, the audit log
and lockouts; codes.py issues offline unlock codes; common.py holds what every command shares
(exit statuses, the operator, output).
Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import codes, consoleadmins, fleet, records, settings
from .common import EXIT_CODES, Exit, exit_code

__all__ = ["EXIT_CODES", "Exit", "add_parsers", "exit_code", "run"]

_MODULES = (fleet, records, codes, settings, consoleadmins)


def add_parsers(commands: Any) -> None:
    admin = commands.add_parser("admin", help="manage devices, people and the audit log")
    sub = admin.add_subparsers(dest="admin_command", required=True)
    for module in _MODULES:
        module.add_parsers(sub)


def run(args: argparse.Namespace, config_path: str) -> int:
    """Run the admin command `args` names; an error that stops it propagates (FaceIdError)."""
    for module in _MODULES:
        handler = module.COMMANDS.get(args.admin_command)
        if handler is not None:
            return int(handler(args, config_path))
    raise AssertionError(f"no handler for admin {args.admin_command}")
