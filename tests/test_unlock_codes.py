"""Offline unlock codes, the connector's side: the code construction (connector/unlockcode.py) on
the contract's vectors, `admin unlock-code` (what it prints, refuses and audits), and POST
/v1/code-events (strict input, each event audited and told once) in memory, then through the
running connector with the Webex fake. The macro's side is macro/test's."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import string
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from faceid_core.errors import InputError
from flask.testing import FlaskClient

from connector.__main__ import main
from connector.app import create_app
from connector.codeevents import record_events
from connector.config import load_config
from connector.lockout import Lockout
from connector.memory import MemoryNotices
from connector.protocol import SIGNATURE_HEADER
from connector.runtime import Runtime
from connector.store import Store
from connector.unlockcode import (
    MAX_MINUTES,
    STEP_S,
    code_for,
    expires_step,
    grouped,
)
from connector.validation import UNIX_TIME_MAX, CodeUsed, CodeWait, code_events
from connector.webex import Event, WebexNotices, markdown
from devkit.connector_e2e import TwoDevices, open_store, two_devices_with_webex
from devkit.macro_client import answer_holds, answer_signature, authorization, body_bytes, new_nonce
from tests.support.connector_config import BASE
from tests.support.memory_runtime import Rig

VECTOR_KEY = bytes(range(32))
#: The vectors docs/macro.md publishes; macro/test/unlockcode.test.mjs checks the macro on them.
VECTORS = [
    ("FOC2211X0AB", 5900000, "58420136"),
    ("FOC2211X0AB", 5900001, "71758818"),
    ("SIM-0001", 0, "61725422"),
    ("DEMO-0001", 6000000, "01558037"),
]
USED_ID, WAIT_ID = "0123456789abcdef", "fedcba9876543210"
#: The connector's clock for reading events: no event of these tests is ahead of it.
LATEST = float(UNIX_TIME_MAX)
SERIAL_CHARS = string.ascii_letters + string.digits + "_-"


def used(event_id: str = USED_ID, at: int = 1_800_000_000, expires: int = 1_800_000_300) -> dict:
    return {"id": event_id, "kind": "used", "expires": expires, "at": at}


def wait(event_id: str = WAIT_ID, wait_s: int = 300, wrong: int = 5) -> dict:
    return {"id": event_id, "kind": "wait", "wait_s": wait_s, "wrong": wrong, "at": 1_800_000_100}


# --- the construction --------------------------------------------------------------------------


@pytest.mark.parametrize(("serial", "step", "code"), VECTORS)
def test_the_code_of_a_serial_and_step_is_the_contracts_vector(serial, step, code):
    assert code_for(VECTOR_KEY, serial, step) == code


def test_a_code_is_bound_to_its_key_serial_and_step():
    code = code_for(VECTOR_KEY, "FOC2211X0AB", 5900000)
    assert code_for(bytes(32), "FOC2211X0AB", 5900000) != code
    assert code_for(VECTOR_KEY, "FOC2211X0AC", 5900000) != code
    assert code_for(VECTOR_KEY, "FOC2211X0AB", 5900002) != code
    assert grouped(code) == "5842 0136"


@pytest.mark.parametrize("now", [1_800_000_000.0, 1_800_000_001.5, 1_800_000_299.0])
@pytest.mark.parametrize("minutes", [1, 10, MAX_MINUTES])
def test_a_code_lasts_at_least_the_minutes_asked_and_ends_on_a_step(now, minutes):
    step = expires_step(now, minutes)
    assert step == math.ceil((now + minutes * 60) / STEP_S)
    assert now + minutes * 60 <= step * STEP_S < now + minutes * 60 + STEP_S


@pytest.mark.parametrize("minutes", [0, -1, MAX_MINUTES + 1])
def test_a_code_lasts_1_to_720_minutes(minutes):
    with pytest.raises(ValueError, match="1 to 720 minutes"):
        expires_step(1_800_000_000.0, minutes)


# --- admin unlock-code, in process -------------------------------------------------------------

SERIAL = "FOC2211X0AB"


@pytest.fixture
def config_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", os.urandom(32).hex())
    path = tmp_path / "faceid.toml"
    path.write_text(
        BASE
        + f'\n[[devices]]\nserial = "{SERIAL}"\nhost = "127.0.0.1:9"\nusername = "faceid"\n'
        + 'password = "env:UNUSED"\ntls = { insecure = true }\n'
    )
    return path


@pytest.fixture
def device_store(config_file) -> Iterator[tuple[Store, bytes]]:
    """The configuration's store, the device given a key as provisioning would."""
    config = load_config(config_file)
    store = Store.open(config.store.path, config.store.resolve_key())
    key = os.urandom(32)
    store.set_device_key(SERIAL, key)
    yield store, key
    store.close()


