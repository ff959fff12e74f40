"""Whole-run check that no secret the tests used reached a log (devkit/secrets_used.py).

Read: the stdout and stderr of every child process started through devkit/procs.py (when its
output is final), what pytest captured of every test phase (stdout, stderr, logging) and the
failure report, and at the end every log file under the run's base temporary directory, against
all secrets registered by then. A leak fails the test phase during which it was printed (the
captured text pytest shows is redacted), or the run when it is found at the end. The run also
fails when a child process went unread, or when many ran and hardly a line was read from them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from connector.store import Store
from devkit import procs
from devkit.connector_e2e import open_sessions
from devkit.fakes.mxface import FakeMXFace
from devkit.photos import write_frames
from devkit.postgres import PostgresServer, PostgresUnavailable, start_postgres
from devkit.secrets_used import (
    TALLY,
    Finding,
    redact,
    register,
    register_environment,
    registered,
)
from devkit.simulator import DeviceSimulator
from devkit.stack import Stack, start_stack
from tests.support.infra import terraform_module
from tests.support.memory_runtime import Rig, memory_rig
from tests.support.slow_guard import SlowGuard
from tests.support.stores import BACKENDS, StoreBackend, backend_for

# Property-based tests are reproducible: every run draws the same examples (their seed is derived
# from each test's name), nothing is remembered between runs, and a failure prints the blob that
# replays it (@reproduce_failure).
settings.register_profile("faceid", derandomize=True, database=None, print_blob=True)
settings.load_profile("faceid")

LOG_SUFFIXES = {".log", ".jsonl"}
# Every server here prints a few lines at least (its URL, its access log); with this many of
# them, fewer lines than processes means their output was not collected. A targeted run with
# few processes may have only silent ones.
PLAUSIBLE_FROM = 5
ENV_AT_START = dict(os.environ)
_read_files: dict[Path, int] = {}  # process log file -> registry size when it was scanned
_end: dict[str, Any] = {"basetemp": None, "problems": []}
_databases: list[str] = []  # every pg_store_url database of the run: each name is new


def process_name(server: procs.ServerProcess) -> str:
    """What a finding calls a child process: its log name, else its command, and its pid."""
    program, *args = server.argv
    if server.log_prefix is not None:
        name = Path(server.log_prefix).name
    elif args[:1] == ["-m"]:
        name = f"python -m {args[1]}"
    else:  # no more of the command line: a test may pass a secret on it
        name = Path(program).name
    return f"{name} (pid {server.pid})"


def _watch(event: str, server: procs.ServerProcess) -> None:
    if event == "start":
        register_environment(server.env, ENV_AT_START)
        TALLY.process_started()
        return
    findings: list[Finding] = []
    for stream, text in (("stdout", server.stdout()), ("stderr", server.stderr())):
        size = registered()
        findings += TALLY.read("child processes", f"{process_name(server)} {stream}", text)
        if server.log_prefix is not None:  # read again at the end, for later secrets only
            _read_files[Path(f"{server.log_prefix}.{stream}.log").resolve()] = size
    TALLY.process_read(findings)


def _register_simulator_accounts() -> None:
    """In-process device simulators get their account passwords straight from the tests."""
    original = DeviceSimulator.__init__

    @functools.wraps(original)
    def init(self: DeviceSimulator, accounts: Any, *args: Any, **kwargs: Any) -> None:
        for password in [*dict(accounts).values(), *dict(kwargs.get("admins", {})).values()]:
            register("device password (DeviceSimulator account)", password)
        original(self, accounts, *args, **kwargs)

    DeviceSimulator.__init__ = init  # type: ignore[method-assign]


def pytest_report_header(config: pytest.Config) -> str:
    return "hypothesis: derandomized (each test's seed is derived from its name), no database"


def pytest_configure(config: pytest.Config) -> None:
    procs.watchers.append(_watch)
    _register_simulator_accounts()
    config.pluginmanager.register(SlowGuard(), "faceid-slow-guard")


@pytest.fixture(autouse=True, scope="session")
def _leak_scan_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _end["basetemp"] = tmp_path_factory.getbasetemp()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    register_environment(os.environ, ENV_AT_START)  # monkeypatch.setenv for in-process code
    findings = TALLY.take_pending()  # from child processes that stopped during this phase
    for index, (title, content) in enumerate(report.sections):
        if title.startswith("Captured ") and title.endswith(f" {call.when}"):
            found = TALLY.read("test output", f"{title.lower()} of {item.nodeid}", content)
            if found:
                findings += found
                report.sections[index] = (title, redact(content))
    if report.failed:
        failure = str(report.longrepr)
        found = TALLY.read("failure reports", f"failure report of {item.nodeid}", failure)
        if found:
            findings += found
            report.longrepr = redact(failure)
    if findings:
        _fail(report, f"{item.nodeid} ({call.when})", findings)
    return report


def _fail(report: pytest.TestReport, where: str, findings: list[Finding]) -> None:
    text = "\n".join(
        [f"secret leak scan: {len(findings)} secret(s) in what {where} printed:"]
        + [f"  {finding}" for finding in findings]
    )
    if report.failed and report.longrepr is not None:
        report.sections.append(("secret leak scan", text))
    else:
        report.longrepr = text
    report.outcome = "failed"
    if hasattr(report, "wasxfail"):
        del report.wasxfail


def _scan_log_files(basetemp: Path) -> list[Finding]:
    findings: list[Finding] = []
    for path in sorted(basetemp.rglob("*")):
        if path.suffix not in LOG_SUFFIXES or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        since = _read_files.get(path.resolve())
        name = str(path.relative_to(basetemp))
        if since is None:
            findings += TALLY.read("log files", name, text)
        else:  # its process's output: only secrets registered since then are news
            findings += TALLY.read("log files", name, text, since=since, shapes=False)
    return findings


def pytest_sessionfinish(session: pytest.Session) -> None:
    procs.stop_all()  # a process a test forgot: its output counts too
    findings = TALLY.take_pending()
    if _end["basetemp"] is not None:
        findings += _scan_log_files(_end["basetemp"])
    problems = [f"  {finding}" for finding in findings]
    if TALLY.scanned < TALLY.started:
        problems.append(f"  {TALLY.started - TALLY.scanned} child process(es) never read")
    process_lines = TALLY.lines.get("child processes", 0)
    if TALLY.started >= PLAUSIBLE_FROM and process_lines < TALLY.started:
        problems.append(
            f"  {TALLY.started} child processes but {process_lines} lines read from them"
        )
    _end["problems"] = problems
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    read = ", ".join(f"{where} {count}" for where, count in sorted(TALLY.lines.items()))
    summary = (
        f"secret leak scan: {registered()} secret forms registered, {TALLY.started} child "
        f"processes; lines read: {read or 'none'}"
    )
    problems = _end["problems"]
    if not problems:
        terminalreporter.write_line(summary + "; no leak")
        return
    terminalreporter.write_sep("=", "secret leak scan failed", red=True)
    terminalreporter.write_line(summary)
    for line in problems:
        terminalreporter.write_line(line, red=True)
    terminalreporter.stats.setdefault("secret leak scan problem(s)", []).extend(problems)


# --- fixtures several test modules share -------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Any:
    """The fake MXFace server, one per module."""
    with FakeMXFace() as server:
        yield server


@pytest.fixture(scope="module")
def app() -> Any:
    """The function's Flask app as functions-framework builds it (engine read per request).
    Built with the mxface engine, as its tests then set it: the start-up check would otherwise
    load the local face engine, which only tests marked slow may do."""
    import functions_framework

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACE_ENGINE", "mxface")
        mp.setenv("MXFACE_KEY", "start-up-check-only")
        main = str(procs.REPO / "function" / "main.py")
        return functions_framework.create_app("verify_faces", main)


@pytest.fixture(scope="module")
def tf() -> dict[str, list[Any]]:
    """infra/terraform parsed once per module."""
    return terraform_module()


@pytest.fixture(scope="module")
def no_google_metadata() -> Iterator[None]:
    """Whatever google-auth tries beyond our fake token endpoint lands on a closed local port
    (for modules that use real google-auth flows: `pytest.mark.usefixtures`)."""
    with pytest.MonkeyPatch.context() as mp:
        nowhere = f"127.0.0.1:{procs.free_port()}"
        mp.setenv("GCE_METADATA_HOST", nowhere)
        mp.setenv("GCE_METADATA_IP", nowhere)
        mp.setenv("NO_GCE_CHECK", "true")
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        yield


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> PostgresServer:
    """One throwaway PostgreSQL server for the whole run (devkit/postgres.py), started when a
    test first asks for it. Without PostgreSQL that test fails, and says how to install it:
    the store is promised on both backends. Its first user starts a process: mark it slow.
    No teardown here, which would run inside the run's last test (slow or not): it is stopped
    with every process in pytest_sessionfinish (SIGINT, PostgreSQL's fast shutdown), and its
    folder removed at exit."""
    try:
        return start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as err:
        pytest.fail(f"this test needs PostgreSQL: {err}", pytrace=False)


@pytest.fixture
def pg_store_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the `postgres` server (its password: postgres.password or
    postgres.password_ref), dropped after the test."""
    name = re.sub(r"[^a-z0-9_]", "_", f"t{len(_databases)}_{request.node.name.lower()}")[:63]
    _databases.append(name)
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """Runs the test once on SQLite and once on PostgreSQL (a fresh database)."""
    return backend_for(request, tmp_path)


@pytest.fixture
def key() -> bytes:
    """A fresh store key."""
    return os.urandom(32)


@pytest.fixture
def store(store_backend: StoreBackend, key: bytes) -> Iterator[Store]:
    """The rules every database keeps: each test using it runs on SQLite and on PostgreSQL."""
    s = store_backend.open(key)
    yield s
    s.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    """A store file in a folder the store makes itself (0700)."""
    return str(tmp_path / "state" / "faceid.db")


@pytest.fixture
def sqlite_store(sqlite_path: str, key: bytes) -> Iterator[Store]:
    """For what only a SQLite file shows (its bytes, its WAL, a row changed behind its back)."""
    s = Store.open(sqlite_path, key)
    yield s
    s.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A connector Runtime on the in-memory fakes and a real store: rules in milliseconds."""
    made = memory_rig(tmp_path)
    yield made
    made.close()


@pytest.fixture(scope="module")
def admin_frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Camera frames for the admin-command modules' stack."""
    return write_frames(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def admin_stack(
    admin_frames: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The running stack of the admin-command modules: local engine, two simulated devices
    showing Grace Hopper."""
    stack = start_stack(
        tmp_path_factory.mktemp("stack"), images=admin_frames["grace_hopper"], devices=2
    )
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def signed_out(admin_stack: Stack) -> Iterator[None]:
    """After the test, no device web session of admin_stack is left open
    (`pytest.mark.usefixtures`)."""
    yield
    assert open_sessions(admin_stack.devices) == {}
