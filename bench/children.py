"""Measurements that need a fresh interpreter of their own (its peak memory is that run's)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from devkit.procs import REPO


def child_json(args: list[str], what: str, timeout_s: float = 600) -> Any:
    """Run `python ARGS` from the repository root; its last stdout line is its JSON answer."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])
