"""The HTTP xAPI of one simulated RoomOS device as state and rules: XML in, XML out, no HTTP.

devkit/simulator.py serves it (routing, Basic auth and its lockout, roles, body limits, counters);
this module is what the device knows and decides (REFERENCE §6): its configuration, status,
macros and trusted CAs, and the XML of every xAPI answer.

getxml of `/Status/...` or `/Configuration/...` answers that subtree as XML rooted at <Status>
or <Configuration>. Status is SystemUnit: ProductId, Software DisplayName, Version and OptionKeys
RemoteMonitoring (False under the simulator's no_option_key), Hardware Module SerialNumber (its
`serial`). Configuration starts factory-fresh: Macros Mode Off, Macros AutoStart On, HttpClient
Mode Off, AllowInsecureHTTPS False, AllowHTTP True, UseHttpProxy Off (the last is a simulator
choice). putxml, parsed without DTDs or entities, takes a <Configuration> of those leaves or one
<Command>: Macros Macro Save (Name, OverWrite, a lowercase `body`), Activate and Deactivate
(Name), Macros Runtime Restart (counted, with the macros active at that moment recorded as
"running"), Security Certificates CA Add (a PEM `body`). Answers are XML whose result element
has status="OK", or status="Error" and a <Reason>.

Choices where a real device's answer is unknown [U]:
- a request that is not xAPI (putxml of malformed XML, a DTD, or a root other than
  Configuration or Command; the simulator's own refusals, through `error_answer`): 400 with
  `<Error status="Error"><Reason>`; getxml of a path that does not exist: 400, Reason
  "No match on address expression: PATH";
- a well-formed putxml the device refuses (unknown path, parameter or command, a value outside
  the leaf's value space, more than one command): 200 with status="Error" and a Reason naming it;
- element names and values are matched exactly (a real device may ignore case); a configuration
  is applied whole or not at all; value spaces: On/Off, True/False (AllowInsecureHTTPS,
  AllowHTTP);
- result elements: MacroSaveResult, MacroActivateResult, MacroDeactivateResult,
  RuntimeRestartResult, CAAddResult, Result (unknown command): clients should look for the
  element with a `status` attribute, not trust these names;
- macro names are `[A-Za-z0-9_-]{1,64}`; OverWrite defaults to False; a new macro starts
  inactive and an overwritten one keeps its state; Activate or Deactivate of an unknown name and
  a runtime restart while Macros Mode is Off answer Error;
- CA Add takes exactly one PEM certificate; one already there answers Error, Reason
  "Certificate already exists" (tools treat that as success).
"""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import defusedxml.ElementTree as SafeET
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from connector.tls import display_fingerprint

PRODUCT_ID = "Cisco Desk Pro"
SOFTWARE_NAME = "RoomOS 11.14.1.5"
SOFTWARE_VERSION = "ce11.14.1.5.8f3a1c2d9e0"
ON_OFF = ("Off", "On")
TRUE_FALSE = ("False", "True")
#: Every configuration leaf the simulated device knows: (factory default, value space).
CONFIGURATION: Mapping[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    ("Macros", "Mode"): ("Off", ON_OFF),
    ("Macros", "AutoStart"): ("On", ON_OFF),
    ("HttpClient", "Mode"): ("Off", ON_OFF),
    ("HttpClient", "AllowInsecureHTTPS"): ("False", TRUE_FALSE),
    ("HttpClient", "AllowHTTP"): ("True", TRUE_FALSE),
    ("HttpClient", "UseHttpProxy"): ("Off", ON_OFF),
}
MACRO_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Refused(ValueError):
    """A request the device understood and refuses: an Error answer with this Reason."""


@dataclass
class _Macro:
    source: str
    active: bool = False


