"""The console's pages (connector/console/views.py and the modules it registers), through the
connector's own app on the console listener, in memory: the in-memory rig (scripted camera and
comparator, settable clock) and the real store, logged in through ConsoleAuth. Every page needs
a session and renders; store data with markup shows as text; every POST needs its form token and
the console's own origin; photos are answered no-store, only for their own device; removals ask
first; enrollment by upload and from the camera goes through enrollment.py and names the
administrator; the lockout button, the audit filters and paging, the charts, and the headers."""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from connector.app import create_app
from connector.config.schema import AdminUiConfig
from connector.console import MAX_BODY_BYTES, UPLOAD_MAX_BYTES, charts, devices, memo, people
from connector.console.auth import ConsoleAuth, new_password_hash
from connector.console.views import SECURITY_HEADERS
from connector.front import CONSOLE_LISTENER, LISTENER_HEADER
from connector.memory import FACE, MATCH, NO_MATCH, MemoryCamera
from connector.onboarding import Examination
from connector.store import AuditEntry
from devkit.samples import grace_hopper_jpeg
from tests.support.memory_runtime import PICTURE, SERIALS, Rig

SERIAL, OTHER = SERIALS
PASSWORD = "correct horse battery"
MARKUP = "<script>alert(1)</script>"
GRACE = "Grace Hopper"
ROOT = Path(__file__).resolve().parents[1]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
COOKIE = ConsoleAuth.COOKIE


class Browser:
    """A test client on the console listener, signed in or not, that reads each page's form
    token as a browser would."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(path, **kwargs)
        found = response.mimetype == "text/html" and CSRF_RE.search(text(response))
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """A form as the page sends it: with its token, unless `data` says otherwise."""
        return self.client.post(path, data={"csrf": self.csrf, **(data or {})}, **kwargs)

    def login(self, name: str = "ada", password: str = PASSWORD) -> Any:
        response = self.client.post("/login", data={"name": name, "password": password})
        self.get("/")
        return response


@functools.cache
def password_hash() -> str:
    """Argon2id is slow on purpose: one hash serves every test's administrators."""
    return new_password_hash(PASSWORD)


@pytest.fixture
def console_rig(rig: Rig) -> Rig:
    rig.rt.config = dataclasses.replace(rig.rt.config, admin_ui=AdminUiConfig(host="127.0.0.1"))
    rig.store.add_admin("ada", password_hash())
    rig.store.add_admin("bob", password_hash())
    return rig


def _browser(rig: Rig) -> Browser:
    client = create_app(rig.rt).test_client()
    client.environ_base["HTTP_" + LISTENER_HEADER.upper().replace("-", "_")] = CONSOLE_LISTENER
    return Browser(client)


@pytest.fixture
def anonymous(console_rig: Rig) -> Browser:
    return _browser(console_rig)


@pytest.fixture
def ada(console_rig: Rig) -> Iterator[Browser]:
    browser = _browser(console_rig)
    assert browser.login().status_code == 303
    yield browser


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def notices(page: str) -> list[str]:
    return re.findall(r'<p class="notice notice-\w+">([^<]*)</p>', page)


def audited(rig: Rig, action: str) -> list[AuditEntry]:
    return rig.store.audit_page(action=action, limit=100)


def photo_ids(rig: Rig, person: str, serial: str = SERIAL) -> list[int]:
    return [ref.id for ref in rig.store.references(serial, person)]


PAGES = ["/", "/devices", f"/devices/{SERIAL}", "/audit"]


# --- sessions, headers, escaping ----------------------------------------------------------------


