"""What a device's macro runtime does with the macro `admin provision` pushed, for tests that run
no Node: read the SETTINGS written into it, and at each runtime restart let it report in as the
macro would (the real macro does this in the demo and in macro/test)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from connector.provisioning import SETTINGS_LINE
from devkit.macro_client import send


def pushed_settings(source: str) -> dict[str, Any]:
    """The SETTINGS values provisioning writes, as JSON values."""
    return {
        m["key"]: json.loads(m[0].split(": ", 1)[1].removesuffix(","))
        for m in SETTINGS_LINE.finditer(source)
    }


def device_key(settings: dict[str, Any]) -> bytes:
    """The 32-byte key of SETTINGS.deviceKey (base64url without padding)."""
    return base64.urlsafe_b64decode(str(settings["deviceKey"]) + "=")


def reporter(connector_url: str, ca_path: str, serial: str) -> Callable[[dict[str, Any]], None]:
    """What the pushed macro does once it has started: report in to the connector with a signed
    POST /v1/status, with the key and push id provisioning wrote into it; raises if refused."""

    def report(settings: dict[str, Any]) -> None:
        answer = send(
            connector_url,
            "/v1/status",
            device_key(settings),
            serial,
            {"serial": serial, "push": settings["pushId"]},
            verify=ca_path,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"{serial}: the report was refused: {answer.text[:300]}")

    return report


@contextmanager
def reporting_runtime(
    read_macros: Callable[[], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    poll_s: float = 0.05,
) -> Iterator[list[dict[str, Any]]]:
    """While inside: after each restart of the device's macro runtime (`read_macros` gives
    GET /_sim/macros), `report(settings)` for each macro then running. Yields the settings
    reported, in order."""
    reported: list[dict[str, Any]] = []
    stop = threading.Event()

    def run() -> None:
        seen = read_macros()["restarts"]
        while not stop.wait(poll_s):
            state = read_macros()
            if state["restarts"] == seen:
                continue
            seen = state["restarts"]
            for macro in state["macros"]:
                if macro["name"] in state["running"]:
                    settings = pushed_settings(macro["source"])
                    report(settings)
                    reported.append(settings)

    thread = threading.Thread(target=run, name="pushed-macro", daemon=True)
    thread.start()
    try:
        yield reported
    finally:
        stop.set()
        thread.join()
