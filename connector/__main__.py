"""`python -m connector serve|admin ...|config-reference`: the service, the administrator's tools.

`config-reference` prints README's table of the TOML file's fields (connector/config/schema.py).
"""

from __future__ import annotations

import argparse
import sys

from faceid_core.errors import FaceIdError
from faceid_core.logs import logs_to_stderr


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error that stops it is one line on stderr and its family's status."""
    from . import admin
    from .config import config_path

    parser = argparse.ArgumentParser(prog="python -m connector", description=__doc__)
    parser.add_argument("--config", help="connector TOML file (default: $FACEID_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the connector service (gunicorn, threads)")
    commands.add_parser(
        "config-reference", help="print README's table of the TOML file's fields (Markdown)"
    )
    admin.add_parsers(commands)
    args = parser.parse_args(argv)
    if args.command == "config-reference":  # needs no configuration
        from .config import reference

        print(reference(), end="")
        return admin.Exit.DONE
    try:
        if args.command == "serve":
            from .service import run

            run(config_path(args.config))
            return admin.Exit.DONE
        with logs_to_stderr():  # stdout is for the results
            return admin.run(args, config_path(args.config))
    except FaceIdError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return admin.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
