"""The `slow` marker, enforced: a test of this repository that starts a real process (any way
Python can: an audit hook sees them all) or loads the local face engine fails unless it is
marked slow, so that `make test-fast` (`pytest -m "not slow"`) never does either.

Registered by tests/conftest.py. A module-scoped fixture that starts a process does so while
the first test using it is set up, so every test of such a module carries the marker (a
`pytestmark`); run alone, any of them would start it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

#: The audit events by which Python starts a program or a copy of itself.
PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.forkpty"}
)
TESTS = Path(__file__).resolve().parents[1]


def _program(event: str, args: tuple[Any, ...]) -> str:
    """The program's name only: a test may pass a secret on the command line."""
    if event == "subprocess.Popen":
        argv = args[1]
        first = argv if isinstance(argv, str | bytes) else next(iter(argv or ()), None)
        shown = args[0] or first
    elif event in ("os.system",):
        shown = str(args[0]).split(" ", 1)[0]
    elif event in ("os.fork", "os.forkpty"):
        shown = "a fork"
    else:
        shown = args[0] if args else event
    if isinstance(shown, bytes):
        shown = shown.decode("utf-8", "replace")
    return Path(str(shown)).name if shown else event


def _engine_loaded() -> bool:
    local = sys.modules.get("faceverify.engines.local")
    return getattr(local, "_models", None) is not None


class SlowGuard:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.engine_was_loaded = False
        sys.addaudithook(self._audit)  # for the rest of the process: it only appends a name

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event in PROCESS_EVENTS:
            self.started.append(_program(event, args))

    def pytest_runtest_logstart(self) -> None:
        self.started.clear()  # what started between tests (collection, session) is nobody's

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        started, self.started = self.started, []
        loaded = _engine_loaded()
        engine, self.engine_was_loaded = loaded and not self.engine_was_loaded, loaded
        ours = TESTS in Path(str(item.path)).resolve().parents
        if ours and (started or engine) and item.get_closest_marker("slow") is None:
            did = [f"started {', '.join(sorted(set(started)))}"] if started else []
            did += ["loaded the local face engine"] if engine else []
            text = (
                f"{item.nodeid} ({call.when}) {' and '.join(did)} without the slow marker: "
                "mark it @pytest.mark.slow (or its module, pytestmark), as `make test-fast` "
                "runs no real process and no face engine"
            )
            if report.failed:
                report.sections.append(("slow marker", text))
            else:
                report.longrepr = text
                report.outcome = "failed"
        return report
