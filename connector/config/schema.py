"""Every field of the connector's TOML file, declared once: in the frozen dataclass it fills, its
annotation is the type and its declaration (`text`, `integer`, `secret`, ...) gives the kind of
TOML value, the default, the bounds or choices and the meaning README shows.

loading.py reads a file by these declarations; the rules that tie fields together (tls_cert and
tls_key both or neither, function.audience defaulting to function.url, a device taking
[device_defaults], policy.threshold above 0, devices[].tls, [admin_ui] taking [server]'s TLS files
and serving plain HTTP on loopback only) are code there, one function per section.
`python -m connector config-reference` prints README's table from `reference()`.

A field without a default is keyword-only, so that each section keeps README's order.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

from faceid_core.contract import MAX_REFERENCES, MIN_FACE_PX
from faceid_core.errors import config_error

from ..device import TlsPolicy
from ..secretref import resolve_secret
from ..store.postgres import POOL_SIZE
from ..validation import SERIAL_RE

AuthMode = Literal["google-id-token", "none"]
SelfEnroll = Literal["first", "never"]
WebexEvents = Literal["failures", "all"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
AUTH_MODES: tuple[str, ...] = get_args(AuthMode)
SELF_ENROLL: tuple[str, ...] = get_args(SelfEnroll)
WEBEX_EVENTS: tuple[str, ...] = get_args(WebexEvents)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

HOST_RE = re.compile(r"^(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
#: A listening address: a host name, an IPv4 address or a bare IPv6 address (no port).
LISTEN_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
USERNAME_RE = re.compile(r"^[^\x00-\x1f\x7f:]{1,128}$")
ROOM_ID_RE = re.compile(r"^\S{1,512}$")
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
SERVICE_ACCOUNT_RE = re.compile(
    r"^[a-z0-9][a-z0-9-]{0,62}@[a-z0-9][a-z0-9.:-]{0,200}\.gserviceaccount\.com$"
)
STORE_KEY_BYTES = 32


# --- the declarations --------------------------------------------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a field the file must set.
REQUIRED: Any = _Required()

#: text: a non-empty string (matching `pattern`); choice: one of `choices`; path: a file, made
#: absolute against the file's folder; secret: an env:/file:/gsm: reference; url: https (http on
#: loopback only); urls: a list of `low` to `high` of those; table: a sub-table read by its own
#: rule in loading.py.
Kind = Literal[
    "text", "integer", "number", "flag", "choice", "path", "secret", "url", "urls", "table"
]


@dataclass(frozen=True)
class Setting:
    """How one field is read, and what README says of it."""

    kind: Kind
    default: Any
    meaning: str
    low: int | float = 0  # integer, number: the bounds, both included; urls: how many
    high: int | float = 0
    choices: tuple[str, ...] = ()  # choice
    upper: bool = False  # choice: written in any case
    pattern: re.Pattern[str] | None = None  # text
    must_exist: bool = True  # path
    #: Left out, the field takes the value of that other field (filled in by loading.py, or by
    #: whoever reads the configuration); README shows it as the default.
    default_from: str | None = None


def _declare(setting: Setting) -> Any:
    """The dataclasses.field() of a declared field, its Setting in the metadata. The functions
    below are the declarations, one per kind."""
    metadata = {"setting": setting}
    if setting.default is REQUIRED:
        return dataclasses.field(kw_only=True, metadata=metadata)
    return dataclasses.field(default=setting.default, metadata=metadata)


def text(
    default: str | None,
    meaning: str,
    *,
    pattern: re.Pattern[str] | None = None,
    default_from: str | None = None,
) -> Any:
    return _declare(Setting("text", default, meaning, pattern=pattern, default_from=default_from))


def integer(default: int, meaning: str, *, low: int, high: int) -> Any:
    return _declare(Setting("integer", default, meaning, low=low, high=high))


def number(default: float | None, meaning: str, *, low: float, high: float) -> Any:
    return _declare(Setting("number", default, meaning, low=low, high=high))


def flag(default: bool, meaning: str) -> Any:
    return _declare(Setting("flag", default, meaning))


def choice(default: str, meaning: str, choices: tuple[str, ...], *, upper: bool = False) -> Any:
    return _declare(Setting("choice", default, meaning, choices=choices, upper=upper))


def file_path(
    default: str | None,
    meaning: str,
    *,
    must_exist: bool = True,
    default_from: str | None = None,
) -> Any:
    return _declare(
        Setting("path", default, meaning, must_exist=must_exist, default_from=default_from)
    )


def secret(default: str | None, meaning: str, *, default_from: str | None = None) -> Any:
    return _declare(Setting("secret", default, meaning, default_from=default_from))


def https_url(default: str | None, meaning: str) -> Any:
    return _declare(Setting("url", default, meaning))


def https_urls(default: tuple[str, ...] | None, meaning: str, *, low: int, high: int) -> Any:
    return _declare(Setting("urls", default, meaning, low=low, high=high))


def sub_table(default: Any, meaning: str) -> Any:
    return _declare(Setting("table", default, meaning))


def settings(cls: type) -> Iterator[tuple[str, Setting]]:
    """(key, declaration) of each field of a section's dataclass, in order."""
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            yield f.name, f.metadata["setting"]


