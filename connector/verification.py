"""One login attempt: lockout gate, snapshot, downscale, comparison, verdict. Every failure is an
`error` verdict with a specific code; only a comparison that says match yields `match`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from faceid_core.errors import FaceError, FaceIdError, InputError, ReferenceUnusable, Refusal

from .faces import downscale_jpeg
from .messages import screen_message
from .runtime import Device, Runtime
from .store import Settlement
from .webex import Event, Verdict

#: Codes that mean "a face was found in the probe and nothing matched it": these count towards
#: the lockout, whatever went wrong with the references.
FAILED_ATTEMPT_CODES = frozenset({"not_recognized", "reference_unusable", "comparison_incomplete"})
#: Failures that are the person's own (the picture, a request refused): nothing for the
#: operator to act on, so not logged. Every other family is.
USERS_OWN = (InputError, FaceError, Refusal)


@dataclass
class Outcome:
    verdict: Verdict
    code: str | None
    person: str | None = None
    retry_after_s: int | None = None
    score: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    lockout_started: bool = False
    probe: bytes | None = field(default=None, repr=False)  # in memory only, for the admins' message
    subject: str | None = None  # whom a failure is about (reference_unusable), for the admins only

    @property
    def settles_as(self) -> Settlement:
        """How the attempt counts: "match", "failure" (towards the lockout) or "neutral"."""
        if self.verdict == "match":
            return "match"
        return "failure" if self.code in FAILED_ATTEMPT_CODES else "neutral"

    @property
    def message(self) -> str:
        if self.verdict == "match":
            return f"Welcome, {self.person}"[:255]
        return screen_message(self.code or "internal_error", self.retry_after_s)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def _compare(
    rt: Runtime, device: Device, request_id: str, stages: dict[str, float], probes: list[bytes]
) -> Outcome:
    """`probes` receives the picture compared, also when the comparison then fails."""
    references = rt.store.references_for(device.serial)
    if not references:
        return Outcome("error", "not_enrolled")
    snapshot = rt.device_client.snapshot(device.access)
    stages.update(
        signin=snapshot.signin_ms, snapshot=snapshot.snapshot_ms, signout=snapshot.signout_ms
    )
    started = time.perf_counter()
    probe = downscale_jpeg(snapshot.jpeg)
    probes.append(probe)
    stages["prepare"] = _ms(started)
    # Opaque ids: names of people never leave the premises.
    ids = {f"r{i}": person for i, (person, _) in enumerate(references)}
    started = time.perf_counter()
    try:
        result = rt.function.verify(
            probe,
            [(ref_id, image) for ref_id, (_, image) in zip(ids, references, strict=True)],
            trace=request_id,
            threshold=rt.config.policy.threshold,
        )
    except ReferenceUnusable as exc:
        subject = ids.get(exc.reference_id or "")
        rt.log("WARNING", exc.message, serial=device.serial, person=subject)
        return Outcome("error", exc.code, subject=subject)
    finally:  # the time is spent whether the function answers a verdict or an error
        stages["function"] = _ms(started)
    if result.verdict == "match" and result.matched_id in ids:
        return Outcome("match", None, ids[result.matched_id], score=result.score)
    return Outcome("no_match", "not_recognized", score=result.score)


def log_failure(rt: Runtime, exc: FaceIdError, serial: str) -> None:
    """Why a device or the comparison failed, for the operator: the answer carries only the code.
    Problems with the face itself and refusals (USERS_OWN) are the user's, and are not logged."""
    if not isinstance(exc, USERS_OWN):
        rt.log("WARNING", exc.message, serial=serial, code=exc.code)


def _attempt(
    rt: Runtime, device: Device, request_id: str, stages: dict[str, float], probes: list[bytes]
) -> Outcome:
    """The attempt gate, the comparison and how it settles; store errors propagate. Anything
    unforeseen between the two settles as a failure: a bug never buys a free comparison."""
    gate = rt.lockout.begin(device.serial, rt.attempt_lease_s)
    if gate.decision == "locked_out":
        return Outcome("error", "locked_out", retry_after_s=rt.lockout.remaining(gate.state))
    if gate.decision == "busy":
        return Outcome("error", "busy")
    outcome = Outcome("error", "internal_error")
    try:
        outcome = _compare(rt, device, request_id, stages, probes)
    except FaceIdError as exc:
        log_failure(rt, exc, device.serial)
        outcome = Outcome("error", exc.code, retry_after_s=exc.retry_after)
    finally:
        settles_as = "failure" if outcome.code == "internal_error" else outcome.settles_as
        # Written before the answer says match: a session the store refused is no unlock.
        wait = rt.lockout.finish(device.serial, gate, settles_as, outcome.person)
    if outcome.verdict == "match":
        rt.last_match[device.serial] = rt.clock()
    elif wait > 0:
        outcome.retry_after_s = wait
        outcome.lockout_started = True
        rt.log("WARNING", "device locked out", serial=device.serial, lockout_s=wait)
    return outcome


def verify(rt: Runtime, device: Device, request_id: str) -> Outcome:
    """Run one attempt and update lockout and unlock state; never raises. A store that cannot
    be read or written (disk full, read-only) answers store_unavailable, even after a match:
    the macro unlocks only what the connector recorded as unlocked."""
    started = time.perf_counter()
    stages: dict[str, float] = {}
    probes: list[bytes] = []
    try:
        outcome = _attempt(rt, device, request_id, stages, probes)
    except FaceIdError as exc:  # the store's: disk full, read-only, closed, damaged
        log_failure(rt, exc, device.serial)
        outcome = Outcome("error", exc.code)
    except Exception as exc:  # fail closed on anything unforeseen
        rt.log("ERROR", "verify failed unexpectedly", error_type=type(exc).__name__)
        outcome = Outcome("error", "internal_error")
    stages["total"] = _ms(started)
    outcome.stages_ms = stages
    outcome.probe = probes[0] if probes else None
    return outcome


def verify_event(device: Device, outcome: Outcome, request_id: str) -> Event:
    return Event(
        kind="verify",
        serial=device.serial,
        device_name=device.name,
        outcome=outcome.verdict,
        code=outcome.code,
        person=outcome.person or outcome.subject,
        message=outcome.message,
        trace=request_id,
        lockout_s=outcome.retry_after_s if outcome.lockout_started else None,
        snapshot=outcome.probe,
    )


def audit_fields(outcome: Outcome) -> dict[str, Any]:
    return {
        "outcome": outcome.verdict,
        "code": outcome.code,
        "person": outcome.person or outcome.subject,
        "score": outcome.score,
        "stages_ms": outcome.stages_ms,
    }
