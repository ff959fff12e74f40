"""`python -m demo up | down | serve`: the stack left running to try by hand (up, down), or held
for as long as the caller keeps this process's standard input open (serve, for tests)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from demo.launch import DEMO_DIR, description, enroll, fresh_folder, launch, say

STACK_JSON = DEMO_DIR / "stack.json"
#: What each process's command line holds: a pid reused by something else is never signalled.
MARKERS = {"function": "functions-framework", "connector": "connector", "simulator": "simulator"}
STOP_WAIT_S = 10.0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _ours(name: str, pid: int) -> bool:
    """Alive, and still the process we started (its command line names it)."""
    marker = next((m for key, m in MARKERS.items() if name.startswith(key)), None)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker is not None and marker in cmdline


def _running(described: dict[str, Any]) -> dict[str, int]:
    return {name: pid for name, pid in described["pids"].items() if pid and _ours(name, pid)}


def up() -> int:
    if STACK_JSON.exists() and _running(json.loads(STACK_JSON.read_text())):
        say(f"The demo stack is already running (see {STACK_JSON}); stop it with `make demo-down`.")
        return 1
    launched = launch(fresh_folder(DEMO_DIR / "up"))
    try:
        enroll(launched)
        described = description(launched)
        _write_private(STACK_JSON, json.dumps(described, indent=2) + "\n")
        launched.stack.detach()
    except BaseException:
        launched.stack.stop()
        raise
    print(how_to(described))
    return 0


def how_to(d: dict[str, Any]) -> str:
    """Copy-paste instructions for the running stack."""
    con, dev, sim = d["connector"], d["device"], d["simulator"]
    auth = f'-H "Authorization: Bearer {dev["token"]}"'
    nonce = '"nonce": "demo-\'$(date +%s%N)\'"'  # the shell fills in a fresh nonce
    switch = sim["switches"]
    control = (
        f'curl -s --cacert {sim["ca"]} -H "{sim["control_header"]}: {sim["control_token"]}" '
        f"{sim['control_url']} -d"
    )
    return f"""The demo stack is running; {dev["enrolled"]} is enrolled on device {dev["serial"]}.
Everything is described in {STACK_JSON} (the device token is in it: keep it private).

Ask the connector what the macro asks (verify, status, lock):
  curl -s --cacert {con["ca"]} {auth} {con["url"]}/v1/verify \\
       -d '{{"serial": "{dev["serial"]}", {nonce}}}'
  curl -s --cacert {con["ca"]} {auth} "{con["url"]}/v1/status?serial={dev["serial"]}"
  curl -s --cacert {con["ca"]} {auth} {con["url"]}/v1/lock -d '{{"serial": "{dev["serial"]}"}}'

Change what the simulated camera sees:
  {control} '{json.dumps(switch["another person"])}'
  {control} '{json.dumps(switch["no face"])}'
  {control} '{json.dumps(switch["black frame (camera lid closed)"])}'
  {control} '{json.dumps(switch["enrolled person"])}'
  (any JPEG or PNG file works as "images"; {{"no_option_key": true}} removes the option key)

The comparison function alone: POST {d["function"]["url"]}/inspect with {{"image": "<base64>"}}.
Logs: {d["logs"]}/*.log
Stop everything: make demo-down   (or: .venv/bin/python -m demo down)"""


def down() -> int:
    if not STACK_JSON.exists():
        say("Nothing to stop: no demo stack is described in .demo/stack.json.")
        return 0
    described = json.loads(STACK_JSON.read_text())
    running = _running(described)
    for name, pid in running.items():
        # Each process leads its own group (gunicorn's workers are in it); SIGINT is gunicorn's
        # quick shutdown.
        _signal_group(pid, signal.SIGINT if name in ("function", "connector") else signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while any(_ours(n, p) for n, p in running.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, pid in running.items():
        if _ours(name, pid):
            _signal_group(pid, signal.SIGKILL)
    STACK_JSON.unlink()
    say(f"Stopped {', '.join(running) or 'nothing (it had already stopped)'}.")
    return 0


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def serve() -> int:
    """Start, enroll, print the description as one JSON line, and stop when stdin closes."""
    workdir = fresh_folder(DEMO_DIR / f"serve-{os.getpid()}")
    try:
        launched = launch(workdir)
        try:
            enroll(launched)
            print(json.dumps(description(launched)), flush=True)
            sys.stdin.read()
        finally:
            launched.stack.stop()
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
