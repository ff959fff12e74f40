"""`python -m demo pair`: a redundant pair. Two connectors, A and B, on one throwaway PostgreSQL
serve the demo device; the real macro, as `admin provision` pushed it (SETTINGS.connectorUrls =
[A, B]), runs on it. A stranger's failures spread over both lock the device out as one connector
would; with A killed, B answers; with both killed, an administrator's one-time code opens the
room, once; B back, the macro reports that code's use. Each step says what the screen showed and
which connector answered; the summary says whether each step behaved."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.launch import DEMO_DIR, Launched, enroll, fresh_folder, launch, say, step
from demo.scenarios import provision
from devkit.macro_client import answer_holds, key_text, send
from devkit.macro_driver import MacroDriver, node_binary
from devkit.postgres import PostgresServer, start_postgres
from devkit.proc_group import crash, group_pids

DATABASE = "faceid_demo"
#: policy.max_failures: even, so that failures alternating between A and B split evenly.
MAX_FAILURES = 4
#: policy.lockout_base_s: no lockout ends by itself during the run (an administrator ends it).
LOCKOUT_S = 600
CODE_MINUTES = 10
#: The macro reports a code's use at once, after any answer a connector signs, and every 60 s.
CODE_REPORT_WAIT_S = 90.0
CODE_PRINTED = re.compile(r"\((\d{8})\)")  # admin unlock-code: "... 1234 5678  (12345678)"
PUSHED_URLS = re.compile(r"^  connectorUrls: (.*),$", re.MULTILINE)
TITLES = (
    "two connectors on one PostgreSQL; the macro pushed with [A, B]",
    "the enrolled person unlocks (A answers), then locks",
    f"a stranger's taps alternate A, B: locked out after {MAX_FAILURES}, seen by both",
    "lockout ended; A killed (kill -9): the macro fails over to B",
    "B killed too: an administrator's one-time code opens the room, once",
    "B restarted: the next login reports the code's use; the audit has it",
    "everything stopped, no process left",
)


@dataclass
class Step:
    number: int
    title: str
    answered: list[str] = field(default_factory=list)  # who answered, request by request
    failed: list[str] = field(default_factory=list)  # each check that did not hold
    ran: bool = False

    @property
    def result(self) -> str:
        return "not run" if not self.ran else "FAILED" if self.failed else "passed"


class StepFailed(RuntimeError):
    """A step could not go on: the steps after it would prove nothing, so the run ends there."""


class PairDemo:
    def __init__(
        self, launched: Launched, driver: MacroDriver, server: PostgresServer, workdir: Path
    ) -> None:
        self.launched = launched
        self.stack = launched.stack
        self.device = launched.device
        self.driver = driver
        self.server = server
        self.workdir = workdir
        self.names = {str(c.url): name for c, name in zip(self.stack.connectors, "AB", strict=True)}
        self.steps = [Step(number, title) for number, title in enumerate(TITLES, 1)]
        self.current = self.steps[0]

    @contextlib.contextmanager
    def step(self, number: int) -> Iterator[None]:
        """One step; an error in it fails it (with its message) and ends the run."""
        self.current = self.steps[number - 1]
        self.current.ran = True
        say(f"Step {number}: {self.current.title}")
        try:
            yield
        except (RuntimeError, ValueError, OSError) as exc:
            self.check(False, f"{type(exc).__name__}: {exc}")
            raise StepFailed(str(exc)) from None

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.current.failed.append(what)
            say(f"    NOT AS EXPECTED: {what}")
        return ok

    def who(self, outcome: dict[str, Any]) -> str:
        """The connector whose answer the macro acted on: A, B, "nobody" (none could be reached)
        or "-" (nothing was sent: the device checks a code itself)."""
        http = outcome.get("http")
        if not http:
            return "-"
        if http.get("status") is None:
            return "nobody"
        return self.names.get(str(http.get("url")), str(http.get("url")))

    def show(self, frame: Path) -> None:
        """Put a picture in front of the simulated camera."""
        self.device.control(images=str(frame), black=False, no_option_key=False)

    def act(
        self,
        what: str,
        action: dict[str, Any],
        *,
        lock: str,
        by: str,
        driver: MacroDriver | None = None,
        alert: str | None = None,
        **answer: str,
    ) -> None:
        """Do `action` at the device, say what the screen shows, and check it: `lock`, a part of
        the message (`alert`), who answered (`by`) and fields of the connector's answer."""
        outcome = (driver or self.driver).ask(action)
        screen, said = outcome["screen"], outcome.get("answer") or {}
        shown = outcome.get("prompt") or screen["alert"] or ""  # a dialog opened, or a message
        who = self.who(outcome)
        if who != "-":
            self.current.answered.append(who)
        verdict = " / ".join(str(said[k]) for k in ("verdict", "code") if said.get(k))
        said_by = "no connector asked" if who == "-" else f"answered by {who}"
        said_by += f": {verdict}" if verdict else ""
        say(f"  {what}: {screen['lock']}, “{shown}” ({said_by})")
        self.check(screen["lock"] == lock, f"{what}: the screen should be {lock}")
        self.check(alert is None or alert in shown, f"{what}: the screen should say “{alert}”")
        self.check(who == by, f"{what}: should be answered by {by}, not {who}")
        for key, value in answer.items():
            self.check(said.get(key) == value, f"{what}: {key} should be {value}")

    def admin(self, *args: str, quiet: bool = False) -> str:
        """An administrator's command: it works on the shared database, with no connector."""
        code, output = self.stack.admin(*args)
        say(f"  $ admin {' '.join(args)}")
        for line in [] if quiet else output.strip().splitlines():
            say(f"    {line}")
        if code != 0:
            raise RuntimeError(f"admin {args[0]} exited with {code}: {output.strip()[-300:]}")
        return output

    def status_through(self, index: int) -> int:
        """How long the device is locked out for, as connector `index` says (GET /v1/status)."""
        serial = self.device.serial
        answer = send(
            str(self.stack.connectors[index].url),
            f"/v1/status?serial={serial}",
            self.device.key,
            serial,
            verify=str(self.stack.ca_path),
        )
        self.current.answered.append("AB"[index])
        self.check(answer_holds(self.device.key, answer), "the status answer should be signed")
        left = int(answer.json().get("locked_out_for_s") or 0)
        say(f"  GET /v1/status through {'AB'[index]}: locked out for {left} s")
        return left

    def run(self, provisioned: str) -> None:
        """Steps 1 to 6 (StepFailed: one could not go on)."""
        frames, serial = self.launched.frames, self.device.serial
        person, unlock = frames.person, {"press": "login"}
        a_url, b_url = self.names

        with self.step(1):
            say(f"  A: {a_url}  B: {b_url}  store: {self.server.url(DATABASE)}")
            for line in provisioned.splitlines():
                say(f"    {line}")
            pushed = (self.workdir / "device-macros" / "faceid.js").read_text()
            found = PUSHED_URLS.search(pushed)
            listed = json.loads(found[1]) if found else None
            say(f"  the macro on the device has SETTINGS.connectorUrls = {listed}")
            self.check(listed == [a_url, b_url], "the pushed macro should list A, then B")

        with self.step(2):
            self.show(frames.enrolled)
            self.act(f'{person} taps "Unlock"', unlock, lock="unlocked", by="A", verdict="match")
            self.act('"Lock screen"', {"press": "lock"}, lock="locked", by="A")

        with self.step(3):
            self.show(frames.others[0])
            self.stranger_taps()
            for index in (0, 1):
                self.check(self.status_through(index) > 0, f"{'AB'[index]} should see it")

        with self.step(4):
            self.admin("unlock-lockout", "--serial", serial)
            crash(self.stack.connector)
            say("  connector A killed (SIGKILL to its process group)")
            self.show(frames.enrolled)
            self.act(f'{person} taps "Unlock"', unlock, lock="unlocked", by="B", verdict="match")
            self.act('"Lock screen"', {"press": "lock"}, lock="locked", by="B")

        with self.step(5):
            crash(self.stack.peers[0])
            say("  connector B killed too: no connector can be reached")
            tap = f'{person} taps "Unlock"'
            self.act(tap, unlock, lock="locked", by="nobody", alert="cannot be reached")
            printed = self.admin("unlock-code", "--serial", serial, "--minutes", str(CODE_MINUTES))
            code = CODE_PRINTED.search(printed)
            if code is None:
                raise RuntimeError("admin unlock-code printed no 8-digit code")
            spoken = f"{code[1][:4]} {code[1][4:]}"  # as the administrator reads it out
            use_code = {"press": "code"}
            self.act('"Use a code"', use_code, lock="locked", by="-", alert="8-digit")
            self.act(f"types {spoken}", {"code": spoken}, lock="unlocked", by="-", alert="code")
            self.act('"Lock screen"', {"press": "lock"}, lock="locked", by="nobody")
            self.act('"Use a code"', use_code, lock="locked", by="-", alert="8-digit")
            typed = f"types {spoken} again"
            self.act(typed, {"code": spoken}, lock="locked", by="-", alert="already used")

        with self.step(6):
            self.stack.restart_connector("connector-2-restarted", index=1)
            say("  connector B serves again")
            self.show(frames.enrolled)
            waited = time.monotonic()
            self.act(f'{person} taps "Unlock"', unlock, lock="unlocked", by="B", verdict="match")
            say("  the macro sends the code's use right after B's signed answer")
            if self.check(self.wait_for_report(), "B should get the report of the code's use"):
                self.current.answered.append("B")
                say(f"  B recorded unlock_code_used ({time.monotonic() - waited:.0f} s later)")
            output = self.admin("audit", "--serial", serial, "--json", quiet=True)
            records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
            for record in reversed(records):
                if record["action"].startswith("unlock_code"):
                    say(f"    {record['time']}  {record['action']}  {record['outcome']}")
            actions = {record["action"] for record in records}
            for action in ("unlock_code_issued", "unlock_code_used"):
                self.check(action in actions, f"admin audit should show {action}")

    def stranger_taps(self) -> None:
        """Taps through the macro preferring A and, in turn, through a second one on the same
        device preferring B: the failures reach both connectors."""
        device = self.device
        b_first = MacroDriver(self.stack, self.workdir / "macro-b-first.log")
        try:
            ready = b_first.ask(
                {
                    "serial": device.serial,
                    "connectorUrls": list(reversed(self.names)),
                    "deviceKey": key_text(device.key),
                }
            )
            if (ready.get("report") or {}).get("http", {}).get("status") != 200:
                raise RuntimeError(f"the macro preferring B did not report in: {ready}")
            for tap in range(MAX_FAILURES + 1):
                self.act(
                    f'a stranger taps "Unlock" (macro preferring {"AB"[tap % 2]})',
                    {"press": "login"},
                    driver=(self.driver, b_first)[tap % 2],
                    lock="locked",
                    by="AB"[tap % 2],
                    code="not_recognized" if tap < MAX_FAILURES else "locked_out",
                )
        finally:
            b_first.close()

    def wait_for_report(self) -> bool:
        """Whether restarted B logs the code's use within CODE_REPORT_WAIT_S."""
        return wait_for(
            lambda: '"unlock_code_used unlocked"' in self.stack.peers[0].stdout(),
            CODE_REPORT_WAIT_S,
        )

    def stopped(self, left: list[str]) -> None:
        """Step 7: what stop_everything left running."""
        with self.step(7):
            say(f"  {', '.join(left)} still running" if left else "  nothing left running")
            self.check(not left, "every process should have stopped")


