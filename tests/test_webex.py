"""Webex notifications (REFERENCE.md §5): the message administrators read, the background queue
(Retry-After, refusals not retried, bounded retries, bounded queue, drain at shutdown) against a
fake Webex server driven by the real client, and the running connector posting to it without
ever making a login wait."""

from __future__ import annotations

import calendar
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from connector.config import load_config
from connector.notify import Attempt, Notifier
from connector.webex import MESSAGE_MAX_BYTES, Event, WebexClient, WebexMessage, fit, markdown
from devkit.connector_e2e import (
    TwoDevices,
    enroll,
    image_size,
    two_devices_with_webex,
)
from devkit.fakes.webex import FakeWebex, Reply
from devkit.procs import free_port
from devkit.stack import SimDevice

GRACE = "Grace Hopper"
TIME_RE = re.compile(r"- Time: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def event(**changes: object) -> Event:
    fields: dict = {
        "kind": "verify",
        "serial": "FOC1234X5YZ",
        "device_name": "Room 1",
        "outcome": "no_match",
        "code": "not_recognized",
        "person": None,
        "message": "Face not recognised. The screen stays locked.",
        "trace": "0123456789abcdef0123456789abcdef",
        "at": 1795000000.0,
    }
    fields.update(changes)
    return Event(**fields)


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


# --- the message --------------------------------------------------------------------------


def test_message_names_device_serial_person_outcome_code_and_utc_time():
    text = markdown(event(kind="verify", outcome="match", code=None, person="Alice Example"))
    assert text.startswith("**Face login** on **Room 1** (serial FOC1234X5YZ)")
    assert "- Person: Alice Example" in text
    assert "- Outcome: match\n" in text
    assert "- Time: 2026-11-18 11:06:40 UTC" in text  # 1795000000 in UTC
    assert "`0123456789abcdef0123456789abcdef`" in text
    failed = markdown(event(lockout_s=30))
    assert failed.startswith("**Face login refused**")
    assert "- Person: not recognised" in failed
    assert "- Outcome: no_match (`not_recognized`)" in failed
    assert "- Shown on the device: Face not recognised. The screen stays locked." in failed
    assert "locked for 30 s" in failed


def test_names_cannot_inject_links_mentions_or_formatting():
    text = markdown(event(device_name="[click](https://evil.example)", person="<@all> *bold* `x`"))
    assert "[click](https://evil.example)" not in text
    assert "\\[click\\](https://evil.example)" in text
    assert "<@all>" not in text and "\\<@all\\>" in text
    assert "\\*bold\\*" in text and "\\`x\\`" in text


def test_long_text_is_cut_to_the_webex_limit_on_a_character_boundary():
    text = "é" * 5000  # 10000 bytes
    cut = fit(text)
    assert len(cut.encode()) <= MESSAGE_MAX_BYTES
    assert cut.endswith("…") and set(cut[:-1]) == {"é"}
    assert fit("short") == "short"
    odd = fit("a" + "€" * 3000)  # 3-byte characters, cut in the middle of one
    assert len(odd.encode()) <= MESSAGE_MAX_BYTES and odd.encode().decode() == odd
    long_event = markdown(event(message="😀" * 4000))
    assert len(long_event.encode()) <= MESSAGE_MAX_BYTES


# --- the queue against the fake server ----------------------------------------------------


@pytest.fixture
def webex() -> Iterator[FakeWebex]:
    with FakeWebex() as fake:
        yield fake


def queue_for(api_url: str, token: str, **options: Any) -> Notifier[WebexMessage]:
    client = WebexClient(api_url, token)
    options.setdefault("backoff_s", (0.05,))
    return Notifier(client.post, name="webex", describe=lambda m: {"trace": m.trace}, **options)


def message(n: int = 0, attachment: bytes | None = None) -> WebexMessage:
    return WebexMessage("ROOM", f"**message {n}**", f"{n:032x}", attachment)


def test_rate_limited_message_waits_for_retry_after_then_is_sent(webex):
    webex.enqueue(Reply(429, headers=(("Retry-After", "1"),)))
    queue = queue_for(webex.api_url, webex.token)
    assert queue.submit(message())
    webex.wait_for(1, timeout_s=10)
    first, second = webex.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0
    assert queue.close(5) == 0
    assert queue.counts == {"sent": 1, "retried": 1, "failed": 0, "dropped": 0}


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refusals_are_not_retried_and_are_logged_without_the_token(webex, capsys, status):
    token = webex.token if status != 401 else secrets.token_urlsafe(32)
    if status != 401:
        webex.enqueue(Reply(status))
    queue = queue_for(webex.api_url, token)
    queue.submit(message())
    assert queue.close(5) == 0
    assert [r.status for r in webex.requests] == [status]
    assert queue.counts == {"sent": 0, "retried": 0, "failed": 1, "dropped": 0}
    records = logged(capsys)
    failure = next(r for r in records if r["message"].startswith("message failed"))
    assert f"HTTP {status}" in failure["detail"] and "trackingId ROUTER_" in failure["detail"]
    assert failure["trace"] == f"{0:032x}" and failure["queue"] == "webex"
    everything = json.dumps(records)
    assert token not in everything and webex.token not in everything


def test_server_errors_are_retried_a_bounded_number_of_times(webex):
    webex.enqueue(*[Reply(503)] * 10)
    queue = queue_for(webex.api_url, webex.token, max_attempts=3)
    queue.submit(message())
    assert queue.close(5) == 0
    assert [r.status for r in webex.requests] == [503, 503, 503]
    assert queue.counts == {"sent": 0, "retried": 2, "failed": 1, "dropped": 0}


def test_server_error_then_success_is_sent_once(webex):
    webex.enqueue(Reply(500), Reply(502))
    queue = queue_for(webex.api_url, webex.token)
    queue.submit(message())
    assert queue.close(5) == 0
    assert [r.status for r in webex.requests] == [500, 502, 200]
    assert queue.counts["sent"] == 1


def test_unreachable_webex_is_retried_then_counted_as_failed():
    queue = queue_for(f"http://127.0.0.1:{free_port()}/v1", "token", max_attempts=2)
    queue.submit(message())
    assert queue.close(5) == 0
    assert queue.counts == {"sent": 0, "retried": 1, "failed": 1, "dropped": 0}


def test_snapshot_goes_as_the_one_multipart_file(webex):
    jpeg = b"\xff\xd8\xff\xe0" + secrets.token_bytes(2000)
    queue = queue_for(webex.api_url, webex.token)
    queue.submit(message(1, attachment=jpeg))
    queue.submit(message(2))
    queue.close(5)
    with_file, plain = webex.wait_for(2)
    assert with_file.content_type.startswith("multipart/form-data")
    assert (with_file.room_id, with_file.markdown) == ("ROOM", "**message 1**")
    assert with_file.files == [("snapshot.jpg", "image/jpeg", jpeg)]
    assert plain.content_type.startswith("application/json") and plain.files == []


class BlockedSender:
    """A sender that holds every message until released; records what it was given."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.sent: list[WebexMessage] = []

    def __call__(self, item: WebexMessage, timeout_s: float) -> Attempt:
        self.started.set()
        if not self.release.wait(timeout_s):
            return Attempt("retry", "timed out")
        self.sent.append(item)
        return Attempt("sent")


def test_a_full_queue_drops_new_messages_and_counts_them(capsys):
    sender = BlockedSender()
    outcomes: list[str] = []
    queue = Notifier(sender, queue_size=2, on_outcome=outcomes.append)
    assert queue.submit(message(0))
    assert sender.started.wait(5)  # message 0 is in flight, the queue is empty
    started = time.monotonic()
    accepted = [queue.submit(message(n)) for n in range(1, 6)]
    assert time.monotonic() - started < 0.1  # submitting never waits
    assert accepted == [True, True, False, False, False]
    assert queue.counts["dropped"] == 3 and outcomes.count("dropped") == 3
    sender.release.set()
    assert queue.close(5) == 0
    assert [m.trace for m in sender.sent] == [f"{n:032x}" for n in range(3)]
    drops = [r for r in logged(capsys) if r["message"].startswith("message dropped: the queue is")]
    assert len(drops) == 3


def test_shutdown_sends_what_is_queued_within_the_deadline():
    sent: list[WebexMessage] = []

    def slow(item: WebexMessage, timeout_s: float) -> Attempt:
        time.sleep(0.05)
        sent.append(item)
        return Attempt("sent")

    queue = Notifier(slow)
    for n in range(5):
        queue.submit(message(n))
    assert queue.close(5) == 0
    assert len(sent) == 5 and queue.counts["sent"] == 5
    assert not queue.submit(message(9))  # closed: counted, not silently lost
    assert queue.counts["dropped"] == 1


def test_shutdown_gives_up_at_the_deadline_and_logs_how_many_were_dropped(capsys):
    sender = BlockedSender()
    queue = Notifier(sender)
    for n in range(4):
        queue.submit(message(n))
    assert sender.started.wait(5)
    started = time.monotonic()
    assert queue.close(0.3) == 4
    assert time.monotonic() - started < 1.0
    assert queue.counts == {"sent": 0, "retried": 0, "failed": 0, "dropped": 4}
    summary = next(r for r in logged(capsys) if r["message"] == "message queue closed")
    assert (summary["severity"], summary["dropped_at_shutdown"]) == ("WARNING", 4)
    sender.release.set()


def test_a_long_retry_after_is_cut_short_by_shutdown_and_counted():
    calls: list[float] = []

    def limited(item: WebexMessage, timeout_s: float) -> Attempt:
        calls.append(time.monotonic())
        return Attempt("retry", "HTTP 429", 60.0)

    queue = Notifier(limited)
    queue.submit(message())
    while not calls:
        time.sleep(0.01)
    started = time.monotonic()
    assert queue.close(2) == 0  # the worker itself gives up: the wait would pass the deadline
    assert time.monotonic() - started < 1.0
    assert len(calls) == 1
    assert queue.counts == {"sent": 0, "retried": 1, "failed": 0, "dropped": 1}


# --- configuration ------------------------------------------------------------------------

BASE = (
    '[function]\nurl = "http://127.0.0.1:9/"\nauth = "none"\n'
    '[store]\npath = "x.db"\nkey = "env:K"\n'
)
DEVICE = (
    '[[devices]]\nserial = "A1"\nhost = "10.0.0.5"\nusername = "u"\npassword = "env:P"\n'
    "tls = { insecure = true }\n"
)


def test_a_device_may_have_its_own_room_and_the_api_url_is_checked(tmp_path):
    path = tmp_path / "faceid.toml"
    path.write_text(
        BASE + DEVICE + 'webex_room_id = "ROOM-B"\n'
        '[webex]\nbot_token = "env:T"\nroom_id = "ROOM-A"\napi_url = "http://127.0.0.1:8/v1/"\n'
    )
    config = load_config(path)
    assert config.devices[0].webex_room_id == "ROOM-B"
    assert config.webex is not None and config.webex.api_url == "http://127.0.0.1:8/v1"
    path.write_text(BASE + DEVICE + 'webex_room_id = "ROOM-B"\n')
    with pytest.raises(Exception, match=r"devices\[0\]\.webex_room_id is set but there is no"):
        load_config(path)
    path.write_text(
        BASE + '[webex]\nbot_token = "env:T"\nroom_id = "R"\napi_url = "http://x.example/v1"\n'
    )
    with pytest.raises(Exception, match=r"webex\.api_url must be an https:// URL"):
        load_config(path)


# --- the running connector ----------------------------------------------------------------


@dataclass
class World(TwoDevices):
    def verify(self, device: SimDevice) -> tuple[dict, str, float]:
        """(answer, request id, seconds it took)."""
        started = time.monotonic()
        body = {"serial": device.serial}
        response = self.stack.call("/v1/verify", device, body)
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        return response.json(), response.headers["X-Request-Id"], took


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    with two_devices_with_webex(
        tmp_path_factory,
        board_toml='name = "Board Room [east]"\nwebex_room_id = "ROOM-B"\n',
        webex_toml=('room_id = "ROOM-A"', 'events = "all"', "attach_snapshots = true"),
    ) as two:
        yield World(**vars(two))


@pytest.mark.slow
def test_every_event_reaches_the_devices_room_with_device_person_outcome_and_time(world):
    stack, webex = world.stack, world.webex
    assert enroll(stack, world.room, GRACE)["result"] == "enrolled"
    enrolled = webex.message_with("**Face enrolled** on **SIM0000**")
    assert enrolled.room_id == "ROOM-A" and f"- Person: {GRACE}" in (enrolled.markdown or "")

    before = time.time()
    answer, request_id, _ = world.verify(world.room)
    assert answer["verdict"] == "match"
    matched = webex.message_with(request_id)
    text = matched.markdown or ""
    assert matched.room_id == "ROOM-A" and matched.files == []
    assert text.startswith("**Face login** on **SIM0000** (serial SIM0000)")
    assert f"- Person: {GRACE}\n- Outcome: match\n" in text
    assert "- Shown on the device: Welcome, Grace Hopper" in text
    found = TIME_RE.search(text)
    assert found is not None
    sent_at = calendar.timegm(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
    assert before - 1 <= sent_at <= time.time() + 1
    assert matched.authorization == f"Bearer {webex.token}"

    assert enroll(stack, world.board, GRACE)["result"] == "enrolled"
    world.board.control(images=str(world.frames["astronaut"]))
    answer, request_id, _ = world.verify(world.board)
    assert answer["code"] == "not_recognized"
    refused = webex.message_with(request_id)
    text = refused.markdown or ""
    assert refused.room_id == "ROOM-B"
    assert text.startswith("**Face login refused** on **Board Room \\[east\\]** (serial XBOARD)")
    assert "- Outcome: no_match (`not_recognized`)" in text
    assert "- Shown on the device: Face not recognised. The screen stays locked." in text
    [(name, kind, jpeg)] = refused.files
    assert (name, kind) == ("snapshot.jpg", "image/jpeg") and jpeg.startswith(b"\xff\xd8")
    assert max(image_size(jpeg)) <= 1024  # the downscaled probe, not the raw frame


@pytest.mark.slow
def test_a_hanging_webex_never_delays_a_verdict(world):
    baseline = max(world.verify(world.room)[2] for _ in range(2))
    world.webex.hang()
    try:
        tries = [world.verify(world.room) for _ in range(3)]
    finally:
        world.webex.release()
    for answer, _, took in tries:
        assert answer["verdict"] == "match"
        # Waiting on Webex would cost the whole hang (until release) or a send timeout (10 s).
        assert took < max(2.0, 3 * baseline), (took, baseline)
    for _, request_id, _ in tries:  # nothing lost once Webex answers again
        world.webex.message_with(request_id, timeout_s=20)


@pytest.mark.slow
def test_shutdown_sends_the_queued_messages_before_the_worker_exits(world):
    """Last in this module: it stops the connector."""
    world.webex.hang()
    ids = [world.verify(world.room)[1] for _ in range(3)]
    threading.Timer(1.0, world.webex.release).start()
    world.stack.connector.stop(timeout_s=20)
    for request_id in ids:
        world.webex.message_with(request_id, timeout_s=1)
    records = [json.loads(line) for line in world.stack.connector.stdout().splitlines()]
    closed = [r for r in records if r["message"] == "message queue closed"]
    assert len(closed) == 1, closed
    assert closed[0]["queued_at_shutdown"] == 3 and closed[0]["dropped_at_shutdown"] == 0
    output = world.stack.connector.stdout() + world.stack.connector.stderr()  # gunicorn's: stdout
    assert "Traceback" not in output and "Exception during worker exit" not in output