@pytest.mark.parametrize("path", [*PAGES, f"/photo/{SERIAL}/1"])
def test_every_page_without_a_session_sends_the_browser_to_the_login_page(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 303 and response.headers["Location"] == "/login"


def test_every_page_renders_for_a_signed_in_administrator(ada, console_rig):
    console_rig.admin_adds(GRACE)
    console_rig.rt.audit("r1", SERIAL, "verify", outcome="match", person=GRACE)
    for path in PAGES:
        response = ada.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "text/html"
        page = text(response)
        assert "Signed in as <strong>ada</strong>" in page
        assert '<a class="skip" href="#main">' in page and '<main id="main"' in page
    assert GRACE in text(ada.get(f"/devices/{SERIAL}"))
    assert ada.get("/login").headers["Location"] == "/"  # signed in already


@pytest.mark.parametrize(
    "path", ["/login", "/", f"/devices/{SERIAL}", "/audit", "/static/console.css", "/nowhere"]
)
def test_every_answer_carries_the_content_security_policy_and_no_store(ada, path):
    response = ada.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, (path, name)
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP on loopback


@pytest.mark.parametrize("path", ["/login", "/", "/nowhere"])
def test_over_tls_every_answer_tells_the_browser_to_keep_to_https(console_rig, path):
    ui = dataclasses.replace(console_rig.rt.config.admin_ui, tls_cert="c.pem", tls_key="k.pem")
    console_rig.rt.config = dataclasses.replace(console_rig.rt.config, admin_ui=ui)
    browser = _browser(console_rig)
    browser.login()
    assert browser.get(path).headers["Strict-Transport-Security"] == "max-age=31536000"


def test_pages_hold_no_inline_script_or_style_and_load_htmx_from_the_console(ada, console_rig):
    console_rig.admin_adds(GRACE)
    for path in [*PAGES, "/login"]:
        page = text(ada.get(path))
        assert "<style" not in page and " style=" not in page, path
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == [], path
        assert re.search(r"<[^>]+\son[a-z]+\s*=", page) is None, path  # no event handler
    assert '<script src="/static/htmx.min.js" defer></script>' in text(ada.get("/"))
    assert ada.get("/static/htmx.min.js").status_code == 200


def test_a_name_with_markup_is_shown_as_text_on_every_page(ada, console_rig):
    console_rig.store.add_reference(SERIAL, MARKUP, PICTURE, now=console_rig.clock())
    console_rig.store.add_audit(
        AuditEntry("verify", "match", serial=SERIAL, person=MARKUP, time=console_rig.clock())
    )
    for path in PAGES:
        assert MARKUP not in text(ada.get(path)), path
    assert MARKUP not in text(ada.get("/audit", query_string={"person": MARKUP}))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text(ada.get(f"/devices/{SERIAL}"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text(ada.get("/devices"))  # last match
    page = text(ada.post(f"/devices/{SERIAL}/people/remove", {"person": MARKUP}))
    assert MARKUP not in page and "Remove &lt;script&gt;" in page


# --- sign-in and sign-out ------------------------------------------------------------------------


def test_a_wrong_password_is_refused_on_the_login_page_without_a_cookie(anonymous, console_rig):
    response = anonymous.client.post("/login", data={"name": "ada", "password": "wrong" * 3})
    assert response.status_code == 403
    assert "Wrong name or password" in text(response) and "Set-Cookie" not in response.headers
    assert anonymous.get("/").status_code == 303


def test_a_login_sets_a_strict_secure_session_cookie_and_logout_ends_the_session(ada):
    cookie = ada.client.get_cookie(COOKIE)
    assert cookie is not None and cookie.secure and cookie.http_only
    assert cookie.same_site == "Strict" and cookie.expires is None
    response = ada.post("/logout")
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    ada.client.set_cookie(COOKIE, cookie.value)  # the old cookie opens nothing now
    assert ada.get("/").status_code == 303


def test_the_session_cookie_is_a_host_only_cookie_of_the_whole_console(anonymous):
    response = anonymous.client.post("/login", data={"name": "ada", "password": PASSWORD})
    set_cookie = response.headers["Set-Cookie"]
    assert set_cookie.startswith("__Host-faceid_console=")  # the browser enforces the rest:
    attributes = [part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]]
    assert "secure" in attributes and "path=/" in set_cookie.lower().replace(" ", "")
    assert "domain" not in attributes


def test_signing_in_again_ends_the_session_the_browser_had(ada, console_rig):
    before = ada.client.get_cookie(COOKIE)
    assert before is not None
    ada.login("bob")
    after = ada.client.get_cookie(COOKIE)
    assert after is not None and after.value != before.value
    assert "Signed in as <strong>bob</strong>" in text(ada.get("/"))
    ada.client.set_cookie(COOKIE, before.value)
    assert ada.get("/").status_code == 303  # ada's session ended with bob's login


def test_repeated_wrong_passwords_meet_the_brake_with_a_retry_after(anonymous, console_rig):
    for _ in range(console_rig.rt.config.admin_ui.login_failures):
        anonymous.client.post("/login", data={"name": "ada", "password": "wrong" * 3})
    response = anonymous.client.post("/login", data={"name": "ada", "password": PASSWORD})
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert "Too many failed logins" in text(response) and "Set-Cookie" not in response.headers


def test_a_form_over_the_consoles_body_limit_is_refused_with_413(ada):
    response = ada.client.post(
        f"/devices/{SERIAL}/people",
        data=b"x" * (MAX_BODY_BYTES + 1),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert (
        response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    )


# --- CSRF and origin -----------------------------------------------------------------------------


def test_a_post_without_the_form_token_is_refused_and_changes_nothing(ada, console_rig):
    console_rig.admin_adds(GRACE)
    for csrf in ("", "not-the-token"):
        response = ada.client.post(
            f"/devices/{SERIAL}/people/remove",
            data={"person": GRACE, "confirm": "yes", **({"csrf": csrf} if csrf else {})},
        )
        assert response.status_code == 403
        assert "The form has expired; reload the page" in text(response)
    assert console_rig.people() == {GRACE: 1}
    assert ada.client.post("/logout").status_code == 403  # not even a sign-out


def test_a_post_from_another_origin_is_refused_even_with_the_token(ada, console_rig):
    console_rig.admin_adds(GRACE)
    for header in (
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "null"},
    ):
        response = ada.post(
            f"/devices/{SERIAL}/people/remove", {"person": GRACE, "confirm": "yes"}, headers=header
        )
        assert response.status_code == 403
    response = ada.client.post(
        "/login",
        data={"name": "ada", "password": PASSWORD},
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "null"},
    )
    assert response.status_code == 403 and "Set-Cookie" not in response.headers
    assert console_rig.people() == {GRACE: 1}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "null"}, 403),  # a sandboxed frame or data: page anywhere sends it
        ({"Origin": "null", "Sec-Fetch-Site": "none"}, 403),
        ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, 303),  # Chromium, our own page
        ({"Origin": "http://localhost"}, 303),
        ({}, 303),  # no browser at all: the form token still decides
    ],
)
def test_origin_null_is_accepted_only_beside_sec_fetch_site_same_origin(anonymous, headers, status):
    response = anonymous.client.post(
        "/login", data={"name": "ada", "password": PASSWORD}, headers=headers
    )
    assert response.status_code == status
    assert ("Set-Cookie" in response.headers) == (status == 303)