def run_admin(config_file: Path, *args: str) -> int:
    return main(["--config", str(config_file), "admin", "unlock-code", *args])


def test_unlock_code_prints_the_code_grouped_and_plain_and_until_when(
    config_file, device_store, capsys
):
    store, key = device_store
    assert run_admin(config_file, "--serial", SERIAL, "--minutes", "30") == 0
    out = capsys.readouterr().out.splitlines()
    head, until, reminder = out
    code = head.rsplit("(", 1)[1].rstrip(")")
    assert head == f"Unlock code for {SERIAL}: {grouped(code)}  ({code})"
    assert until.startswith("Valid until ") and until.endswith("+00:00")
    assert reminder == f"It works once, on {SERIAL} only; read it to the person at the device."
    (entry,) = store.audit(serial=SERIAL)
    valid_until = until.removeprefix("Valid until ")
    assert (entry.action, entry.outcome, entry.code) == (
        "unlock_code_issued",
        "issued",
        f"valid_until_{valid_until}",
    )
    assert entry.actor and entry.person is None and entry.score is None
    assert code not in json.dumps(entry.to_json())  # the audit never holds the code
    assert store.device_key(SERIAL) == key


def test_unlock_code_json_is_the_code_of_the_step_it_names(config_file, device_store, capsys):
    _, key = device_store
    assert run_admin(config_file, "--serial", SERIAL, "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"serial", "code", "valid_until"} and printed["serial"] == SERIAL
    step, rest = divmod(datetime.fromisoformat(printed["valid_until"]).timestamp(), STEP_S)
    assert rest == 0
    assert printed["code"] == code_for(key, SERIAL, int(step))


def test_unlock_code_for_an_unknown_device_or_one_without_a_key_is_refused(config_file, capsys):
    assert run_admin(config_file, "--serial", "NOSUCHROOM") == 1
    assert "No device NOSUCHROOM in the configuration." in capsys.readouterr().err
    assert run_admin(config_file, "--serial", SERIAL) == 1  # configured, never provisioned
    said = capsys.readouterr()
    assert said.out == "" and f"{SERIAL} has no key yet" in said.err
    assert f"admin provision --serial {SERIAL}" in said.err
    config = load_config(config_file)
    store = Store.open(config.store.path, config.store.resolve_key())
    try:
        assert store.audit() == []  # nothing issued, nothing audited
    finally:
        store.close()


@pytest.mark.parametrize("minutes", ["0", "721", "ten", "1.5"])
def test_unlock_code_minutes_outside_1_to_720_are_a_usage_error(
    config_file, device_store, capsys, minutes
):
    store, _ = device_store
    with pytest.raises(SystemExit) as stopped:
        run_admin(config_file, "--serial", SERIAL, "--minutes", minutes)
    assert stopped.value.code == 2
    assert "--minutes" in capsys.readouterr().err
    assert store.audit() == []


# --- the events' input rules -------------------------------------------------------------------


def test_well_formed_events_are_read_as_they_were_sent():
    body = {"serial": "S", "events": [used(), wait(wait_s=86400, wrong=1_000_000)]}
    assert code_events(body, LATEST) == [
        CodeUsed(USED_ID, 1_800_000_000, 1_800_000_300),
        CodeWait(WAIT_ID, 1_800_000_100, 86400, 1_000_000),
    ]
    twenty = {"serial": "S", "events": [used(f"{i:016x}") for i in range(20)]}
    assert len(code_events(twenty, LATEST)) == 20
    # JSON has one kind of number: 1800000000.0 is the whole number it writes.
    (same,) = code_events({"serial": "S", "events": [{**used(), "at": 1.8e9}]}, LATEST)
    assert same == CodeUsed(USED_ID, 1_800_000_000, 1_800_000_300) and type(same.at) is int


@pytest.mark.parametrize(
    ("events", "said"),
    [
        (None, "'events' must be a list of 1 to 20 events"),
        ([], "'events' must be a list of 1 to 20 events"),
        ({"0": used()}, "'events' must be a list"),
        ([used(f"{i:016x}") for i in range(21)], "'events' must be a list of 1 to 20"),
        (["used"], "'events[0]' must be an object whose 'kind' is 'used' or 'wait'"),
        ([{**used(), "kind": "USED"}], "'events[0]' must be an object whose 'kind'"),
        ([{**used(), "kind": ["used"]}], "'events[0]' must be an object whose 'kind'"),
        ([used(), {**wait(), "code": "12345678"}], "'events[1]' has an unknown field 'code'"),
        ([{**used(), "wait_s": 300}], "'events[0]' has an unknown field 'wait_s'"),
        ([used("0123456789ABCDEF")], "'events[0].id' must be 16 lowercase hex characters"),
        ([used("0123456789abcde")], "'events[0].id' must be 16 lowercase hex"),
        ([used("0123456789abcdef0")], "'events[0].id' must be 16 lowercase hex"),
        ([used("0123456789abcde\n")], "'events[0].id' must be 16 lowercase hex"),
        ([{**used(), "id": 12345678}], "'events[0].id' must be 16 lowercase hex"),
        ([{k: v for k, v in used().items() if k != "expires"}], "'events[0].expires' must be"),
        ([used(at=-1)], "'events[0].at' must be a whole number from 0 to 4294967295"),
        ([used(at=2**32)], "'events[0].at' must be a whole number"),
        ([{**used(), "at": 1.5}], "'events[0].at' must be a whole number"),
        ([{**used(), "at": float("nan")}], "'events[0].at' must be a whole number"),
        ([{**used(), "at": 1e300}], "'events[0].at' must be a whole number"),
        ([{**used(), "at": "1800000000"}], "'events[0].at' must be a whole number"),
        ([{**used(), "expires": True}], "'events[0].expires' must be a whole number"),
        ([wait(wait_s=0)], "'events[0].wait_s' must be a whole number from 1 to 86400"),
        ([wait(wait_s=86401)], "'events[0].wait_s' must be a whole number from 1 to 86400"),
        ([wait(wrong=0)], "'events[0].wrong' must be a whole number from 1 to 1000000"),
    ],
)
def test_malformed_events_are_a_bad_request_naming_the_field(events, said):
    body = {"serial": "S"} if events is None else {"serial": "S", "events": events}
    with pytest.raises(InputError) as refused:
        code_events(body, LATEST)
    assert refused.value.code == "bad_request" and said in refused.value.message


def test_other_members_of_the_body_are_ignored_as_on_every_route():
    assert code_events({"serial": "S", "events": [used()], "later": 1}, LATEST) == [
        CodeUsed(USED_ID, 1_800_000_000, 1_800_000_300)
    ]


# --- POST /v1/code-events in memory ------------------------------------------------------------

CODE_EVENTS = "/v1/code-events"


@pytest.fixture
def client(rig) -> FlaskClient:
    return create_app(rig.rt).test_client()


def post_events(rig: Rig, client: FlaskClient, body: Any) -> tuple[int, dict[str, Any]]:
    """One POST signed as the macro signs it at the rig's time; the answer must be signed."""
    data, nonce = body_bytes(body), new_nonce()
    header = authorization(
        rig.keys[rig.serial],
        "POST",
        CODE_EVENTS,
        rig.serial,
        data,
        ts=int(rig.clock()),
        nonce=nonce,
    )
    answer = client.post(
        CODE_EVENTS,
        data=data,
        headers={"Authorization": header, "Content-Type": "application/json"},
    )
    assert answer.headers[SIGNATURE_HEADER] == answer_signature(
        rig.keys[rig.serial], nonce, answer.data
    )
    return answer.status_code, json.loads(answer.data)


def code_rows(store: Store, serial: str) -> list[tuple[Any, ...]]:
    return [
        (e.action, e.outcome, e.code, e.time, e.person, e.score, e.actor)
        for e in reversed(store.audit(serial=serial))
        if e.action.startswith("unlock_code")
    ]


def test_each_event_is_audited_and_told_once_however_often_it_is_sent(rig, client):
    rig.clock.advance(7200)  # reported two hours after it happened: the audit says when
    body = {"serial": rig.serial, "events": [used(), wait()]}
    assert post_events(rig, client, body) == (200, {"recorded": 2, "serial": rig.serial})
    now = rig.clock()
    expected = [
        (
            "unlock_code_used",
            "unlocked",
            "valid_until_2027-01-15T08:05:00+00:00_device_time_2027-01-15T08:00:00+00:00",
            now,
            None,
            None,
            None,
        ),
        (
            "unlock_code_wait",
            "waiting",
            "wait_300s_after_5_wrong_device_time_2027-01-15T08:01:40+00:00",
            now,
            None,
            None,
            None,
        ),
    ]
    assert code_rows(rig.store, rig.serial) == expected
    told = [(e.kind, e.outcome, e.serial, e.at, e.person) for e in rig.notices.events]
    assert told == [
        ("unlock_code", "unlocked", rig.serial, now, None),
        ("unlock_code", "waiting", rig.serial, now, None),
    ]
    assert rig.notices.events[0].message == (
        "the device was opened with an unlock code valid until 2027-01-15T08:05:00+00:00, "
        "at 2027-01-15T08:00:00+00:00 by the device's clock"
    )
    assert rig.notices.events[1].message == (
        "5 wrong unlock codes in a row: the device checks no code for 300 s "
        "(from 2027-01-15T08:01:40+00:00 by the device's clock)"
    )
    # The answer was lost: the macro sends them again, with one that is new.
    again = {"serial": rig.serial, "events": [wait(), used(), used("00000000000000aa")]}
    assert post_events(rig, client, again) == (200, {"recorded": 1, "serial": rig.serial})
    assert code_rows(rig.store, rig.serial)[:2] == expected
    assert len(code_rows(rig.store, rig.serial)) == 3 and len(rig.notices.events) == 3


def test_an_event_id_is_the_devices_own(rig, client):
    """Two devices' macros may pick the same id: each device's event is recorded."""
    body = {"serial": rig.serial, "events": [used()]}
    assert post_events(rig, client, body)[1]["recorded"] == 1
    assert rig.store.spend_nonce(rig.devices[1].serial, f"event:{USED_ID}", rig.clock(), 60)
    assert not rig.store.spend_nonce(rig.serial, f"event:{USED_ID}", rig.clock(), 60)


@pytest.mark.parametrize(
    "body",
    [
        {"events": [used()]},  # no serial: refused before anything else is read
        {"serial": "SIM0001", "events": [used()]},  # another device's serial
    ],
)
def test_events_naming_another_device_are_unauthorized(rig, client, body):
    status, answer = post_events(rig, client, body)
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert code_rows(rig.store, rig.serial) == [] and rig.notices.events == []


@pytest.mark.parametrize(
    "events",
    [[], [used(), {**wait(), "extra": 1}], [used("not-hex-at-all!!")], "used", [None]],
)
def test_malformed_events_are_a_signed_bad_request_and_nothing_is_recorded(rig, client, events):
    status, answer = post_events(rig, client, {"serial": rig.serial, "events": events})
    assert (status, answer["error"]["code"]) == (400, "bad_request"), answer
    assert code_rows(rig.store, rig.serial) == [] and rig.notices.events == []


def test_a_body_that_is_no_json_object_is_a_signed_bad_request(rig, client):
    status, answer = post_events(rig, client, [used()])
    assert (status, answer["error"]["code"]) == (400, "bad_request")


def test_the_audit_time_is_the_connectors_clock_not_the_devices(rig, client):
    """A device's clock may be wrong, or its key misused to backdate the history."""
    body = {"serial": rig.serial, "events": [used(at=1_000_000_000, expires=1_000_000_300)]}
    assert post_events(rig, client, body)[1]["recorded"] == 1
    ((action, _, code, time, *_),) = code_rows(rig.store, rig.serial)
    assert (action, time) == ("unlock_code_used", rig.clock())
    assert code.endswith("_device_time_2001-09-09T01:46:40+00:00")
    assert rig.notices.events[0].at == rig.clock()
    assert "at 2001-09-09T01:46:40+00:00 by the device's clock" in rig.notices.events[0].message


def test_an_event_more_than_a_day_ahead_of_the_connector_is_a_signed_bad_request(rig, client):
    day_ahead = int(rig.clock()) + 86400
    late = {
        "serial": rig.serial,
        "events": [used(), wait(), used("00000000000000aa", day_ahead + 1)],
    }
    status, answer = post_events(rig, client, late)
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    assert (
        "'events[2].at' is more than a day ahead of the connector's clock"
        in (answer["error"]["message"])
    )
    assert code_rows(rig.store, rig.serial) == [] and rig.notices.events == []
    # Nothing of it was recorded: sent again with a time the device may have, all three count.
    late["events"][2] = used("00000000000000aa", day_ahead)
    assert post_events(rig, client, late) == (200, {"recorded": 3, "serial": rig.serial})


def events(first: int, count: int) -> list[dict[str, Any]]:
    """`count` distinct uses, ids from `first` on."""
    return [used(f"{i:016x}") for i in range(first, first + count)]


def capped_rows(store: Store, serial: str) -> list[tuple[Any, ...]]:
    return [row for row in code_rows(store, serial) if row[0] == "unlock_code_events_capped"]


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]


