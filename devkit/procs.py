"""Real server processes for integration tests, benchmarks and the demo: start one with its own
environment, wait until it answers, read what it printed, and stop it (and its children).

    with start_function("verify_faces", "function/main.py", env={"FACE_ENGINE": "mxface"}) as fn:
        requests.post(fn.url, json=...)
        fn.stdout()   # everything it printed so far (also after stop)
"""

from __future__ import annotations

import atexit
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: functions-framework, gunicorn, ...
_running: set[ServerProcess] = set()  # stopped at exit if a caller forgot
#: Called as `watcher(event, server)` when a process has started ("start") and when its output is
#: final ("stop"): the test run registers the secrets it hands over and reads what it printed.
watchers: list[Callable[[str, ServerProcess], None]] = []


@atexit.register
def stop_all() -> None:
    """Stop every process still running (callers that forgot to)."""
    for server in list(_running):
        server.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (another process may take it before use; good enough locally)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with `env` applied; a None value removes the variable."""
    merged = dict(os.environ, PYTHONUNBUFFERED="1")
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


class ServerProcess:
    """One child process in its own process group, output captured to temporary files."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | Path = REPO,
        url: str | None = None,
        stop_signal: int = signal.SIGTERM,
        log_prefix: str | Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = child_env(env)
        self.cwd = str(cwd)
        self.url = url  # where it answers, when known in advance
        self.stop_signal = stop_signal
        self.log_prefix = log_prefix  # None: temporary files, gone after stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: dict[str, IO[bytes]] = {}
        self._final: dict[str, str] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def start(self) -> ServerProcess:
        for name in ("stdout", "stderr"):
            # Closed by stop(); kept open meanwhile so the output can be read at any time.
            if self.log_prefix is None:
                self._files[name] = tempfile.NamedTemporaryFile(prefix=f"proc-{name}-")  # noqa: SIM115
            else:
                self._files[name] = open(f"{self.log_prefix}.{name}.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._files["stdout"],
            stderr=self._files["stderr"],
            start_new_session=True,  # its own group: stop() reaches gunicorn's workers too
        )
        _running.add(self)
        for watcher in watchers:
            watcher("start", self)
        return self

    def _read(self, name: str) -> str:
        if name in self._final:
            return self._final[name]
        handle = self._files.get(name)
        if handle is None:
            return ""
        with open(handle.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self) -> str:
        return self._read("stdout")

    def stderr(self) -> str:
        return self._read("stderr")

    def _fail(self, why: str) -> RuntimeError:
        tail = (self.stdout()[-2000:] + "\n" + self.stderr()[-2000:]).strip()
        return RuntimeError(f"{self.argv[0]}: {why}\n{tail}")

    def wait_http(self, url: str | None = None, timeout_s: float = 30.0) -> None:
        """Wait until `url` (default self.url) gives any HTTP answer, whatever its status."""
        target = urlsplit(url or self.url or "")
        if not target.hostname or not target.port:
            raise ValueError("wait_http needs a URL with host and port")
        deadline = time.monotonic() + timeout_s
        while True:
            if self.returncode is not None:
                raise self._fail(f"exited with {self.returncode} before answering")
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=2)
            try:
                conn.request("GET", target.path or "/")
                conn.getresponse().read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise self._fail(f"no answer at {url or self.url} in {timeout_s} s") from None
                time.sleep(0.05)
            finally:
                conn.close()

    def wait_line(self, pattern: str, timeout_s: float = 30.0, stream: str = "stdout") -> re.Match:
        """Wait until a line of its output matches `pattern`; returns the match."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self._read(stream))
            if found:
                return found
            if self.returncode is not None:
                raise self._fail(f"exited with {self.returncode} before printing {pattern!r}")
            if time.monotonic() > deadline:
                raise self._fail(f"did not print {pattern!r} in {timeout_s} s")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """`stop_signal` to its group, SIGKILL after `timeout_s`; keeps the output readable."""
        if self.proc is None:
            return None
        _running.discard(self)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.stop_signal)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self._files:  # the first stop: the output is final now
            for name, handle in self._files.items():
                self._final[name] = self._read(name)
                handle.close()
            self._files.clear()
            for watcher in watchers:
                watcher("stop", self)
        return self.proc.returncode

    def wait(self, timeout_s: float) -> int:
        """Wait until it exits by itself (a command rather than a server); stopped on timeout."""
        assert self.proc is not None, "start() first"
        try:
            self.proc.wait(timeout_s)
        finally:
            self.stop()
        return self.proc.returncode

    def detach(self) -> None:
        """Let it outlive this process: no stop at exit. Its own session already keeps it out of
        this terminal's signals; its output keeps going to the `log_prefix` files."""
        _running.discard(self)
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_function(
    target: str,
    source: str | Path,
    env: Mapping[str, str | None] | None = None,
    *,
    port: int | None = None,
    ready_path: str = "/",
    timeout_s: float = 30.0,
    log_prefix: str | Path | None = None,
) -> ServerProcess:
    """`functions-framework --target T --source S` on 127.0.0.1, answering when returned."""
    port = port or free_port()
    argv = [
        str(BIN / "functions-framework"),
        f"--target={target}",
        f"--source={source}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    url = f"http://127.0.0.1:{port}"
    # SIGINT is gunicorn's quick shutdown; SIGTERM would wait out keep-alive connections.
    server = ServerProcess(
        argv, env=env, url=url, stop_signal=signal.SIGINT, log_prefix=log_prefix
    ).start()
    try:
        server.wait_http(url + ready_path, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def start_module(
    module: str,
    args: Sequence[str] = (),
    env: Mapping[str, str | None] | None = None,
    *,
    ready_line: str = r"^http://\S+",
    timeout_s: float = 30.0,
    log_prefix: str | Path | None = None,
) -> ServerProcess:
    """`python -m module args` that prints its URL first (the fakes do); `url` is that line."""
    server = ServerProcess([sys.executable, "-m", module, *args], env=env, log_prefix=log_prefix)
    server.start()
    try:
        server.url = server.wait_line(ready_line, timeout_s).group(0).strip()
    except BaseException:
        server.stop()
        raise
    return server