class XapiDevice:
    """The provisioning state of one device (configuration, macros, trusted CAs) behind
    getxml/putxml; each answer is (HTTP status, XML). The caller authenticates first."""

    def __init__(self) -> None:
        self._config = {path: default for path, (default, _) in CONFIGURATION.items()}
        self._macros: dict[str, _Macro] = {}
        self._cas: list[str] = []  # SHA-256 fingerprints, in the order added
        self._restarts = 0
        self._running: list[str] = []
        self._lock = threading.Lock()

    def macros(self) -> dict[str, Any]:
        with self._lock:
            saved = [
                {"name": name, "active": macro.active, "source": macro.source}
                for name, macro in self._macros.items()
            ]
            return {"macros": saved, "restarts": self._restarts, "running": list(self._running)}

    def configuration(self) -> dict[str, Any]:
        with self._lock:
            leaves = {" ".join(path): value for path, value in self._config.items()}
            return {**leaves, "ca_certificates": list(self._cas)}

    def set_configuration(self, path: str, value: str) -> None:
        """Set a leaf ("HttpClient Mode", "On"); a ValueError for one the device would refuse."""
        leaf = tuple(path.split())
        _check_leaf(leaf, value)
        with self._lock:
            self._config[leaf] = value

    def getxml(self, location: str, *, serial: str, remote_monitoring: bool) -> tuple[int, bytes]:
        """The subtree at `location`; the status leaves the simulator owns come as arguments."""
        status = {
            ("SystemUnit", "ProductId"): PRODUCT_ID,
            ("SystemUnit", "Software", "DisplayName"): SOFTWARE_NAME,
            ("SystemUnit", "Software", "Version"): SOFTWARE_VERSION,
            ("SystemUnit", "Software", "OptionKeys", "RemoteMonitoring"): str(remote_monitoring),
            ("SystemUnit", "Hardware", "Module", "SerialNumber"): serial,
        }
        root, *below = location.strip("/").split("/")
        with self._lock:
            trees = {"Status": status, "Configuration": dict(self._config)}
        wanted = tuple(below)
        chosen = [
            (path, value)
            for path, value in trees.get(root, {}).items()
            if path[: len(wanted)] == wanted
        ]
        if not chosen:
            return 400, error_answer(f"No match on address expression: {_shown(location)}")
        return 200, _tree(root, chosen)

    def putxml(self, body: bytes) -> tuple[int, bytes]:
        """A <Configuration> applied whole or refused, or one <Command> run."""
        try:
            root = SafeET.fromstring(body, forbid_dtd=True)
        except (ET.ParseError, ValueError, LookupError):  # refusals; an unknown encoding
            return 400, error_answer("Malformed XML (DTDs and entities are refused)")
        if root.tag == "Configuration":
            return 200, self._configure(root)
        if root.tag == "Command":
            return 200, self._command(root)
        reason = (
            f"Not an xAPI request: the root is {_shown(root.tag)}, not Configuration or Command"
        )
        return 400, error_answer(reason)

    def _configure(self, root: ET.Element) -> bytes:
        try:
            changes = dict(_leaves(root))
            if not changes:
                raise _Refused("No configuration given")
            for leaf, value in changes.items():
                _check_leaf(leaf, value)
        except _Refused as refused:
            return _answer("Configuration", None, str(refused))
        with self._lock:
            self._config.update(changes)
        return _answer("Configuration", None, None)

    def _command(self, root: ET.Element) -> bytes:
        node = root
        path: tuple[str, ...] = ()
        while path not in COMMANDS:
            children = list(node)
            if len(children) > 1:
                return _answer("Command", "Result", "One command per request")
            if children:
                node = children[0]
                path = (*path, node.tag)
            if not children or not _leads_to(path, COMMANDS):
                return _answer("Command", "Result", f"Unknown command: {_path_text(path)}")
        command = COMMANDS[path]
        try:
            command.run(self, _params(node, command.params))
        except _Refused as refused:
            return _answer("Command", command.result, str(refused))
        return _answer("Command", command.result, None)

    # -- the commands (REFERENCE §6) ----------------------------------------------------------

    def _save_macro(self, params: Mapping[str, str]) -> None:
        name = _required(params, "Name")
        overwrite = params.get("OverWrite", "False").strip()
        if overwrite not in TRUE_FALSE:
            raise _Refused(f"Invalid value {_shown(overwrite)} for OverWrite: False or True")
        if not MACRO_NAME_RE.fullmatch(name):
            raise _Refused(f"Invalid macro name {_shown(name)}: 1 to 64 of A-Z a-z 0-9 _ -")
        if "body" not in params:
            raise _Refused("Missing parameter body (lowercase)")
        with self._lock:
            existing = self._macros.get(name)
            if existing is not None and overwrite == "False":
                raise _Refused(f"A macro named {name} already exists and OverWrite is False")
            self._macros[name] = _Macro(params["body"], existing is not None and existing.active)

    def _activate(self, params: Mapping[str, str]) -> None:
        self._set_active(_required(params, "Name"), True)

    def _deactivate(self, params: Mapping[str, str]) -> None:
        self._set_active(_required(params, "Name"), False)

    def _set_active(self, name: str, active: bool) -> None:
        with self._lock:
            macro = self._macros.get(name)
            if macro is None:
                raise _Refused(f"No macro named {_shown(name)}")
            macro.active = active

    def _restart_runtime(self, params: Mapping[str, str]) -> None:
        with self._lock:
            if self._config[("Macros", "Mode")] != "On":
                raise _Refused("Macros are disabled: Configuration Macros Mode is Off")
            self._restarts += 1
            self._running = [name for name, macro in self._macros.items() if macro.active]

    def _add_ca(self, params: Mapping[str, str]) -> None:
        try:
            certificates = x509.load_pem_x509_certificates(params.get("body", "").encode())
        except ValueError:
            raise _Refused("Invalid certificate: the body is not a PEM certificate") from None
        if len(certificates) != 1:
            raise _Refused("Give exactly one PEM certificate")
        fingerprint = display_fingerprint(certificates[0].fingerprint(hashes.SHA256()).hex())
        with self._lock:
            if fingerprint in self._cas:
                raise _Refused("Certificate already exists")
            self._cas.append(fingerprint)


