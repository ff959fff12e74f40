"""What the connector's end-to-end tests share: the checks the macro makes on every verify answer
(recomputed here from docs/api.md, not with the connector's own code), extra devices written into
the generated TOML, and a look into the store the running connector writes."""

from __future__ import annotations

import base64
import hashlib
import hmac
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

from connector.auth import token_hash
from connector.simulator import DeviceSimulator
from connector.store import Store
from demo.photos import write_frames
from demo.stack import SIM_ACCOUNT, SimDevice, Stack, start_stack
from tests.fakes.webex import FakeWebex

ANSWER_KEYS = {
    "verdict",
    "code",
    "person",
    "message",
    "retry_after_s",
    "nonce",
    "expires_at",
    "signature",
}


def fresh_nonce() -> str:
    return secrets.token_urlsafe(24)


def expected_signature(token: str, answer: dict[str, Any], serial: str) -> str:
    """docs/api.md §2: HMAC-SHA256 keyed with the device token over serial|nonce|verdict|person|
    expires_at, person empty when null, expires_at in decimal."""
    message = "|".join(
        [
            serial,
            answer["nonce"],
            answer["verdict"],
            answer["person"] or "",
            str(answer["expires_at"]),
        ]
    )
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def verify(stack: Stack, device: SimDevice) -> dict[str, Any]:
    """One login attempt, checked as the macro checks it: 200, signed with this device's token,
    the nonce echoed, valid for at most 60 s. An answer with a code is never a match."""
    nonce = fresh_nonce()
    asked = time.time()
    response = stack.call("/v1/verify", device, {"serial": device.serial, "nonce": nonce})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-Id"]
    answer = response.json()
    assert set(answer) == ANSWER_KEYS
    assert answer["nonce"] == nonce
    assert answer["signature"] == expected_signature(device.token, answer, device.serial)
    assert asked < answer["expires_at"] <= time.time() + 60
    assert isinstance(answer["message"], str) and 0 < len(answer["message"]) <= 255
    if answer["verdict"] == "match":
        assert answer["code"] is None and answer["person"]
    else:
        assert answer["code"] and answer["person"] is None
    return dict(answer)


def assert_error(answer: dict[str, Any], code: str) -> None:
    assert (answer["verdict"], answer["code"]) == ("error", code), answer


def enroll(stack: Stack, device: SimDevice, person: str) -> dict[str, Any]:
    response = stack.call("/v1/enroll", device, {"serial": device.serial, "person": person})
    assert response.status_code == 200, response.text
    return dict(response.json())


def status(stack: Stack, device: SimDevice) -> dict[str, Any]:
    response = stack.call(f"/v1/status?serial={device.serial}", device)
    assert response.status_code == 200, response.text
    return dict(response.json())


def sim_stats(device: SimDevice) -> dict[str, Any]:
    if device.simulator is not None:
        return device.simulator.stats()
    return device.stats()


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
    token = secrets.token_urlsafe(32)
    device = SimDevice(
        serial=serial,
        token=token,
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
            f'token_sha256 = "{token_hash(token)}"',
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
        )
        yield TwoDevices(stack, webex, stack.devices[0], board.device, frames, password)
    finally:
        if stack is not None:
            stack.stop()
        webex.close()
        board_sim.close()
