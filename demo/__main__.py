"""python -m demo [run | pair | up | down | call | serve]

  run    (default) start everything, drive the real macro through the scenarios, print the
         table, stop everything; exit 0 only if every scenario behaved
  pair   the same with two connectors on one throwaway PostgreSQL: a lockout shared by both,
         the macro failing over, an administrator's one-time code when neither can be reached
  up     start everything, enroll the demo person, leave it running (described in
         .demo/stack.json, logs in .demo/up/)
  down   stop what `up` started
  call   verify | status | lock: one request signed with the device key to what `up` started
  serve  like up, but in the foreground: prints the description as one JSON line and stops
         everything when its standard input closes (for tests)

DEMO_PHOTOS=folder uses your own photos: the first image (by name) is the person enrolled, the
others are other people.
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", default="run", choices=("run", "pair", "up", "down", "call", "serve")
    )
    parser.add_argument("action", nargs="?", choices=("verify", "status", "lock"))
    args = parser.parse_args(argv)
    command = args.command
    if (command == "call") != (args.action is not None):
        parser.error("`call` takes one of verify, status, lock (and only `call` takes one)")
    # A plain `kill` must also stop what was started: exit through the `finally` blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from demo import background, pair, scenarios

    actions = {
        "run": scenarios.run_demo,
        "pair": pair.run_pair,
        "up": background.up,
        "down": background.down,
        "call": lambda: background.call(args.action),
        "serve": background.serve,
    }
    try:
        return actions[command]()
    except KeyboardInterrupt:
        print("\nInterrupted; everything started was stopped.", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"\nThe demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
