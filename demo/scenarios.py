"""`python -m demo`: the real macro under Node, on a simulated device, against the real connector
and function. Each scenario is what a person does at the device; the table says what the screen
showed and how long each stage took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.launch import DEMO_DIR, Launched, fresh_folder, launch, say, step
from devkit.macro_driver import MacroDriver, node_binary
from devkit.procs import ServerProcess
from devkit.stack import SimDevice, connector_records

STAGES = (("signin", "Sign-in"), ("snapshot", "Snapshot"), ("function", "Function"))
MAX_LOCKOUT_TAPS = 5
PROVISION_TIMEOUT_S = 60.0


def provision(launched: Launched, workdir: Path) -> tuple[MacroDriver, str]:
    """`admin provision` saves the macro on the simulated device with its SETTINGS filled in,
    then restarts the device's macro runtime; that runtime (the Node driver) then starts the
    copy the device holds, exactly as pushed, and `provision` returns once it reports in.
    Returns the running macro and provision's table."""
    stack, device = launched.stack, launched.device
    command = stack.start_admin(
        "provision",
        "--serial",
        device.serial,
        "--admin-password-ref",
        stack.device_admin_ref,
        log_prefix=workdir / "provision",
    )
    try:
        source = pushed_macro(device, command)
        path = workdir / "device-macros" / "faceid.js"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
        driver = MacroDriver(stack, workdir / "macro.log")
        ready = driver.ask({"serial": device.serial, "macroPath": str(path)})
        if (ready.get("report") or {}).get("http", {}).get("status") != 200:
            raise RuntimeError(f"the pushed macro did not report in: {ready.get('report')}")
        if command.wait(PROVISION_TIMEOUT_S) != 0:
            raise RuntimeError(f"admin provision failed:\n{command.stdout()}{command.stderr()}")
    finally:
        command.stop()
    return driver, command.stdout()


def pushed_macro(device: SimDevice, command: ServerProcess) -> str:
    """The source of the macro `faceid` once the device's runtime has been restarted with it."""
    deadline = time.monotonic() + PROVISION_TIMEOUT_S
    while time.monotonic() < deadline:
        state = device.macros()
        if state["restarts"] and "faceid" in state["running"]:
            return next(str(m["source"]) for m in state["macros"] if m["name"] == "faceid")
        if command.returncode is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"admin provision pushed no macro:\n{command.stdout()}{command.stderr()}")


@dataclass
class Row:
    scenario: str
    outcome: dict[str, Any]  # the driver's answer to the action that ended the scenario
    expected: str
    ok: bool
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        answer = self.outcome.get("answer") or {}
        if "result" in answer:
            return " / ".join(x for x in (answer["result"], answer.get("code")) if x)
        if "verdict" in answer:
            return " / ".join(x for x in (answer["verdict"], answer.get("code")) if x)
        if answer.get("unlocked") is False:
            return "session ended"
        http = self.outcome.get("http") or {}
        return f"HTTP {http['status']}" if http.get("status") else "-"