def test_at_most_20_events_an_hour_are_recorded_and_the_rest_told_once(rig, client, capsys):
    """A device's key is readable by its administrators: its reports must not flood the
    fleet's audit (trimmed fleet-wide) or the Webex room."""
    first = {"serial": rig.serial, "events": events(0, 20)}
    assert post_events(rig, client, first) == (200, {"recorded": 20, "serial": rig.serial})
    rig.clock.advance(60)
    over = {"serial": rig.serial, "events": events(20, 5)}
    # Acknowledged, so the macro stops resending them, but not audited or told one by one.
    assert post_events(rig, client, over) == (200, {"recorded": 5, "serial": rig.serial})
    rows = code_rows(rig.store, rig.serial)
    assert [action for action, *_ in rows] == ["unlock_code_used"] * 20 + [
        "unlock_code_events_capped"
    ]
    assert rows[-1][1:4] == ("refused", "dropped_5_over_20_an_hour", rig.clock())
    assert len(rig.notices.events) == 21
    capped = rig.notices.events[-1]
    assert (capped.kind, capped.outcome, capped.at) == ("unlock_code", "refused", rig.clock())
    assert capped.message.startswith("5 unlock code events the device reported were not recorded")
    assert markdown(capped).startswith("**Unlock code reports dropped** on ")
    (warning,) = [line for line in log_lines(capsys) if line["severity"] == "WARNING"]
    assert "over the cap of 20 an hour" in warning["message"] and warning["dropped"] == 5
    # Further ones in that hour: acknowledged and only logged. Dropped ones are not remembered
    # (a misused key must not fill the store with them): sent again, they are dropped again,
    # but for the first, whose id was taken before the cap refused it.
    more = {"serial": rig.serial, "events": events(20, 8)}
    assert post_events(rig, client, more) == (200, {"recorded": 7, "serial": rig.serial})
    assert len(code_rows(rig.store, rig.serial)) == 21 and len(rig.notices.events) == 21
    logged = [line for line in log_lines(capsys) if "over the cap" in line["message"]]
    assert [(line["severity"], line["dropped"]) for line in logged] == [("INFO", 7)]
    dropped_id = "event:" + events(22, 1)[0]["id"]
    assert rig.store.spend_nonce(rig.serial, dropped_id, rig.clock(), 1)  # never remembered
    # An hour after the first ones, the device's events are recorded again.
    rig.clock.advance(3600 - 60 + 1)
    later = {"serial": rig.serial, "events": events(40, 1)}
    assert post_events(rig, client, later) == (200, {"recorded": 1, "serial": rig.serial})
    assert code_rows(rig.store, rig.serial)[-1][:2] == ("unlock_code_used", "unlocked")


