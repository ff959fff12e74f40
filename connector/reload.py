"""A changed configuration file, taken by the running service in place, without a restart; a file
that fails its checks is refused whole and the running configuration stays in force.

The worker watches the file (its mtime, size and inode, every WATCH_EVERY_S) and reloads at once
on SIGHUP (server.py forwards the master's SIGHUP to the worker instead of restarting it). A
reload checks the file as start-up would (config/checks.py: every field, every secret); one with
any problem is logged as one ERROR line listing them all, and nothing changes. A good file is
applied by swapping whole attributes of the Runtime, each built before any is swapped: the
devices (passwords resolved), the lockout policy, the failed-authentication brake's limits (its
counts kept), the function's client when [function] changed, the Webex notices when [webex] or a
device's room changed, the devices' client when their time bounds changed, the log level. The
store, the metrics, the replay cache and the last matches stay. A replaced client is closed once
no request can still be using it. One reload runs at a time.

server.*, admin_ui.* and store.* are what HAProxy, gunicorn, the console and the open store were
started with: a change to them waits for the next restart, and each reload says so.

A worker that gunicorn starts again (after a crash) serves with the file if it passes the checks
and builds, else the last configuration taken (LastGood keeps it in memory the master and its
workers share), else the one the service started with: neither a bad file nor a secret that no
longer resolves stops the service while one of them builds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from faceid_core.errors import FaceIdError, config_error
from faceid_core.logs import log, set_level

from .config import Checked, ConnectorConfig
from .config.checks import check_text
from .config.loading import parse, read_text
from .device import DeviceClient
from .lockout import Lockout
from .runtime import (
    NOTIFY_DRAIN_S,
    Runtime,
    build_runtime,
    device_entry,
    function_client,
    make_device_client,
)
from .webex import webex_notices

#: app.extensions key of what the worker's SIGHUP handler calls (server.py): ask for a reload.
RELOAD = "faceid.reload"
WATCH_EVERY_S = 2.0
#: A changed file is read once it has stayed the same this long (an editor writing in place).
SETTLE_S = 0.5
REJECTED = "configuration rejected; the running configuration stays in force"
#: Sections whose settings the running service takes (server, admin_ui and store wait for a
#: restart).
LIVE_SECTIONS = ("function", "policy", "device_defaults", "webex", "provisioning", "log")
RESTART_SECTIONS = ("server", "admin_ui", "store")

#: What tells a changed file: (mtime_ns, size, inode); None when it cannot be read.
Stamp = tuple[int, int, int] | None


def stamp(path: str | os.PathLike[str]) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class Change:
    """What a reload changed: devices by serial, sections by name, and the fields of the
    RESTART_SECTIONS that differ from what runs (they take effect at the next restart)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.sections)


def in_force(running: ConnectorConfig, new: ConnectorConfig) -> tuple[ConnectorConfig, list[str]]:
    """`new` as the running service can take it: with the RESTART_SECTIONS it runs with, and the
    fields of those that `new` would change (a whole optional section added or removed: its
    name)."""
    pending: list[str] = []
    for section in RESTART_SECTIONS:
        was, will = getattr(running, section), getattr(new, section)
        if was is None or will is None:
            pending += [section] if was != will else []
            continue
        pending += [
            f"{section}.{f.name}"
            for f in dataclasses.fields(was)
            if getattr(was, f.name) != getattr(will, f.name)
        ]
    kept = {section: getattr(running, section) for section in RESTART_SECTIONS}
    return dataclasses.replace(new, **kept), pending


def _rooms(config: ConnectorConfig) -> tuple[Any, ...]:
    """What the Webex notices are built from (webex_notices)."""
    return (config.webex, tuple((d.serial, d.webex_room_id) for d in config.devices))


def _time_bounds(config: ConnectorConfig) -> tuple[float, ...]:
    d = config.device_defaults
    return (d.connect_timeout_s, d.read_timeout_s, d.budget_s)


