"""Fake Google token services (REFERENCE.md §4) on 127.0.0.1, for the real google-auth flows. One
server, one signing key, as Google signs every ID token with the same keys:

- `POST /token`, the OAuth 2.0 endpoint: a JWT-bearer grant whose assertion the client signed with
  the service account's private key. A `target_audience` claim asks for `{"id_token": <JWT>}`; a
  `scope` claim asks for an opaque access token.
- `POST /v1/token`, the Security Token Service (Workload Identity Federation): a token exchange of
  a subject token registered in `federated` for an access token of the federated principal
  `principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S`.
- `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken` and `:generateIdToken`, the IAM
  Credentials API: the caller is the holder of the Bearer access token (which must carry the iam
  or cloud-platform scope) and needs a role on EMAIL given with `grant_role()`; otherwise 403
  PERMISSION_DENIED, as Google answers.

`verify()` checks an ID token, as the function's front end would.

    key = ServiceAccountKey.generate()
    with FakeGoogleTokenServer(key) as google:
        path = key.write(tmp_path / "sa.json", google.token_uri)
        ...
        google.grants            # ID-token target audiences asked for at /token, in order
        google.access_grants     # (principal, scope) of every access token issued
        google.iam_calls         # (method, target account, caller principal), refused ones too
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
IAM_SCOPES = {
    "https://www.googleapis.com/auth/iam",
    "https://www.googleapis.com/auth/cloud-platform",
}
IAM_PATH = "/v1/projects/-/serviceAccounts/"
# Role -> the IAM Credentials methods it allows on a service account.
ROLE_METHODS = {
    "roles/iam.serviceAccountOpenIdTokenCreator": {"generateIdToken"},
    "roles/iam.serviceAccountTokenCreator": {"generateIdToken", "generateAccessToken"},
}
METHOD_PERMISSION = {
    "generateIdToken": "iam.serviceAccounts.getOpenIdToken",
    "generateAccessToken": "iam.serviceAccounts.getAccessToken",
}
POOL_PREFIX = "//iam.googleapis.com/"
# google-auth puts Google's endpoint in the assertion's aud whatever token_uri says; so does Google.
ASSERTION_AUDIENCE = "https://oauth2.googleapis.com/token"
ISSUER = "https://accounts.google.com"


def _rsa_pair() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem.decode()


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account made up at test time: its key file and the public half Google keeps."""

    email: str
    key_id: str
    private_pem: str
    public_pem: str

    @classmethod
    def generate(cls, email: str = "faceid-connector@faceid-test.iam.gserviceaccount.com"):
        private_pem, public_pem = _rsa_pair()
        return cls(email, "test-key-1", private_pem, public_pem)

    def info(self, token_uri: str) -> dict[str, str]:
        return {
            "type": "service_account",
            "project_id": "faceid-test",
            "private_key_id": self.key_id,
            "private_key": self.private_pem,
            "client_email": self.email,
            "client_id": "100000000000000000001",
            "token_uri": token_uri,
        }

    def write(self, path: Path, token_uri: str) -> str:
        path.write_text(json.dumps(self.info(token_uri)))
        path.chmod(0o600)
        return str(path)


class FakeGoogleTokenServer:
    """Thread-safe; `lifetime_s` sets the exp of the ID tokens it issues, `fail_status` makes
    every grant fail with that HTTP status and Google's JSON error body (4xx: invalid_grant,
    which google-auth does not retry; 5xx: internal_failure, which it retries with backoff)."""

    def __init__(self, account: ServiceAccountKey, *, lifetime_s: int = 3600) -> None:
        self.account = account
        self.lifetime_s = lifetime_s
        self.fail_status: int | None = None
        self.grants: list[str] = []
        self._lock = threading.Lock()
        private_pem, self.public_pem = _rsa_pair()
        self._signer = crypt.RSASigner.from_string(private_pem, key_id="fake-google-1")
        self._server: ThreadingHTTPServer | None = None

    @property
    def token_uri(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> FakeGoogleTokenServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, body = fake._grant(self.path, self.rfile.read(length))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeGoogleTokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _grant(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if path != "/token":
            return 404, {"error": "not_found"}
        form = {k: v[0] for k, v in parse_qs(raw.decode("ascii", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant"}
        try:
            claims = jwt.decode(
                form["assertion"], certs=self.account.public_pem, audience=ASSERTION_AUDIENCE
            )
        except Exception:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims.get("iss") != self.account.email or not claims.get("target_audience"):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT."}
        with self._lock:
            self.grants.append(claims["target_audience"])
            if self.fail_status is not None:
                error = "internal_failure" if self.fail_status >= 500 else "invalid_grant"
                return self.fail_status, {"error": error, "error_description": "Refused (fake)"}
        now = int(time.time())
        id_token = jwt.encode(
            self._signer,
            {
                "iss": ISSUER,
                "aud": claims["target_audience"],
                "azp": self.account.email,
                "email": self.account.email,
                "email_verified": True,
                "sub": "100000000000000000001",
                "iat": now,
                "exp": now + self.lifetime_s,
            },
        )
        return 200, {"id_token": id_token.decode()}

    def verify(self, id_token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this endpoint issued for `audience`; raises otherwise."""
        return dict(jwt.decode(id_token, certs=self.public_pem, audience=audience))