def test_the_cap_is_the_devices_own(rig, client):
    assert post_events(rig, client, {"serial": rig.serial, "events": events(0, 20)})[0] == 200
    other = rig.devices[1]
    assert record_events(rig.rt, other, [CodeWait("00000000000000aa", 1, 300, 5)], "t" * 32) == 1
    assert [row[0] for row in code_rows(rig.store, other.serial)] == ["unlock_code_wait"]


def connector_on(rig: Rig, store: Store, notices: MemoryNotices) -> Runtime:
    """Another connector of the same fleet: its own Runtime and handle on the shared store."""
    for serial, key in rig.keys.items():
        store.set_device_key(serial, key)
    return Runtime(
        config=rig.rt.config,
        store=store,
        devices=rig.rt.devices,
        device_client=rig.camera,
        function=rig.function,
        lockout=Lockout(store, rig.rt.config.policy, rig.clock),
        clock=rig.clock,
        notices=notices,
    )


def test_connectors_sharing_a_store_share_the_cap(rig, store_backend):
    key = os.urandom(32)
    stores = [store_backend.open(key), store_backend.open(key)]
    try:
        told = [MemoryNotices(), MemoryNotices()]
        one, two = (
            connector_on(rig, store, notices) for store, notices in zip(stores, told, strict=True)
        )
        seen = [CodeUsed(f"{i:016x}", 1_800_000_000, 1_800_000_300) for i in range(30)]
        assert record_events(one, rig.device, seen[:15], "1" * 32) == 15
        assert record_events(two, rig.device, seen[:25], "2" * 32) == 10
        assert record_events(one, rig.device, seen[25:], "3" * 32) == 5
        rows = code_rows(stores[0], rig.serial)
        assert [row[0] for row in rows].count("unlock_code_used") == 20
        assert [row[2] for row in capped_rows(stores[1], rig.serial)] == [
            "dropped_5_over_20_an_hour"
        ]
        assert [[e.outcome for e in notices.events] for notices in told] == [
            ["unlocked"] * 15,
            ["unlocked"] * 5 + ["refused"],
        ]
    finally:
        for store in stores:
            store.close()