# --- the sections ------------------------------------------------------------------------------

#: server.tls_cert and server.tls_key share one README row (same meaning, same default).
TLS_FILES = "PEM certificate and key; both or neither (HTTPS)"


@dataclass(frozen=True)
class ServerConfig:
    host: str = text("127.0.0.1", "address to listen on")
    port: int = integer(8443, "port to listen on", low=1, high=65535)
    tls_cert: str | None = file_path(None, TLS_FILES)
    tls_key: str | None = file_path(None, TLS_FILES)
    threads: int = integer(
        16, "request threads (also the size of the connection pools)", low=1, high=256
    )
    max_body_bytes: int = integer(
        65536, "largest request body accepted from a macro", low=1024, high=64 * 1024
    )
    request_timeout_s: int = integer(
        10, "a request's headers and body must arrive within this", low=1, high=60
    )
    keepalive_timeout_s: int = integer(
        5, "an idle kept-alive connection is closed after this", low=1, high=60
    )
    max_connections_per_address: int = integer(
        64, "connections one client address may hold open", low=1, high=4096
    )


@dataclass(frozen=True)
class AdminUiConfig:
    """The administrators' web console (connector/console/): its own listener of the front."""

    host: str = text(
        REQUIRED,
        "address the console listens on (plain HTTP only on loopback)",
        pattern=LISTEN_HOST_RE,
    )
    port: int = integer(8444, "port the console listens on", low=1, high=65535)
    tls_cert: str | None = file_path(
        None, "the console's PEM certificate; both or neither", default_from="server.tls_cert"
    )
    tls_key: str | None = file_path(
        None, "the console's PEM key; both or neither", default_from="server.tls_key"
    )
    threads: int = integer(
        4, "console requests served at once, in threads beside server.threads", low=1, high=64
    )
    session_idle_s: int = integer(
        900, "a console session unused this long ends", low=60, high=86400
    )
    login_failures: int = integer(
        5, "failed logins per account and per address before 429", low=1, high=1000
    )
    login_window_s: int = integer(
        900, "window counting them; the refusal lasts as long", low=1, high=86400
    )


@dataclass(frozen=True)
class FunctionConfig:
    url: str = https_url(REQUIRED, "the comparison function's URL (https; http only on loopback)")
    auth: AuthMode = choice("google-id-token", '`"google-id-token"` or `"none"`', AUTH_MODES)
    audience: str = text(REQUIRED, "audience of the Google ID token", default_from="function.url")
    credentials_file: str | None = file_path(
        None, "key file (any credential file if impersonating); none = ADC"
    )
    impersonate_service_account: str | None = text(
        None, "service account whose ID tokens IAM mints (WIF)"
    )
    timeout_s: float = number(10.0, "time allowed for one call to the function", low=0.5, high=60.0)


@dataclass(frozen=True)
class StoreConfig:
    path: str | None = file_path(
        None,
        "the SQLite database of one connector, e.g. `/var/lib/faceid/faceid.db`; give this or "
        "`url`",
        must_exist=False,
    )
    url: str | None = text(
        None,
        "the PostgreSQL database every connector of a redundant pair shares, "
        "`postgresql://USER@HOST:5432/DB` (parameters such as `?sslmode=verify-full` allowed, "
        "the password never); give this or `path`",
    )
    password: str | None = secret(None, "secret reference to the PostgreSQL user's password")
    pool_size: int = integer(
        POOL_SIZE, "most connections a connector holds open to PostgreSQL", low=1, high=200
    )
    key: str = secret(REQUIRED, "secret reference to 32 bytes (64 hex characters or base64)")

    @property
    def location(self) -> str:
        """What Store.open takes: the URL, else the file."""
        location = self.url or self.path
        assert location is not None  # the loader requires one of them
        return location

    def resolve_key(self) -> bytes:
        return decode_store_key(resolve_secret(self.key, "store.key"))

    def resolve_password(self) -> str | None:
        return None if self.password is None else resolve_secret(self.password, "store.password")


