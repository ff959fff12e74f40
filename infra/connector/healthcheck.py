"""Container health probe (the slim image has no curl): GET /healthz on the connector's own port
and exit 0 only when it answers 200 with status "ok" or "degraded" (the function is unreachable:
the connector still answers every device, and restarting it would not bring the function back).

The address comes from the connector's TOML file ($FACEID_CONFIG), so the probe follows
server.port and server.tls_cert; FACEID_HEALTH_URL overrides it. On loopback the certificate is
not checked: it names the connector's public host, and the probe tests liveness, not identity.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TIMEOUT_S = 5.0
HEALTHY = ("ok", "degraded")


def health_url() -> str:
    explicit = os.environ.get("FACEID_HEALTH_URL", "").strip()
    if explicit:
        return explicit
    from connector.config import config_path, load_config

    server = load_config(config_path(None)).server
    host = server.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: probe loopback
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert else "http"
    return f"{scheme}://{host}:{server.port}/healthz"


def _context(url: str) -> ssl.SSLContext | None:
    parts = urlsplit(url)
    if parts.scheme != "https":
        return None
    context = ssl.create_default_context()
    if parts.hostname in LOOPBACK:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def probe(url: str) -> str | None:
    """None when healthy, else a short reason."""
    if urlsplit(url).scheme not in ("http", "https"):
        return f"not an http(s) URL: {url}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=_context(url)) as resp:  # noqa: S310
            body = json.loads(resp.read(65536) or b"{}")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except Exception as exc:
        return type(exc).__name__
    if not isinstance(body, dict) or body.get("status") not in HEALTHY:
        return "status is not ok"
    return None


def main() -> int:
    try:
        url = health_url()
    except Exception as exc:
        print(f"unhealthy: configuration ({getattr(exc, 'message', type(exc).__name__)})")
        return 1
    reason = probe(url)
    if reason is not None:
        print(f"unhealthy: {url}: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