# --- photos --------------------------------------------------------------------------------------


def test_the_photo_route_answers_the_jpeg_no_store_and_404_for_another_devices_photo(
    ada, console_rig
):
    console_rig.admin_adds(GRACE)
    console_rig.admin_adds("Eileen Collins", console_rig.devices[1])
    mine, theirs = (
        photo_ids(console_rig, GRACE)[0],
        photo_ids(console_rig, "Eileen Collins", OTHER)[0],
    )
    response = ada.get(f"/photo/{SERIAL}/{mine}")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.data == PICTURE
    for path in (f"/photo/{SERIAL}/{theirs}", f"/photo/{SERIAL}/999", "/photo/NOSUCH/1"):
        assert ada.get(path).status_code == 404, path
    assert ada.get(f"/photo/{OTHER}/{theirs}").status_code == 200


def test_a_device_page_that_shows_photos_is_audited_once_per_load_and_no_photo_one_by_one(
    ada, console_rig
):
    ada.get(f"/devices/{SERIAL}")  # nobody enrolled: no photo shown
    assert audited(console_rig, "console_view_photos") == []
    console_rig.admin_adds(GRACE)
    console_rig.admin_adds("Eileen Collins")
    for _ in range(2):
        assert ada.get(f"/devices/{SERIAL}").status_code == 200
    for ref in photo_ids(console_rig, GRACE) + photo_ids(console_rig, "Eileen Collins"):
        assert ada.get(f"/photo/{SERIAL}/{ref}").status_code == 200
    views = audited(console_rig, "console_view_photos")
    assert [(e.actor, e.serial, e.outcome) for e in views] == [("ada", SERIAL, "done")] * 2
    ada.post(f"/devices/{SERIAL}/photos/{photo_ids(console_rig, GRACE)[0]}/remove")
    (asked, *_) = audited(console_rig, "console_view_photos")  # the question shows the photo
    assert (asked.actor, asked.person) == ("ada", GRACE)


