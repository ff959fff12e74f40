"""Fake Google token services (REFERENCE.md §4) on 127.0.0.1, for the real google-auth flows. One
server, one signing key, as Google signs every ID token with the same keys:

- `POST /token`, the OAuth 2.0 endpoint: a JWT-bearer grant whose assertion the client signed with
  a service account's private key. A `target_audience` claim asks for `{"id_token": <JWT>}`; a
  `scope` claim asks for an opaque access token of `serviceAccount:EMAIL`.
- `POST /v1/token`, the Security Token Service (Workload Identity Federation): an RFC 8693 token
  exchange of a subject token registered in `federated` (token -> subject) for an access token of
  the federated principal
  `principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S`.
  Errors are RFC 6749 §5.2 bodies: an unknown subject token 400 invalid_grant, an unknown pool
  provider 400 invalid_target; `sts_fail_status` forces 400 invalid_grant or 401 invalid_client.
- `POST /v1/projects/-/serviceAccounts/EMAIL:generateIdToken`, the IAM Credentials API: the caller
  is the holder of the Bearer access token (which must carry the iam or cloud-platform scope;
  unknown or revoked: 401 UNAUTHENTICATED) and needs a role on EMAIL given with `grant_role()`;
  otherwise 403 PERMISSION_DENIED, as Google answers.

`verify()` checks an ID token, as the function's front end would.

    key = ServiceAccountKey.generate()
    with FakeGoogleTokenServer(key) as google:
        path = key.write(tmp_path / "sa.json", google.token_uri)
        ...
        google.grants            # ID-token target audiences asked for at /token, in order
        google.exchanges         # the form of every token exchange at /v1/token, refused ones too
        google.access_grants     # (principal, scope) of every access token issued
        google.iam_calls         # (method, target account, caller principal), refused ones too
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from devkit.fakes.loopback import LoopbackServer
from devkit.secrets_used import register

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
IAM_SCOPES = {
    "https://www.googleapis.com/auth/iam",
    "https://www.googleapis.com/auth/cloud-platform",
}
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
IAM_PATH = "/v1/projects/-/serviceAccounts/"
# Role -> the permissions it holds on a service account (the part that matters here).
ROLE_PERMISSIONS = {
    "roles/iam.serviceAccountOpenIdTokenCreator": {"iam.serviceAccounts.getOpenIdToken"},
    "roles/iam.serviceAccountTokenCreator": {
        "iam.serviceAccounts.getOpenIdToken",
        "iam.serviceAccounts.getAccessToken",
        "iam.serviceAccounts.signBlob",
        "iam.serviceAccounts.signJwt",
    },
}
ID_TOKEN_PERMISSION = "iam.serviceAccounts.getOpenIdToken"
PROVIDER_RE = re.compile(
    r"^//iam\.googleapis\.com/(projects/\d+/locations/global/workloadIdentityPools/[a-z0-9-]+)"
    r"/providers/[a-z0-9-]+$"
)
# A pool provider made up for tests: the `audience` of a credential configuration.
WORKLOAD_PROVIDER = (
    "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
    "faceid-onprem/providers/connector-hosts"
)
ACCESS_TOKEN_LIFETIME_S = 3600
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
    register("Google private key (fake_google)", private_pem)
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


def federated_principal(provider: str, subject: str) -> str:
    """The IAM member Google names a federated identity by, from its pool provider."""
    match = PROVIDER_RE.match(provider)
    assert match, provider
    return f"principal://iam.googleapis.com/{match.group(1)}/subject/{subject}"


def write_credential_configuration(
    path: Path, subject_token_file: Path, sts_uri: str, provider: str = WORKLOAD_PROVIDER
) -> str:
    """What `gcloud iam workload-identity-pools create-cred-config PROVIDER
    --credential-source-file=FILE --credential-source-type=text --output-file=PATH` writes (no
    --service-account), with the Security Token Service at `sts_uri`."""
    path.write_text(
        json.dumps(
            {
                "universe_domain": "googleapis.com",
                "type": "external_account",
                "audience": provider,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": sts_uri,
                "credential_source": {"file": str(subject_token_file), "format": {"type": "text"}},
            }
        )
    )
    return str(path)


def _unique_id(email: str) -> str:
    """The numeric id Google gives a service account; stable per email here."""
    return "1" + str(int(hashlib.sha256(email.encode()).hexdigest(), 16))[:20]


def _google_error(
    status: int, state: str, message: str, reason: str | None = None, **metadata: str
) -> dict[str, Any]:
    """Google's JSON error body (google.rpc.Status), with an ErrorInfo when `reason` is given."""
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if reason is not None:
        info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}
        error["details"] = [{**info, "domain": "iam.googleapis.com", "metadata": metadata}]
    return {"error": error}


