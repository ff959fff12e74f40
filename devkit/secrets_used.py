"""The secrets a test run hands to the code under test, and the scan of log text for them.

Every key, token and password the tests make up is registered where it is made: the fakes'
constructors, devkit/stack.py, the environment of each child process and of the test process
(tests/conftest.py wires those). Everything the run printed is then read for any registered value
and for anything shaped like a credential (an Authorization Bearer value, a Subscriptionkey, a
password=...). A finding names where and which kind of secret, never the value.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

MIN_LENGTH = 12  # shorter values would match ordinary text by chance; generated ones are longer
# Environment variables whose value is a secret by name, unless the name says it is a place.
SECRET_NAME = re.compile(r"(?i)password|token|secret|key|account")
PLACE_NAME = re.compile(r"(?i)_(?:host|url|uri|path|file|dir|port)$")
# Values that point at a secret instead of being one (docs/api.md secret references, URLs, Secret
# Manager names); existing files' paths too (base64 may start with a slash).
REFERENCE = re.compile(r"^(?:env:|file:|gsm:|[a-z][a-z0-9+.-]*://|projects/)")

_lock = threading.Lock()
_needles: dict[str, str] = {}  # a form the secret travels in -> its kind


def register(kind: str, value: str | bytes) -> None:
    """Remember `value`, in every form it may travel in, as a secret of this kind (first kind
    registered wins). Thread-safe: fakes register from their server threads."""
    with _lock:
        for needle in _forms(value):
            if len(needle) >= MIN_LENGTH:
                _needles.setdefault(needle, kind)


def register_environment(env: Mapping[str, str], baseline: Mapping[str, str]) -> None:
    """Register the variables of `env` named like secrets and not already in `baseline` (the
    environment the run started with: only what the tests set counts)."""
    for name, value in env.items():
        if baseline.get(name) == value or not SECRET_NAME.search(name):
            continue
        if PLACE_NAME.search(name) or REFERENCE.match(value) or os.path.exists(value):
            continue
        if name.upper().endswith("ACCOUNT"):  # USER:PASSWORD
            value = value.partition(":")[2]
        register(f"environment variable {name}", value)


def registered() -> int:
    """How many needles (forms of secrets) are known; `scan(since=...)` takes the later ones."""
    with _lock:
        return len(_needles)


def _forms(value: str | bytes) -> Iterator[str]:
    if isinstance(value, bytes):
        yield base64.b64encode(value).decode().rstrip("=")
        yield base64.urlsafe_b64encode(value).decode().rstrip("=")
        yield value.hex()
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    value = value.strip()
    if "PRIVATE KEY-----" in value:
        # A key travels whole, JSON-escaped or wrapped, or cut short: its first lines and one
        # further on give it away.
        body = [line for line in value.splitlines() if not line.startswith("-----")]
        yield from body[:2] + body[len(body) // 2 : len(body) // 2 + 1]
    elif value.startswith("eyJ") and value.count(".") == 2:
        # A JWT: header and claims look alike from token to token, the signature is its own.
        yield value.rsplit(".", 1)[1]
    else:
        yield value


@dataclass(frozen=True)
class Shape:
    """A credential recognisable without the registry. `keyword` (lower case) is in every match
    and rules out most text cheaply; group 1 (or 2), else the whole match, is the value."""

    kind: str
    keyword: str
    pattern: re.Pattern[str]


SHAPES = [
    Shape(
        "Subscriptionkey header value",
        "subscriptionkey",
        re.compile(r"(?i)subscriptionkey['\"]?\s*[:=]\s*['\"]?([^\s'\",;}]+)"),
    ),
    Shape(
        "Authorization Bearer value",
        "bearer",
        re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)"),
    ),
    Shape(
        "password value",
        "pass",
        re.compile(
            r"(?i)\bpass(?:word|wd)\s*=\s*['\"]?([^\s'\"&,;)]+)"  # form field, key=value, TOML
            r"|['\"]pass(?:word|wd)['\"]\s*:\s*['\"]([^'\"]+)['\"]"  # JSON, Python dict
        ),
    ),
    Shape("PEM private key", "private key-----", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    Shape("signed JWT", "eyj", re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{16,}")),
    Shape("Google access token", "ya29.", re.compile(r"\bya29\.[\w.-]{16,}")),
]
# What a shaped value may be without being a secret: a reference, a placeholder, or code (a
# traceback shows source lines such as `password=password` or `key=secrets.token_hex(16)`).
NOT_A_SECRET = re.compile(
    r"(?i)^(?:env:|file:|gsm:).*$"
    r"|^(?:\*+|x{3,}|<[^>]*>|\.\.\.|\[?redacted\]?|none|null|true|false)$"
)
CODE = re.compile(r"^(?:[a-z_][a-z_.]*|[A-Z_][A-Z_]*)(?:\(.*)?$")


@dataclass(frozen=True, order=True)
class Finding:
    source: str  # a process and stream, a test output section or a file
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.source}, line {self.line}: {self.kind}"


def _shaped(match: re.Match[str]) -> tuple[int, int] | None:
    """Where the credential value of a shape match is, or None when it is not one."""
    group = match.lastindex or 0
    value = match.group(group)
    if group and (NOT_A_SECRET.match(value) or CODE.match(value)):
        return None
    return match.span(group)


def _lines_with(text: str, keyword: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of `text` holding `keyword` in any case."""
    low = text.lower()
    if len(low) != len(text):  # a character whose lower case is longer: no shortcut
        yield 0, len(text)
        return
    found = low.find(keyword)
    while found != -1:
        start = text.rfind("\n", 0, found) + 1
        end = text.find("\n", found)
        end = len(text) if end == -1 else end
        yield start, end
        found = low.find(keyword, end)