def test_removing_a_photo_asks_first_then_removes_it_and_audits_the_administrator(ada, console_rig):
    console_rig.admin_adds(GRACE)
    console_rig.admin_adds(GRACE)
    first, second = photo_ids(console_rig, GRACE)
    path = f"/devices/{SERIAL}/photos/{first}/remove"
    page = text(ada.post(path))
    assert f"Remove this photo of {GRACE}" in page and 'name="confirm" value="yes"' in page
    assert photo_ids(console_rig, GRACE) == [first, second]  # asked, nothing removed
    response = ada.post(path, {"confirm": "yes"})
    assert response.status_code == 303
    assert photo_ids(console_rig, GRACE) == [second]
    assert notices(text(ada.get(f"/devices/{SERIAL}"))) == [f"Removed a photo of {GRACE}."]
    (entry,) = audited(console_rig, "console_remove_photo")
    assert (entry.actor, entry.serial, entry.person, entry.outcome) == (
        "ada",
        SERIAL,
        GRACE,
        "done",
    )


def test_removing_a_person_asks_first_then_removes_them_and_audits_the_administrator(
    ada, console_rig
):
    console_rig.admin_adds(GRACE)
    path = f"/devices/{SERIAL}/people/remove"
    page = text(ada.post(path, {"person": GRACE}))
    assert f"Remove {GRACE} from Room {SERIAL}?" in page
    assert console_rig.people() == {GRACE: 1}
    assert ada.post(path, {"person": GRACE, "confirm": "yes"}).status_code == 303
    assert console_rig.people() == {}
    (entry,) = audited(console_rig, "console_remove_person")
    assert (entry.actor, entry.person) == ("ada", GRACE)
    ada.post(path, {"person": GRACE, "confirm": "yes"})  # gone already: said, not audited
    assert notices(text(ada.get(f"/devices/{SERIAL}")))[-1].startswith("Nobody named")
    assert len(audited(console_rig, "console_remove_person")) == 1


# --- enrollment ----------------------------------------------------------------------------------