class FakeGoogleTokenServer(LoopbackServer):
    """Thread-safe; `lifetime_s` sets the exp of the ID tokens it issues, `fail_status` makes
    every grant at /token fail with that HTTP status and Google's JSON error body (4xx:
    invalid_grant, which google-auth does not retry; 5xx: internal_failure, which it retries with
    backoff). `add_account()` registers more key holders than the first."""

    def __init__(self, account: ServiceAccountKey, *, lifetime_s: int = 3600) -> None:
        self.account = account
        self.lifetime_s = lifetime_s
        self.fail_status: int | None = None
        self.sts_fail_status: int | None = None
        self.federated: dict[str, str] = {}  # subject token -> subject
        self.providers = {WORKLOAD_PROVIDER}
        self.grants: list[str] = []
        self.exchanges: list[dict[str, str]] = []
        self.access_grants: list[tuple[str, str]] = []
        self.iam_calls: list[tuple[str, str, str]] = []
        self._accounts = {account.email: account}
        self._roles: dict[str, set[tuple[str, str]]] = {}  # account -> {(member, role)}
        self._access: dict[str, tuple[str, set[str], float]] = {}  # token -> principal, scopes, exp
        self._lock = threading.Lock()
        private_pem, self.public_pem = _rsa_pair()
        self._signer = crypt.RSASigner.from_string(private_pem, key_id="fake-google-1")
        super().__init__()

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def sts_uri(self) -> str:
        return f"{self.url}/v1/token"

    @property
    def iam_host(self) -> str:
        """host:port of the IAM Credentials API, for IAM_CREDENTIALS_EMULATOR_HOST."""
        return self.address

    def add_account(self, account: ServiceAccountKey) -> None:
        with self._lock:
            self._accounts[account.email] = account

    def grant_role(self, account_email: str, role: str, member: str) -> None:
        """`gcloud iam service-accounts add-iam-policy-binding ACCOUNT --member --role`."""
        assert role in ROLE_PERMISSIONS, role
        with self._lock:
            self._roles.setdefault(account_email, set()).add((member, role))

    def reset(self) -> None:
        """Back to a fresh server's state (accounts added stay), for a module-scoped fixture."""
        with self._lock:
            self.fail_status = self.sts_fail_status = None
            self.federated.clear()
            self.providers = {WORKLOAD_PROVIDER}
            for record in (self.grants, self.exchanges, self.access_grants, self.iam_calls):
                record.clear()
            self._roles.clear()
            self._access.clear()

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far is refused from now on, as after a revocation."""
        with self._lock:
            self._access.clear()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, body = fake._handle(self.path, self.headers.get("Authorization", ""), raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _handle(self, path: str, authorization: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/token":
            return self._grant(_form(raw))
        if path == "/v1/token":
            return self._exchange(_form(raw))
        if path.startswith(IAM_PATH) and path.endswith(":generateIdToken"):
            email = path[len(IAM_PATH) : -len(":generateIdToken")]
            return self._generate_id_token(email, authorization, raw)
        return 404, _google_error(404, "NOT_FOUND", "Not found")

    def _access_token(self, principal: str, scope: str) -> dict[str, Any]:
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        register("Google access token (FakeGoogleTokenServer)", token)
        with self._lock:
            expiry = time.time() + ACCESS_TOKEN_LIFETIME_S
            self._access[token] = (principal, set(scope.split()), expiry)
            self.access_grants.append((principal, scope))
        answer = {"access_token": token, "token_type": "Bearer"}
        return {**answer, "expires_in": ACCESS_TOKEN_LIFETIME_S}

    def _grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != JWT_BEARER or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant"}
        try:
            issuer = jwt.decode(form["assertion"], verify=False).get("iss")
            account = self._accounts[issuer]
            claims = jwt.decode(
                form["assertion"], certs=account.public_pem, audience=ASSERTION_AUDIENCE
            )
        except Exception:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if not claims.get("target_audience") and not claims.get("scope"):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT."}
        with self._lock:
            if claims.get("target_audience"):
                self.grants.append(claims["target_audience"])
            if self.fail_status is not None:
                error = "internal_failure" if self.fail_status >= 500 else "invalid_grant"
                return self.fail_status, {"error": error, "error_description": "Refused (fake)"}
        if not claims.get("target_audience"):
            return 200, self._access_token(f"serviceAccount:{account.email}", claims["scope"])
        token = self._id_token(account.email, claims["target_audience"], azp=account.email)
        return 200, {"id_token": token}

    def _exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.exchanges.append(form)
            forced = self.sts_fail_status
        if forced is not None:
            error = "invalid_client" if forced == 401 else "invalid_grant"
            return forced, {"error": error, "error_description": "Refused (fake)"}
        required = ("audience", "subject_token", "subject_token_type", "requested_token_type")
        if form.get("grant_type") != TOKEN_EXCHANGE or not all(form.get(k) for k in required):
            return 400, {"error": "invalid_request", "error_description": "Invalid request."}
        if form["requested_token_type"] != ACCESS_TOKEN_TYPE:
            return 400, {
                "error": "invalid_request",
                "error_description": "Invalid value for requested_token_type.",
            }
        if form["audience"] not in self.providers:
            return 400, {
                "error": "invalid_target",
                "error_description": 'The target service indicated by the "audience" '
                "parameters is invalid.",
            }
        register("federated subject token", form["subject_token"])
        subject = self.federated.get(form["subject_token"])
        if subject is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid subject token."}
        principal = federated_principal(form["audience"], subject)
        answer = self._access_token(principal, form.get("scope", ""))
        return 200, {**answer, "issued_token_type": ACCESS_TOKEN_TYPE}

    def _caller(self, authorization: str) -> tuple[str, set[str]] | None:
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            known = self._access.get(token) if scheme.lower() == "bearer" else None
        if known is None or known[2] < time.time():
            return None
        return known[0], known[1]

    def _generate_id_token(
        self, email: str, authorization: str, raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        caller = self._caller(authorization)
        with self._lock:
            self.iam_calls.append(("generateIdToken", email, caller[0] if caller else ""))
            bindings = set(self._roles.get(email, ()))
        roles = {role for member, role in bindings if caller and member == caller[0]}
        if caller is None:
            return 401, _google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if not caller[1] & IAM_SCOPES:
            return 403, _google_error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            )
        if not any(ID_TOKEN_PERMISSION in ROLE_PERMISSIONS[role] for role in roles):
            return 403, _google_error(
                403,
                "PERMISSION_DENIED",
                f"Permission '{ID_TOKEN_PERMISSION}' denied on resource (or it may not exist).",
                reason="IAM_PERMISSION_DENIED",
                permission=ID_TOKEN_PERMISSION,
            )
        try:
            body = json.loads(raw)
            audience = body["audience"]
            assert isinstance(audience, str) and audience
        except Exception:
            return 400, _google_error(400, "INVALID_ARGUMENT", "audience is required.")
        token = self._id_token(email, audience, with_email=body.get("includeEmail") is True)
        return 200, {"token": token}

    def _id_token(
        self, email: str, audience: str, *, azp: str | None = None, with_email: bool = True
    ) -> str:
        """The JWT-bearer flow names the client by email in azp; generateIdToken by unique id."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audience,
            "azp": azp or _unique_id(email),
            "sub": _unique_id(email),
            "iat": now,
            "exp": now + self.lifetime_s,
        }
        if with_email:
            claims.update(email=email, email_verified=True)
        token = jwt.encode(self._signer, claims).decode()
        register("Google ID token (FakeGoogleTokenServer)", token)
        return token

    def verify(self, id_token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this server issued for `audience`; raises otherwise."""
        return dict(jwt.decode(id_token, certs=self.public_pem, audience=audience))


def _form(raw: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(raw.decode("ascii", "replace")).items()}
