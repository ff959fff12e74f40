"""Start the local stack — the function (functions-framework), one device simulator per device and
the connector (HTTPS, gunicorn) — with a generated TOML file and fresh keys on free 127.0.0.1
ports. Used by `make demo`, the integration tests and the end-to-end benchmarks.

Simulators run one process per device, all devices in one process (shared_simulator=True), or
as threads of the caller (in_process=True): fifty devices then cost fifty sockets instead of fifty
interpreters. Each process writes its output to WORKDIR/NAME.stdout.log and .stderr.log.

With connectors=N (and a PostgreSQL store: store_url, store_password_ref) N connectors serve the
same devices from one database, as a redundant pair does: the same configuration but for the
listening port (WORKDIR/faceid.toml, faceid-2.toml, ...); Stack.connectors lists them.

With console=True the connector also serves the administrators' web console ([admin_ui]) on a
port of its own, with one administrator whose password is made for the run (Stack.console_admin).

Beside it, what the demo, benchmarks and load test do with a stack: a fake MXFace process that
always matches, the function warmed up, people enrolled before measuring, the connector's log."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from connector.console.auth import new_password_hash
from connector.secretref import resolve_secret
from connector.store import Store
from devkit.certs import self_signed_identity
from devkit.macro_client import send
from devkit.photos import GRACE_FACE_BOX
from devkit.procs import ServerProcess, free_port, start_function, start_module
from devkit.secrets_used import register as register_secret
from devkit.simulator import DeviceSimulator

SIM_ACCOUNT = "faceid-connector"
#: The simulated devices' administrator (Admin role), for `admin provision`.
SIM_ADMIN = "admin"
#: The web console's administrator of a stack started with console=True.
CONSOLE_ADMIN = "admin"


@dataclass
class SimDevice:
    serial: str
    key: bytes  # the device key of protocol v2 (32 bytes)
    process: ServerProcess | None  # None: in this process (`simulator`) or not ours to stop
    url: str
    fingerprint: str
    control_token: str
    ca_path: str
    simulator: DeviceSimulator | None = None

    def __post_init__(self) -> None:
        register_secret("device key", self.key)  # the test run's leak scan looks for it

    def control(self, **switches: Any) -> dict[str, Any]:
        """Flip simulator switches (images=PATH, black=True, no_option_key=True, slow_s=...)."""
        answer = requests.post(
            f"{self.url}/_sim/control",
            json=switches,
            headers={"X-Sim-Control": self.control_token},
            verify=self.ca_path,
            timeout=5,
        )
        answer.raise_for_status()
        return dict(answer.json())

    def stats(self) -> dict[str, Any]:
        return self._read("stats")

    def macros(self, session: requests.Session | None = None) -> dict[str, Any]:
        """The device's macros ({"macros": [{name, active, source}], "restarts", "running"});
        `session` keeps the connection for a caller that asks often."""
        return self._read("macros", session)

    def configuration(self) -> dict[str, Any]:
        """Every configuration leaf ("Macros Mode": "On", ...) and "ca_certificates"."""
        return self._read("config")

    def _read(self, what: str, session: requests.Session | None = None) -> dict[str, Any]:
        answer = (session or requests).get(
            f"{self.url}/_sim/{what}",
            headers={"X-Sim-Control": self.control_token},
            verify=self.ca_path,
            timeout=5,
        )
        answer.raise_for_status()
        return dict(answer.json())


@dataclass
class Stack:
    workdir: Path
    function: ServerProcess
    connector: ServerProcess
    devices: list[SimDevice]
    config_path: Path
    ca_path: Path
    #: `--admin-password-ref` of `admin provision`: the simulators' SIM_ADMIN password.
    device_admin_ref: str = ""
    extra: list[ServerProcess] = field(default_factory=list)
    #: console=True: the console's URL, and the (name, password) that logs in to it.
    console_url: str = ""
    console_admin: tuple[str, str] | None = field(default=None, repr=False)
    #: connectors=N: the second to the Nth connector (`connector` is the first).
    peers: list[ServerProcess] = field(default_factory=list)

    @property
    def connector_url(self) -> str:
        return self.connector.url or ""

    @property
    def connectors(self) -> list[ServerProcess]:
        """Every connector, the first (`connector`) first."""
        return [self.connector, *self.peers]

    @property
    def function_url(self) -> str:
        return self.function.url or ""

    def call(
        self,
        path: str,
        device: SimDevice,
        body: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        *,
        ts: int | None = None,
        nonce: str | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """What the macro does: one signed call to the connector's API (POST with a body, GET
        without); `ts` and `nonce` default to now and a fresh one."""
        return send(
            self.connector_url,
            path,
            device.key,
            device.serial,
            body,
            verify=str(self.ca_path),
            timeout=timeout,
            ts=ts,
            nonce=nonce,
            session=session,
        )

    def admin(self, *args: str) -> tuple[int, str]:
        """Run `python -m connector --config ... admin ARGS` with the connector's environment."""
        command = self.start_admin(*args)
        code = command.wait(120)
        return code, command.stdout() + command.stderr()

    def start_admin(self, *args: str, log_prefix: Path | None = None) -> ServerProcess:
        """`admin ARGS` started, not waited for (`admin provision` waits for the macro)."""
        return ServerProcess(
            [sys.executable, "-m", "connector", "--config", str(self.config_path), "admin", *args],
            env=self.connector.env,
            log_prefix=log_prefix,
        ).start()

    def restart_connector(self, log_name: str, index: int = 0) -> None:
        """Start connector `index` (of `connectors`) again as a supervisor would (same command,
        environment, configuration and store) once the old one is gone; its output goes to
        WORKDIR/LOG_NAME.*.log."""
        old = self.connectors[index]
        new = ServerProcess(old.argv, env=old.env, url=old.url, log_prefix=self.workdir / log_name)
        new.start()
        if index == 0:
            self.connector = new
        else:
            self.peers[index - 1] = new
        _wait_https(new, f"{new.url}/healthz", self.ca_path)

    def processes(self) -> dict[str, ServerProcess]:
        """Every process this stack started, by name (a shared simulator process appears once)."""
        named = {"function": self.function, "connector": self.connector}
        named.update({f"connector-{i}": proc for i, proc in enumerate(self.peers, 2)})
        named.update({f"extra-{i}": proc for i, proc in enumerate(self.extra)})
        for device in self.devices:
            if device.process is not None and device.process not in named.values():
                named[f"simulator-{device.serial}"] = device.process
        return named

    def detach(self) -> None:
        """Leave every process running after this one exits (`python -m demo up`)."""
        for proc in self.processes().values():
            proc.detach()

    def stop(self) -> None:
        """Stop every process at once (each may take a moment to drain its connections)."""
        procs = list(self.processes().values())
        with ThreadPoolExecutor(len(procs)) as pool:
            for _ in pool.map(ServerProcess.stop, procs):
                pass
        for device in self.devices:
            if device.simulator is not None:
                device.simulator.close()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _config_text(
    *,
    port: int,
    connector_urls: list[str],
    store_url: str,
    store_password_ref: str,
    function_url: str,
    devices: list[SimDevice],
    policy: Mapping[str, float],
    function_timeout_s: float,
    extra_toml: str,
    device_defaults: Mapping[str, float],
    console_port: int | None,
) -> str:
    lines = [
        "# Generated by devkit/stack.py for a local run; secrets are references, not values.",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        'tls_cert = "connector.crt"',
        'tls_key = "connector.key"',
        "threads = 32",
        "",
        "[function]",
        f'url = "{function_url}"',
        'auth = "none"',
        f"timeout_s = {function_timeout_s}",
        "",
        "[store]",
        *([f'url = "{store_url}"'] if store_url else ['path = "faceid.db"']),
        *([f'password = "{store_password_ref}"'] if store_password_ref else []),
        'key = "file:store.key"',
        "",
        "[policy]",
        *(f"{key} = {value}" for key, value in policy.items()),
        "",
        "[device_defaults]",
        f'username = "{SIM_ACCOUNT}"',
        'password = "env:FACEID_DEVICE_PASSWORD"',
        *(f"{key} = {value}" for key, value in device_defaults.items()),
        "",
    ]
    for device in devices:
        lines += [
            "[[devices]]",
            f'serial = "{device.serial}"',
            f'host = "{device.url.removeprefix("https://")}"',
            f'tls = {{ fingerprint_sha256 = "{device.fingerprint}" }}',
            "",
        ]
    lines += ["[provisioning]", f"connector_urls = {json.dumps(connector_urls)}", ""]
    if console_port is not None:
        lines += [
            "[admin_ui]",
            'host = "127.0.0.1"',
            f"port = {console_port}",
            'tls_cert = "connector.crt"',
            'tls_key = "connector.key"',
            "",
        ]
    return "\n".join(lines) + extra_toml


