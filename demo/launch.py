"""What every demo command does first: camera frames, the stack with one device and the web
console, the face models loaded, and (for `up` and `serve`) the person enrolled."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.macro_client import key_text
from devkit.photos import DemoFrames, demo_frames
from devkit.stack import SimDevice, Stack, start_stack, warm_up

#: The demo's work folder (git-ignored); FACEID_DEMO_DIR moves it (tests use a temporary one).
DEMO_DIR = Path(os.environ.get("FACEID_DEMO_DIR") or Path(__file__).resolve().parents[1] / ".demo")


@dataclass
class Launched:
    stack: Stack
    frames: DemoFrames

    @property
    def device(self) -> SimDevice:
        return self.stack.devices[0]


def say(text: str, *, end: str = "\n") -> None:
    """Progress for people, on stderr: stdout stays for what scripts read."""
    print(text, end=end, file=sys.stderr, flush=True)


@contextmanager
def step(text: str) -> Iterator[None]:
    say(f"{text}…", end=" ")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        say("failed")
        raise
    say(f"done ({time.monotonic() - started:.1f} s)")


def fresh_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def launch(workdir: Path, **pair: Any) -> Launched:
    """Start the stack in `workdir` with the demo's frames (DEMO_PHOTOS=folder: your own photos)
    and warm up the function; the caller stops it. `pair`: start_stack's store_url,
    store_password_ref, connectors and policy (`python -m demo pair`); without them one
    connector on SQLite, with the web console (which one connector serves)."""
    photos = os.environ.get("DEMO_PHOTOS")
    frames = demo_frames(workdir / "frames", Path(photos) if photos else None)
    connectors = pair.get("connectors", 1)
    what = "the connector" if connectors == 1 else f"{connectors} connectors"
    with step(f"Starting the comparison function, the device simulator and {what}"):
        stack = start_stack(
            workdir / "stack", images=frames.enrolled, console=connectors == 1, **pair
        )
    try:
        if stack.console_admin is not None:
            say(console_line(stack.console_url, *stack.console_admin))
        with step("Warming up the comparison function (its first comparison)"):
            warm_up(stack, frames.enrolled)
    except BaseException:
        stack.stop()
        raise
    return Launched(stack, frames)


def console_line(url: str, name: str, password: str) -> str:
    """Where the web console is and how to log in (its password is made for this run)."""
    return f"Console: {url}/  (log in as {name} / {password})"


def enroll(launched: Launched) -> dict[str, Any]:
    """Enroll the demo's person through the connector's API (allowed: nobody is enrolled yet)."""
    device = launched.device
    body = {"serial": device.serial, "person": launched.frames.person}
    answer = launched.stack.call("/v1/enroll", device, body).json()
    if answer.get("result") != "enrolled":
        raise RuntimeError(f"enrolling {launched.frames.person} failed: {answer.get('message')}")
    return dict(answer)


def description(launched: Launched) -> dict[str, Any]:
    """Everything a person or a script needs to use the running stack (`.demo/stack.json`)."""
    stack, device, frames = launched.stack, launched.device, launched.frames
    admin, password = stack.console_admin or (None, None)
    person = {"images": None, "black": False, "no_option_key": False}
    return {
        "connector": {
            "url": stack.connector_url,
            "ca": str(stack.ca_path),
            "config": str(stack.config_path),
        },
        "device": {
            "serial": device.serial,
            "key": key_text(device.key),
            "enrolled": frames.person,
        },
        "function": {"url": stack.function_url},
        "console": {"url": stack.console_url, "admin": admin, "password": password},
        "simulator": {
            "url": device.url,
            "ca": device.ca_path,
            "control_url": f"{device.url}/_sim/control",
            "control_header": "X-Sim-Control",
            "control_token": device.control_token,
            "switches": {
                "enrolled person": {**person, "images": str(frames.enrolled)},
                "another person": {**person, "images": str(frames.others[0])},
                "no face": {**person, "images": str(frames.no_face)},
                "black frame (camera lid closed)": {"black": True},
                "no Remote Monitoring option key": {"no_option_key": True},
            },
        },
        "frames": {
            "enrolled": str(frames.enrolled),
            "others": [str(p) for p in frames.others],
            "no_face": str(frames.no_face),
        },
        "logs": str(stack.workdir),
        "pids": {name: proc.pid for name, proc in stack.processes().items()},
    }