def _spans(text: str, since: int = 0, shapes: bool = True) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of every secret in `text`: the needles registered from the `since`-th
    on, and the shapes if asked."""
    with _lock:
        needles = list(_needles.items())[since:]
    for needle, kind in needles:
        start = text.find(needle)
        while start != -1:
            yield start, start + len(needle), kind
            start = text.find(needle, start + len(needle))
    for shape in SHAPES if shapes else ():
        for start, end in _lines_with(text, shape.keyword):
            for match in shape.pattern.finditer(text, start, end):
                span = _shaped(match)
                if span is not None:
                    yield (*span, shape.kind)


def scan(source: str, text: str, *, since: int = 0, shapes: bool = True) -> list[Finding]:
    """Every (line, kind) of a secret in `text`, the log of `source`. A text scanned before
    needs only `since=` the registry size then, and no shapes."""
    spans = _spans(text, since, shapes)
    found = {(text.count("\n", 0, start) + 1, kind) for start, _end, kind in spans}
    return [Finding(source, line, kind) for line, kind in sorted(found)]


def redact(text: str) -> str:
    """`text` with every secret replaced by its kind, for showing a leaky log safely."""
    out, done = [], 0
    for start, end, kind in sorted(_spans(text)):
        if start >= done:
            out += [text[done:start], f"<{kind}>"]
        done = max(done, end)  # overlapping finds: hide the union
    return "".join([*out, text[done:]])


def line_count(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


@dataclass
class RunTally:
    """What the whole run read, so that its end can tell a scan that ran from one that did not.
    Thread-safe: processes stop from several threads at once."""

    started: int = 0  # child processes
    scanned: int = 0
    lines: dict[str, int] = field(default_factory=dict)  # where -> lines read
    pending: list[Finding] = field(default_factory=list)  # found, not yet charged to a test
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(
        self, where: str, source: str, text: str, *, since: int = 0, shapes: bool = True
    ) -> list[Finding]:
        """`scan(...)`, counting the lines of `text` under `where`."""
        findings = scan(source, text, since=since, shapes=shapes)
        with self._lock:
            self.lines[where] = self.lines.get(where, 0) + line_count(text)
        return findings

    def process_started(self) -> None:
        with self._lock:
            self.started += 1

    def process_read(self, findings: list[Finding]) -> None:
        """A process's output was scanned; its findings wait for the test phase to end."""
        with self._lock:
            self.scanned += 1
            self.pending += findings

    def take_pending(self) -> list[Finding]:
        with self._lock:
            taken, self.pending = self.pending, []
        return taken


TALLY = RunTally()
