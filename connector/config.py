"""The connector's one TOML file, parsed into frozen dataclasses and checked field by field, so a
typo stops start-up with one message naming every bad field. Secrets stay references until
resolved.

Relative paths (store.path, TLS files, credentials_file, `file:` references) are relative to the
directory of the configuration file. Unknown keys and sections are refused.

| field | default | meaning |
|---|---|---|
| `server.host` | `"127.0.0.1"` | address to listen on |
| `server.port` | `8443` | port to listen on |
| `server.tls_cert`, `server.tls_key` | none | PEM certificate and key; both or neither (HTTPS) |
| `server.threads` | `16` | request threads (also the size of the connection pools) |
| `server.max_body_bytes` | `65536` | largest request body accepted from a macro |
| `server.request_timeout_s` | `10` | a request's headers and body must arrive within this |
| `server.keepalive_timeout_s` | `5` | an idle kept-alive connection is closed after this |
| `server.max_connections_per_address` | `64` | connections one client address may hold open |
| `function.url` | required | the comparison function's URL (https; http only on loopback) |
| `function.auth` | `"google-id-token"` | `"google-id-token"` or `"none"` |
| `function.audience` | `function.url` | audience of the Google ID token |
| `function.credentials_file` | none | key file (any credential file if impersonating); none = ADC |
| `function.impersonate_service_account` | none | service account whose ID tokens IAM mints (WIF) |
| `function.timeout_s` | `10` | time allowed for one call to the function |
| `store.path` | required | the SQLite database, e.g. `/var/lib/faceid/faceid.db` |
| `store.key` | required | secret reference to 32 bytes (64 hex characters or base64) |
| `policy.threshold` | none | match threshold sent to the function, above 0; none = its default |
| `policy.max_failures` | `5` | consecutive failed verifications before a lockout |
| `policy.lockout_base_s` | `30` | first lockout; doubles on each further failure |
| `policy.lockout_max_s` | `900` | longest lockout |
| `policy.unlock_ttl_s` | `600` | how long a match lets that person update their own photo |
| `policy.self_enroll` | `"first"` | `"first"`: who is first at an empty device enrolls; `"never"` |
| `policy.max_references_per_person` | `5` | photos kept per person (the oldest is dropped) |
| `policy.max_people_per_device` | `10` | people per device (at most 10: one photo each per call) |
| `policy.min_face_px` | `80` | smallest face (pixels, in the 960 px probe) enrollment accepts |
| `policy.failed_auth_limit` | `10` | failed authentications (401) from one address before 429 |
| `policy.failed_auth_window_s` | `60` | window counting them; the refusal lasts as long |
| `device_defaults.connect_timeout_s` | `3` | connecting to a device |
| `device_defaults.read_timeout_s` | `6` | waiting for a device's answer |
| `device_defaults.budget_s` | `6` | deadline for sign-in + snapshot; the sign-out gets 2 s more |
| `device_defaults.username` | none | account used on devices that set none |
| `device_defaults.password` | none | secret reference, for devices that set none |
| `devices[].serial` | required | the device serial number, `[A-Za-z0-9_-]{1,64}` |
| `devices[].host` | required | host name or address of the device, optionally `:port` |
| `devices[].username` | `device_defaults.username` | account for the device's web interface |
| `devices[].password` | `device_defaults.password` | secret reference |
| `devices[].tls` | required | one of `ca_bundle`, `fingerprint_sha256`, `insecure = true` |
| `devices[].name` | none | display name |
| `devices[].webex_room_id` | `webex.room_id` | this device's Webex room (needs `[webex]`) |
| `webex.bot_token` | required if `[webex]` | secret reference to the bot's token |
| `webex.room_id` | required if `[webex]` | the room to post to (devices may set their own) |
| `webex.events` | `"failures"` | `"failures"` (no match, errors, refusals) or `"all"` |
| `webex.attach_snapshots` | `false` | attach the picture of a failed verify (memory only) |
| `webex.api_url` | `"https://webexapis.com/v1"` | Webex API base (https; http only on loopback) |
| `webex.queue_size` | `100` | messages waiting to be sent; more are dropped (and counted) |
| `log.level` | `"INFO"` | `DEBUG`, `INFO`, `WARNING` or `ERROR` |
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from faceverify.errors import FaceIdError, config_error
from faceverify.service import MAX_REFERENCES

from .device import TlsPolicy
from .secretref import check_ref, resolve_secret
from .tls import normalize_fingerprint
from .validation import SERIAL_RE

CONFIG_ENV = "FACEID_CONFIG"
AUTH_MODES = ("google-id-token", "none")
WEBEX_EVENTS = ("failures", "all")
SELF_ENROLL = ("first", "never")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
HOST_RE = re.compile(r"^(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SERVICE_ACCOUNT_RE = re.compile(
    r"^[a-z0-9][a-z0-9-]{0,62}@[a-z0-9][a-z0-9.:-]{0,200}\.gserviceaccount\.com$"
)
STORE_KEY_BYTES = 32


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: str | None = None
    tls_key: str | None = None
    threads: int = 16
    max_body_bytes: int = 65536
    request_timeout_s: int = 10
    keepalive_timeout_s: int = 5
    max_connections_per_address: int = 64


@dataclass(frozen=True)
class FunctionConfig:
    url: str
    auth: str = "google-id-token"
    audience: str = ""  # always set by the parser (the URL unless given)
    credentials_file: str | None = None
    timeout_s: float = 10.0
    impersonate_service_account: str | None = None


@dataclass(frozen=True)
class StoreConfig:
    path: str
    key: str  # secret reference

    def resolve_key(self) -> bytes:
        return decode_store_key(resolve_secret(self.key, "store.key"))


@dataclass(frozen=True)
class PolicyConfig:
    threshold: float | None = None
    max_failures: int = 5
    lockout_base_s: int = 30
    lockout_max_s: int = 900
    unlock_ttl_s: int = 600
    self_enroll: str = "first"
    max_references_per_person: int = 5
    max_people_per_device: int = 10
    min_face_px: int = 80
    failed_auth_limit: int = 10
    failed_auth_window_s: int = 60


@dataclass(frozen=True)
class DeviceDefaults:
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 6.0
    budget_s: float = 6.0  # with the sign-out's 2 s and function.timeout_s: a verify's bound
    username: str | None = None
    password: str | None = None  # secret reference


@dataclass(frozen=True)
class DeviceConfig:
    serial: str
    host: str
    username: str
    password: str  # secret reference
    tls: TlsPolicy
    name: str | None = None
    webex_room_id: str | None = None

    def resolve_password(self) -> str:
        return resolve_secret(self.password, f"devices[{self.serial}].password")


@dataclass(frozen=True)
class WebexConfig:
    bot_token: str  # secret reference
    room_id: str
    events: str = "failures"
    attach_snapshots: bool = False
    api_url: str = "https://webexapis.com/v1"
    queue_size: int = 100

    def resolve_bot_token(self) -> str:
        return resolve_secret(self.bot_token, "webex.bot_token")


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class ConnectorConfig:
    path: str
    server: ServerConfig
    function: FunctionConfig
    store: StoreConfig
    policy: PolicyConfig
    device_defaults: DeviceDefaults
    devices: tuple[DeviceConfig, ...]
    webex: WebexConfig | None
    log: LogConfig

    def device(self, serial: str) -> DeviceConfig | None:
        return next((d for d in self.devices if d.serial == serial), None)


def decode_store_key(text: str) -> bytes:
    """32 bytes written as 64 hex characters or base64 (standard or URL-safe, padding optional)."""
    text = text.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        return bytes.fromhex(text)
    try:
        standard = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
        key = base64.b64decode(standard, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != STORE_KEY_BYTES:
        raise config_error(
            "store.key: the referenced value must be 32 bytes written as 64 hex characters or "
            f"base64 (it decodes to {len(key)} bytes); make one with `openssl rand -base64 32`"
        )
    return key


def config_path(cli_value: str | None) -> str:
    """--config wins, then $FACEID_CONFIG."""
    path = cli_value or os.environ.get(CONFIG_ENV)
    if not path:
        raise config_error(f"no configuration: pass --config PATH or set {CONFIG_ENV}")
    return path


class _Bad(Exception):
    """A validation failure; load_config prefixes it with the file name."""


_REQUIRED: Any = object()
_Getter = TypeVar("_Getter", bound=Callable[..., Any])


def _noted(getter: _Getter) -> _Getter:
    """A getter whose bad field is noted instead of raised: the field reads as its default (None
    when required) and parsing goes on, so that one message names every problem of the file."""

    @functools.wraps(getter)
    def read(table: _Table, key: str, default: Any = _REQUIRED, *args: Any, **kw: Any) -> Any:
        try:
            return getter(table, key, default, *args, **kw)
        except _Bad as exc:
            table.problem(str(exc))
            return None if default is _REQUIRED else default

    return cast(_Getter, read)


class _Table:
    """One TOML table being read: getters that name the field; done() refuses unknown keys.
    Problems are noted in `problems`, shared by the whole file; one that makes the rest of the
    table meaningless (not a table, a required section missing) silences the table's others."""

    def __init__(self, data: object, where: str, base_dir: Path, problems: list[str]) -> None:
        self.problems = problems
        if not isinstance(data, dict):
            self.problem(f"{where} must be a table")
            data, self.problems = {}, []
        self.data, self.where, self.base_dir = data, where, base_dir
        self.seen: set[str] = set()

    def problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise _Bad(f"{self.field(key)} is required")
            return default
        return self.data[key]

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    @_noted
    def string(
        self, key: str, default: Any = _REQUIRED, pattern: re.Pattern[str] | None = None
    ) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.data:
            return value
        if not isinstance(value, str) or not value or len(value) > 2048:
            raise _Bad(f"{self.field(key)} must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise _Bad(f"{self.field(key)} has an invalid value {value!r}")
        return value

    @_noted
    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Bad(f"{self.field(key)} must be a whole number from {low} to {high}")
        return value

    @_noted
    def number(self, key: str, default: Any, low: float, high: float) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise _Bad(f"{self.field(key)} must be a number from {low:g} to {high:g}")
        return float(value)

    @_noted
    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise _Bad(f"{self.field(key)} must be true or false")
        return value

    @_noted
    def choice(self, key: str, default: str, choices: tuple[str, ...], upper: bool = False) -> str:
        value = self._get(key, default)
        if isinstance(value, str) and upper:
            value = value.upper()
        if value not in choices:
            raise _Bad(f"{self.field(key)} must be one of {', '.join(map(repr, choices))}")
        return str(value)

    @_noted
    def path(self, key: str, default: Any = _REQUIRED, must_exist: bool = True) -> Any:
        value = self.string(key, default)
        if value is None:
            return None
        full = (self.base_dir / os.path.expanduser(value)).resolve()
        if must_exist and not full.is_file():
            raise _Bad(f"{self.field(key)}: file {full} does not exist")
        return str(full)

    @_noted
    def ref(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        try:
            ref = check_ref(value, self.field(key))
        except FaceIdError as exc:
            raise _Bad(exc.message) from None
        if ref.startswith("file:"):
            ref = "file:" + str((self.base_dir / os.path.expanduser(ref[5:])).resolve())
        return ref

    def table(self, key: str) -> _Table | None:
        value = self._get(key, None)
        if value is None:
            return None
        return _Table(value, self.field(key), self.base_dir, self.problems)

    def done(self) -> None:
        for unknown in sorted(set(self.data) - self.seen):
            self.problem(f"{self.where}: unknown key {unknown!r}")


def _server(t: _Table) -> ServerConfig:
    cert, key = t.path("tls_cert", None), t.path("tls_key", None)
    if ("tls_cert" in t.data) != ("tls_key" in t.data):
        t.problem("server: set both tls_cert and tls_key, or neither")
    config = ServerConfig(
        host=t.string("host", "127.0.0.1"),
        port=t.integer("port", 8443, 1, 65535),
        tls_cert=cert,
        tls_key=key,
        threads=t.integer("threads", 16, 1, 256),
        max_body_bytes=t.integer("max_body_bytes", 65536, 1024, 64 * 1024),
        request_timeout_s=t.integer("request_timeout_s", 10, 1, 60),
        keepalive_timeout_s=t.integer("keepalive_timeout_s", 5, 1, 60),
        max_connections_per_address=t.integer("max_connections_per_address", 64, 1, 4096),
    )
    t.done()
    return config


def _https_url(t: _Table, key: str, default: Any = _REQUIRED) -> Any:
    url = t.string(key, default)
    if url is None:  # missing or not a string: already noted
        return None
    parts = urlsplit(url)
    loopback = parts.hostname in LOOPBACK_HOSTS
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        t.problem(f"{t.field(key)} must be an https:// URL (http:// only for 127.0.0.1/localhost)")
    return str(url)


def _function(t: _Table) -> FunctionConfig:
    url = _https_url(t, "url")
    auth = t.choice("auth", "google-id-token", AUTH_MODES)
    credentials = t.path("credentials_file", None)
    impersonate = t.string("impersonate_service_account", None)
    for key, value in (
        ("credentials_file", credentials),
        ("impersonate_service_account", impersonate),
    ):
        if auth == "none" and value is not None:
            t.problem(f'{t.field(key)} is set but function.auth is "none"')
    if impersonate is not None and not SERVICE_ACCOUNT_RE.match(impersonate):
        t.problem(
            f"{t.field('impersonate_service_account')} must be a service-account email, "
            "e.g. faceid-connector@PROJECT.iam.gserviceaccount.com"
        )
    config = FunctionConfig(
        url=url,
        auth=auth,
        audience=t.string("audience", url),
        credentials_file=credentials,
        timeout_s=t.number("timeout_s", 10.0, 0.5, 60.0),
        impersonate_service_account=impersonate,
    )
    t.done()
    return config


def _store(t: _Table) -> StoreConfig:
    config = StoreConfig(path=t.path("path", must_exist=False), key=t.ref("key"))
    t.done()
    return config


def _threshold(t: _Table) -> float | None:
    """0 (or less) would have the function accept any face. The connector cannot know the
    function's engine, so its floor (0.4 or 60) is the function's to enforce: it answers 400,
    which fails every login closed as config_error (relay.py) until the file is fixed."""
    value = t.data.get("threshold")
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        t.seen.add("threshold")
        t.problem(
            "policy.threshold must be above 0 (0 would accept anyone), or left out to use the "
            "function's default"
        )
        return None
    return t.number("threshold", None, 0.0, 100.0)


def _policy(t: _Table) -> PolicyConfig:
    config = PolicyConfig(
        threshold=_threshold(t),
        max_failures=t.integer("max_failures", 5, 1, 100),
        lockout_base_s=t.integer("lockout_base_s", 30, 1, 86400),
        lockout_max_s=t.integer("lockout_max_s", 900, 1, 7 * 86400),
        unlock_ttl_s=t.integer("unlock_ttl_s", 600, 10, 86400),
        self_enroll=t.choice("self_enroll", "first", SELF_ENROLL),
        max_references_per_person=t.integer("max_references_per_person", 5, 1, MAX_REFERENCES),
        max_people_per_device=t.integer("max_people_per_device", 10, 1, MAX_REFERENCES),
        min_face_px=t.integer("min_face_px", 80, 1, 1024),
        failed_auth_limit=t.integer("failed_auth_limit", 10, 1, 1_000_000),
        failed_auth_window_s=t.integer("failed_auth_window_s", 60, 1, 86400),
    )
    if config.lockout_max_s < config.lockout_base_s:
        t.problem("policy.lockout_max_s must not be less than policy.lockout_base_s")
    t.done()
    return config


USERNAME_RE = re.compile(r"^[^\x00-\x1f\x7f:]{1,128}$")
ROOM_ID_RE = re.compile(r"^\S{1,512}$")
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


def _device_defaults(t: _Table) -> DeviceDefaults:
    config = DeviceDefaults(
        connect_timeout_s=t.number("connect_timeout_s", 3.0, 0.1, 60.0),
        read_timeout_s=t.number("read_timeout_s", 6.0, 0.1, 120.0),
        budget_s=t.number("budget_s", 6.0, 1.0, 60.0),
        username=t.string("username", None, USERNAME_RE),
        password=t.ref("password", None),
    )
    t.done()
    return config


def _fingerprint(t: _Table, key: str) -> str | None:
    value = t.string(key, None)
    if value is None:
        return None
    try:
        return normalize_fingerprint(value)
    except FaceIdError:
        t.problem(f"{t.field(key)} must be 64 hex characters (colons allowed)")
        return None


def _tls(t: _Table | None, where: str, problems: list[str]) -> TlsPolicy:
    one_of = f"{where}: set exactly one of ca_bundle, fingerprint_sha256, insecure = true"
    if t is None:
        problems.append(one_of)
        return TlsPolicy()
    ca_bundle = t.path("ca_bundle", None)
    fingerprint = _fingerprint(t, "fingerprint_sha256")
    insecure = t.boolean("insecure", False)
    t.done()
    # Counted as written: a bad bundle or pin is its own problem, not also "none chosen".
    if sum(("ca_bundle" in t.data, "fingerprint_sha256" in t.data, insecure is True)) != 1:
        t.problem(one_of)
        return TlsPolicy()
    return TlsPolicy(ca_bundle=ca_bundle, fingerprint_sha256=fingerprint, insecure=insecure)


def _device(t: _Table, defaults: DeviceDefaults) -> DeviceConfig:
    serial = t.string("serial", pattern=SERIAL_RE)
    username = t.string("username", defaults.username, USERNAME_RE)
    password = t.ref("password", defaults.password)
    for key, value in (("username", username), ("password", password)):
        if value is None and key not in t.data:  # one written but bad is noted already
            t.problem(f"{t.field(key)} is required (here or in [device_defaults])")
    if "token_sha256" in t.data:
        t.seen.add("token_sha256")
        t.problem(
            f"{t.field('token_sha256')} is no longer used: device keys live in the store. Remove "
            "the line, then run `admin rotate-key --serial SERIAL` and put the key in the macro"
        )
    config = DeviceConfig(
        serial=serial,
        host=t.string("host", pattern=HOST_RE),
        username=username,
        password=password,
        tls=_tls(t.table("tls"), t.field("tls"), t.problems),
        name=t.string("name", None, NAME_RE),
        webex_room_id=t.string("webex_room_id", None, ROOM_ID_RE),
    )
    t.done()
    return config


def _devices(root: _Table, defaults: DeviceDefaults) -> tuple[DeviceConfig, ...]:
    value = root._get("devices", [])
    if not isinstance(value, list):
        root.problem("devices must be an array of tables: write each device as [[devices]]")
        return ()
    devices: list[DeviceConfig] = []
    for i, item in enumerate(value):
        device = _device(_Table(item, f"devices[{i}]", root.base_dir, root.problems), defaults)
        for j, other in enumerate(devices):
            if device.serial is not None and other.serial == device.serial:
                root.problem(
                    f"devices[{i}].serial {device.serial!r} is already used by devices[{j}]"
                )
        devices.append(device)
    return tuple(devices)


def _webex(t: _Table) -> WebexConfig:
    config = WebexConfig(
        bot_token=t.ref("bot_token"),
        room_id=t.string("room_id", pattern=ROOM_ID_RE),
        events=t.choice("events", "failures", WEBEX_EVENTS),
        attach_snapshots=t.boolean("attach_snapshots", False),
        api_url=_https_url(t, "api_url", WebexConfig.api_url).rstrip("/"),
        queue_size=t.integer("queue_size", 100, 1, 10000),
    )
    t.done()
    return config


def _log(t: _Table) -> LogConfig:
    config = LogConfig(level=t.choice("level", "INFO", LOG_LEVELS, upper=True))
    t.done()
    return config


def _parse(text: str, path: str) -> ConnectorConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _Bad(f"not valid TOML: {exc}") from None
    base_dir = Path(path).resolve().parent
    root = _Table(data, "", base_dir, [])

    def section(name: str, required: bool = False) -> _Table:
        if required and name not in data:
            root.seen.add(name)
            root.problem(f"{name} is required")
            return _Table({}, name, base_dir, [])  # its own missing fields go unsaid
        return _Table(root._get(name, {}), name, base_dir, root.problems)

    defaults = _device_defaults(section("device_defaults"))
    webex = root.table("webex")
    config = ConnectorConfig(
        path=str(Path(path).resolve()),
        server=_server(section("server")),
        function=_function(section("function", required=True)),
        store=_store(section("store", required=True)),
        policy=_policy(section("policy")),
        device_defaults=defaults,
        devices=_devices(root, defaults),
        webex=None if webex is None else _webex(webex),
        log=_log(section("log")),
    )
    for unknown in sorted(set(data) - root.seen):
        root.problem(f"unknown section [{unknown}]")
    if webex is None:
        for i, device in enumerate(config.devices):
            if device.webex_room_id is not None:
                root.problem(f"devices[{i}].webex_room_id is set but there is no [webex] section")
    problems = root.problems
    if len(problems) > 1:
        raise _Bad(f"{len(problems)} problems: " + "; ".join(problems))
    if problems:
        raise _Bad(problems[0])
    return config


def _read(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise config_error(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error(f"configuration file {path} could not be read ({exc})") from None


def _checked(text: str, path: str | os.PathLike[str]) -> ConnectorConfig:
    try:
        return _parse(text, os.fspath(path))
    except _Bad as exc:
        raise config_error(f"{os.fspath(path)}: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> ConnectorConfig:
    """Parse and check the file; raises config_error naming the file and the field."""
    return _checked(_read(path), path)


# --- admin edits: text-level, so comments and layout survive; checked by re-parsing ------------

HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(?:#.*)?$")


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string for the printable text allowed here.
    return json.dumps(value, ensure_ascii=True)


def _device_block(
    serial: str,
    host: str,
    tls: TlsPolicy,
    username: str | None,
    password_ref: str | None,
    name: str | None,
) -> str:
    lines = ["[[devices]]", f"serial = {_toml_string(serial)}"]
    if name is not None:
        lines.append(f"name = {_toml_string(name)}")
    lines.append(f"host = {_toml_string(host)}")
    if username is not None:
        lines.append(f"username = {_toml_string(username)}")
    if password_ref is not None:
        lines.append(f"password = {_toml_string(password_ref)}")
    if tls.ca_bundle is not None:
        tls_text = f"ca_bundle = {_toml_string(tls.ca_bundle)}"
    elif tls.fingerprint_sha256 is not None:
        tls_text = f"fingerprint_sha256 = {_toml_string(tls.fingerprint_sha256)}"
    else:
        tls_text = "insecure = true" if tls.insecure else ""
    lines.append(f"tls = {{ {tls_text} }}" if tls_text else "tls = {}")
    return "\n".join(lines) + "\n"


def _replace_file(path: str, text: str) -> None:
    """Write a sibling temporary file with the same mode, fsync it, then rename it over `path`."""
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=".faceid-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _commit_edit(path: str, new_text: str, expected: ConnectorConfig, action: str) -> None:
    new = _checked(new_text, path)
    if new != expected:
        raise config_error(
            f"{path}: could not {action} without changing anything else; edit the file by hand"
        )
    _replace_file(path, new_text)


def add_device(
    path: str | os.PathLike[str],
    *,
    serial: str,
    host: str,
    tls: TlsPolicy,
    username: str | None = None,
    password_ref: str | None = None,
    name: str | None = None,
) -> None:
    """Append a [[devices]] block (its key goes to the store, not here). username and
    password_ref may be left to [device_defaults]."""
    real = os.path.realpath(path)
    text = _read(real)
    old = _checked(text, real)
    if old.device(serial) is not None:
        raise config_error(f"{real}: a device with serial {serial!r} is already configured")
    block = _device_block(serial, host, tls, username, password_ref, name)
    new_text = text + ("" if not text or text.endswith("\n") else "\n") + "\n" + block
    new = _checked(new_text, real)  # names the bad field, e.g. devices[3].host
    expected = dataclasses.replace(old, devices=(*old.devices, new.devices[-1]))
    _commit_edit(real, new_text, expected, f"add device {serial}")


def _device_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of each [[devices]] table, its sub-tables included and the
    comments and blank lines that trail it (they introduce what follows) excluded."""
    headers = [(i, m) for i, line in enumerate(lines) if (m := HEADER_RE.match(line))]
    blocks = []
    for n, (start, m) in enumerate(headers):
        if m.group(1) != "[[" or m.group(2) != "devices":
            continue
        end = len(lines)
        for i, other in headers[n + 1 :]:
            if not other.group(2).startswith("devices."):
                end = i
                break
        while end > start + 1 and (
            not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")
        ):
            end -= 1
        blocks.append((start, end))
    return blocks


def remove_device(path: str | os.PathLike[str], serial: str) -> bool:
    """Delete the [[devices]] block of `serial`; False when no device has that serial."""
    real = os.path.realpath(path)
    text = _read(real)
    old = _checked(text, real)
    if old.device(serial) is None:
        return False
    lines = text.splitlines(keepends=True)
    for start, end in _device_blocks(lines):
        try:
            block = tomllib.loads("".join(lines[start:end]))
        except tomllib.TOMLDecodeError:
            continue
        devices = block.get("devices")
        if not (isinstance(devices, list) and devices and devices[0].get("serial") == serial):
            continue
        if (
            start > 0
            and not lines[start - 1].strip()
            and (end == len(lines) or not lines[end].strip())
        ):
            start -= 1  # do not leave two blank lines behind
        new_text = "".join(lines[:start] + lines[end:])
        expected = dataclasses.replace(
            old, devices=tuple(d for d in old.devices if d.serial != serial)
        )
        _commit_edit(real, new_text, expected, f"remove device {serial}")
        return True
    raise config_error(f"{real}: could not find the [[devices]] block of {serial}; edit by hand")
