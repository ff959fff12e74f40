"""The device's HTTP xAPI (REFERENCE §6): status and configuration read as XML, configuration
and commands written as XML, each request with HTTP Basic auth. Used by `admin add-device` (its
checks, with the snapshot account) and `admin provision` (with a device administrator's account).

Why it is shaped this way:
- Requests go through the DeviceClient's transport: the device's TLS policy (a pin is checked
  before the credentials are sent), a deadline enforced whatever the device sends, a size cap.
- Five bad logins lock the account (REFERENCE §1): a 401 is final and never retried. The
  credentials are UTF-8 (RFC 7617); what a device expects of characters beyond ASCII is [U].
- The answers come from a device on the network: parsed with defusedxml (no entities, no DTD).
- A write answers 200 with a result element whose `status` is OK or Error (its Reason says why):
  an Error anywhere in the answer fails the write with the device's own reason, except where the
  caller accepts it (adding a CA certificate the device already trusts).
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from urllib.parse import quote

from defusedxml import ElementTree as SafeET
from faceid_core.errors import DeviceError

from .device import DeviceAccess, DeviceClient

#: One xAPI request, the macro's upload included (about 40 kB).
XAPI_BUDGET_S = 15.0
MAX_XAPI_ANSWER_BYTES = 1024 * 1024


def xapi_refused(host: str, step: str, reason: str) -> DeviceError:
    return DeviceError("xapi_refused", f"The device at {host} refused the {step}: {reason}")


class Xapi:
    """One device's xAPI as one account. Not a session: every request carries the account."""

    def __init__(
        self, client: DeviceClient, access: DeviceAccess, budget_s: float = XAPI_BUDGET_S
    ) -> None:
        self.client = client
        self.access = access
        self.budget_s = budget_s

    def read(self, location: str) -> ET.Element:
        """The subtree at `location` (e.g. /Status/SystemUnit), rooted at <Status> or
        <Configuration>."""
        step = f"xAPI read of {location}"
        path = f"/getxml?location={quote(location, safe='/')}"
        return self._send(step, "GET", path, None)

    def configure(self, values: Mapping[str, str]) -> None:
        """Set configurations, e.g. {"Macros Mode": "On"}, in one request."""
        root = ET.Element("Configuration")
        for name, value in values.items():
            _path(root, name.split()).text = value
        self._write(f"configuration of {', '.join(values)}", root)

    def command(
        self,
        name: str,
        params: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        accept: Callable[[str], bool] | None = None,
    ) -> bool:
        """Run the command `name` (e.g. "Macros Macro Save"); `body` is a multiline command's
        text. True when done; False when the device refused it for a reason `accept` takes
        as done already."""
        root = ET.Element("Command")
        leaf = _path(root, name.split())
        for key, value in (params or {}).items():
            ET.SubElement(leaf, key).text = value
        if body is not None:
            ET.SubElement(leaf, "body").text = body  # lowercase: REFERENCE §6
        if not params and body is None:
            leaf.set("command", "True")
        return self._write(f"command {name}", root, accept)

    def _write(
        self, step: str, root: ET.Element, accept: Callable[[str], bool] | None = None
    ) -> bool:
        data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        answer = self._send(step, "POST", "/putxml", data)
        for element in answer.iter():
            if element.get("status", "").lower() == "error":
                reason = " ".join((element.findtext(".//Reason") or "").split())
                reason = reason or "it gave no reason"
                if accept is not None and accept(reason):
                    return False
                raise xapi_refused(self.access.host, step, reason[:300])
        return True

    def _send(self, step: str, method: str, path: str, data: bytes | None) -> ET.Element:
        host, user = self.access.host, self.access.username
        status, body = self.client.exchange(
            self.access,
            step,
            method,
            path,
            budget_s=self.budget_s,
            limit=MAX_XAPI_ANSWER_BYTES,
            data=data,
            headers={
                "Authorization": basic_auth(user, self.access.password),
                **({"Content-Type": "text/xml"} if data is not None else {}),
            },
        )
        if status == 401:
            raise DeviceError(
                "device_auth_failed",
                f"The device at {host} refused the user name or password of {user!r} for its "
                "xAPI (HTTP 401). Check both; after 5 failures in a row the device locks the "
                "account for a while",
            )
        if status == 403:
            raise xapi_refused(
                host,
                step,
                f"the account {user!r} may not do this (HTTP 403): it needs the Admin role",
            )
        if status != 200:
            raise xapi_refused(host, step, f"HTTP {status}")
        try:
            return SafeET.fromstring(body)
        except Exception:  # defusedxml's refusals and ParseError alike: not an answer we read
            raise DeviceError(
                "xapi_unreadable", f"The device at {host} answered the {step} with unreadable XML"
            ) from None


def basic_auth(user: str, password: str) -> str:
    """HTTP Basic credentials in UTF-8 (RFC 7617's charset): requests would encode them as
    Latin-1 and fail, quoting the password, on any other character."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def leaf(tree: ET.Element, path: str) -> str | None:
    """The text at `path` below the root (e.g. "SystemUnit/Hardware/Module/SerialNumber"),
    stripped; None when absent or empty."""
    found = tree.find(path)
    text = (found.text or "").strip() if found is not None else ""
    return text or None


def _path(root: ET.Element, names: list[str]) -> ET.Element:
    """The element at root/names..., created as needed (several values may share a parent)."""
    node = root
    for name in names:
        child = node.find(name)
        node = child if child is not None else ET.SubElement(node, name)
    return node