def apply(rt: Runtime, checked: Checked) -> tuple[Change, list[Callable[[], object]]]:
    """Take the checked file into `rt` (module docstring). Returns what changed and the closers
    of the clients it replaced, to run once no request uses them. A client that cannot be built
    raises FaceIdError before anything is swapped."""
    assert checked.config is not None, "apply only a file that passed its checks"
    old = rt.config
    new, pending = in_force(old, checked.config)
    devices = {d.serial: device_entry(d, checked.passwords[d.serial]) for d in new.devices}
    function = function_client(new) if new.function != old.function else rt.function
    try:
        notices = webex_notices(new, rt.metrics) if _rooms(new) != _rooms(old) else rt.notices
    except FaceIdError:
        if function is not rt.function:
            function.close()
        raise
    # Everything is built: from here on nothing fails, and each part is swapped whole.
    replaced: list[Callable[[], object]] = []
    if function is not rt.function:
        replaced.append(rt.function.close)
        rt.use_function(function)
    if notices is not rt.notices:
        old_notices = rt.notices
        if old_notices is not None:
            replaced.append(lambda: old_notices.close(NOTIFY_DRAIN_S))
        rt.notices = notices
    if _time_bounds(new) != _time_bounds(old) and isinstance(rt.device_client, DeviceClient):
        replaced.append(rt.device_client.close)
        rt.device_client = make_device_client(new, rt.store, rt.metrics)
    if new.policy != old.policy:
        rt.lockout = Lockout(rt.store, new.policy, rt.clock)
        rt.auth_limiter.limit = new.policy.failed_auth_limit
        rt.auth_limiter.window_s = new.policy.failed_auth_window_s
    if new.log != old.log:
        set_level(new.log.level)
    before = rt.devices
    rt.devices = devices
    rt.config = new
    change = Change(
        added=tuple(s for s in devices if s not in before),
        removed=tuple(s for s in before if s not in devices),
        changed=tuple(
            s
            for s in devices
            if s in before and (devices[s] != before[s] or new.device(s) != old.device(s))
        ),
        sections=tuple(s for s in LIVE_SECTIONS if getattr(new, s) != getattr(old, s)),
        restart=tuple(pending),
    )
    return change, replaced