def upload(browser: Browser, person: str, data: bytes, name: str = "photo.jpg") -> Any:
    return browser.post(
        f"/devices/{SERIAL}/people",
        {"person": person, "photo": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def test_uploading_a_face_picture_enrolls_a_crop_of_it_named_for_the_administrator(
    ada, console_rig
):
    console_rig.function.script(MATCH)  # the crop matches itself
    response = upload(ada, GRACE, grace_hopper_jpeg())
    assert response.status_code == 303 and response.headers["Location"] == f"/devices/{SERIAL}"
    assert console_rig.people() == {GRACE: 1}
    (entry,) = audited(console_rig, "enroll")
    assert (entry.outcome, entry.person, entry.actor) == ("enrolled", GRACE, "ada")
    page = text(ada.get(f"/devices/{SERIAL}"))
    assert notices(page) == [f"Photo kept for {GRACE}."]
    (ref,) = photo_ids(console_rig, GRACE)
    assert f'src="/photo/{SERIAL}/{ref}"' in page  # the thumbnail
    assert [c.kind for c in console_rig.function.calls] == ["inspect", "verify"]


def test_an_upload_the_enrollment_refuses_is_said_and_audited_as_refused(ada, console_rig):
    console_rig.function.script_faces([FACE, FACE])
    upload(ada, GRACE, grace_hopper_jpeg())
    assert console_rig.people() == {}
    (said,) = notices(text(ada.get(f"/devices/{SERIAL}")))
    assert said.startswith(f"Nothing was saved for {GRACE}") and "(several_faces)" in said
    (entry,) = audited(console_rig, "enroll")
    assert (entry.outcome, entry.code, entry.actor) == ("refused", "several_faces", "ada")


@pytest.mark.parametrize(
    ("person", "data", "said"),
    [
        (GRACE, b"GIF89a not a photo", "The photo must be a JPEG or PNG file."),
        (GRACE, b"", "Choose a photo to upload."),
        (GRACE, b"\xff\xd8\xff" + bytes(UPLOAD_MAX_BYTES), "The photo is over 10 MiB."),
        ("a/b", PICTURE, "'person' may not contain control characters, '/' or '\\'"),
    ],
)
def test_an_upload_that_cannot_be_enrolled_is_refused_before_the_function_sees_it(
    ada, console_rig, person, data, said
):
    assert upload(ada, person, data).status_code == 303
    assert notices(text(ada.get(f"/devices/{SERIAL}"))) == [said.replace("'", "&#39;")]
    assert console_rig.function.calls == [] and console_rig.people() == {}


def snapshot(browser: Browser) -> tuple[str, str]:
    response = browser.post(f"/devices/{SERIAL}/snapshot")
    assert response.status_code == 303, text(response)
    location = response.headers["Location"]
    return location, text(browser.get(location))


def test_a_camera_snapshot_shows_the_face_box_and_keep_enrolls_it(ada, console_rig):
    console_rig.camera.jpeg = grace_hopper_jpeg()
    location, page = snapshot(ada)
    x, y, w, h = FACE
    assert f'<rect class="face" x="{x}" y="{y}" width="{w}" height="{h}"/>' in page
    image = ada.get(location + "/image")
    assert image.mimetype == "image/jpeg" and image.headers["Cache-Control"] == "no-store"
    assert console_rig.camera.snapshots == [SERIAL]
    (taken,) = audited(console_rig, "console_snapshot")
    assert (taken.actor, taken.outcome) == ("ada", "done")
    console_rig.function.script(MATCH)
    assert ada.post(location + "/keep", {"person": GRACE}).status_code == 303
    assert console_rig.people() == {GRACE: 1}
    (entry,) = audited(console_rig, "enroll")
    assert (entry.actor, entry.person) == ("ada", GRACE)
    assert ada.get(location).status_code == 404  # kept once, then gone from memory


def test_a_snapshot_is_shown_only_in_the_session_that_took_it(ada, console_rig):
    location, _ = snapshot(ada)
    bob = _browser(console_rig)
    bob.login("bob")
    assert bob.get(location).status_code == 404
    assert bob.get(location + "/image").status_code == 404
    assert bob.post(location + "/keep", {"person": GRACE}).status_code == 404
    assert console_rig.people() == {}


def test_a_session_holds_at_most_four_snapshots_and_cannot_push_out_anothers(ada, console_rig):
    bob = _browser(console_rig)
    bob.login("bob")
    bobs, _ = snapshot(bob)
    mine = [snapshot(ada)[0] for _ in range(people.SNAPSHOTS_PER_SESSION + 2)]
    assert [ada.get(location).status_code for location in mine] == [404, 404, 200, 200, 200, 200]
    assert bob.get(bobs).status_code == 200


def test_two_keeps_of_one_snapshot_at_the_same_moment_enroll_it_once(ada, console_rig, monkeypatch):
    """The second "keep" arrives while the first has found the snapshot and not yet taken it."""
    location, _ = snapshot(ada)
    console_rig.function.script(MATCH, MATCH)
    real_get, real_pop = memo.Expiring.get, memo.Expiring.pop
    interleaved: list[int] = []

    def meanwhile(held: Any) -> None:
        if isinstance(held, people.Held) and not interleaved:
            interleaved.append(0)  # once
            interleaved[0] = ada.post(location + "/keep", {"person": GRACE}).status_code

    def get(self: Any, key: str) -> Any:
        found = real_get(self, key)
        meanwhile(found)
        return found

    def pop(self: Any, key: str, only_if: Any = None) -> Any:
        meanwhile(real_get(self, key))
        return real_pop(self, key, only_if)

    monkeypatch.setattr(memo.Expiring, "get", get)
    monkeypatch.setattr(memo.Expiring, "pop", pop)
    first = ada.post(location + "/keep", {"person": GRACE}).status_code
    assert sorted([first, *interleaved]) == [303, 404]
    assert console_rig.people() == {GRACE: 1}
    assert len(audited(console_rig, "enroll")) == 1


def test_a_snapshot_without_one_face_offers_no_keep(ada, console_rig):
    console_rig.function.script_faces([])
    _, page = snapshot(ada)
    assert "No face found in the picture." in page and "/keep" not in page


def test_a_snapshot_the_device_cannot_take_is_said_and_audited(ada, console_rig):
    from faceid_core.errors import DeviceError

    console_rig.camera.error = DeviceError("device_unreachable", "The device does not answer")
    response = ada.post(f"/devices/{SERIAL}/snapshot")
    assert response.headers["Location"] == f"/devices/{SERIAL}"
    assert notices(text(ada.get(f"/devices/{SERIAL}"))) == [
        "No snapshot: The device does not answer"
    ]
    (entry,) = audited(console_rig, "console_snapshot")
    assert (entry.outcome, entry.code) == ("error", "device_unreachable")


# --- health, lockout, check now -----------------------------------------------------------------


def test_end_lockout_ends_it_says_what_changed_and_audits_the_administrator(ada, console_rig):
    console_rig.admin_adds(GRACE)
    console_rig.function.otherwise = NO_MATCH
    for _ in range(console_rig.rt.config.policy.max_failures):
        console_rig.verify()
    assert console_rig.rt.lockout.check(SERIAL) > 0
    assert "locked out, " in text(ada.get("/devices"))
    response = ada.post(f"/devices/{SERIAL}/unlock", {"back": "devices"})
    assert response.headers["Location"] == "/devices"
    assert console_rig.rt.lockout.check(SERIAL) == 0 and console_rig.failures() == 0
    (said,) = notices(text(ada.get("/devices")))
    failures = console_rig.rt.config.policy.max_failures
    assert said.startswith(f"Lockout of {SERIAL} ended (it had {failures} failures")
    (entry,) = audited(console_rig, "console_unlock_lockout")
    assert (entry.actor, entry.serial) == ("ada", SERIAL)


def test_a_device_without_a_name_of_its_own_shows_its_serial_once(ada, console_rig):
    named = console_rig.rt.devices[SERIAL]
    console_rig.rt.devices[SERIAL] = dataclasses.replace(named, name=SERIAL)
    row = re.search(r"<tr>\s*<th scope=\"row\">.*?</th>", text(ada.get("/devices")), re.S)
    assert row is not None and row.group(0).count(SERIAL) == 2  # the link and its text
    assert f"<h1>{SERIAL}</h1>" in text(ada.get(f"/devices/{SERIAL}"))
    assert f'<h1>Room {OTHER} <code class="serial">{OTHER}</code></h1>' in text(
        ada.get(f"/devices/{OTHER}")
    )  # a device with a name shows both


def test_page_loads_never_call_a_device(ada, console_rig):
    for path in [*PAGES, f"/devices/{OTHER}"]:
        ada.get(path)
    assert console_rig.camera.snapshots == [] and console_rig.function.calls == []


def test_check_now_shows_the_examination_of_the_device(ada, console_rig, monkeypatch):
    asked = []

    def examined(camera, function, access, *, expected_serial):
        asked.append(expected_serial)
        result = Examination(access.host)
        result.note("option key", "failed", "the Remote Monitoring option key is missing", "x")
        result.frame = b"picture"
        return result

    monkeypatch.setattr(devices, "DeviceClient", MemoryCamera)
    monkeypatch.setattr(devices, "examine", examined)
    response = ada.post(f"/devices/{SERIAL}/check")
    assert response.headers["Location"] == f"/devices/{SERIAL}#checks"
    page = text(ada.get(f"/devices/{SERIAL}"))
    assert "the Remote Monitoring option key is missing" in page and "with failures" in page
    assert asked == [SERIAL]
    (entry,) = audited(console_rig, "console_check")
    assert (entry.actor, entry.outcome) == ("ada", "failed")
    assert "with failures" not in text(ada.get(f"/devices/{OTHER}"))


def test_check_now_on_a_client_that_cannot_examine_says_so(ada):
    ada.post(f"/devices/{SERIAL}/check")
    assert notices(text(ada.get(f"/devices/{SERIAL}"))) == [
        "This connector&#39;s device client cannot examine a device."
    ]


def test_an_unknown_device_is_not_found(ada):
    assert ada.get("/devices/NOSUCH").status_code == 404
    assert ada.post("/devices/NOSUCH/unlock").status_code == 404


# --- audit ---------------------------------------------------------------------------------------


def test_the_audit_page_filters_by_field_and_time_and_pages_back(ada, console_rig):
    start = console_rig.clock()
    for i in range(120):
        console_rig.store.add_audit(
            AuditEntry(
                "verify",
                "match" if i % 2 else "no_match",
                serial=SERIAL if i % 3 else OTHER,
                person=GRACE if i % 2 else None,
                code=None if i % 2 else "not_recognized",
                stages_ms={"total": 800.0 + i, "signin": 120.0},
                time=start + i * 60,
            )
        )
    page = text(ada.get("/audit"))
    assert page.count('<tr class="outcome-') == 50 and 'rel="next"' in page
    assert 'sign-in 120</span> · <span class="stage">total 919 ms</span>' in page  # run order
    older = re.search(r'<a href="([^"]+)" rel="next">', page).group(1).replace("&amp;", "&")
    second = text(ada.get(older))
    assert second.count('<tr class="outcome-') == 50 and "Newest entries" in second
    page = text(ada.get(f"/audit?serial={OTHER}&outcome=no_match"))
    assert page.count('<tr class="outcome-no_match"') == 20  # i even and i % 3 == 0
    since = "2027-01-15T08:30"  # the rig's clock starts at 08:00 UTC
    asked = {"since": since, "until": "2027-01-15T08:40", "person": GRACE}
    page = text(ada.get("/audit", query_string=asked))
    assert page.count('<tr class="outcome-match"') == 5  # minutes 31, 33, ..., 39
    assert f'value="{since}"' in page  # the form keeps what was asked


def test_the_audit_page_shows_a_short_request_id_with_the_whole_one_as_its_title(ada, console_rig):
    rid = "0123456789abcdef" * 2
    console_rig.store.add_audit(AuditEntry("verify", "match", serial=SERIAL, request_id=rid))
    assert f'<code class="rid" title="{rid}">{rid[:8]}</code>' in text(ada.get("/audit"))


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("since=yesterday", "From (UTC): not a date and time"),
        ("serial=a%2Fb", "&#39;serial&#39; must be"),
        ("before=-1", "&#39;before&#39; must be an audit entry&#39;s id"),
        ("person=" + "x" * 65, "Person: at most 64 characters"),
    ],
)
def test_a_bad_audit_filter_is_refused_with_its_field_named(ada, query, said):
    response = ada.get(f"/audit?{query}")
    assert response.status_code == 400 and said in text(response)


