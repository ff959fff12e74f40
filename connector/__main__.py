"""`python -m connector serve|admin ...`: the service and the administrator's tools."""

from __future__ import annotations

import argparse
import sys

from faceverify.errors import FaceIdError


def main(argv: list[str] | None = None) -> int:
    from . import admin
    from .config import config_path

    parser = argparse.ArgumentParser(prog="python -m connector", description=__doc__)
    parser.add_argument("--config", help="connector TOML file (default: $FACEID_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the connector service (gunicorn, threads)")
    admin.add_parsers(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from .service import run

            run(config_path(args.config))
            return 0
        return admin.run(args, config_path(args.config))
    except FaceIdError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
