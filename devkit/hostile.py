"""A hostile client for the connector's front: connections held open after the TLS handshake,
headers sent a line at a time, bodies sent a byte at a time, all from one client address.
Bounded: every connection stops by `hold_s` at the latest. Used by tests/test_hostile.py and
bench/hostile.py."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

KINDS = ("idle", "slow_headers", "slow_body")


@dataclass
class Held:
    """What happened to one hostile connection."""

    kind: str
    outcome: str = "pending"  # refused | closed_by_server | held
    closed_after_s: float | None = None
    answer: bytes = b""


@dataclass
class HostileClient:
    url: str
    ca_path: str
    source_ip: str
    counts: dict[str, int]  # kind -> how many connections
    hold_s: float = 20.0
    trickle_every_s: float = 1.0
    held: list[Held] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> HostileClient:
        """Kinds interleaved, so that each has connections inside a per-address cap."""
        left = dict(self.counts)
        while any(left.values()):
            for kind in KINDS:
                if left.get(kind, 0) > 0:
                    left[kind] -= 1
                    record = Held(kind)
                    self.held.append(record)
                    thread = threading.Thread(target=self._hold, args=(record,), daemon=True)
                    thread.start()
                    self._threads.append(thread)
        return self

    def established(self, timeout_s: float = 10.0) -> Counter[str]:
        """Wait until every connection is held, refused or closed; their outcomes."""
        deadline = time.monotonic() + timeout_s
        while any(h.outcome == "pending" for h in self.held) and time.monotonic() < deadline:
            time.sleep(0.05)
        return Counter(h.outcome for h in self.held)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.hold_s + 5)

    def __enter__(self) -> HostileClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> ssl.SSLSocket:
        parts = urlsplit(self.url)
        context = ssl.create_default_context(cafile=self.ca_path)
        raw = socket.create_connection(
            (parts.hostname, parts.port), timeout=5, source_address=(self.source_ip, 0)
        )
        try:
            return context.wrap_socket(raw, server_hostname=parts.hostname)
        except BaseException:
            raw.close()
            raise

    def _hold(self, record: Held) -> None:
        started = time.monotonic()
        try:
            conn = self._connect()
        except (OSError, ssl.SSLError):
            record.outcome = "refused"
            return
        try:
            conn.settimeout(0.2)
            record.outcome = "held"
            steps = self._trickle(record.kind)
            deadline = started + self.hold_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                piece = next(steps, None)
                if piece:
                    conn.sendall(piece)
                if self._closed_by_server(conn, record):
                    record.outcome = "closed_by_server"
                    record.closed_after_s = time.monotonic() - started
                    return
                self._stop.wait(self.trickle_every_s if piece else 0.2)
        except (OSError, ssl.SSLError):
            record.outcome = "closed_by_server"
            record.closed_after_s = time.monotonic() - started
        finally:
            conn.close()

    @staticmethod
    def _closed_by_server(conn: ssl.SSLSocket, record: Held) -> bool:
        try:
            data = conn.recv(4096)
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        record.answer += data
        return not data or b"\r\n\r\n" in record.answer

    def _trickle(self, kind: str) -> Iterator[bytes]:
        """The bytes each kind sends, one piece per tick (idle sends nothing)."""
        host = urlsplit(self.url).netloc.encode()
        if kind == "slow_headers":
            yield b"POST /v1/verify HTTP/1.1\r\nHost: " + host + b"\r\n"
            while True:
                yield b"X-Slow: 1\r\n"
        elif kind == "slow_body":
            yield (
                b"POST /v1/verify HTTP/1.1\r\nHost: " + host + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
            )
            while True:
                yield b" "
