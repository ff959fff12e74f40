"""What the connector's end-to-end tests and benchmarks share: the checks the macro makes on every
verify answer (devkit/macro_client.py, written from docs/api.md, not with the connector's own
code), device session counts, extra devices written into the generated TOML, and a look into the
store the running connector writes."""

from __future__ import annotations

import base64
import io
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from connector.store import Store
from devkit.fakes.webex import FakeWebex
from devkit.macro_client import answer_holds, sent_nonce
from devkit.photos import write_frames
from devkit.simulator import DeviceSimulator
from devkit.stack import SIM_ACCOUNT, SimDevice, Stack, start_stack

ANSWER_KEYS = {
    "verdict",
    "code",
    "person",
    "message",
    "retry_after_s",
    "serial",
    "nonce",
    "expires_at",
}


def signed_answer(device: SimDevice, response: requests.Response) -> dict[str, Any]:
    """The JSON of an answer whose X-FaceID-Signature holds for this device and request."""
    assert answer_holds(device.key, response), f"answer not signed: {response.text}"
    return dict(response.json())


def verify(stack: Stack, device: SimDevice) -> dict[str, Any]:
    """One login attempt, checked as the macro checks it: 200, signed with this device's key
    over the nonce sent, serial and nonce echoed, valid for at most 30 s. An answer with a code
    is never a match."""
    asked = time.time()
    response = stack.call("/v1/verify", device, {"serial": device.serial})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-Id"]
    answer = signed_answer(device, response)
    assert set(answer) == ANSWER_KEYS
    assert (answer["serial"], answer["nonce"]) == (device.serial, sent_nonce(response))
    assert asked < answer["expires_at"] <= time.time() + 30
    assert isinstance(answer["message"], str) and 0 < len(answer["message"]) <= 255
    if answer["verdict"] == "match":
        assert answer["code"] is None and answer["person"]
    else:
        assert answer["code"] and answer["person"] is None
    return answer


def assert_error(answer: dict[str, Any], code: str) -> None:
    assert (answer["verdict"], answer["code"]) == ("error", code), answer


def enroll(stack: Stack, device: SimDevice, person: str) -> dict[str, Any]:
    response = stack.call("/v1/enroll", device, {"serial": device.serial, "person": person})
    assert response.status_code == 200, response.text
    return signed_answer(device, response)


def status(stack: Stack, device: SimDevice) -> dict[str, Any]:
    response = stack.call(f"/v1/status?serial={device.serial}", device)
    assert response.status_code == 200, response.text
    return signed_answer(device, response)


def sim_stats(device: SimDevice) -> dict[str, Any]:
    if device.simulator is not None:
        return device.simulator.stats()
    return device.stats()


def session_totals(stack: Stack) -> dict[str, int]:
    """Device web sessions over every device of the stack: sign-ins, sign-outs, open now."""
    totals = {"signins": 0, "signouts": 0, "open_sessions": 0}
    for device in stack.devices:
        stats = sim_stats(device)
        for key in totals:
            totals[key] += stats[key]
    return totals


def open_sessions(devices: list[SimDevice]) -> dict[str, int]:
    """Device web sessions left open, per device that has any."""
    counts = {d.serial: sim_stats(d)["open_sessions"] for d in devices}
    return {serial: count for serial, count in counts.items() if count}


@dataclass
class ExtraDevice:
    """A [[devices]] entry added to the generated TOML, reaching `sim` (or any host)."""

    device: SimDevice
    toml: str


def extra_device(
    serial: str,
    *,
    sim: DeviceSimulator | None = None,
    host: str | None = None,
    fingerprint: str | None = None,
    password_ref: str,
) -> ExtraDevice:
    host = host or (sim.host if sim else None)
    fingerprint = fingerprint or (sim.fingerprint if sim else None)
    assert host and fingerprint
    device = SimDevice(
        serial=serial,
        key=secrets.token_bytes(32),
        process=None,
        url=f"https://{host}",
        fingerprint=fingerprint,
        control_token=sim.control_token if sim else "",
        ca_path=sim.ca_pem_path if sim else "",
        simulator=sim,
    )
    toml = "\n".join(
        [
            "[[devices]]",
            f'serial = "{serial}"',
            f'host = "{host}"',
            f'username = "{SIM_ACCOUNT}"',
            f'password = "{password_ref}"',
            f'tls = {{ fingerprint_sha256 = "{fingerprint}" }}',
            "",
        ]
    )
    return ExtraDevice(device, toml)


def open_store(stack: Stack) -> Store:
    """The running connector's store, opened with its key (SQLite WAL allows a second reader)."""
    key = base64.b64decode((stack.workdir / "store.key").read_bytes())
    return Store.open(stack.workdir / "faceid.db", key)


def image_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.size


def session_from(source_ip: str) -> requests.Session:
    """A client whose connections leave from `source_ip` (any 127.x address): the connector's
    brake on failed authentication counts per source address."""

    class _Bound(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["source_address"] = (source_ip, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("https://", _Bound())
    return session


def write_jpeg(path: Path, image: Image.Image) -> Path:
    image.save(path, "JPEG", quality=90)
    return path


@dataclass
class TwoDevices:
    """A connector that tells a fake Webex: its own device (room) and a second one (board)."""

    stack: Stack
    webex: FakeWebex
    room: SimDevice
    board: SimDevice
    frames: dict[str, Path]
    board_password: str


@contextmanager
def two_devices_with_webex(
    tmp_path_factory: Any, *, board_toml: str = "", webex_toml: tuple[str, ...] = ()
) -> Iterator[TwoDevices]:
    """`board_toml` is added to the board's [[devices]] block, `webex_toml` to [webex]."""
    frames = write_frames(tmp_path_factory.mktemp("frames"))
    password = secrets.token_urlsafe(18)
    board_sim = DeviceSimulator({SIM_ACCOUNT: password}, frames["grace_hopper"]).start()
    board = extra_device("XBOARD", sim=board_sim, password_ref="env:BOARD_PASSWORD")
    webex = FakeWebex().start()
    stack = None
    try:
        stack = start_stack(
            tmp_path_factory.mktemp("stack"),
            images=frames["grace_hopper"],
            devices=1,
            in_process=True,
            extra_toml="\n".join(
                [
                    "",
                    board.toml + board_toml,
                    "[webex]",
                    'bot_token = "env:WEBEX_BOT_TOKEN"',
                    *webex_toml,
                    f'api_url = "{webex.api_url}"',
                    "",
                ]
            ),
            connector_env={"BOARD_PASSWORD": password, "WEBEX_BOT_TOKEN": webex.token},
            extra_keys={board.device.serial: board.device.key},
        )
        yield TwoDevices(stack, webex, stack.devices[0], board.device, frames, password)
    finally:
        if stack is not None:
            stack.stop()
        webex.close()
        board_sim.close()