def start_stack(
    workdir: Path,
    *,
    images: str | Path,
    devices: int = 1,
    function_env: Mapping[str, str | None] | None = None,
    threshold: float | None = None,
    policy: Mapping[str, float] | None = None,
    device_defaults: Mapping[str, float] | None = None,
    function_timeout_s: float = 10.0,
    extra_toml: str = "",
    connector_env: Mapping[str, str | None] | None = None,
    sim_args: tuple[str, ...] = (),
    in_process: bool = False,
    shared_simulator: bool = False,
    route_function: Callable[[str], str] | None = None,
    extra_keys: Mapping[str, bytes] | None = None,
    console: bool = False,
    store_url: str = "",
    store_password_ref: str = "",
    connectors: int = 1,
) -> Stack:
    """Start everything; on any failure, stop what was started and raise with its output.
    `policy` and `device_defaults` add fields to those tables of the configuration (e.g.
    device_defaults={"budget_s": 30}); `extra_keys` gives the devices of `extra_toml` their
    keys (by serial).
    `sim_args` apply to simulator processes only. `route_function` maps the function's URL to
    the one written in the connector's configuration (a measuring proxy, for instance).
    `console`: the web console too, on 127.0.0.1 (module docstring).
    `store_url`, `store_password_ref`: [store] url and password (PostgreSQL), else SQLite in
    WORKDIR/faceid.db; `connectors`: how many serve (more than one needs store_url)."""
    if connectors > 1 and not store_url:
        raise ValueError("several connectors share one store: give store_url (PostgreSQL)")
    if connectors > 1 and console:
        raise ValueError("console=True serves the console from a single connector")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[ServerProcess] = []
    threads: list[DeviceSimulator] = []
    try:
        env = {"FACE_ENGINE": "local", **(function_env or {})}
        function = start_function(
            "verify_faces",
            "function/main.py",
            env=env,
            timeout_s=60,
            log_prefix=workdir / "function",
        )
        started.append(function)

        password = secrets.token_urlsafe(18)
        admin_password = secrets.token_urlsafe(18)
        register_secret("device admin password", admin_password)
        _write_private(workdir / "device-admin.password", admin_password.encode())
        sim_env = {
            "FACEID_SIM_ACCOUNT": f"{SIM_ACCOUNT}:{password}",
            "FACEID_SIM_ADMIN": f"{SIM_ADMIN}:{admin_password}",
        }
        sims: list[SimDevice] = []
        if in_process:
            for i in range(devices):
                sim = DeviceSimulator(
                    {SIM_ACCOUNT: password},
                    images,
                    serial=f"SIM{i:04d}",
                    admins={SIM_ADMIN: admin_password},
                ).start()
                threads.append(sim)
                sims.append(
                    SimDevice(
                        f"SIM{i:04d}",
                        secrets.token_bytes(32),
                        None,
                        sim.url,
                        sim.fingerprint,
                        sim.control_token,
                        sim.ca_pem_path,
                        simulator=sim,
                    )
                )
        elif shared_simulator:
            proc = _start_simulator_process(workdir, images, sim_env, sim_args, devices, "SIM")
            started.append(proc)
            sims = _devices_of(proc, workdir / "simulator.pem", devices)
        else:
            for i in range(devices):
                proc = _start_simulator_process(
                    workdir, images, sim_env, sim_args, 1, f"SIM{i:04d}", f"-{i}"
                )
                started.append(proc)
                sims += _devices_of(proc, workdir / f"simulator-{i}.pem", 1)

        cert, key = self_signed_identity(["127.0.0.1", "localhost"])
        (workdir / "connector.crt").write_bytes(cert)
        register_secret("connector TLS private key", key)
        _write_private(workdir / "connector.key", key)
        store_key = secrets.token_bytes(32)
        register_secret("store key", store_key)
        _write_private(workdir / "store.key", base64.b64encode(store_key))
        keys = {**{d.serial: d.key for d in sims}, **(extra_keys or {})}
        store = _open_store(workdir, store_key, store_url, store_password_ref)
        try:
            for serial, device_key in keys.items():  # what `admin add-device` does for each
                store.set_device_key(serial, device_key)
            console_admin = _add_console_admin(store) if console else None
        finally:
            store.close()
        ports: list[int] = []  # one per connector, then the console's: all different
        while len(ports) < connectors + (1 if console else 0):
            if (port := free_port()) not in ports:
                ports.append(port)
        console_port = ports[-1] if console else None
        urls = [f"https://127.0.0.1:{p}" for p in ports[:connectors]]
        config_paths = [workdir / "faceid.toml"]
        config_paths += [workdir / f"faceid-{i}.toml" for i in range(2, connectors + 1)]
        for port, config_path in zip(ports[:connectors], config_paths, strict=True):
            config_path.write_text(
                _config_text(
                    port=port,
                    connector_urls=urls,
                    store_url=store_url,
                    store_password_ref=store_password_ref,
                    function_url=(route_function or str)(function.url or ""),
                    devices=sims,
                    policy={
                        **(policy or {}),
                        **({"threshold": threshold} if threshold is not None else {}),
                    },
                    function_timeout_s=function_timeout_s,
                    extra_toml=extra_toml,
                    device_defaults=device_defaults or {},
                    console_port=console_port,
                )
            )
        serving: list[ServerProcess] = []
        for number, (url, config_path) in enumerate(zip(urls, config_paths, strict=True), 1):
            serving.append(
                ServerProcess(
                    [sys.executable, "-m", "connector", "--config", str(config_path), "serve"],
                    env={"FACEID_DEVICE_PASSWORD": password, **(connector_env or {})},
                    url=url,
                    log_prefix=workdir / ("connector" if number == 1 else f"connector-{number}"),
                ).start()
            )
            started.append(serving[-1])
        for connector in serving:  # started together: they migrate the schema in turn
            _wait_https(connector, f"{connector.url}/healthz", workdir / "connector.crt")
        console_url = f"https://127.0.0.1:{console_port}" if console_port else ""
        if console_url:
            _wait_https(serving[0], f"{console_url}/login", workdir / "connector.crt")
        return Stack(
            workdir,
            function,
            serving[0],
            sims,
            config_paths[0],
            workdir / "connector.crt",
            device_admin_ref=f"file:{workdir / 'device-admin.password'}",
            console_url=console_url,
            console_admin=console_admin,
            peers=serving[1:],
        )
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        for sim in threads:
            sim.close()
        raise