# --- charts --------------------------------------------------------------------------------------


def verify_at(t: float, outcome: str, total_ms: float) -> AuditEntry:
    return AuditEntry("verify", outcome, serial=SERIAL, stages_ms={"total": total_ms}, time=t)


def test_the_verifies_chart_counts_each_hour_by_outcome_over_the_last_day():
    now = 1_800_000_000.0 + 30 * 60  # half past an hour
    entries = [
        verify_at(now - 60, "match", 900),
        verify_at(now - 120, "match", 1000),
        verify_at(now - 3600, "error", 50),
        verify_at(now - 23 * 3600 - 1700, "no_match", 1200),  # the first of the 24 hours
        verify_at(now - 25 * 3600, "match", 1),  # older: left out
    ]
    chart = charts.verifies_per_hour(entries, now)
    assert len(chart.hours) == 24
    assert chart.hours[-1].counts == {"match": 2, "no_match": 0, "error": 0}
    assert chart.hours[-2].counts["error"] == 1 and chart.hours[0].counts["no_match"] == 1
    assert chart.totals == {"match": 2, "no_match": 1, "error": 1}
    assert [(b.outcome, b.count) for b in chart.bars] == [
        ("no_match", 1), ("error", 1), ("match", 2)
    ]  # fmt: skip
    assert all(chart.left <= b.x and b.y + b.height <= chart.bottom + 0.01 for b in chart.bars)