class LastGood:
    """The text of the last configuration the service took (and the stamp of the file it was
    read from), in an anonymous memory file (memfd) the master creates and each worker inherits
    as it is forked: a worker that gunicorn starts again finds what the one before it took.
    Nothing on disk or in /tmp can vanish under it (systemd's PrivateTmp and tmpfiles aging), and
    it goes away with the processes. Each record carries its SHA-256, so one that a killed worker
    left half-written is refused. References only, never a secret's value."""

    def __init__(self) -> None:
        self._fd = os.memfd_create("faceid-last-good", os.MFD_CLOEXEC)

    def save(self, text: str, seen: Stamp) -> None:
        """Keep `text`; a failure is logged, never raised (the configuration is already taken)."""
        data = json.dumps({"text": text, "stamp": seen}).encode()
        record = memoryview(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
        try:
            done = 0
            while done < len(record):
                done += os.pwrite(self._fd, record[done:], done)
            os.ftruncate(self._fd, len(record))
        except OSError as exc:
            log(
                "WARNING",
                "the configuration taken could not be kept for a worker restart",
                component="connector",
                error=exc.strerror,
            )

    def load(self) -> tuple[str, Stamp]:
        """The last configuration taken; config_error when there is none that is whole."""
        try:
            raw = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
            digest, _, data = raw.partition(b"\n")
            if hashlib.sha256(data).hexdigest().encode() != digest:
                raise ValueError("digest")
            saved = json.loads(data)
            text, seen = saved["text"], saved["stamp"]
            return text, (None if seen is None else (seen[0], seen[1], seen[2]))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            raise config_error("the last configuration taken is not whole") from None


def _rejected(path: str, problems: tuple[str, ...] | list[str]) -> None:
    log("ERROR", REJECTED, component="connector", path=path, problems=list(problems))


#: Where a worker's configuration came from, as its log lines say.
FROM_FILE = "the file"
FROM_LAST_GOOD = "the last configuration taken"
FROM_START = "the configuration the service started with"


def _candidates(
    path: str, seen: Stamp, started: ConnectorConfig, last_good: LastGood
) -> Iterator[tuple[str, ConnectorConfig, str | None]]:
    """What a (re)started worker may serve with, best first: (where from, configuration, the
    text to keep as the last good one). Each is produced only when the one before did not do."""
    taken: ConnectorConfig | None = None
    saved: Stamp = None
    try:
        text, saved = last_good.load()
        taken = parse(text, path)
    except FaceIdError as exc:
        log("WARNING", exc.message, component="connector", source=FROM_LAST_GOOD)
    if taken is not None and seen == saved:
        yield FROM_FILE, taken, None  # the file is the one last taken: no need to check it again
    else:
        try:
            current = read_text(path)
            checked = check_text(current, path)
        except FaceIdError as exc:
            checked = Checked((exc.message,))
        if checked.config is not None:
            yield FROM_FILE, checked.config, current
        else:
            _rejected(path, checked.problems)
    if taken is not None:
        yield FROM_LAST_GOOD, taken, None
    yield FROM_START, started, None


def worker_runtime(
    path: str, started: ConnectorConfig, last_good: LastGood
) -> tuple[Runtime, Stamp]:
    """The runtime a (re)started worker serves with, and the stamp of the file as it looked:
    built from the file if it passes its checks, else from the last configuration taken, else
    from the one the service started with (in memory) — the first that builds, so a worker
    restart stops the service only when none does. Always with the server, console and store
    the service started with."""
    seen = stamp(path)  # before reading: a change made meanwhile is seen as one
    tried: list[ConnectorConfig] = []
    failure: FaceIdError | None = None
    for source, candidate, text in _candidates(path, seen, started, last_good):
        config, pending = in_force(started, candidate)
        if config in tried:
            continue
        tried.append(config)
        try:
            rt = build_runtime(config)
        except FaceIdError as exc:
            failure = exc
            log(
                "ERROR",
                f"the worker could not start on {source}",
                component="connector",
                error=exc.message,
            )
            continue
        if text is not None:
            last_good.save(text, seen)
        if source != FROM_FILE:
            log("WARNING", f"the worker serves {source}", component="connector")
        if pending:
            _restart_warning(pending)
        return rt, seen
    assert failure is not None, "the started configuration is always a candidate"
    raise failure


def _restart_warning(fields: tuple[str, ...] | list[str]) -> None:
    log(
        "WARNING",
        "changed settings take effect at the next restart",
        component="connector",
        fields=list(fields),
    )


class ConfigWatcher:
    """The worker's reloads: a daemon thread that checks the file's stamp every `every_s` and
    reloads when it changed, or at once when `request()` asks (SIGHUP)."""

    def __init__(
        self,
        rt: Runtime,
        path: str,
        last_good: LastGood | None = None,
        *,
        seen: Stamp = None,
        every_s: float = WATCH_EVERY_S,
    ) -> None:
        """`seen`: the stamp of the file as `rt` was built from it."""
        self.rt, self.path, self.last_good = rt, path, last_good
        self.every_s = every_s
        self._stamp = seen
        self._lock = threading.Lock()
        self._asks: queue.SimpleQueue[bool] = queue.SimpleQueue()  # safe in a signal handler
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_rejected: tuple[str | None, tuple[str, ...]] | None = None
        self._retiring: list[_Retired] = []

    def request(self) -> None:
        """Ask for a reload now; does nothing else, so a signal handler may call it."""
        self._asks.put_nowait(True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faceid-config", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching, and close the replaced clients still waiting (the worker exits)."""
        self._stopping.set()
        self._asks.put_nowait(False)
        if self._thread is not None:
            self._thread.join(5)
        for retired in self._retiring:
            retired.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                asked = self._asks.get(timeout=self.every_s)
            except queue.Empty:
                asked = False
            if self._stopping.is_set():
                return
            try:
                if asked or self._changed():
                    self.reload(asked=asked)
            except Exception as exc:  # the watcher must outlive any surprise
                log(
                    "ERROR",
                    "configuration reload failed unexpectedly; the running configuration stays "
                    "in force",
                    component="connector",
                    error_type=type(exc).__name__,
                )

    def _changed(self) -> bool:
        now = stamp(self.path)
        if now == self._stamp:
            return False
        return not self._stopping.wait(SETTLE_S) and stamp(self.path) == now

    def reload(self, *, asked: bool = True) -> Change | None:
        """Check the file and take it (None when it is refused). A refusal is logged each time
        one is asked for, and once per version of the file otherwise."""
        with self._lock:
            self._stamp = stamp(self.path)
            text: str | None = None
            try:
                text = read_text(self.path)
                checked = check_text(text, self.path)
                lease_s = self.rt.attempt_lease_s  # the longest a request holds a client
                change, replaced = apply(self.rt, checked) if checked.ok else (None, [])
            except FaceIdError as exc:  # unreadable, or a client that would not build
                checked, change, replaced = Checked((exc.message,)), None, []
            if change is None:
                refusal = (text, checked.problems)
                if asked or refusal != self._last_rejected:
                    _rejected(self.path, checked.problems)
                self._last_rejected = refusal
                return None
            self._last_rejected = None
            if replaced:
                self._retiring = [r for r in self._retiring if not r.closed]
                self._retiring.append(_Retired(replaced, lease_s))
            if self.last_good is not None and text is not None:
                self.last_good.save(text, self._stamp)
            if asked or not change.empty:
                log(
                    "INFO",
                    "configuration reloaded",
                    component="connector",
                    devices_added=list(change.added),
                    devices_removed=list(change.removed),
                    devices_changed=list(change.changed),
                    sections_changed=list(change.sections),
                    devices=len(self.rt.devices),
                )
            if change.restart:
                _restart_warning(change.restart)
            return change


class _Retired:
    """Clients a reload replaced, closed after `after_s` (a request that took one before the swap
    has finished with it by then), or at once when the worker exits; closed once either way."""

    def __init__(self, closers: list[Callable[[], object]], after_s: float) -> None:
        self._closers = closers
        self._lock = threading.Lock()
        self.closed = False
        self._timer = threading.Timer(after_s, self.close)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._timer.cancel()
        for close in self._closers:
            try:
                close()
            except Exception as exc:
                log(
                    "WARNING",
                    "closing a replaced client failed",
                    component="connector",
                    error_type=type(exc).__name__,
                )