def _open_store(workdir: Path, store_key: bytes, url: str, password_ref: str) -> Store:
    """The stack's store, as the connector will open it: PostgreSQL at `url`, else SQLite."""
    if not url:
        return Store.open(workdir / "faceid.db", store_key)
    password = resolve_secret(password_ref, "store.password") if password_ref else None
    return Store.open(url, store_key, password=password)


def _add_console_admin(store: Store) -> tuple[str, str]:
    """What `admin add-admin` does: the console's administrator, with a password for this run."""
    password = secrets.token_urlsafe(12)
    register_secret("console admin password", password)
    store.add_admin(CONSOLE_ADMIN, new_password_hash(password))
    return CONSOLE_ADMIN, password


def _start_simulator_process(
    workdir: Path,
    images: str | Path,
    env: Mapping[str, str],
    sim_args: tuple[str, ...],
    devices: int,
    serial: str,
    suffix: str = "",
) -> ServerProcess:
    name = f"simulator{suffix}"
    return start_module(
        "devkit.simulator",
        [
            "--account-env",
            "FACEID_SIM_ACCOUNT",
            "--admin-env",
            "FACEID_SIM_ADMIN",
            "--serial",
            serial,
            "--images",
            str(images),
            "--cert-out",
            str(workdir / f"{name}.pem"),
            "--devices",
            str(devices),
            *sim_args,
        ],
        env=env,
        ready_line=r"^https://\S+",
        log_prefix=workdir / name,
    )