@dataclass(frozen=True)
class _Command:
    result: str  # the name of the answer's result element
    params: frozenset[str]
    run: Callable[[XapiDevice, Mapping[str, str]], None]


COMMANDS: Mapping[tuple[str, ...], _Command] = {
    ("Macros", "Macro", "Save"): _Command(
        "MacroSaveResult", frozenset({"Name", "OverWrite", "body"}), XapiDevice._save_macro
    ),
    ("Macros", "Macro", "Activate"): _Command(
        "MacroActivateResult", frozenset({"Name"}), XapiDevice._activate
    ),
    ("Macros", "Macro", "Deactivate"): _Command(
        "MacroDeactivateResult", frozenset({"Name"}), XapiDevice._deactivate
    ),
    ("Macros", "Runtime", "Restart"): _Command(
        "RuntimeRestartResult", frozenset(), XapiDevice._restart_runtime
    ),
    ("Security", "Certificates", "CA", "Add"): _Command(
        "CAAddResult", frozenset({"body"}), XapiDevice._add_ca
    ),
}


def _leaves(
    element: ET.Element, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path, text) of each leaf under `element`; refuses a path no known leaf starts with, so
    the walk never goes deeper than the known configuration."""
    for child in element:
        path = (*prefix, child.tag)
        if not _leads_to(path, CONFIGURATION):
            raise _Refused(f"Unknown configuration: {_path_text(path)}")
        if len(child):
            yield from _leaves(child, path)
        else:
            yield path, (child.text or "").strip()


def _leads_to(path: tuple[str, ...], known: Iterable[tuple[str, ...]]) -> bool:
    """Whether some known path starts with `path`: the walks stop at the first unknown step."""
    return any(candidate[: len(path)] == path for candidate in known)


def _check_leaf(path: tuple[str, ...], value: str) -> None:
    known = CONFIGURATION.get(path)
    if known is None:
        raise _Refused(f"Unknown configuration: {_path_text(path)}")
    values = known[1]
    if value not in values:
        name = " ".join(path)
        raise _Refused(f"Invalid value {_shown(value)} for {name}: one of {', '.join(values)}")


def _params(command: ET.Element, allowed: frozenset[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for child in command:
        if child.tag not in allowed:
            raise _Refused(f"Unknown parameter {_shown(child.tag)}")
        if len(child) or child.tag in params:
            raise _Refused(f"Parameter {child.tag} is given once, as text")
        params[child.tag] = child.text or ""
    return params


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise _Refused(f"Missing parameter {name}")
    return value


def _shown(text: str) -> str:
    """User input quoted for a Reason: short, ASCII, no control characters."""
    return ascii(text if len(text) <= 80 else text[:80] + "...")


def _path_text(path: tuple[str, ...]) -> str:
    return _shown(" ".join(path)) if path else "(none)"


def _tree(root: str, leaves: Iterable[tuple[tuple[str, ...], str]]) -> bytes:
    """Leaves as nested elements under <root>, in the order given."""
    top = ET.Element(root)
    nodes: dict[tuple[str, ...], ET.Element] = {(): top}
    for path, value in leaves:
        for depth in range(1, len(path) + 1):
            if path[:depth] not in nodes:
                nodes[path[:depth]] = ET.SubElement(nodes[path[: depth - 1]], path[depth - 1])
        nodes[path].text = value
    return _document(top)


def error_answer(reason: str) -> bytes:
    """`<Error status="Error"><Reason>`: the answer to a request that is not xAPI."""
    return _answer("Error", None, reason)


def _answer(root: str, result: str | None, reason: str | None) -> bytes:
    """`<root status=..>`, or `<root><result status=..>` for a command; a Reason when refused."""
    top = ET.Element(root)
    element = top if result is None else ET.SubElement(top, result)
    element.set("status", "OK" if reason is None else "Error")
    if reason is not None:
        ET.SubElement(element, "Reason").text = reason
    return _document(top)


def _document(element: ET.Element) -> bytes:
    return b'<?xml version="1.0"?>\n' + ET.tostring(element, encoding="utf-8")