# --- what the administrators read --------------------------------------------------------------


def code_event(outcome: str, message: str) -> Event:
    return Event(
        kind="unlock_code",
        serial="FOC2211X0AB",
        device_name="Room *1*",
        outcome=outcome,  # type: ignore[arg-type]
        code=None,
        person=None,
        message=message,
        trace="0123456789abcdef0123456789abcdef",
        at=1795000000.0,
    )


def test_the_message_of_a_code_says_what_happened_on_which_device_and_when():
    text = markdown(code_event("unlocked", "the device was opened with an unlock code"))
    assert text.startswith(
        "**Opened with an unlock code** on **Room \\*1\\*** (serial FOC2211X0AB)"
    )
    assert "- Person: not known (whoever had the code)" in text
    assert "- Outcome: unlocked\n" in text
    assert "- What happened: the device was opened with an unlock code" in text
    assert "- Time: 2026-11-18 11:06:40 UTC" in text
    waited = markdown(code_event("waiting", "5 wrong unlock codes in a row"))
    assert waited.startswith("**Wrong unlock codes** on ")


class Submitted:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def submit(self, message: Any) -> bool:
        self.messages.append(message)
        return True


def test_codes_are_told_even_when_only_failures_are(tmp_path):
    text = BASE + '[webex]\nbot_token = "env:T"\nroom_id = "ROOM"\nevents = "failures"\n'
    (tmp_path / "faceid.toml").write_text(text)
    webex = load_config(tmp_path / "faceid.toml").webex
    assert webex is not None and webex.events == "failures"
    sink = Submitted()
    notices = WebexNotices(webex, {}, sink)  # type: ignore[arg-type]
    notices.notify(code_event("unlocked", "opened"))
    notices.notify(code_event("waiting", "wrong codes"))
    match = Event("verify", "FOC2211X0AB", "Room", "match", None, "Ada", "Welcome", "t" * 32)
    notices.notify(match)
    assert [m.markdown.split("**")[1] for m in sink.messages] == [
        "Opened with an unlock code",
        "Wrong unlock codes",
    ]


