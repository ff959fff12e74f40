"""A server process and its children as one process group, seen from /proc: who is still alive,
how much memory they hold, and a crash (SIGKILL to the whole group, as a power cut or the OOM
killer leaves the service: no handler runs, nothing is flushed)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from devkit.procs import ServerProcess


def _stat_fields(pid: str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), None when the process is gone."""
    try:
        return Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def group_pids(pgid: int) -> list[int]:
    """Living members of the process group (zombies left unreaped do not count)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def child_pids(pid: int) -> list[int]:
    """Living children of `pid`, whatever their group (PostgreSQL's each lead one of their own)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every living member of the group, summed (VmRSS)."""
    total = 0
    for pid in group_pids(pgid):
        try:
            status = Path("/proc", str(pid), "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def crash(server: ServerProcess, timeout_s: float = 10.0) -> None:
    """SIGKILL the server's whole group (gunicorn's arbiter and workers at once) and wait until
    none of them is alive; its output stays readable."""
    assert server.proc is not None and server.pid is not None, "the server was never started"
    pgid = server.pid  # ServerProcess starts each server as the leader of its own group
    os.killpg(pgid, signal.SIGKILL)
    server.proc.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while survivors := group_pids(pgid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {survivors} survived SIGKILL of their group")
        time.sleep(0.01)
    server.stop()  # nothing left to signal: closes its log files, keeps their text