class Demo:
    def __init__(self, launched: Launched, driver: MacroDriver) -> None:
        self.launched = launched
        self.stack = launched.stack
        self.device = launched.device
        self.driver = driver
        self.rows: list[Row] = []

    def show(self, frame: Path) -> None:
        """Put a picture in front of the simulated camera."""
        self.device.control(images=str(frame), black=False, no_option_key=False)

    def act(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.driver.ask(request)

    def record(self, scenario: str, outcome: dict[str, Any], expected: str, **want: Any) -> None:
        """Keep one table row; `want`: lock (locked/unlocked), alert, panel (offered), and fields
        of the connector's answer (verdict, code, result)."""
        screen, answer = outcome["screen"], outcome.get("answer") or {}
        ok = (
            screen["lock"] == want.pop("lock")
            and screen["alert"] == want.pop("alert", screen["alert"])
            and want.pop("panel", None) in [None, *screen["panels"]]
            and all(answer.get(key) == value for key, value in want.items())
        )
        row = Row(scenario, outcome, expected, ok, self.stages_of(outcome))
        self.rows.append(row)
        say(f"  {scenario}: {screen['lock']}, {row.verdict} ({'ok' if ok else 'NOT AS EXPECTED'})")

    def stages_of(self, outcome: dict[str, Any]) -> dict[str, float]:
        request_id = (outcome.get("http") or {}).get("request_id")
        for record in connector_records(self.stack):
            if request_id and record.get("trace") == request_id and "stages_ms" in record:
                return dict(record["stages_ms"])
        return {}

    def run(self) -> bool:
        frames = self.launched.frames
        person, other = frames.person, frames.others[0]
        self.show(frames.enrolled)
        self.record(
            'Tap "Unlock", nobody enrolled yet',
            self.act({"press": "login"}),
            "stays locked, offers Update my photo",
            lock="locked",
            panel="faceid_enroll",
            code="not_enrolled",
        )
        self.act({"press": "enroll"})
        self.record(
            f'{person}: "Update my photo"',
            self.act({"type": person}),
            "photo saved, still locked",
            lock="locked",
            result="enrolled",
        )
        self.record(
            f'{person} taps "Unlock"',
            self.act({"press": "login"}),
            f"unlocked, Welcome, {person}",
            lock="unlocked",
            alert=f"Welcome, {person}",
            verdict="match",
        )
        self.record(
            f'{person} taps "Lock screen"',
            self.act({"press": "lock"}),
            "locked",
            lock="locked",
            alert="Screen locked.",
        )
        self.show(other)
        self.record(
            'Another person taps "Unlock"',
            self.act({"press": "login"}),
            "stays locked, not recognised",
            lock="locked",
            verdict="no_match",
            code="not_recognized",
        )
        self.show(frames.no_face)
        self.record(
            'Nobody in view, tap "Unlock"',
            self.act({"press": "login"}),
            "stays locked, no face",
            lock="locked",
            verdict="error",
            code="no_face",
        )
        self.show(other)
        taps = 0
        while taps < MAX_LOCKOUT_TAPS:
            taps += 1
            outcome = self.act({"press": "login"})
            if (outcome.get("answer") or {}).get("code") != "not_recognized":
                break
        self.record(
            f"Another person tries {taps} more times",
            outcome,
            "locked out after 5 failures in a row",
            lock="locked",
            verdict="error",
            code="locked_out",
        )
        return all(row.ok for row in self.rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def table(rows: list[Row]) -> str:
    """The rows as text: one line of figures per scenario, the screen's message under it."""
    head = (
        f"{'#':>2}  {'Scenario':<34} {'Screen':<9} {'Verdict / code':<26}"
        + "".join(f"{title:>9}" for _, title in STAGES)
        + f"{'Connector':>10}{'At macro':>9}"
    )
    lines = [head, "-" * len(head)]
    for i, row in enumerate(rows, 1):
        figures = "".join(f"{_ms(row.stages.get(key)):>9}" for key, _ in STAGES)
        lines.append(
            f"{i:>2}  {row.scenario[:34]:<34} {row.outcome['screen']['lock']:<9} "
            f"{row.verdict[:26]:<26}{figures}{_ms(row.stages.get('total')):>10}"
            f"{_ms(row.outcome.get('ms')):>9}"
        )
        shown = row.outcome["screen"]["alert"] or row.outcome.get("prompt") or ""
        lines.append(f"{'':>4}screen: “{shown}”")
        if not row.ok:
            lines.append(f"{'':>4}NOT AS EXPECTED: should be {row.expected}")
    lines.append("-" * len(head))
    lines.append(
        "Sign-in, Snapshot: the connector at the device's web API; Function: the face comparison;"
    )
    lines.append(
        "Connector: the whole verify in the connector; At macro: from the tap to the screen change."
    )
    return "\n".join(lines)


def run_demo() -> int:
    """The whole flow once; 0 only when every scenario behaved. Stops everything it started."""
    workdir = fresh_folder(DEMO_DIR / "run")
    node_binary()  # fail before starting anything
    launched = launch(workdir)
    driver = None
    try:
        with step("Provisioning the simulated device (admin provision), running what it pushed"):
            driver, table_text = provision(launched, workdir)
        for line in table_text.splitlines():
            say(f"  {line}")
        say("Scenarios:")
        demo = Demo(launched, driver)
        passed = demo.run()
        print()
        print(table(demo.rows))
        print()
        if passed:
            print("Every scenario behaved as expected.")
        else:
            print(f"Some scenarios did not behave as expected; logs are in {workdir}")
        sessions = launched.device.stats()
        print(
            f"Device sessions: {sessions['signins']} opened, {sessions['signouts']} closed, "
            f"{sessions['open_sessions']} left open."
        )
        return 0 if passed and sessions["open_sessions"] == 0 else 1
    finally:
        if driver is not None:
            driver.close()
        with step("Stopping"):
            launched.stack.stop()
