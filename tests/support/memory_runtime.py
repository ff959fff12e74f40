"""A connector Runtime on the in-memory ports (connector/memory.py) and a real Store in a temporary
SQLite file: the rules of verification.py, enrollment.py and app.py run in milliseconds, with no
socket, process or face engine. `Rig` holds the fakes, so a test scripts them and reads back what
they were asked."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from connector.config import load_config
from connector.device import DeviceAccess, TlsPolicy
from connector.enrollment import EnrollOutcome, enroll
from connector.lockout import Lockout
from connector.memory import (
    MemoryCamera,
    MemoryComparator,
    MemoryNotices,
    SettableClock,
    Verdict,
)
from connector.runtime import Device, Runtime
from connector.store import Store
from connector.verification import Outcome, verify
from tests.support.connector_config import BASE

SERIALS = ("SIM0000", "SIM0001")
REQUEST_ID = "0123456789abcdef0123456789abcdef"


def camera_jpeg(colour: tuple[int, int, int] = (120, 110, 100)) -> bytes:
    """A 640x480 camera frame: what the fakes compare is scripted, so any picture will do."""
    out = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(out, "JPEG", quality=80)
    return out.getvalue()


PICTURE = camera_jpeg()


@dataclass
class Rig:
    rt: Runtime
    store: Store
    camera: MemoryCamera
    function: MemoryComparator
    notices: MemoryNotices
    clock: SettableClock
    devices: list[Device]
    keys: dict[str, bytes]  # each device's protocol key, as the macro holds it

    @property
    def device(self) -> Device:
        return self.devices[0]

    @property
    def serial(self) -> str:
        return self.device.serial

    def verify(self, device: Device | None = None) -> Outcome:
        return verify(self.rt, device or self.device, REQUEST_ID)

    def enroll(self, person: str, device: Device | None = None) -> EnrollOutcome:
        return enroll(self.rt, device or self.device, person, REQUEST_ID)

    def admin_adds(self, person: str, device: Device | None = None) -> None:
        """An administrator's enrollment (admin enroll): straight into the store, any time."""
        self.store.add_reference((device or self.device).serial, person, PICTURE, now=self.clock())

    def match_of(self, person: str, device: Device | None = None) -> Verdict:
        """The scripted verdict that matches `person` among the references the next verify
        sends (their ids are opaque: the comparator names one by its place)."""
        sent = self.store.references_for((device or self.device).serial)
        return Verdict("match", reference=[r.person for r in sent].index(person), score=0.9)

    def people(self, device: Device | None = None) -> dict[str, int]:
        return {p.name: p.references for p in self.store.people((device or self.device).serial)}

    def unlocked(self, device: Device | None = None) -> bool:
        serial = (device or self.device).serial
        return self.store.is_unlocked(serial, self.rt.config.policy.unlock_ttl_s, self.clock())

    def failures(self, device: Device | None = None) -> int:
        return self.store.lockout_state((device or self.device).serial).failures

    def close(self) -> None:
        self.store.close()


def memory_rig(tmp_path: Path, policy: str = "", **runtime: Any) -> Rig:
    """A Runtime for SERIALS on the in-memory ports; `policy` is the body of a [policy] table
    (e.g. "max_failures = 2"), read by the connector's own config loader."""
    devices_toml = "".join(
        f'\n[[devices]]\nserial = "{serial}"\nhost = "127.0.0.{i + 1}"\nusername = "faceid"\n'
        f'password = "env:UNUSED"\ntls = {{ insecure = true }}\n'
        for i, serial in enumerate(SERIALS)
    )
    config = load_config(_write(tmp_path, BASE + f"\n[policy]\n{policy}\n" + devices_toml))
    store = Store.open(tmp_path / "faceid.db", os.urandom(32))
    keys = {serial: os.urandom(32) for serial in SERIALS}
    for serial, key in keys.items():
        store.set_device_key(serial, key)
    clock = SettableClock()
    camera = MemoryCamera(PICTURE)
    function = MemoryComparator()
    notices = MemoryNotices()
    devices = [
        Device(serial, f"Room {serial}", _access(serial, f"127.0.0.{i + 1}"))
        for i, serial in enumerate(SERIALS)
    ]
    rt = Runtime(
        config=config,
        store=store,
        devices={device.serial: device for device in devices},
        device_client=camera,
        function=function,
        lockout=Lockout(store, config.policy, clock),
        clock=clock,
        notices=notices,
        **runtime,
    )
    return Rig(rt, store, camera, function, notices, clock, devices, keys)


def _access(serial: str, host: str) -> DeviceAccess:
    return DeviceAccess(host, "faceid", "unused", TlsPolicy(insecure=True), serial=serial)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faceid.toml"
    path.write_text(text)
    return path