@dataclass(frozen=True)
class PolicyConfig:
    threshold: float | None = number(
        None,
        "match threshold sent to the function, above 0; none = its default",
        low=0.0,
        high=100.0,
    )
    max_failures: int = integer(
        5, "consecutive failed verifications before a lockout", low=1, high=100
    )
    lockout_base_s: int = integer(
        30, "first lockout; doubles on each further failure", low=1, high=86400
    )
    lockout_max_s: int = integer(900, "longest lockout", low=1, high=7 * 86400)
    unlock_ttl_s: int = integer(
        600, "how long a match lets that person update their own photo", low=10, high=86400
    )
    self_enroll: SelfEnroll = choice(
        "first", '`"first"`: who is first at an empty device enrolls; `"never"`', SELF_ENROLL
    )
    max_references_per_person: int = integer(
        5, "photos kept per person (the oldest is dropped)", low=1, high=MAX_REFERENCES
    )
    max_people_per_device: int = integer(
        10,
        f"people per device (at most {MAX_REFERENCES}: one photo each per call)",
        low=1,
        high=MAX_REFERENCES,
    )
    min_face_px: int = integer(
        MIN_FACE_PX,
        "smallest face (pixels, in the 960 px probe) enrollment accepts",
        low=1,
        high=1024,
    )
    failed_auth_limit: int = integer(
        10, "failed authentications (401) from one address before 429", low=1, high=1_000_000
    )
    failed_auth_window_s: int = integer(
        60, "window counting them; the refusal lasts as long", low=1, high=86400
    )


@dataclass(frozen=True)
class DeviceDefaults:
    connect_timeout_s: float = number(3.0, "connecting to a device", low=0.1, high=60.0)
    read_timeout_s: float = number(6.0, "waiting for a device's answer", low=0.1, high=120.0)
    # With the sign-out's 2 s and function.timeout_s: a verify's bound (runtime.py).
    budget_s: float = number(
        6.0, "deadline for sign-in + snapshot; the sign-out gets 2 s more", low=1.0, high=60.0
    )
    username: str | None = text(None, "account used on devices that set none", pattern=USERNAME_RE)
    password: str | None = secret(None, "secret reference, for devices that set none")


#: devices[].tls: exactly one of these (loading.py, `_tls`), into connector.device.TlsPolicy.
TLS_SETTINGS = {
    "ca_bundle": Setting("path", None, "PEM bundle of the CAs the device's certificate chains to"),
    "fingerprint_sha256": Setting("text", None, "SHA-256 of the device's DER certificate"),
    "insecure": Setting("flag", False, "no check of the device's certificate"),
}


@dataclass(frozen=True)
class DeviceConfig:
    serial: str = text(
        REQUIRED, "the device serial number, `[A-Za-z0-9_-]{1,64}`", pattern=SERIAL_RE
    )
    host: str = text(
        REQUIRED, "host name or address of the device, optionally `:port`", pattern=HOST_RE
    )
    username: str = text(
        REQUIRED,
        "account for the device's web interface",
        pattern=USERNAME_RE,
        default_from="device_defaults.username",
    )
    password: str = secret(REQUIRED, "secret reference", default_from="device_defaults.password")
    tls: TlsPolicy = sub_table(
        REQUIRED, "one of `ca_bundle`, `fingerprint_sha256`, `insecure = true`"
    )
    name: str | None = text(None, "display name", pattern=NAME_RE)
    # Left out, webex.py posts to webex.room_id.
    webex_room_id: str | None = text(
        None,
        "this device's Webex room (needs `[webex]`)",
        pattern=ROOM_ID_RE,
        default_from="webex.room_id",
    )

    def resolve_password(self) -> str:
        return resolve_secret(self.password, f"devices[{self.serial}].password")


