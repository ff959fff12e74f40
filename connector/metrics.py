"""Prometheus metrics for GET /metrics. Each app gets its own registry, so several apps (tests, a
restart in the same process) never share or collide on counters. Labels carry outcomes, codes
and stages only: no serial, no person, nothing that grows with use."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: 5 ms (a cached sign-in) to 20 s (the macro's whole budget).
STAGE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
WEBEX_OUTCOMES = ("sent", "retried", "dropped", "failed")
NO_CODE = "none"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, open_sessions: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.verifications = Counter(
            "faceid_verifications",
            "Verify answers by verdict and code (code 'none' for a match)",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.enrollments = Counter(
            "faceid_enrollments",
            "Enroll answers by result and code (code 'none' when enrolled)",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "faceid_verify_stage_seconds",
            "Time spent in each stage of a verify (signin, snapshot, signout, prepare, function, "
            "total)",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.lockouts = Counter(
            "faceid_lockouts",
            "Lockouts started (or lengthened) by a failed verification",
            registry=self.registry,
        )
        self.webex_messages = Counter(
            "faceid_webex_messages",
            "Webex messages: sent, retried (one per retry), dropped (queue full or shutdown), "
            "failed (refused or out of retries)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in WEBEX_OUTCOMES:
            self.webex_messages.labels(outcome)  # present at 0 from the start
        self.open_sessions = Gauge(
            "faceid_device_sessions_open",
            "Device web sessions the connector holds or could not sign out (recorded in its "
            "store until signed out; NaN when the store does not answer)",
            registry=self.registry,
        )
        if open_sessions is not None:
            self.open_sessions.set_function(open_sessions)
        self.signout_failures = Counter(
            "faceid_device_signout_failures",
            "Device sign-outs that failed (no answer in time, or an error status): each may "
            "leave a web session open on its device until the next start signs it out",
            registry=self.registry,
        )

    def verification(
        self,
        verdict: str,
        code: str | None,
        stages_ms: Mapping[str, float],
        *,
        lockout_started: bool,
    ) -> None:
        self.verifications.labels(verdict, code or NO_CODE).inc()
        for stage, ms in stages_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000)
        if lockout_started:
            self.lockouts.inc()

    def enrollment(self, result: str, code: str | None) -> None:
        self.enrollments.labels(result, code or NO_CODE).inc()

    def webex(self, outcome: str) -> None:
        self.webex_messages.labels(outcome).inc()

    def signout_failed(self) -> None:
        self.signout_failures.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