def _devices_of(proc: ServerProcess, ca: Path, count: int) -> list[SimDevice]:
    """The devices a simulator process announced: URL, fingerprint, control token and serial."""
    pattern = re.compile(
        r"^(https://\S+)\nfingerprint (\S+)\ncontrol-token (\S+)\nserial (\S+)$", re.MULTILINE
    )
    deadline = time.monotonic() + 30
    while len(found := pattern.findall(proc.stdout())) < count:
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the simulator did not announce {count} devices:\n{proc.stderr()}")
        time.sleep(0.02)
    return [
        SimDevice(serial, secrets.token_bytes(32), proc, url, fp, control, str(ca))
        for url, fp, control, serial in found[:count]
    ]


def _wait_https(proc: ServerProcess, url: str, ca: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"connector exited with {proc.returncode}:\n{proc.stderr()[-3000:]}")
        try:
            requests.get(url, verify=str(ca), timeout=2)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                tail = proc.stderr()[-3000:]
                raise RuntimeError(f"connector did not answer at {url}:\n{tail}") from None
            time.sleep(0.1)


def start_matching_mxface(key: str, *, delay_ms: float = 0.0) -> ServerProcess:
    """A fake MXFace process that matches every comparison after `delay_ms` and finds Grace
    Hopper's face where the probe of camera_snapshot() has it: every login succeeds, so the
    lockout never steps in under load. Its `url` is the verify URL (MXFACE_API_URL)."""
    box = ",".join(str(v) for v in GRACE_FACE_BOX)
    return start_module(
        "devkit.fakes.mxface",
        ["--delay-ms", str(delay_ms), "--verify", "match", "--face-box", box],
        env={"FAKE_MXFACE_KEY": key},
    )


