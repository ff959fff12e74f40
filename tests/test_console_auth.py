"""The console's accounts and sessions (connector/console/auth.py) on a real store and a settable
clock: a login never tells a wrong name from a wrong password, the brake counts per account (an
administrator's, or one for every unknown name) and per address (an IPv6 one by its /64), lets an
administrator's usual address past the account's brake, and leaves one audit row and one log line
per window however often it refuses; only a cookie's SHA-256 is stored, a session ends when idle,
12 h after its login or at the browser's next login, every form's token is checked, old hashes
are made again, and nothing typed reaches the audit or the log unless it is an administrator's
name."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from faceid_core.errors import FaceIdError

from connector.auth import FailedAuthLimiter
from connector.config.schema import AdminUiConfig
from connector.console import auth as console_auth
from connector.console.auth import (
    SESSION_MAX_S,
    UNKNOWN_NAME,
    USUAL_PLACE_S,
    ConsoleAuth,
    address_key,
    admin_name,
    new_password_hash,
)
from tests.support.memory_runtime import Rig

PASSWORD = "correct horse battery"
HERE, THERE = "192.0.2.10", "192.0.2.20"


@pytest.fixture
def auth(rig: Rig) -> Iterator[ConsoleAuth]:
    rig.store.add_admin("alice", new_password_hash(PASSWORD))
    rig.store.add_admin("bob", new_password_hash(PASSWORD + " 2"))
    yield ConsoleAuth(rig.store, AdminUiConfig(host="127.0.0.1", login_failures=3), rig.clock)


def refusal(auth: ConsoleAuth, name: str, password: str, source: str = HERE) -> FaceIdError:
    with pytest.raises(FaceIdError) as caught:
        auth.login(name, password, source)
    return caught.value


def logins(rig: Rig) -> list[tuple[str | None, str | None, str | None]]:
    """(actor, outcome, code) of each console login audited, oldest first."""
    entries = rig.store.audit_page(action="console_login", limit=100)
    return [(e.actor, e.outcome, e.code) for e in reversed(entries)]


def test_a_login_opens_a_session_that_its_cookie_finds_and_logout_ends(auth, rig):
    session = auth.login("alice", PASSWORD, HERE)
    assert session.admin == "alice" and len(session.token) >= 43 and session.csrf
    assert auth.session(session.token) == session
    # The store knows the cookie only by its SHA-256.
    assert rig.store.console_session(session.token) is None
    digest = hashlib.sha256(session.token.encode()).hexdigest()
    assert rig.store.console_session(digest) == ("alice", session.csrf, rig.clock())
    auth.logout(session.token)
    assert auth.session(session.token) is None
    assert [e.action for e in rig.store.audit(limit=2)] == ["console_logout", "console_login"]


def test_a_wrong_password_and_an_unknown_name_are_refused_alike_and_cost_alike(
    auth, rig, monkeypatch
):
    checked: list[str] = []
    real = console_auth.HASHER

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def verify(self, stored: str, password: str) -> bool:
            checked.append(stored)
            return real.verify(stored, password)

    monkeypatch.setattr(console_auth, "HASHER", Counting())
    wrong = refusal(auth, "alice", "not the password", "192.0.2.1")
    unknown = refusal(auth, "mallory", PASSWORD, "192.0.2.2")
    markup = refusal(auth, "<b>x</b>\n", PASSWORD, "192.0.2.3")
    assert {(e.code, e.message) for e in (wrong, unknown, markup)} == {
        ("login_failed", "Wrong name or password")
    }
    assert len(checked) == 3  # a hash was checked for each, the unknown names' a dummy one
    assert logins(rig) == [
        ("alice", "refused", "login_failed"),
        (UNKNOWN_NAME, "refused", "login_failed"),  # what was typed is not kept
        (UNKNOWN_NAME, "refused", "login_failed"),
    ]


def test_names_are_trimmed_and_read_in_lower_case(auth):
    assert auth.login("  Alice ", PASSWORD, HERE).admin == "alice"


def test_the_brake_counts_failures_per_account_from_any_address(auth, rig):
    for i in range(3):
        assert refusal(auth, "alice", "wrong", f"192.0.2.{i}").code == "login_failed"
    limited = refusal(auth, "alice", PASSWORD, "198.51.100.1")  # even the right password
    assert limited.code == "rate_limited" and limited.retry_after is not None
    assert 0 < limited.retry_after <= 900
    assert auth.login("bob", PASSWORD + " 2", "198.51.100.1").admin == "bob"
    rig.clock.advance(901)
    assert auth.login("alice", PASSWORD, HERE).admin == "alice"
    assert logins(rig)[3] == ("alice", "refused", "rate_limited")


def test_the_brake_counts_failures_per_address_for_any_account(auth):
    for name in ("carol", "dave", "erin"):
        refusal(auth, name, "wrong", HERE)
    assert refusal(auth, "alice", PASSWORD, HERE).code == "rate_limited"
    assert auth.login("alice", PASSWORD, THERE).admin == "alice"


def test_a_session_ends_after_it_stays_unused_for_session_idle_s(auth, rig):
    session = auth.login("alice", PASSWORD, HERE)
    for _ in range(3):  # used every 10 minutes: it lives on
        rig.clock.advance(600)
        assert auth.session(session.token) is not None
    rig.clock.advance(900)
    assert auth.session(session.token) is None
    rig.clock.advance(-900)
    assert auth.session(session.token) is None  # ended, not only expired


@pytest.mark.parametrize("cookie", [None, "", "not-a-session", "x" * 10_000])
def test_a_missing_or_unknown_cookie_opens_no_session(auth, cookie):
    assert auth.session(cookie) is None


def test_removing_an_administrator_ends_their_sessions(auth, rig):
    session = auth.login("alice", PASSWORD, HERE)
    assert rig.store.remove_admin("alice")
    assert auth.session(session.token) is None
    assert refusal(auth, "alice", PASSWORD).code == "login_failed"


def test_every_form_must_carry_its_sessions_token(auth):
    session = auth.login("alice", PASSWORD, HERE)
    other = auth.login("bob", PASSWORD + " 2", HERE)
    auth.check_csrf(session, session.csrf)
    for bad in (None, "", other.csrf, session.csrf + "x", "é" * 43):
        with pytest.raises(FaceIdError) as caught:
            auth.check_csrf(session, bad)
        assert caught.value.code == "csrf_failed"
        assert caught.value.message == "The form has expired; reload the page"


def test_a_hash_made_with_older_parameters_is_made_again_at_the_next_login(auth, rig):
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    rig.store.add_admin("carol", weak.hash(PASSWORD))
    auth.login("carol", PASSWORD, HERE)
    renewed = rig.store.admin_hash("carol")
    assert renewed is not None and not console_auth.HASHER.check_needs_rehash(renewed)
    assert renewed.startswith("$argon2id$")
    assert auth.login("carol", PASSWORD, HERE).admin == "carol"


def test_no_password_reaches_the_audit_or_the_log(auth, rig, capsys):
    typed = "my-secret-attempt-4711"
    refusal(auth, "alice", typed)
    auth.login("alice", PASSWORD, HERE)
    entries = [str(e.to_json()) for e in rig.store.audit(limit=10)]
    out = capsys.readouterr()
    for text in (*entries, out.out, out.err):
        assert typed not in text and PASSWORD not in text


def test_the_cookie_is_a_strict_https_only_host_only_session_cookie_scripts_cannot_read():
    # __Host-: the browser keeps it only with Secure, Path=/ and no Domain (none is set).
    assert ConsoleAuth.COOKIE == "__Host-faceid_console"
    assert ConsoleAuth.cookie_options() == {
        "httponly": True,
        "secure": True,
        "samesite": "Strict",
        "path": "/",
    }


def test_new_passwords_are_at_least_12_characters_and_hashed_with_argon2id():
    with pytest.raises(FaceIdError) as caught:
        new_password_hash("eleven char")
    assert caught.value.code == "bad_request" and "12" in caught.value.message
    assert new_password_hash("twelve chars").startswith("$argon2id$")


@pytest.mark.parametrize("name", ["", "Alice", "a b", "-x", "x" * 65, "<b>", "é"])
def test_an_administrators_name_is_lower_case_letters_digits_and_a_few_marks(name):
    with pytest.raises(FaceIdError):
        admin_name(name)
    assert admin_name("jane.doe@example.org") == "jane.doe@example.org"


# --- what a stream of refusals leaves behind ------------------------------------------------------


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]


def test_refusals_by_the_brake_leave_one_audit_row_and_one_log_line_per_window(auth, rig, capsys):
    for i in range(3):
        refusal(auth, "alice", "wrong", f"192.0.2.{i}")
    for i in range(500):  # cheap to send: none may reach the audit (it keeps a bounded number)
        assert refusal(auth, "alice", "wrong", f"198.51.100.{i % 250}").code == "rate_limited"
    assert logins(rig) == [
        *[("alice", "refused", "login_failed")] * 3,
        ("alice", "refused", "rate_limited"),  # the brake engaged: once
    ]
    said = [line["message"] for line in log_lines(capsys)]
    assert said == [*["console login failed"] * 3, "console login brake engaged"]  # 3 addresses
    rig.clock.advance(901)
    for i in range(3):
        refusal(auth, "alice", "wrong", f"192.0.2.{i}")
    assert logins(rig)[-1] == ("alice", "refused", "rate_limited")  # the next window: once more
    assert len(logins(rig)) == 8


def test_failures_from_one_address_are_logged_once_per_window(auth, capsys):
    for name in ("alice", "bob"):
        refusal(auth, name, "wrong", HERE)
    # alice's window and the address's opened with the first, bob's with the second.
    assert [line["actor"] for line in log_lines(capsys)] == ["alice", "bob"]
    refusal(auth, "alice", "wrong", HERE)  # every window already open; the address's engages
    assert [line["message"] for line in log_lines(capsys)] == ["console login brake engaged"]


def test_a_password_typed_as_the_name_is_neither_audited_nor_logged(auth, rig, capsys):
    refusal(auth, PASSWORD, PASSWORD)
    refusal(auth, "Alice-typo", PASSWORD)
    entries = [str(e.to_json()) for e in rig.store.audit(limit=10)]
    out = capsys.readouterr()
    for text in (*entries, out.out, out.err):
        assert "correct horse" not in text and "alice-typo" not in text
    assert [actor for actor, _, _ in logins(rig)] == [UNKNOWN_NAME, UNKNOWN_NAME]


# --- the brake's keys -----------------------------------------------------------------------------


def test_unknown_names_share_one_account_so_junk_names_cannot_push_an_administrators_out(auth, rig):
    refusal(auth, "alice", "wrong", "192.0.2.1")
    refusal(auth, "alice", "wrong", "192.0.2.2")
    for i in range(10_001):  # more names than the brake keeps; after 3, refused unhashed
        refusal(auth, f"junk{i}", "wrong", f"2001:db8:{i:x}::1")
    assert refusal(auth, "junk", PASSWORD, "203.0.113.1").code == "rate_limited"
    assert refusal(auth, "alice", "wrong", "192.0.2.3").code == "login_failed"  # her third
    assert refusal(auth, "alice", PASSWORD, "192.0.2.4").code == "rate_limited"
    assert auth.login("bob", PASSWORD + " 2", "192.0.2.4").admin == "bob"


def test_the_limiter_never_forgets_a_live_window_to_make_room():
    now = [0.0]
    limiter = FailedAuthLimiter(limit=2, window_s=60, max_sources=3, clock=lambda: now[0])
    assert limiter.failed("ada") == 1
    assert [limiter.failed(f"junk{i}") for i in range(5)] == [1, 1, 0, 0, 0]  # table full
    assert limiter.failed("ada") == 2  # engaged: the count survived the junk
    with pytest.raises(FaceIdError) as caught:
        limiter.check("ada")
    assert caught.value.code == "rate_limited"
    limiter.check("junk4")  # never counted: not refused either
    now[0] = 61.0  # every window ended: they make room
    assert limiter.failed("junk4") == 1
    limiter.check("ada")


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("unknown", "unknown"),
    ],
)
def test_an_ipv6_address_is_braked_by_its_64(source, key):
    assert address_key(source) == key


def test_the_address_brake_counts_a_whole_ipv6_64(auth, rig):
    rig.store.add_admin("carol", new_password_hash(PASSWORD + " 3"))
    for i, name in enumerate(("alice", "bob", "carol")):  # one failure per account
        refusal(auth, name, "wrong", f"2001:db8:0:7::{i + 1}")
    assert refusal(auth, "alice", PASSWORD, "2001:db8:0:7:ffff::9").code == "rate_limited"
    assert auth.login("alice", PASSWORD, "2001:db8:0:8::1").admin == "alice"


def test_an_administrators_usual_address_passes_the_brake_others_locked_for_the_account(auth, rig):
    auth.login("alice", PASSWORD, HERE)
    for i in range(3):  # someone elsewhere tries to lock alice out
        refusal(auth, "alice", "wrong", f"203.0.113.{i}")
    assert refusal(auth, "alice", PASSWORD, THERE).code == "rate_limited"  # a new place: braked
    assert auth.login("alice", PASSWORD, HERE).admin == "alice"  # her usual place is not
    rig.clock.advance(USUAL_PLACE_S - 1)
    for i in range(3):
        refusal(auth, "alice", "wrong", f"203.0.113.{10 + i}")
    assert auth.login("alice", PASSWORD, HERE).admin == "alice"  # 30 days since the last one
    rig.clock.advance(USUAL_PLACE_S)
    for i in range(3):
        refusal(auth, "alice", "wrong", f"203.0.113.{20 + i}")
    assert refusal(auth, "alice", PASSWORD, HERE).code == "rate_limited"  # forgotten by now


def test_an_administrators_usual_address_still_meets_the_address_brake(auth):
    auth.login("alice", PASSWORD, HERE)
    for name in ("carol", "dave", "erin"):
        refusal(auth, name, "wrong", HERE)
    assert refusal(auth, "alice", PASSWORD, HERE).code == "rate_limited"


# --- the session's lifetime -----------------------------------------------------------------------


def test_a_session_ends_12_hours_after_its_login_however_busy(auth, rig):
    session = auth.login("alice", PASSWORD, HERE)
    for _ in range(int(SESSION_MAX_S // 600) - 1):  # used every 10 minutes
        rig.clock.advance(600)
        assert auth.session(session.token) is not None
    rig.clock.advance(599)
    assert auth.session(session.token) is not None
    rig.clock.advance(1)
    assert auth.session(session.token) is None


def test_a_new_login_ends_the_session_the_browser_presented(auth):
    first = auth.login("alice", PASSWORD, HERE)
    second = auth.login("bob", PASSWORD + " 2", HERE, replacing=first.token)
    assert auth.session(first.token) is None
    assert auth.session(second.token) == second
    with pytest.raises(FaceIdError):  # a failed login leaves the browser's session alone
        auth.login("alice", "wrong", HERE, replacing=second.token)
    assert auth.session(second.token) == second
