"""Start-up: load and check everything in the parent process, so a bad file, secret or key fails
fast with one clear line, then serve the app built again inside the worker."""

from __future__ import annotations

from faceid_core.logs import log
from flask import Flask

from .app import create_app
from .config import load_config
from .runtime import build_runtime


def run(config_path: str) -> None:
    config = load_config(config_path)
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

    def factory() -> Flask:
        return create_app(build_runtime(load_config(config_path)))

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

    serve(factory, server=server)