def warm_up(stack: Stack, frame: Path) -> None:
    """One /inspect call: the networks' first run (their buffers) is paid before anyone waits."""
    image = base64.b64encode(frame.read_bytes()).decode("ascii")
    answer = requests.post(stack.function_url + "/inspect", json={"image": image}, timeout=300)
    if answer.status_code != 200:
        raise RuntimeError(f"the function could not inspect a frame: {answer.text[:300]}")


def connector_records(stack: Stack) -> Iterator[dict[str, Any]]:
    """The connector's structured log records (one JSON object per stdout line)."""
    for line in stack.connector.stdout().splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def prepare(stack: Stack, frame: Path, person: str, warm_verifies: int = 5) -> None:
    """Before measuring: the models loaded, `person` enrolled on every device, then a few
    verifies so that pools and caches are warm."""
    warm_up(stack, frame)

    def enroll(device: SimDevice) -> None:
        body = {"serial": device.serial, "person": person}
        answer = stack.call("/v1/enroll", device, body).json()
        if answer.get("result") != "enrolled":
            raise RuntimeError(f"enrolling on {device.serial} failed: {answer}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(enroll, stack.devices))
    first = stack.devices[0]
    for _ in range(warm_verifies):
        stack.call("/v1/verify", first, {"serial": first.serial})
