"""Admin commands on the console's administrators: add one (the password from a reference, else
asked twice at the terminal), remove one (their sessions end with them), list them. The running
connector sees each change at once: accounts live in the store."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from faceid_core.errors import bad_request

from ..config import load_config
from ..console.auth import admin_name, new_password_hash
from ..secretref import REF_HELP
from ..times import iso_time
from .common import Exit, admin_audit, print_json, print_table, runtime, secret_option


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("add-admin", help="add an administrator of the web console ([admin_ui])")
    p.add_argument("--name", required=True, help="lower-case letters, digits and ._@-")
    p.add_argument(
        "--password-ref",
        help=f"{REF_HELP}; default: asked twice at the prompt (at least 12 characters)",
    )

    p = sub.add_parser("remove-admin", help="remove a console administrator; their sessions end")
    p.add_argument("--name", required=True)

    p = sub.add_parser("admins", help="list the console's administrators")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _password(args: argparse.Namespace) -> str:
    """The new administrator's password: from the reference, else typed twice at the terminal."""
    if args.password_ref:
        return secret_option(args.password_ref, "--password-ref")
    if not sys.stdin.isatty():
        raise bad_request("give --password-ref (no terminal to ask for the password at)")
    password = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("The same password again: ") != password:
        raise bad_request("the two passwords differ; nothing was changed")
    return password


def add_admin(args: argparse.Namespace, config_path: str) -> int:
    name = admin_name(args.name)
    config = load_config(config_path)
    password_hash = new_password_hash(_password(args))
    with runtime(config, []) as rt:
        rt.store.add_admin(
            name, password_hash, audit=admin_audit("add_admin", "done", None, person=name)
        )
    print(f"Administrator {name} added.")
    if config.admin_ui is None:
        print("The console is off: add an [admin_ui] section to use it.", file=sys.stderr)
    return Exit.DONE


def remove_admin(args: argparse.Namespace, config_path: str) -> int:
    name = args.name.strip().lower()
    with runtime(load_config(config_path), []) as rt:
        audit = admin_audit("remove_admin", "done", None, person=name)
        if not rt.store.remove_admin(name, audit=audit):
            print(f"No administrator {name!r}.", file=sys.stderr)
            return Exit.NOT_DONE
    print(f"Removed administrator {name}; their console sessions ended.")
    return Exit.DONE


def admins(args: argparse.Namespace, config_path: str) -> int:
    with runtime(load_config(config_path), []) as rt:
        accounts = rt.store.admins()
    records = [{"name": a.name, "created": iso_time(a.created)} for a in accounts]
    if args.json:
        for record in records:
            print_json(record)
    elif records:
        print_table(["ADMIN", "CREATED"], [[r["name"], r["created"]] for r in records])
    else:
        print("No administrators: add one with `admin add-admin --name NAME`.", file=sys.stderr)
    return Exit.DONE


COMMANDS: dict[str, Callable[[argparse.Namespace, str], int]] = {
    "add-admin": add_admin,
    "remove-admin": remove_admin,
    "admins": admins,
}
