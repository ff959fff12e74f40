"""What a device reports of its offline unlock codes (POST /v1/code-events): a code opened it, or
wrong codes made it wait. The macro checks codes with no network (unlockcode.py) and reports
each event once it reaches a connector, resending until an answer says it was recorded; each
event is audited and told to the administrators once, whichever connector it reaches first.

The request is signed with the device's key, which the device's own administrators can read in
the macro: what it says is the device's word, bounded so that it cannot flood the fleet's audit
(trimmed fleet-wide to its newest rows) or the Webex room. At most EVENTS_PER_HOUR events of
a device are recorded in any rolling hour, counted in the store so that every connector sharing
it counts the same; the rest are acknowledged (the macro stops resending) and dropped, and the
administrators are told once an hour how many. The audit row's time is the connector's clock:
the device's `at`, which may be wrong or hours old, is written into `code` and the message.

The audit has no column for these events' numbers, so they are written into `code` as short
tokens (docs/api.md): `valid_until_<ISO>_device_time_<ISO>` for a use,
`wait_<s>s_after_<n>_wrong_device_time_<ISO>` for a wait.
"""

from __future__ import annotations

from .runtime import Device, Runtime
from .times import iso_time
from .validation import CodeEvent, CodeUsed
from .webex import CodeOutcome, Event

#: How long an event id is remembered (store.spend_nonce): longer than the macro could keep
#: resending it (it holds events in memory only, until an answer says they were recorded).
EVENT_MEMORY_S = 30 * 86400
#: Its prefix in the store's nonce table, beside the requests' nonces (which hold no colon).
EVENT_NONCE_PREFIX = "event:"
#: Events of one device recorded (audited and told) in any rolling CAP_WINDOW_S: a device's
#: macro reports a few a day (each wait after wrong codes doubles, each use needs a new code).
EVENTS_PER_HOUR = 20
CAP_WINDOW_S = 3600
#: The cap's entries in the nonce table: "<prefix>0" to "<prefix>19", one spent for each event
#: recorded and free again CAP_WINDOW_S later (spend_nonce: exactly one connector gets each, so
#: connectors answering at once cannot record more between them), and "<prefix>capped", spent
#: when the administrators are told of dropped events (once an hour at most).
CAP_NONCE_PREFIX = "event-hour:"


def record_events(rt: Runtime, device: Device, events: list[CodeEvent], request_id: str) -> int:
    """Audit and tell each event not recorded before (by any connector on the same store), up to
    the device's hourly cap; returns how many were taken: recorded, or dropped over the cap. An
    event is first marked as seen, then audited: a failing audit write is logged with the event
    (Runtime.audit), and the macro is not asked to send it again. `events` are checked already
    (validation.code_events)."""
    now = rt.clock()
    recorded = dropped = 0
    for event in events:
        # Once the cap refused one, it refuses the rest of the request, unremembered: a misused
        # key cannot fill the store with the ids of events that are dropped anyway.
        if dropped:
            dropped += 1
        elif not rt.store.spend_nonce(
            device.serial, EVENT_NONCE_PREFIX + event.id, now, EVENT_MEMORY_S
        ):
            continue  # recorded before
        elif _within_cap(rt, device.serial, now):
            _record(rt, device, event, request_id, now)
            recorded += 1
        else:
            dropped += 1
    if dropped:
        _dropped(rt, device, dropped, request_id, now)
    return recorded + dropped


def _within_cap(rt: Runtime, serial: str, now: float) -> bool:
    """Take one of the device's EVENTS_PER_HOUR places of the last hour, if one is free."""
    return any(
        rt.store.spend_nonce(serial, f"{CAP_NONCE_PREFIX}{place}", now, CAP_WINDOW_S)
        for place in range(EVENTS_PER_HOUR)
    )


def _record(rt: Runtime, device: Device, event: CodeEvent, request_id: str, now: float) -> None:
    action, outcome, code, said = _described(event)
    rt.audit(request_id, device.serial, action, outcome=outcome, code=code, time=now)
    _tell(rt, device, outcome, said, request_id, now)


def _dropped(rt: Runtime, device: Device, dropped: int, request_id: str, now: float) -> None:
    """The first request over the cap in an hour is audited and told; the others only logged."""
    first = rt.store.spend_nonce(device.serial, f"{CAP_NONCE_PREFIX}capped", now, CAP_WINDOW_S)
    rt.log(
        "WARNING" if first else "INFO",
        f"unlock code events over the cap of {EVENTS_PER_HOUR} an hour dropped",
        serial=device.serial,
        dropped=dropped,
    )
    if not first:
        return
    code = f"dropped_{dropped}_over_{EVENTS_PER_HOUR}_an_hour"
    rt.audit(
        request_id,
        device.serial,
        "unlock_code_events_capped",
        outcome="refused",
        code=code,
        time=now,
    )
    said = (
        f"{dropped} unlock code events the device reported were not recorded: it reported more "
        f"than {EVENTS_PER_HOUR} in an hour, which no device in use should (its key may be "
        f"misused). Until fewer than {EVENTS_PER_HOUR} were recorded in the last hour, its "
        "further events are dropped; for an hour they are only counted in the connector's log"
    )
    _tell(rt, device, "refused", said, request_id, now)


def _tell(
    rt: Runtime, device: Device, outcome: CodeOutcome, said: str, request_id: str, now: float
) -> None:
    rt.notify(
        Event(
            kind="unlock_code",
            serial=device.serial,
            device_name=device.name,
            outcome=outcome,
            code=None,
            person=None,
            message=said,
            trace=request_id,
            at=now,
        )
    )


def _described(event: CodeEvent) -> tuple[str, CodeOutcome, str, str]:
    """(audit action, outcome, audit code, what happened in words) of one event."""
    at = iso_time(event.at)
    if isinstance(event, CodeUsed):
        until = iso_time(event.expires)
        return (
            "unlock_code_used",
            "unlocked",
            f"valid_until_{until}_device_time_{at}",
            f"the device was opened with an unlock code valid until {until}, at {at} by the "
            "device's clock",
        )
    return (
        "unlock_code_wait",
        "waiting",
        f"wait_{event.wait_s}s_after_{event.wrong}_wrong_device_time_{at}",
        f"{event.wrong} wrong unlock codes in a row: the device checks no code for "
        f"{event.wait_s} s (from {at} by the device's clock)",
    )