def test_the_latency_chart_takes_nearest_rank_percentiles_of_the_total_time():
    now = 1_800_000_000.0
    entries = [verify_at(now - 10 * i, "match", float(ms)) for i, ms in enumerate(range(1, 101))]
    chart = charts.latency_per_hour(entries, now)
    assert (chart.totals["p50"], chart.totals["p95"], chart.totals["verifies"]) == (50, 95, 100)
    assert chart.lines["p50"].startswith("M") and chart.lines["p95"].count("M") == 1
    assert charts.percentile([], 50) is None and charts.percentile([7.0], 95) == 7.0


def test_the_overview_draws_the_charts_from_the_store_and_shows_the_accuracy_figure(
    ada, console_rig
):
    last_hour = console_rig.clock() - 600  # the rig's clock reads a full hour
    for i, outcome in enumerate(["match", "match", "no_match", "error"]):
        console_rig.store.add_audit(verify_at(last_hour - 300 * i, outcome, 900.0 + i))
    page = text(ada.get("/"))
    assert page.count('<rect class="bar bar-') == 3  # one bar per outcome of this hour
    assert "2 matches, 1 not recognised, 1 error</figcaption>" in page
    assert "p50 901 ms, p95 903 ms over 4 verifies" in page
    assert '<img src="/static/accuracy.png"' in page
    assert '<a href="/static/accuracy.png">Open the figure at full size</a>' in page
    assert ada.get("/static/accuracy.png").mimetype == "image/png"


def test_the_accuracy_figure_is_the_one_the_bench_drew_into_docs():
    shipped = ROOT / "connector" / "console" / "static" / "accuracy.png"
    assert shipped.read_bytes() == (ROOT / "docs" / "accuracy.png").read_bytes(), (
        "copy docs/accuracy.png to connector/console/static/ again"
    )
    header = shipped.read_bytes()[16:24]  # the PNG's IHDR: width and height, big-endian
    size = (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big"))
    assert size == (charts.ACCURACY.width, charts.ACCURACY.height)