def wait_for(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_everything(
    launched: Launched | None, driver: MacroDriver | None, server: PostgresServer
) -> list[str]:
    """Stop the macro, the stack and PostgreSQL; returns what is still running (by name)."""
    groups = {}
    if driver is not None:
        driver.close()
    if launched is not None:
        groups = {name: proc.pid for name, proc in launched.stack.processes().items()}
        launched.stack.stop()
    server.stop()
    left = [name for name, pid in groups.items() if pid is not None and group_pids(pid)]
    # PostgreSQL's processes each lead a group of their own: a clean stop removes its pid file.
    if server.process.returncode is None or (server.data_dir / "postmaster.pid").exists():
        left.append("PostgreSQL")
    return left


def summary(steps: list[Step]) -> str:
    head = f"{'Step':>4}  {'What':<72} {'Answered by':<18} Result"
    lines = [head, "-" * len(head)]
    for s in steps:
        answered = " ".join(s.answered) or "-"
        lines.append(f"{s.number:>4}  {s.title[:72]:<72} {answered[:18]:<18} {s.result}")
        lines += [f"{'':>6}NOT AS EXPECTED: {why}" for why in s.failed]
    lines.append("-" * len(head))
    lines.append(
        'Answered by: the connector whose answer the macro acted on ("-": none was asked).'
    )
    return "\n".join(lines)


def run_pair() -> int:
    """The whole run once; 0 only when every step behaved. Stops everything it started."""
    workdir = fresh_folder(DEMO_DIR / "pair")
    node_binary()  # fail before starting anything
    with step("Starting a throwaway PostgreSQL server"):
        server = start_postgres(workdir)
    launched = driver = None
    try:
        launched = launch(
            workdir,
            store_url=server.create_database(DATABASE),
            store_password_ref=server.password_ref,
            connectors=2,
            policy={"max_failures": MAX_FAILURES, "lockout_base_s": LOCKOUT_S},
        )
        with step(f"Enrolling {launched.frames.person} and provisioning the device"):
            enroll(launched)
            driver, provisioned = provision(launched, workdir)
        demo = PairDemo(launched, driver, server, workdir)
        with contextlib.suppress(StepFailed):  # said in its step, shown in the summary
            demo.run(provisioned)
    finally:
        with step("Stopping"):
            left = stop_everything(launched, driver, server)
    demo.stopped(left)
    print()
    print(summary(demo.steps))
    print()
    passed = all(s.result == "passed" for s in demo.steps)
    if passed:
        print("Every step behaved as expected.")
    else:
        print(f"Some steps did not behave as expected; logs are in {workdir}")
    return 0 if passed else 1