# --- through the running connector -------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[TwoDevices]:
    """The default `webex.events = "failures"`: codes are told all the same."""
    with two_devices_with_webex(tmp_path_factory, webex_toml=('room_id = "ROOM-A"',)) as two:
        yield two


@pytest.mark.slow
def test_a_code_issued_used_and_reported_is_audited_and_told_once(world):
    stack, device = world.stack, world.room
    code, output = stack.admin("unlock-code", "--serial", device.serial, "--json")
    assert code == 0, output
    issued = json.loads(output.splitlines()[0])
    expires = int(datetime.fromisoformat(issued["valid_until"]).timestamp())
    assert issued["code"] == code_for(device.key, device.serial, expires // STEP_S)
    # What the macro reports once it has opened the device with that code.
    event = {"id": os.urandom(8).hex(), "kind": "used", "expires": expires, "at": expires - 120}
    body = {"serial": device.serial, "events": [event]}
    for recorded in (1, 0):  # sent again (its answer lost): not recorded twice
        answer = stack.call(CODE_EVENTS, device, body)
        assert answer.status_code == 200 and answer_holds(device.key, answer), answer.text
        assert answer.json() == {"recorded": recorded, "serial": device.serial}
    told = world.webex.message_with(f"**Opened with an unlock code** on **{device.serial}**")
    assert told.room_id == "ROOM-A" and issued["valid_until"] in (told.markdown or "")
    malformed = stack.call(CODE_EVENTS, device, {"serial": device.serial, "events": [{}]})
    assert malformed.status_code == 400 and answer_holds(device.key, malformed)
    assert malformed.json()["error"]["code"] == "bad_request"
    store = open_store(stack)
    try:
        rows = [(e.action, e.outcome, e.actor is None) for e in store.audit(serial=device.serial)]
    finally:
        store.close()
    assert rows[:2] == [
        ("unlock_code_used", "unlocked", True),
        ("unlock_code_issued", "issued", False),
    ]
    assert sum(action == "unlock_code_used" for action, _, _ in rows) == 1
    messages = [r for r in world.webex.requests if "unlock code" in (r.markdown or "")]
    assert len(messages) == 1 and issued["code"] not in (messages[0].markdown or "")


# --- the macro computes the same codes ---------------------------------------------------------

NODE = shutil.which("node")
HARNESS = Path(__file__).resolve().parents[1] / "macro" / "testing" / "harness.mjs"
#: macro/faceid.js's unlockCode, loaded as its own tests load it, over the cases on stdin.
MACRO_CODES_JS = f"""
import {{ importMacro }} from {json.dumps(HARNESS.as_uri())};
const macro = await importMacro();
let text = '';
for await (const chunk of process.stdin) text += chunk;
const bytes = (hex) => Uint8Array.from(Buffer.from(hex, 'hex'));
const code = ([key, serial, step]) => macro.unlockCode(bytes(key), serial, step);
console.log(JSON.stringify(JSON.parse(text).map(code)));
"""


@pytest.mark.slow
@pytest.mark.skipif(NODE is None, reason="Node.js 20.6 or later runs the macro")
def test_the_macro_derives_the_same_code_from_the_same_key_serial_and_step():
    rng = random.Random(20)
    cases = [(VECTOR_KEY.hex(), serial, step) for serial, step, _ in VECTORS]
    cases += [
        (rng.randbytes(32).hex(), "".join(rng.choices(SERIAL_CHARS, k=rng.randint(1, 64))), step)
        for step in (rng.randrange(0, 2**32 // STEP_S) for _ in range(300))
    ]
    assert NODE is not None
    ran = subprocess.run(
        [NODE, "--input-type=module", "-e", MACRO_CODES_JS],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HARNESS.parent,
    )
    assert ran.returncode == 0, ran.stderr
    expected = [code_for(bytes.fromhex(key), serial, step) for key, serial, step in cases]
    assert json.loads(ran.stdout.splitlines()[-1]) == expected
