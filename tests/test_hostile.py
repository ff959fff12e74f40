"""Hostile connections against the real connector behind its front (connector/front.py): idle,
slow-header and slow-body connections from one address neither stop legitimate signed requests
from another, nor outlive their deadlines, nor exceed the per-address cap."""

from __future__ import annotations

import socket
import ssl
import time
from urllib.parse import urlsplit

import pytest

from devkit.connector_e2e import status
from devkit.hostile import HostileClient
from devkit.photos import write_frames
from devkit.stack import start_stack

pytestmark = pytest.mark.slow  # starts real processes

CAP = 64  # server.max_connections_per_address, its default
REQUEST_TIMEOUT_S = 10  # server.request_timeout_s, its default
KEEPALIVE_S = 5  # server.keepalive_timeout_s, its default


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    frames = write_frames(tmp_path_factory.mktemp("frames"))
    running = start_stack(tmp_path_factory.mktemp("stack"), images=frames["grace_hopper"])
    try:
        yield running
    finally:
        running.stop()


def timed_status(stack) -> float:
    started = time.monotonic()
    assert status(stack, stack.devices[0])["enrolled_people"] == 0
    return time.monotonic() - started


def test_held_connections_from_one_address_leave_other_clients_served(stack):
    counts = {"idle": 100, "slow_headers": 50, "slow_body": 50}
    with HostileClient(
        stack.connector_url, str(stack.ca_path), "127.0.0.2", counts, hold_s=REQUEST_TIMEOUT_S + 6
    ) as hostile:
        outcomes = hostile.established()
        assert outcomes["held"] + outcomes["closed_by_server"] <= CAP, outcomes
        assert outcomes["refused"] >= sum(counts.values()) - CAP, outcomes
        times = [timed_status(stack) for _ in range(10)]
        assert max(times) < 2.0, times
        time.sleep(REQUEST_TIMEOUT_S + 3)  # past the request deadline
        trickled = [h for h in hostile.held if h.kind != "idle" and h.outcome != "refused"]
        assert trickled, "no slow connection got through the cap: nothing was shown"
        for held in trickled:
            assert held.outcome == "closed_by_server", held
            assert held.closed_after_s is not None
            assert held.closed_after_s <= REQUEST_TIMEOUT_S + 3, held
            if held.answer:  # HAProxy's own short page: its HTTP layer answers this one
                assert held.answer.startswith(b"HTTP/1.1 408 "), held.answer[:80]
    assert timed_status(stack) < 2.0  # and at once when they are gone


def test_an_idle_kept_alive_connection_is_closed_after_a_few_seconds(stack):
    parts = urlsplit(stack.connector_url)
    context = ssl.create_default_context(cafile=str(stack.ca_path))
    raw = socket.create_connection((parts.hostname, parts.port), timeout=5)
    with context.wrap_socket(raw, server_hostname=parts.hostname) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + parts.netloc.encode() + b"\r\n\r\n")
        conn.settimeout(KEEPALIVE_S + 5)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        started = time.monotonic()
        while True:  # the rest of the answer, then the server's close
            try:
                data = conn.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not data:
                break
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200")
    assert KEEPALIVE_S - 1 <= waited <= KEEPALIVE_S + 3, waited
