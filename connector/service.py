"""Start-up: load and check everything in the parent process, so a bad file, secret or key fails
fast with one clear line, then serve the app built again inside the worker, which takes later
changes of the file in place (reload.py)."""

from __future__ import annotations

import signal

from faceid_core.logs import log
from flask import Flask

from .app import SHUTDOWN, create_app
from .config import ConnectorConfig
from .config.loading import parse, read_text
from .reload import RELOAD, ConfigWatcher, LastGood, stamp, worker_runtime
from .runtime import build_runtime


def run(config_path: str) -> None:
    # Until gunicorn's master takes SIGHUP over, a reload asked for is the start itself: the
    # default would end the service (`systemctl reload` right after `start`).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    seen = stamp(config_path)  # before reading: a change made meanwhile is seen as one
    text = read_text(config_path)
    config = parse(text, config_path)
    rt = build_runtime(config)  # resolves every secret and opens the store once
    try:
        for serial in rt.devices:
            if rt.device_key(serial) is None:
                log(
                    "WARNING",
                    "device has no key: its requests are refused until an administrator runs "
                    "`admin rotate-key` and puts the key in its macro",
                    serial=serial,
                )
        rt.sign_out_leftovers()  # device web sessions a crash left open (they never expire)
    finally:
        rt.close()
    last_good = LastGood()  # in memory: each worker inherits it as gunicorn forks it
    last_good.save(text, seen)

    def factory() -> Flask:
        return _worker_app(config_path, config, last_good)

    server = config.server
    log(
        "INFO",
        "connector starting",
        host=server.host,
        port=server.port,
        tls=bool(server.tls_cert),
        devices=len(config.devices),
    )
    from .server import serve

    serve(factory, server=server, admin_ui=config.admin_ui)


def _worker_app(path: str, started: ConnectorConfig, last_good: LastGood) -> Flask:
    """In the worker: the app on a runtime built from the file as it is now (or, failing that,
    the last configuration taken or the one the service started with), and the watcher that
    takes its changes."""
    rt, seen = worker_runtime(path, started, last_good)
    watcher = ConfigWatcher(rt, path, last_good, seen=seen)
    app = create_app(rt)

    def shutdown() -> None:
        watcher.close()
        rt.close()

    app.extensions[SHUTDOWN] = shutdown
    app.extensions[RELOAD] = watcher.request
    watcher.start()
    return app