@dataclass(frozen=True)
class WebexConfig:
    bot_token: str = secret(REQUIRED, "secret reference to the bot's token")
    room_id: str = text(
        REQUIRED, "the room to post to (devices may set their own)", pattern=ROOM_ID_RE
    )
    events: WebexEvents = choice(
        "failures",
        '`"failures"` (no match, errors, refusals; unlock codes always) or `"all"`',
        WEBEX_EVENTS,
    )
    attach_snapshots: bool = flag(False, "attach the picture of a failed verify (memory only)")
    api_url: str = https_url(
        "https://webexapis.com/v1", "Webex API base (https; http only on loopback)"
    )
    queue_size: int = integer(
        100, "messages waiting to be sent; more are dropped (and counted)", low=1, high=10000
    )

    def resolve_bot_token(self) -> str:
        return resolve_secret(self.bot_token, "webex.bot_token")


#: provisioning.connector_urls: the macro moves to the next when one is unreachable.
MAX_CONNECTOR_URLS = 4


@dataclass(frozen=True)
class ProvisioningConfig:
    """What `admin provision` writes into each device's macro and trust store."""

    connector_urls: tuple[str, ...] | None = https_urls(
        None,
        f"1 to {MAX_CONNECTOR_URLS} URLs the devices reach the connectors at, first preferred "
        "(https; http only on loopback): the macro's `connectorUrls`",
        low=1,
        high=MAX_CONNECTOR_URLS,
    )
    ca_cert: str | None = file_path(
        None, "PEM the devices must trust for those URLs; none = `server.tls_cert`"
    )
    macro: str | None = file_path(None, "the macro pushed; none = the `macro/faceid.js` shipped")
    relock_idle_s: int = integer(
        600, "the macro locks again after this long untouched", low=10, high=86400
    )
    report_wait_s: int = integer(
        45, "how long provision waits for the pushed macro to report in", low=5, high=600
    )


@dataclass(frozen=True)
class LogConfig:
    level: LogLevel = choice(
        "INFO", "`DEBUG`, `INFO`, `WARNING` or `ERROR`", LOG_LEVELS, upper=True
    )


@dataclass(frozen=True)
class Section:
    """A table of the file: `[name]`, or `[[name]]` for an array of tables."""

    name: str
    cls: type
    required: bool = False  # the file must have it
    optional: bool = False  # left out, it is None (and its required fields are not required)
    array: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}[]" if self.array else self.name


#: The file's sections, in README's order. Any other section is refused.
SECTIONS = (
    Section("server", ServerConfig),
    Section("admin_ui", AdminUiConfig, optional=True),
    Section("function", FunctionConfig, required=True),
    Section("store", StoreConfig, required=True),
    Section("policy", PolicyConfig),
    Section("device_defaults", DeviceDefaults),
    Section("devices", DeviceConfig, array=True),
    Section("webex", WebexConfig, optional=True),
    Section("provisioning", ProvisioningConfig),
    Section("log", LogConfig),
)


@dataclass(frozen=True)
class ConnectorConfig:
    path: str
    server: ServerConfig
    admin_ui: AdminUiConfig | None  # no [admin_ui]: no console
    function: FunctionConfig
    store: StoreConfig
    policy: PolicyConfig
    device_defaults: DeviceDefaults
    devices: tuple[DeviceConfig, ...]
    webex: WebexConfig | None
    provisioning: ProvisioningConfig
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


# --- README's table ----------------------------------------------------------------------------


def _shown_default(section: Section, s: Setting) -> str:
    if s.default_from is not None:
        return f"`{s.default_from}`"
    if s.default is REQUIRED:
        return f"required if `[{section.name}]`" if section.optional else "required"
    if s.default is None:
        return "none"
    if isinstance(s.default, bool):
        return "`true`" if s.default else "`false`"
    if isinstance(s.default, float) and s.default.is_integer():
        return f"`{int(s.default)}`"
    if isinstance(s.default, str):
        return f"`{json.dumps(s.default)}`"
    return f"`{s.default}`"


def reference() -> str:
    """README's table of the file's fields, in Markdown. Consecutive fields of one section with
    the same default and meaning share a row."""
    rows: list[tuple[list[str], str, str]] = []
    for section in SECTIONS:
        previous = None
        for key, s in settings(section.cls):
            name, default = f"`{section.label}.{key}`", _shown_default(section, s)
            if previous is not None and previous[1:] == (default, s.meaning):
                previous[0].append(name)
                continue
            previous = ([name], default, s.meaning)
            rows.append(previous)
    lines = ["| field | default | meaning |", "|---|---|---|"]
    lines += [f"| {', '.join(names)} | {default} | {meaning} |" for names, default, meaning in rows]
    return "\n".join(lines) + "\n"
