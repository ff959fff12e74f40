"""The console's administrators: accounts with Argon2id hashes (argon2-cffi's defaults), sessions
known to the store only by the SHA-256 of their cookie, a CSRF token per session, and a brake on
failed logins per account and per address.

A login never says whether the name or the password was wrong, and costs the same either way: an
unknown name is checked against a dummy hash. A hash made with older parameters is made again
at the next good login. A session ends when it has not been used for admin_ui.session_idle_s,
SESSION_MAX_S after it began, at logout, when the same browser logs in again, or when its
administrator is removed; it lives in the store, so a reload or restart keeps it.

Whoever reaches the port can try logins, so what a refusal leaves behind is bounded by the brake,
not by the attacker's rate: a refusal by the brake is neither audited nor logged (only the failure
that engages it is, once per window), and a failed login is audited under the administrator's
name only when the name is one; any other name is UNKNOWN_NAME, in the audit and in the brake,
which then counts every unknown name as one account. What was typed is never kept.

The brake by account would let anyone lock an administrator out by failing five times; so an
address from which that administrator logged in within USUAL_PLACE_S passes it (the brake by
address still applies). Those places are remembered in memory: a restart forgets them."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from faceid_core.errors import FaceIdError, InputError, Refusal, bad_request
from faceid_core.logs import log

from ..auth import FailedAuthLimiter
from ..config.schema import AdminUiConfig
from ..ports import Clock
from ..store import AuditEntry, Store

#: An administrator's name: lower case, like a system account (an address such as
#: jane.doe@example.org fits); a login lower-cases what is typed.
ADMIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
ADMIN_NAME_MAX_LEN = 64
MIN_PASSWORD_CHARS = 12
#: Longer passwords are refused before hashing: no login costs more than a normal one.
MAX_PASSWORD_CHARS = 1024
#: A session's last use is written at most this often (each page would otherwise write).
TOUCH_EVERY_S = 15.0
#: A session ends this long after its login, however busy: a stolen cookie does not last.
SESSION_MAX_S = 12 * 3600
#: The audit's actor and the brake's account for a name that is no administrator's (it cannot
#: be one: the rule has no parentheses).
UNKNOWN_NAME = "(unknown name)"
#: A good login from an address lets that address past the brake by account this long, for at
#: most this many addresses per administrator.
USUAL_PLACE_S = 30 * 86400
USUAL_PLACES_KEPT = 16
#: An IPv6 client is braked by its /64: one host usually holds the whole prefix.
IPV6_PREFIX = 64
TOKEN_BYTES = 32
LOGIN_FAILED = "Wrong name or password"

#: The one hasher: Argon2id with argon2-cffi's current defaults (RFC 9106's low-memory profile).
HASHER = PasswordHasher()


def admin_name(value: str) -> str:
    """An administrator's name as stored: bad_request naming the rule when it breaks it."""
    if not ADMIN_NAME_RE.match(value):
        raise bad_request(
            "An administrator's name is 1 to 64 characters: lower-case letters, digits and "
            "._@- (starting with a letter or digit)"
        )
    return value


def new_password_hash(password: str) -> str:
    """The stored hash of a new administrator's password; bad_request if it is too short (or
    absurdly long)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise bad_request(f"The password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise bad_request(f"The password must be at most {MAX_PASSWORD_CHARS} characters")
    return HASHER.hash(password)


def address_key(source: str) -> str:
    """The brake's key for a client's address: an IPv6 address by its /64 (else one host could
    walk its own prefix past the brake), an IPv4 one (mapped into IPv6 or not) as it is."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        shift = 128 - IPV6_PREFIX
        return str(ipaddress.IPv6Network((int(address) >> shift << shift, IPV6_PREFIX)))
    return str(address)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ConsoleSession:
    admin: str  # the administrator's name
    token: str = field(repr=False)  # the cookie's value; the store keeps only its SHA-256
    csrf: str = field(repr=False)  # every form's hidden field "csrf"


