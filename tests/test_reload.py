"""A changed configuration taken in place (connector/reload.py): in memory, what a reload swaps
into the Runtime and what it keeps, that a file with any problem changes nothing and is logged
once with every problem, and what waits for a restart; then the real service: a device added to
the file is served without a restart, a bad SIGHUP leaves it running on its old configuration,
and the fixed file is taken."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faceid_core.errors import FaceIdError
from faceid_core.logs import set_level
from flask.testing import FlaskClient

from connector.app import create_app
from connector.config import TlsPolicy, add_device, remove_device
from connector.config.edits import replace_file
from connector.memory import MemoryComparator, MemoryNotices
from connector.relay import FunctionClient
from connector.reload import REJECTED, ConfigWatcher, LastGood, stamp, worker_runtime
from connector.runtime import make_device_client
from connector.store import Store
from devkit.fakes.secret_manager import FakeSecretManager
from devkit.macro_client import authorization, send
from devkit.procs import ServerProcess, free_port
from devkit.secrets_used import register
from devkit.simulator import DeviceSimulator
from tests.support.memory_runtime import PICTURE, SERIALS, Rig

STORE_KEY = bytes(range(32))


def records(text: str) -> list[dict[str, Any]]:
    """The structured log lines in `text`."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def rejections(text: str) -> list[dict[str, Any]]:
    return [r for r in records(text) if r["message"] == REJECTED]


