"""Serve the connector's Flask app with gunicorn (one worker, threads) on a private UNIX socket,
behind its front (front.py: HAProxy, which holds the clients' connections and TLS).

SIGHUP reloads the configuration in the worker (reload.py), never in gunicorn's master: the
master's own SIGHUP would start a new worker from the file, and a worker that cannot boot from
a broken file stops gunicorn. Here the master passes SIGHUP on to its worker.

gunicorn's worker sets SIGHUP back to the default (which ends it) before it builds the app, which
takes seconds when secrets are fetched. So the worker is forked with SIGHUP blocked: one sent
while it boots waits in the kernel (any number of them as one) and is delivered once the handler
that asks for a reload is in place; neither ends the worker nor is lost."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from .app import SHUTDOWN
from .config import ServerConfig
from .config.schema import AdminUiConfig
from .front import Front
from .reload import RELOAD


class ForwardingArbiter(Arbiter):
    """gunicorn's master, but SIGHUP goes on to the worker instead of replacing it."""

    def handle_hup(self) -> None:
        self.kill_workers(signal.SIGHUP)

    def spawn_worker(self) -> int:
        """The worker is forked with SIGHUP blocked, until _post_worker_init unblocks it."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            return int(super().spawn_worker())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


class ConnectorServer(BaseApplication):
    """One worker keeps in-memory state (auth brake, token cache) consistent; threads give
    concurrency while each request mostly waits on the device or the function. The app is built
    in the worker, after the fork, so no database handle crosses a fork."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()

    def run(self) -> None:
        """BaseApplication.run with the ForwardingArbiter."""
        try:
            ForwardingArbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)


class StructuredLogger(glogging.Logger):
    """gunicorn's own messages (a worker that dies or times out) as lines of the connector's
    structured stream on stdout (faceid_core.logs), instead of plain text on stderr."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in [h for h in log.handlers if getattr(h, "_gunicorn", False)]:
                log.removeHandler(handler)
            log.propagate = True


def _worker_exit(_arbiter: Any, worker: Any) -> None:
    """In the worker, once it has stopped serving: let the app finish its background work (the
    Webex queue drains within a deadline and says how many messages it dropped)."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    shutdown = extensions.get(SHUTDOWN)
    if shutdown is not None:
        shutdown()


def _post_worker_init(worker: Any) -> None:
    """In the worker, once the app is built: SIGHUP asks the app's configuration watcher for a
    reload (it only queues the request); unblocked, one that came while it booted arrives now."""
    reload = getattr(getattr(worker, "wsgi", None), "extensions", {}).get(RELOAD)
    signal.signal(
        signal.SIGHUP,
        signal.SIG_IGN if reload is None else lambda _signum, _frame: reload(),
    )
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def serve(
    factory: Callable[[], Flask], *, server: ServerConfig, admin_ui: AdminUiConfig | None = None
) -> None:
    """Run until stopped; exits with status 1 if the front dies under it."""
    front_failed = threading.Event()

    def front_exited(_code: int) -> None:
        front_failed.set()
        os.kill(os.getpid(), signal.SIGTERM)  # gunicorn stops gracefully

    front = Front(server, front_exited, admin_ui)

    def when_ready(_arbiter: Any) -> None:
        # The backend socket is bound (requests wait in its backlog until the worker is up).
        front.start()
        front.wait_until_listening()

    def on_exit(_arbiter: Any) -> None:
        front.stop()
        if front_failed.is_set():
            raise SystemExit(1)

    options: dict[str, Any] = {
        "bind": front.backend_bind,
        "workers": 1,
        "worker_class": "gthread",
        "threads": front.threads,  # server.threads, and admin_ui.threads for the console
        "timeout": 60,
        "graceful_timeout": 20,
        "keepalive": 30,
        "accesslog": None,
        "logger_class": StructuredLogger,
        "loglevel": "warning",
        "control_socket_disable": True,
        "worker_exit": _worker_exit,
        "post_worker_init": _post_worker_init,
        "when_ready": when_ready,
        "on_exit": on_exit,
    }
    master = os.getpid()
    try:
        ConnectorServer(factory, options).run()
    finally:
        # A worker exits by unwinding these frames too (it was forked inside run()): only the
        # master stops the front, else a worker gunicorn replaces would delete its socket.
        if os.getpid() == master:
            front.stop()