class UsualPlaces:
    """The addresses (address_key) each administrator logged in from lately, in memory. Only a
    good login adds one, so nobody without a password can fill it."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._lock = threading.Lock()

    def remember(self, admin: str, place: str) -> None:
        with self._lock:
            places = self._seen.setdefault(admin, OrderedDict())
            places.pop(place, None)
            places[place] = self._clock()
            while len(places) > USUAL_PLACES_KEPT:
                places.popitem(last=False)

    def knows(self, admin: str, place: str) -> bool:
        with self._lock:
            places = self._seen.get(admin)
            seen = None if places is None else places.get(place)
        return seen is not None and self._clock() - seen < USUAL_PLACE_S


class ConsoleAuth:
    """Logins, sessions and CSRF checks of the console (module docstring)."""

    #: __Host-: the browser keeps it only if Secure, for Path=/ and without a Domain, so no
    #: other host (a sibling subdomain) can set or shadow it.
    COOKIE: ClassVar[str] = "__Host-faceid_console"

    def __init__(self, store: Store, config: AdminUiConfig, clock: Clock = time.time) -> None:
        self.store, self.config, self.clock = store, config, clock
        self._by_account = FailedAuthLimiter(
            config.login_failures, config.login_window_s, clock=clock
        )
        self._by_address = FailedAuthLimiter(
            config.login_failures, config.login_window_s, clock=clock
        )
        self._places = UsualPlaces(clock)
        self._dummy_hash = HASHER.hash(secrets.token_urlsafe(TOKEN_BYTES))

    @staticmethod
    def cookie_options() -> dict[str, Any]:
        """For response.set_cookie: a session cookie (no Max-Age) no script can read, sent only
        over HTTPS and only with the console's own requests (and what __Host- requires)."""
        return {"httponly": True, "secure": True, "samesite": "Strict", "path": "/"}

    def login(
        self, name: str, password: str, source: str, *, replacing: str | None = None
    ) -> ConsoleSession:
        """A new session for the administrator `name`, ending the session `replacing` (the
        cookie the browser sent, if any); Refusal login_failed (which of the two was wrong is
        not said) or rate_limited."""
        name = name.strip().lower()
        place = address_key(source)
        stored = self.store.admin_hash(name) if ADMIN_NAME_RE.match(name) else None
        account = name if stored is not None else UNKNOWN_NAME
        self._brake(account, place, usual=self._places.knows(account, place))
        admin = self._checked(name, stored, password)
        if admin is None:
            self._failed(account, place, source)
            raise Refusal("login_failed", LOGIN_FAILED)
        if replacing:
            self._end(replacing)
        session = self._open(admin)
        self._places.remember(admin, place)
        self._audit(admin, "done")
        return session

    def _brake(self, account: str, place: str, *, usual: bool) -> None:
        """Refusal rate_limited while the address, or the account (unless the address is one of
        its usual places), is braked. Not audited, not logged: being refused costs nothing, so
        it may leave nothing behind (the failure that engaged the brake was audited)."""
        try:
            self._by_address.check(place)
            if not usual:
                self._by_account.check(account)
        except Refusal as exc:
            raise Refusal(
                "rate_limited",
                f"Too many failed logins; try again in {exc.retry_after} s",
                retry_after=exc.retry_after,
            ) from None

    def _failed(self, account: str, place: str, source: str) -> None:
        """Count a failed login, audit it, and say once per window of each key that logins fail
        and that the brake engaged."""
        by_account, by_address = self._by_account.failed(account), self._by_address.failed(place)
        self._audit(account, "refused", code="login_failed")
        if 1 in (by_account, by_address):
            log(
                "WARNING", "console login failed", component="console", actor=account, source=source
            )
        engaged = [
            brake
            for brake, count in (("account", by_account), ("address", by_address))
            if count == self.config.login_failures
        ]
        if engaged:
            self._audit(account, "refused", code="rate_limited")
            log(
                "WARNING",
                "console login brake engaged",
                component="console",
                actor=account,
                source=source,
                brake="+".join(engaged),
                window_s=self.config.login_window_s,
            )

    def _checked(self, name: str, stored: str | None, password: str) -> str | None:
        """`name` if `password` matches its `stored` hash, else None; as slow for an unknown
        name (None stored)."""
        if len(password) > MAX_PASSWORD_CHARS:
            return None
        try:
            HASHER.verify(stored or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if stored is None:
            return None
        if HASHER.check_needs_rehash(stored):
            self.store.set_admin_hash(name, HASHER.hash(password))
        return name

    def _open(self, admin: str) -> ConsoleSession:
        token, csrf = secrets.token_urlsafe(TOKEN_BYTES), secrets.token_urlsafe(TOKEN_BYTES)
        self.store.create_console_session(
            _digest(token), admin, csrf, self.clock(), idle_s=self.config.session_idle_s
        )
        return ConsoleSession(admin, token, csrf)

    def _end(self, token: str) -> None:
        if len(token) <= 4 * TOKEN_BYTES:
            self.store.end_console_session(_digest(token))

    def _audit(
        self, actor: str, outcome: str, action: str = "console_login", **fields: Any
    ) -> None:
        """A failing audit write is logged; it never lets a login through or stops one."""
        entry = AuditEntry(action, outcome, request_id=uuid.uuid4().hex, actor=actor, **fields)
        try:
            self.store.add_audit(entry)
        except FaceIdError as exc:
            log("ERROR", "audit write failed", component="console", error=exc.message)

    def session(self, token: str | None) -> ConsoleSession | None:
        """The session this cookie value opens; None when unknown, older than SESSION_MAX_S, or
        idle too long (then it ends)."""
        if not token or len(token) > 4 * TOKEN_BYTES:
            return None
        digest = _digest(token)
        now = self.clock()
        found = self.store.console_session(digest, created_after=now - SESSION_MAX_S)
        if found is None:
            return None
        admin, csrf, last_seen = found
        if now - last_seen >= self.config.session_idle_s:
            self.store.end_console_session(digest)
            return None
        if now - last_seen >= TOUCH_EVERY_S:
            self.store.touch_console_session(digest, now)
        return ConsoleSession(admin, token, csrf)

    def logout(self, token: str) -> None:
        session = self.session(token)
        if session is None:
            return
        self.store.end_console_session(_digest(token))
        self._audit(session.admin, "done", action="console_logout")

    @staticmethod
    def check_csrf(session: ConsoleSession, value: str | None) -> None:
        """The form's token must be this session's."""
        if value is None or not hmac.compare_digest(value.encode(), session.csrf.encode()):
            raise InputError("csrf_failed", "The form has expired; reload the page")
