"""Reading the TOML file into the dataclasses of schema.py, checked field by field by their
declarations, so that a typo stops start-up with one message naming every bad field.

Each section has one function here: the fields it declares are read in order by their
declarations, and the rules that are not one field's (both or neither, a default taken from
another field, exactly one of three) sit beside that read. Relative paths (store.path, TLS files,
credentials_file, `file:` references) are relative to the folder of the file. Unknown keys and
sections are refused. Secrets stay references until resolved.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from faceid_core.errors import FaceIdError, config_error

from ..device import TlsPolicy
from ..secretref import check_ref
from ..store.postgres import url_problem
from ..tls import normalize_fingerprint
from .schema import (
    REQUIRED,
    SECTIONS,
    SERVICE_ACCOUNT_RE,
    TLS_SETTINGS,
    AdminUiConfig,
    ConnectorConfig,
    DeviceConfig,
    DeviceDefaults,
    FunctionConfig,
    LogConfig,
    PolicyConfig,
    ProvisioningConfig,
    ServerConfig,
    Setting,
    StoreConfig,
    WebexConfig,
    settings,
)

CONFIG_ENV = "FACEID_CONFIG"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def config_path(cli_value: str | None) -> str:
    """--config wins, then $FACEID_CONFIG."""
    path = cli_value or os.environ.get(CONFIG_ENV)
    if not path:
        raise config_error(f"no configuration: pass --config PATH or set {CONFIG_ENV}")
    return path


class _Bad(Exception):
    """A field's validation failure, noted as a problem of the file (_noted)."""


_Getter = TypeVar("_Getter", bound=Callable[..., Any])


def _noted(getter: _Getter) -> _Getter:
    """A getter whose bad field is noted instead of raised: the field reads as its default (None
    when required) and parsing goes on, so that one message names every problem of the file."""

    @functools.wraps(getter)
    def read(table: _Table, key: str, default: Any = REQUIRED, *args: Any, **kw: Any) -> Any:
        try:
            return getter(table, key, default, *args, **kw)
        except _Bad as exc:
            table.problem(str(exc))
            return None if default is REQUIRED else default

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
            if default is REQUIRED:
                raise _Bad(f"{self.field(key)} is required")
            return default
        return self.data[key]

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def read(self, key: str, setting: Setting, default: Any) -> Any:
        """The field `key` as its declaration says, `default` when left out."""
        s = setting
        match s.kind:
            case "text":
                return self.string(key, default, s.pattern)
            case "integer":
                return self.integer(key, default, int(s.low), int(s.high))
            case "number":
                return self.number(key, default, s.low, s.high)
            case "flag":
                return self.boolean(key, default)
            case "choice":
                return self.choice(key, default, s.choices, s.upper)
            case "path":
                return self.path(key, default, s.must_exist)
            case "secret":
                return self.ref(key, default)
            case "url":
                return self.https_url(key, default)
            case "urls":
                return self.https_urls(key, default, int(s.low), int(s.high))
        raise AssertionError(f"{self.field(key)}: a {s.kind} is read by its section's own rule")

    @_noted
    def string(self, key: str, default: Any = REQUIRED, pattern: Any = None) -> Any:
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
    def path(self, key: str, default: Any = REQUIRED, must_exist: bool = True) -> Any:
        value = self.string(key, default)
        if value is None:
            return None
        full = (self.base_dir / os.path.expanduser(value)).resolve()
        if must_exist and not full.is_file():
            raise _Bad(f"{self.field(key)}: file {full} does not exist")
        return str(full)

    @_noted
    def ref(self, key: str, default: Any = REQUIRED) -> Any:
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

    def https_url(self, key: str, default: Any = REQUIRED) -> Any:
        url = self.string(key, default)
        if url is None:  # missing or not a string: already noted
            return None
        self._check_url(url, self.field(key))
        return str(url)

    def _check_url(self, url: str, where: str) -> None:
        parts = urlsplit(url)
        loopback = parts.hostname in LOOPBACK_HOSTS
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)
        ):
            self.problem(f"{where} must be an https:// URL (http:// only for 127.0.0.1/localhost)")

    def https_urls(self, key: str, default: Any, low: int, high: int) -> Any:
        """A list of `low` to `high` different URLs, each as https_url's."""
        value = self._get(key, default)
        if value is default and key not in self.data:
            return value
        if (
            not isinstance(value, list)
            or not low <= len(value) <= high
            or not all(isinstance(url, str) and 0 < len(url) <= 2048 for url in value)
        ):
            self.problem(f"{self.field(key)} must be a list of {low} to {high} URLs (strings)")
            return None if default is REQUIRED else default
        for i, url in enumerate(value):
            self._check_url(url, f"{self.field(key)}[{i}]")
        if len(set(value)) != len(value):
            self.problem(f"{self.field(key)} names a URL twice")
        return tuple(value)

    def table(self, key: str) -> _Table | None:
        value = self._get(key, None)
        if value is None:
            return None
        return _Table(value, self.field(key), self.base_dir, self.problems)

    def done(self) -> None:
        for unknown in sorted(set(self.data) - self.seen):
            self.problem(f"{self.where}: unknown key {unknown!r}")