def eventually(condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """`condition()` once it is true; fails after `timeout_s` (generous: a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)
    return value


# --- in memory --------------------------------------------------------------------------------


@dataclass
class Watched:
    rig: Rig
    watcher: ConfigWatcher
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    def write(self, text: str) -> None:
        replace_file(str(self.path), text)

    def status(self, serial: str, client: FlaskClient | None = None) -> int:
        """GET /v1/status signed with `serial`'s key, through the app on the rig's runtime."""
        client = client or create_app(self.rig.rt).test_client()
        path = f"/v1/status?serial={serial}"
        key = self.rig.keys.get(serial) or self.rig.store.device_key(serial) or b"\0" * 32
        header = authorization(key, "GET", path, serial, b"", ts=int(self.rig.clock()))
        return client.get(path, headers={"Authorization": header}).status_code


@pytest.fixture
def watched(rig, monkeypatch) -> Iterator[Watched]:
    """The rig's runtime watched by a ConfigWatcher (called directly: no thread), after a first
    reload that builds its devices from the file as the service would."""
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", STORE_KEY.hex())
    monkeypatch.setenv("UNUSED", "device-password")
    path = Path(rig.rt.config.path)
    watcher = ConfigWatcher(rig.rt, str(path), seen=stamp(path))
    assert watcher.reload() is not None
    yield Watched(rig, watcher, path)
    watcher.close()
    set_level("INFO")


def test_a_device_added_to_the_file_is_served_after_a_reload(watched, capsys):
    rt = watched.rig.rt
    watched.rig.store.set_device_key("SIM0002", os.urandom(32))
    assert watched.status("SIM0002") == 401
    add_device(watched.path, serial="SIM0002", host="127.0.0.9", tls=TlsPolicy(insecure=True),
               username="faceid", password_ref="env:UNUSED")  # fmt: skip
    change = watched.watcher.reload(asked=False)
    assert change is not None and change.added == ("SIM0002",)
    assert (change.removed, change.changed, change.sections) == ((), (), ())
    assert rt.devices["SIM0002"].access.password == "device-password"
    assert watched.status("SIM0002") == 200
    [reloaded] = [r for r in records(capsys.readouterr().out) if r["message"].endswith("reloaded")]
    assert reloaded["devices_added"] == ["SIM0002"] and reloaded["devices"] == 3


def test_a_device_removed_from_the_file_is_refused_after_a_reload(watched):
    client = create_app(watched.rig.rt).test_client()  # the app reads the runtime per request
    assert watched.status(SERIALS[1], client) == 200
    assert remove_device(watched.path, SERIALS[1])
    change = watched.watcher.reload()
    assert change is not None and change.removed == (SERIALS[1],)
    assert watched.status(SERIALS[1], client) == 401
    assert watched.status(SERIALS[0], client) == 200


def test_a_file_with_problems_changes_nothing_and_lists_them_all_once(watched, capsys):
    rt = watched.rig.rt
    config, devices, lockout, function = rt.config, rt.devices, rt.lockout, rt.function
    good = watched.text
    capsys.readouterr()
    watched.write(good + "\n[server]\nport = 0\n[log]\nlevel = 'LOUD'\n")
    assert watched.watcher.reload(asked=False) is None
    assert (rt.config, rt.devices, rt.lockout, rt.function) == (config, devices, lockout, function)
    [rejected] = rejections(capsys.readouterr().out)
    assert rejected["severity"] == "ERROR"
    assert rejected["problems"] == [
        "server.port must be a whole number from 1 to 65535",
        "log.level must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
    ]
    assert watched.watcher.reload(asked=False) is None  # the same version, found again
    assert rejections(capsys.readouterr().out) == []
    assert watched.watcher.reload(asked=True) is None  # SIGHUP: said again
    assert len(rejections(capsys.readouterr().out)) == 1
    watched.write(good)
    assert watched.watcher.reload(asked=False) is not None


def test_a_secret_that_does_not_resolve_refuses_the_whole_file(watched, capsys, monkeypatch):
    monkeypatch.delenv("ABSENT", raising=False)
    rt = watched.rig.rt
    before = rt.devices
    add_device(watched.path, serial="SIM0002", host="127.0.0.9", tls=TlsPolicy(insecure=True),
               username="faceid", password_ref="env:ABSENT")  # fmt: skip
    watched.write(watched.text.replace("[policy]\n", "[policy]\nmax_failures = 2\n", 1))
    assert watched.watcher.reload() is None
    assert rt.devices is before and rt.config.policy.max_failures == 5
    [rejected] = rejections(capsys.readouterr().out)
    assert rejected["problems"] == [
        "devices[2].password: environment variable ABSENT is not set or empty"
    ]


def test_policy_applies_at_once_and_the_brake_keeps_its_counts(watched):
    rt = watched.rig.rt
    for _ in range(3):
        rt.auth_limiter.failed("192.0.2.7")
    rt.auth_limiter.check("192.0.2.7")  # 3 of 10: not yet refused
    policy = "[policy]\nmax_failures = 1\nfailed_auth_limit = 3\n"
    watched.write(watched.text.replace("[policy]\n", policy, 1))
    change = watched.watcher.reload()
    assert change is not None and change.sections == ("policy",)
    with pytest.raises(FaceIdError) as caught:
        rt.auth_limiter.check("192.0.2.7")
    assert caught.value.code == "rate_limited"
    watched.rig.admin_adds("Ada")
    assert watched.rig.verify().code == "not_recognized"
    assert watched.rig.verify().code == "locked_out"  # one failure locks now


def test_server_and_store_changes_wait_for_a_restart(watched, capsys):
    rt = watched.rig.rt
    server, store = rt.config.server, rt.config.store
    text = watched.text.replace('path = "state/faceid.db"', 'path = "elsewhere.db"')
    watched.write(text + "\n[server]\nport = 9443\nthreads = 4\n\n[log]\nlevel = 'DEBUG'\n")
    change = watched.watcher.reload()
    assert change is not None and change.sections == ("log",)
    assert change.restart == ("server.port", "server.threads", "store.path")
    assert (rt.config.server, rt.config.store) == (server, store)
    assert rt.config.log.level == "DEBUG"
    assert logging.getLogger("faceid").level == logging.DEBUG
    [warning] = [r for r in records(capsys.readouterr().out) if r["severity"] == "WARNING"]
    assert warning["message"] == "changed settings take effect at the next restart"
    assert warning["fields"] == ["server.port", "server.threads", "store.path"]


def test_a_changed_function_gets_a_new_client_and_the_old_one_is_closed_later(watched):
    rt = watched.rig.rt
    old, check = rt.function, rt.function_check
    assert isinstance(old, MemoryComparator)
    watched.write(watched.text.replace("[policy]\n", "[policy]\nmax_failures = 4\n", 1))
    assert watched.watcher.reload() is not None and rt.function is old  # [function] unchanged
    watched.write(watched.text.replace("[function]\n", "[function]\ntimeout_s = 3\n", 1))
    change = watched.watcher.reload()
    assert change is not None and "function" in change.sections
    assert isinstance(rt.function, FunctionClient) and rt.config.function.timeout_s == 3
    assert rt.function_check is not check  # /healthz asks the new client
    assert not old.closed  # a request may still hold it
    watched.watcher.close()  # the worker exits: what waits is closed at once
    assert old.closed


def test_changed_device_time_bounds_get_a_new_device_client(watched):
    rt = watched.rig.rt
    rt.device_client = old = make_device_client(rt.config, rt.store, rt.metrics)
    watched.write(watched.text + "\n[device_defaults]\nbudget_s = 9\n")
    change = watched.watcher.reload()
    assert change is not None and change.sections == ("device_defaults",)
    assert rt.device_client is not old and rt.device_client.budget_s == 9
    assert rt.attempt_lease_s == 9 + 2 + rt.config.function.timeout_s + 5


def test_webex_notices_are_rebuilt_only_when_webex_or_a_room_changes(watched, monkeypatch):
    rt = watched.rig.rt
    memory = rt.notices
    assert isinstance(memory, MemoryNotices)
    watched.write(watched.text + "\n[log]\nlevel = 'WARNING'\n")
    assert watched.watcher.reload() is not None and rt.notices is memory
    monkeypatch.setenv("BOT_TOKEN", "bot-token")
    webex = (
        '\n[webex]\nbot_token = "env:BOT_TOKEN"\nroom_id = "R"\napi_url = "http://127.0.0.1:9"\n'
    )
    watched.write(watched.text + webex)
    change = watched.watcher.reload()
    assert change is not None and "webex" in change.sections
    assert rt.notices is not memory and memory.closed_with is None
    watched.watcher.close()
    assert memory.closed_with is not None


def test_the_watcher_takes_a_changed_file_by_itself_and_sighup_at_once(watched, monkeypatch):
    rt = watched.rig.rt
    watcher = ConfigWatcher(rt, str(watched.path), seen=stamp(watched.path), every_s=0.05)
    watcher.start()
    try:
        assert remove_device(watched.path, SERIALS[1])
        eventually(lambda: SERIALS[1] not in rt.devices, "the removed device gone")
        # A secret changed, the file did not: only a request (SIGHUP) reads it again.
        monkeypatch.setenv("UNUSED", "rotated-password")
        watcher.request()
        eventually(
            lambda: rt.devices[SERIALS[0]].access.password == "rotated-password",
            "the rotated password taken",
        )
    finally:
        watcher.close()


def serials_served(path: Path, started, last_good: LastGood) -> list[str]:
    """The devices a worker (re)started now serves (worker_runtime, its runtime closed again)."""
    rt, _ = worker_runtime(str(path), started, last_good)
    try:
        return list(rt.devices)
    finally:
        rt.close()


def test_a_restarted_worker_takes_the_last_good_configuration_when_the_file_is_bad(watched, capsys):
    started = watched.rig.rt.config
    last_good = LastGood()
    last_good.save(watched.text, stamp(watched.path))
    assert serials_served(watched.path, started, last_good) == list(SERIALS)
    assert remove_device(watched.path, SERIALS[1])
    rt, seen = worker_runtime(str(watched.path), started, last_good)
    rt.close()
    assert list(rt.devices) == [SERIALS[0]] and seen == stamp(watched.path)
    assert last_good.load() == (watched.text, seen)  # a good file taken is the last good one
    good = watched.text
    watched.write(good + "\nbroken = [\n")
    capsys.readouterr()
    assert serials_served(watched.path, started, last_good) == [SERIALS[0]]
    out = capsys.readouterr().out
    [rejected] = rejections(out)
    assert rejected["problems"][0].startswith("not valid TOML")
    assert "the worker serves the last configuration taken" in out


def test_a_restarted_worker_whose_last_good_secrets_are_gone_serves_the_started_configuration(
    watched, capsys, monkeypatch
):
    started = watched.rig.rt.config
    last_good = LastGood()
    last_good.save(watched.text, stamp(watched.path))  # as the service starts
    monkeypatch.setenv("ROTATED_AWAY", "device-password")
    add_device(watched.path, serial="SIM0002", host="127.0.0.9", tls=TlsPolicy(insecure=True),
               username="faceid", password_ref="env:ROTATED_AWAY")  # fmt: skip
    assert serials_served(watched.path, started, last_good) == [*SERIALS, "SIM0002"]
    monkeypatch.delenv("ROTATED_AWAY")  # neither the file nor the last one taken builds now
    watched.write(watched.text + "\n[log]\nlevel = 'LOUD'\n")
    capsys.readouterr()
    assert serials_served(watched.path, started, last_good) == list(SERIALS)
    out = capsys.readouterr().out
    assert [r["message"] for r in records(out) if r["severity"] != "INFO"] == [
        REJECTED,
        "the worker could not start on the last configuration taken",
        "the worker serves the configuration the service started with",
    ]
    [failed] = [r for r in records(out) if r["message"].startswith("the worker could not")]
    assert (
        failed["error"]
        == "devices[SIM0002].password: environment variable ROTATED_AWAY is not set or empty"
    )


def test_a_last_good_record_left_half_written_is_refused_and_the_file_serves(watched, capsys):
    started = watched.rig.rt.config
    last_good = LastGood()
    last_good.save(watched.text.replace("[policy]\n", "[policy]\nmax_failures = 2\n"), None)
    os.ftruncate(last_good._fd, 80)  # a worker killed while it wrote
    with pytest.raises(FaceIdError, match="the last configuration taken is not whole"):
        last_good.load()
    assert serials_served(watched.path, started, last_good) == list(SERIALS)
    assert "the last configuration taken is not whole" in capsys.readouterr().out
    assert last_good.load()[0] == watched.text  # the file, taken, is kept whole again


def test_a_restarted_worker_with_nothing_kept_and_a_bad_file_serves_the_started_configuration(
    watched, capsys
):
    started = watched.rig.rt.config
    assert remove_device(watched.path, SERIALS[1])
    watched.write(watched.text + "\n[log]\nlevel = 'LOUD'\n")
    assert serials_served(watched.path, started, LastGood()) == list(SERIALS)
    out = capsys.readouterr().out
    assert "the worker serves the configuration the service started with" in out


# --- the real service -------------------------------------------------------------------------


def connector_config(port: int, function_port: int, sim: DeviceSimulator) -> str:
    return f"""\
[server]
port = {port}

[function]
url = "http://127.0.0.1:{function_port}/verify"
auth = "none"

[store]
path = "faceid.db"
key = "file:store.key"

[policy]
failed_auth_limit = 1000  # the test's refused requests must not turn into 429s

[device_defaults]
username = "faceid"
password = "file:device-password"

[[devices]]
serial = "FIRST01"
host = "{sim.host}"
tls = {{ fingerprint_sha256 = "{sim.fingerprint}" }}
"""


def children(pid: int | None) -> set[int]:
    """The processes `pid` started (HAProxy and gunicorn's worker)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def write_private(path: Path, data: str) -> None:
    path.write_text(data)
    path.chmod(0o600)


def worker_of(pid: int | None) -> int | None:
    """gunicorn's worker among the service's children (the other one is HAProxy), if one runs."""
    for child in children(pid):
        try:
            if Path(f"/proc/{child}/exe").resolve() == Path(sys.executable).resolve():
                return child
        except OSError:  # it has just exited
            continue
    return None


@dataclass
class Service:
    """What the real service's tests start from: its state written into tmp_path (a store key,
    the devices' password in file:device-password, each device's key in the store)."""

    tmp_path: Path
    password: str
    keys: dict[str, bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def path(self) -> Path:
        return self.tmp_path / "faceid.toml"

    def start(self, text: str, env: dict[str, str | None] | None = None) -> ServerProcess:
        self.path.write_text(text)
        return ServerProcess(
            [sys.executable, "-m", "connector", "--config", str(self.path), "serve"],
            env=env,
            url=self.url,
            log_prefix=self.tmp_path / "connector",
        ).start()

    def status(self, serial: str) -> int:
        target = f"/v1/status?serial={serial}"
        return send(self.url, target, self.keys[serial], serial, timeout=10).status_code


@pytest.fixture
def service(tmp_path) -> Service:
    password = secrets.token_urlsafe(18)
    register("device password", password)
    store_key = base64.b64encode(os.urandom(32)).decode()
    register("store key", store_key)
    write_private(tmp_path / "store.key", store_key + "\n")
    write_private(tmp_path / "device-password", password + "\n")
    keys = {serial: os.urandom(32) for serial in ("FIRST01", "NEW0001")}
    store = Store.open(tmp_path / "faceid.db", base64.b64decode(store_key))
    try:
        for serial, key in keys.items():
            register("device key", key)
            store.set_device_key(serial, key)
        store.add_reference("NEW0001", "Ada Lovelace", PICTURE)  # so that a verify reaches it
    finally:
        store.close()
    return Service(tmp_path, password, keys, free_port())


@pytest.mark.slow
def test_the_service_takes_changes_and_survives_a_bad_sighup(service, tmp_path):
    keys, url, path, status = service.keys, service.url, service.path, service.status
    with DeviceSimulator({"faceid": service.password}) as sim:
        connector = service.start(connector_config(service.port, free_port(), sim))
        with connector:
            connector.wait_http(f"{url}/healthz", timeout_s=60)
            assert (status("FIRST01"), status("NEW0001")) == (200, 401)

            # A device added to the file is served without a restart, with its password.
            add_device(path, serial="NEW0001", host=sim.host,
                       tls=TlsPolicy(fingerprint_sha256=sim.fingerprint))  # fmt: skip
            eventually(lambda: status("NEW0001") == 200, "the added device served")
            answer = send(url, "/v1/verify", keys["NEW0001"], "NEW0001", {"serial": "NEW0001"})
            assert answer.status_code == 200 and answer.json()["code"] == "engine_unavailable"
            assert sim.stats()["signins"] == 1  # it signed in with the resolved password

            # A bad file and SIGHUP: still running, still serving the old configuration, in the
            # same worker (gunicorn's master passes SIGHUP on instead of replacing it).
            workers = children(connector.pid)
            good = path.read_text()
            replace_file(str(path), good + "\n[log]\nlevel = 'LOUD'\nnope = 1\n")
            os.kill(connector.pid or 0, signal.SIGHUP)
            problems = [
                "log.level must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
                "log: unknown key 'nope'",
            ]
            eventually(
                lambda: any(r["problems"] == problems for r in rejections(connector.stdout())),
                "the rejection logged with every problem",
            )
            said = len(rejections(connector.stdout()))
            time.sleep(5)  # more than two polls of the file: the same version is not said again
            assert len(rejections(connector.stdout())) == said
            assert connector.returncode is None and children(connector.pid) == workers
            assert (status("FIRST01"), status("NEW0001")) == (200, 200)

            # The file fixed (and a device removed): taken.
            replace_file(str(path), good)
            assert remove_device(path, "FIRST01")
            os.kill(connector.pid or 0, signal.SIGHUP)
            eventually(lambda: status("FIRST01") == 401, "the removed device refused")
            assert status("NEW0001") == 200
            reloads = [r for r in records(connector.stdout()) if r["message"].endswith("reloaded")]
            assert reloads and reloads[0]["devices_added"] == ["NEW0001"]

            # A secret changed, the file did not: SIGHUP alone reads it again.
            rotated = secrets.token_urlsafe(18)
            register("device password", rotated)
            write_private(tmp_path / "device-password", rotated + "\n")
            os.kill(connector.pid or 0, signal.SIGHUP)
            eventually(
                lambda: any(
                    r.get("devices_changed") == ["NEW0001"] for r in records(connector.stdout())
                ),
                "the rotated password taken",
            )
            assert connector.returncode is None and children(connector.pid) == workers
    assert "Traceback" not in connector.stderr()


@pytest.mark.slow
def test_a_restarted_worker_serves_the_last_good_then_the_started_configuration(service, tmp_path):
    """gunicorn starts a worker again after it died (here: SIGKILL). The file broken, it serves
    the last configuration taken, which the worker before it kept in memory; that one's secret
    gone too, it serves the configuration the service started with. The service never stops."""
    with DeviceSimulator({"faceid": service.password}) as sim:
        connector = service.start(connector_config(service.port, free_port(), sim))
        with connector:
            connector.wait_http(f"{service.url}/healthz", timeout_s=60)
            write_private(tmp_path / "new-password", service.password + "\n")
            add_device(service.path, serial="NEW0001", host=sim.host,
                       tls=TlsPolicy(fingerprint_sha256=sim.fingerprint),
                       password_ref="file:new-password")  # fmt: skip
            eventually(lambda: service.status("NEW0001") == 200, "the added device served")

            def restart_worker() -> None:
                first = worker_of(connector.pid)
                assert first is not None
                os.kill(first, signal.SIGKILL)
                eventually(lambda: worker_of(connector.pid) not in (None, first), "a new worker")

            replace_file(str(service.path), service.path.read_text() + "\nbroken = [\n")
            restart_worker()
            assert (service.status("FIRST01"), service.status("NEW0001")) == (200, 200)
            assert "the worker serves the last configuration taken" in connector.stdout()

            (tmp_path / "new-password").unlink()
            restart_worker()
            assert (service.status("FIRST01"), service.status("NEW0001")) == (200, 401)
            said = connector.stdout()
            assert "the worker could not start on the last configuration taken" in said
            assert "the worker serves the configuration the service started with" in said
            assert connector.returncode is None
    assert "Traceback" not in connector.stderr()


@pytest.mark.slow
def test_a_sighup_while_the_worker_boots_is_kept_and_taken_once_it_serves(service):
    """The device password comes from a Secret Manager that takes seconds to answer, so the
    worker boots for that long; SIGHUPs sent to the service meanwhile (gunicorn's master passes
    them on) neither end the worker nor are lost: it reloads once it serves."""
    boot_s = 4.0  # ample to send the SIGHUPs within, however busy the machine
    with (
        FakeSecretManager(delay_s=boot_s) as gsm,
        DeviceSimulator({"faceid": service.password}) as sim,
    ):
        version = gsm.add_version("projects/p/secrets/device-password", service.password)
        text = connector_config(service.port, free_port(), sim).replace(
            'password = "file:device-password"', f'password = "gsm:{version}"'
        )
        connector = service.start(text, env={"SECRET_MANAGER_EMULATOR_HOST": gsm.address})
        with connector:
            booting = eventually(lambda: worker_of(connector.pid), "the worker forked", 60)
            for _ in range(5):
                os.kill(connector.pid or 0, signal.SIGHUP)
                time.sleep(0.1)
            # Only the master's read has been answered: the worker was still booting.
            assert gsm.access_count() == 1
            gsm.delay_s = 0.0
            connector.wait_http(f"{service.url}/healthz", timeout_s=60)
            assert service.status("FIRST01") == 200
            assert "was sent SIGHUP" not in connector.stdout()  # gunicorn: a worker it killed
            assert worker_of(connector.pid) == booting
            eventually(
                lambda: any(
                    r["message"] == "configuration reloaded" for r in records(connector.stdout())
                ),
                "the reload asked for while the worker booted",
            )
            assert connector.returncode is None
    assert "Traceback" not in connector.stderr()
