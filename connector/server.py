"""Serve the connector's Flask app with gunicorn (one worker, threads), optionally over TLS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


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
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "control_socket_disable": True,
    }
    ConnectorServer(factory, options).run()
