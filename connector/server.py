"""Serve the connector's Flask app with gunicorn (one worker, threads), optionally over TLS."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from .app import SHUTDOWN


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


def _worker_exit(_arbiter: Any, worker: Any) -> None:
    """In the worker, once it has stopped serving: let the app finish its background work (the
    Webex queue drains within a deadline and says how many messages it dropped)."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    shutdown = extensions.get(SHUTDOWN)
    if shutdown is not None:
        shutdown()


class ReusedSslContext:
    """gunicorn's `ssl_context` hook. gunicorn builds a new SSLContext, reading the certificate
    and key again, for every connection (about 1 ms, and each macro call is a new connection);
    this keeps one and builds it again only when either file changes, so a renewed certificate
    still takes effect without a restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._context: ssl.SSLContext | None = None

    def __call__(self, conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        try:
            stamp = tuple(
                os.stat(path).st_mtime_ns for path in (conf.certfile, conf.keyfile or conf.certfile)
            )
        except OSError:
            stamp = None  # let the factory report the missing file
        with self._lock:
            if self._context is None or stamp is None or stamp != self._stamp:
                self._context, self._stamp = default_factory(), stamp
            return self._context


def serve(
    factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    threads: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    options: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": 20,
        "keepalive": 30,
        "certfile": certfile,
        "keyfile": keyfile,
        "ssl_context": ReusedSslContext() if certfile else None,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "control_socket_disable": True,
        "worker_exit": _worker_exit,
    }
    ConnectorServer(factory, options).run()
