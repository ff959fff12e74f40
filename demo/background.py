"""`python -m demo up | down | call | serve`: the stack left running to try by hand (up, down,
call), or held for as long as the caller keeps this process's standard input open (serve)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from demo.launch import DEMO_DIR, console_line, description, enroll, fresh_folder, launch, say
from devkit.macro_client import answer_holds, send

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
    dev, sim, console = d["device"], d["simulator"], d["console"]
    switch = sim["switches"]
    control = (
        f'curl -s --cacert {sim["ca"]} -H "{sim["control_header"]}: {sim["control_token"]}" '
        f"{sim['control_url']} -d"
    )
    return f"""The demo stack is running; {dev["enrolled"]} is enrolled on device {dev["serial"]}.
Everything is described in {STACK_JSON} (the device key and the console's password are in
it: keep it private).

{console_line(console["url"], console["admin"], console["password"])}

Ask the connector what the macro asks, signed with the device key (protocol v2):
  .venv/bin/python -m demo call verify
  .venv/bin/python -m demo call status
  .venv/bin/python -m demo call lock

Change what the simulated camera sees:
  {control} '{json.dumps(switch["another person"])}'
  {control} '{json.dumps(switch["no face"])}'
  {control} '{json.dumps(switch["black frame (camera lid closed)"])}'
  {control} '{json.dumps(switch["enrolled person"])}'
  (any JPEG or PNG file works as "images"; {{"no_option_key": true}} removes the option key)

The comparison function alone: POST {d["function"]["url"]}/inspect with {{"image": "<base64>"}}.
Logs: {d["logs"]}/*.log
Stop everything: make demo-down   (or: .venv/bin/python -m demo down)"""


def call(action: str) -> int:
    """One signed request to the running stack's connector, as the macro makes it; prints the
    status, whether the answer's signature holds, and the answer."""
    if not STACK_JSON.exists():
        say("No demo stack is running: start one with `make demo-up`.")
        return 1
    described = json.loads(STACK_JSON.read_text())
    con, dev = described["connector"], described["device"]
    key = base64.urlsafe_b64decode(dev["key"] + "=")
    path = f"/v1/status?serial={dev['serial']}" if action == "status" else f"/v1/{action}"
    body = None if action == "status" else {"serial": dev["serial"]}
    answer = send(con["url"], path, key, dev["serial"], body, verify=con["ca"])
    signed = "signature holds" if answer_holds(key, answer) else "NOT SIGNED by the device key"
    print(f"HTTP {answer.status_code}, {signed}")
    print(answer.text)
    return 0 if answer.ok else 1


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
