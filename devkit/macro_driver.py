"""The real macro under Node: demo/drive_macro.mjs, one simulated device per process, driven
by one JSON line per action and answered in kind (that file's docstring says what each line
holds). `python -m demo` runs its scenarios on it, and tests that need the real macro (its
fail-over between connectors) drive it the same way."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

from devkit.procs import REPO
from devkit.stack import Stack

DRIVER = REPO / "demo" / "drive_macro.mjs"
NODE_MIN = (20, 6)


class MacroDriver:
    """demo/drive_macro.mjs in a Node process: one JSON line per action, answered in kind. Node
    trusts the connector's CA (NODE_EXTRA_CA_CERTS), so TLS is checked as with a CA-issued one."""

    def __init__(self, stack: Stack, log_path: Path) -> None:
        node = node_binary()
        self._log = log_path.open("wb")
        self._proc = subprocess.Popen(
            [node, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(stack.ca_path)},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def ask(self, request: dict[str, Any], timeout_s: float = 90.0) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"the macro did not finish {request} in {timeout_s:.0f} s") from None
        if line is None:
            code = self._proc.poll()
            raise RuntimeError(f"the macro driver exited ({code}); see {self._log.name}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the macro driver failed on {request}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()


def node_binary() -> str:
    """Node 20.6 or later (the macro's tests need the same); a clear error otherwise."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("Node.js 20.6 or later is needed to run the macro: install it first")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    found = re.match(r"v(\d+)\.(\d+)", version.stdout.strip())
    if found is None or (int(found[1]), int(found[2])) < NODE_MIN:
        raise RuntimeError(f"Node.js 20.6 or later is needed, found {version.stdout.strip()}")
    return node