_Rule = Callable[[_Table, str, Setting], Any]


def _fields(
    t: _Table,
    declared: Iterable[tuple[str, Setting]],
    rules: Mapping[str, _Rule] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Each declared field, read from `t` in order: by its section's own rule when `rules` has
    one, else by its declaration, with the default `defaults` gives it (what its default_from
    names) or else the declared one."""
    rules, defaults = rules or {}, defaults or {}
    values: dict[str, Any] = {}
    for key, s in declared:
        if key in rules:
            values[key] = rules[key](t, key, s)
        else:
            values[key] = t.read(key, s, defaults.get(key, s.default))
    return values


# --- one function per section ----------------------------------------------------------------


def _server(t: _Table) -> ServerConfig:
    config = ServerConfig(**_fields(t, settings(ServerConfig)))
    if ("tls_cert" in t.data) != ("tls_key" in t.data):
        t.problem("server: set both tls_cert and tls_key, or neither")
    t.done()
    return config


#: Addresses that listen on every interface: they take any port of any other listener.
WILDCARD_HOSTS = ("0.0.0.0", "::")


def _admin_ui(t: _Table, server: ServerConfig) -> AdminUiConfig:
    """The console's listener: HTTPS with its own files or [server]'s, plain HTTP only where
    nobody else can listen in (a loopback address), and not on the macros' address and port."""
    inherited = {"tls_cert": server.tls_cert, "tls_key": server.tls_key}
    values = _fields(t, settings(AdminUiConfig), defaults=inherited)
    if ("tls_cert" in t.data) != ("tls_key" in t.data):
        t.problem("admin_ui: set both tls_cert and tls_key, or neither (then [server]'s are used)")
    elif values["tls_cert"] is None and values["host"] not in (None, *LOOPBACK_HOSTS):
        t.problem(
            f"admin_ui: the console would send passwords over plain HTTP on {values['host']}: "
            "set admin_ui.tls_cert and admin_ui.tls_key (or server.tls_cert and server.tls_key), "
            f"or listen on a loopback host ({', '.join(LOOPBACK_HOSTS)})"
        )
    hosts = {values["host"], server.host}
    if values["port"] == server.port and (len(hosts) == 1 or hosts & set(WILDCARD_HOSTS)):
        t.problem(
            f"admin_ui.port {values['port']} is the macros' listener (server.port): "
            "give the console a port of its own"
        )
    t.done()
    return AdminUiConfig(**values)


def _function(t: _Table) -> FunctionConfig:
    values = _fields(t, settings(FunctionConfig), defaults={"audience": None})
    if values["audience"] is None:  # left out (or bad, and noted): the URL
        values["audience"] = values["url"]
    for key in ("credentials_file", "impersonate_service_account"):
        if values["auth"] == "none" and values[key] is not None:
            t.problem(f'{t.field(key)} is set but function.auth is "none"')
    impersonate = values["impersonate_service_account"]
    if impersonate is not None and not SERVICE_ACCOUNT_RE.match(impersonate):
        t.problem(
            f"{t.field('impersonate_service_account')} must be a service-account email, "
            "e.g. faceid-connector@PROJECT.iam.gserviceaccount.com"
        )
    t.done()
    return FunctionConfig(**values)


def _store(t: _Table) -> StoreConfig:
    config = StoreConfig(**_fields(t, settings(StoreConfig)))
    if (config.path is None) == (config.url is None):
        t.problem(
            f"set exactly one of {t.field('path')} (SQLite, one connector) and {t.field('url')} "
            "(PostgreSQL, shared by every connector)"
        )
    problem = None if config.url is None else url_problem(config.url)
    if problem is not None:
        t.problem(f"{t.field('url')} {problem}")
    if config.password is not None and config.url is None:
        t.problem(f"{t.field('password')} is for PostgreSQL: set {t.field('url')} too")
    t.done()
    return config


def _threshold(t: _Table, key: str, setting: Setting) -> float | None:
    """0 (or less) would have the function accept any face. The connector cannot know the
    function's engine, so its floor (0.4 or 60) is the function's to enforce: it answers 400,
    which fails every login closed as config_error (relay.py) until the file is fixed."""
    value = t.data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        t.seen.add(key)
        t.problem(
            f"{t.field(key)} must be above 0 (0 would accept anyone), or left out to use the "
            "function's default"
        )
        return None
    return cast(float | None, t.read(key, setting, setting.default))


def _policy(t: _Table) -> PolicyConfig:
    config = PolicyConfig(**_fields(t, settings(PolicyConfig), rules={"threshold": _threshold}))
    if config.lockout_max_s < config.lockout_base_s:
        t.problem("policy.lockout_max_s must not be less than policy.lockout_base_s")
    t.done()
    return config


def _device_defaults(t: _Table) -> DeviceDefaults:
    config = DeviceDefaults(**_fields(t, settings(DeviceDefaults)))
    t.done()
    return config


def _fingerprint(t: _Table, key: str, setting: Setting) -> str | None:
    value = t.read(key, setting, setting.default)
    if value is None:
        return None
    try:
        return normalize_fingerprint(value)
    except FaceIdError:
        t.problem(f"{t.field(key)} must be 64 hex characters (colons allowed)")
        return None


def _tls(device: _Table, key: str, setting: Setting) -> TlsPolicy:
    """devices[].tls: exactly one of ca_bundle, fingerprint_sha256, insecure = true."""
    where = device.field(key)
    one_of = f"{where}: set exactly one of ca_bundle, fingerprint_sha256, insecure = true"
    t = device.table(key)
    if t is None:
        device.problem(one_of)
        return TlsPolicy()
    values = _fields(t, TLS_SETTINGS.items(), rules={"fingerprint_sha256": _fingerprint})
    t.done()
    # Counted as written: a bad bundle or pin is its own problem, not also "none chosen".
    if (
        sum(("ca_bundle" in t.data, "fingerprint_sha256" in t.data, values["insecure"] is True))
        != 1
    ):
        t.problem(one_of)
        return TlsPolicy()
    return TlsPolicy(**values)


def _device(t: _Table, defaults: DeviceDefaults) -> DeviceConfig:
    inherited = {"username": defaults.username, "password": defaults.password}
    values = _fields(t, settings(DeviceConfig), rules={"tls": _tls}, defaults=inherited)
    for key in inherited:
        if values[key] is None and key not in t.data:  # one written but bad is noted already
            t.problem(f"{t.field(key)} is required (here or in [device_defaults])")
    if "token_sha256" in t.data:
        t.seen.add("token_sha256")
        t.problem(
            f"{t.field('token_sha256')} is no longer used: device keys live in the store. Remove "
            "the line, then run `admin rotate-key --serial SERIAL` and put the key in the macro"
        )
    t.done()
    return DeviceConfig(**values)


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
    values = _fields(t, settings(WebexConfig))
    values["api_url"] = values["api_url"].rstrip("/")
    t.done()
    return WebexConfig(**values)


#: What the macro takes as a connector URL: scheme, host and port (trailing `/` are dropped).
MACRO_URL_RE = re.compile(r"\Ahttps?://[^\s/?#]+/*\Z")


def _provisioning(t: _Table) -> ProvisioningConfig:
    config = ProvisioningConfig(**_fields(t, settings(ProvisioningConfig)))
    for i, url in enumerate(config.connector_urls or ()):
        if not MACRO_URL_RE.match(url):
            t.problem(
                f"{t.field('connector_urls')}[{i}] must be scheme, host and port only "
                "(no path, query or fragment): the macro signs the path it sends"
            )
    if "connector_url" in t.data:
        t.seen.add("connector_url")
        old = t.data["connector_url"]
        url = old if isinstance(old, str) else "https://faceid.example.internal:8443"
        t.problem(
            f"{t.field('connector_url')} is replaced by connector_urls, a list of URLs (first "
            f"preferred): write connector_urls = {json.dumps([url])}"
        )
    t.done()
    return config


def _log(t: _Table) -> LogConfig:
    config = LogConfig(**_fields(t, settings(LogConfig)))
    t.done()
    return config


def _parse(text: str, path: str) -> tuple[ConnectorConfig | None, list[str]]:
    """The configuration and every problem noted while reading it (meaningless if any)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [f"not valid TOML: {exc}"]
    base_dir = Path(path).resolve().parent
    root = _Table(data, "", base_dir, [])
    required = {s.name for s in SECTIONS if s.required}

    def section(name: str) -> _Table:
        if name in required and name not in data:
            root.seen.add(name)
            root.problem(f"{name} is required")
            return _Table({}, name, base_dir, [])  # its own missing fields go unsaid
        return _Table(root._get(name, {}), name, base_dir, root.problems)

    server = _server(section("server"))
    admin_ui_table = root.table("admin_ui")
    admin_ui = None if admin_ui_table is None else _admin_ui(admin_ui_table, server)
    function = _function(section("function"))
    store = _store(section("store"))
    policy = _policy(section("policy"))
    defaults = _device_defaults(section("device_defaults"))
    devices = _devices(root, defaults)
    webex_table = root.table("webex")
    webex = None if webex_table is None else _webex(webex_table)
    config = ConnectorConfig(
        path=str(Path(path).resolve()),
        server=server,
        admin_ui=admin_ui,
        function=function,
        store=store,
        policy=policy,
        device_defaults=defaults,
        devices=devices,
        webex=webex,
        provisioning=_provisioning(section("provisioning")),
        log=_log(section("log")),
    )
    for unknown in sorted(set(data) - root.seen):
        root.problem(f"unknown section [{unknown}]")
    if webex is None:
        for i, device in enumerate(config.devices):
            if device.webex_room_id is not None:
                root.problem(f"devices[{i}].webex_room_id is set but there is no [webex] section")
    return config, root.problems


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text; config_error naming it when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise config_error(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error(f"configuration file {path} could not be read ({exc})") from None


def parse_all(text: str, path: str | os.PathLike[str]) -> tuple[ConnectorConfig | None, list[str]]:
    """`text` as the file at `path` (its folder anchors relative paths): the configuration, or
    None and every problem of it, each naming its field."""
    config, problems = _parse(text, os.fspath(path))
    return (None, problems) if problems else (config, [])


def parse(text: str, path: str | os.PathLike[str]) -> ConnectorConfig:
    """`text` as the file at `path`; config_error naming the file and every bad field."""
    config, problems = parse_all(text, path)
    if config is None:
        summary = f"{len(problems)} problems: " + "; ".join(problems)
        raise config_error(f"{os.fspath(path)}: {problems[0] if len(problems) == 1 else summary}")
    return config


def load_config(path: str | os.PathLike[str]) -> ConnectorConfig:
    """Parse and check the file; raises config_error naming the file and the field."""
    return parse(read_text(path), path)
