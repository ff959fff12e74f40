"""The administrators' console in a real browser (issue 19): Debian's chromium, driven by
Playwright, against a running stack with the console on. The whole path an administrator takes
(sign in, the device, an enrollment by upload, a verify in the audit, a lockout ended, sign out),
the refusals (a wrong password, a form without its CSRF token), names with markup shown as text,
and forms usable by keyboard, with labels, at 1280 px and at a tablet's 768 px.

The browser trusts the console's own certificate (its key pinned, devkit/console_screens.py),
not every certificate. Without /usr/bin/chromium the module is skipped, except under CI, where
it fails: `make test` always runs it (`make system-packages` installs chromium)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from connector.console.auth import ConsoleAuth
from devkit.console_screens import (
    CHROMIUM,
    WAIT_MS,
    WIDE,
    launch,
    log_in,
    upload_form,
    upload_photo,
    verify,
)
from devkit.photos import write_frames
from devkit.stack import Stack, start_stack

pytestmark = pytest.mark.slow

#: Fewer failures than the default lock the device: the same path, in fewer face comparisons.
MAX_FAILURES = 3
#: A person's name with markup in it ('/' is not allowed in a name, so no closing tag).
MARKUP = "<script>alert(1)<img src=x onerror=alert(2)>"
TABLET: ViewportSize = {"width": 768, "height": 1024}
#: A form field's label text as get_by_label reads it: its aria-label, else its <label>s.
LABEL_OF = "f => f.getAttribute('aria-label') || [...f.labels].map(l => l.textContent).join(' ')"
FIELDS = "input:not([type=hidden]):not([type=submit]):not([type=button]), select, textarea"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: `make system-packages` installs Debian's chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI the browser test must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_frames(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def stack(frames: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two simulated devices showing Grace Hopper: the first for the administrator's path, the
    second for the other tests, so that none depends on what another enrolled."""
    require_chromium()
    started = start_stack(
        tmp_path_factory.mktemp("stack"),
        images=frames["grace_hopper"],
        devices=2,
        console=True,
        policy={"max_failures": MAX_FAILURES},
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        opened = launch(playwright, stack.ca_path.read_bytes())
        try:
            yield opened
        finally:
            opened.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser profile (no cookie) at 1280 px; any alert() fails the test."""
    context = browser.new_context(viewport=WIDE)
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    alerts: list[str] = []
    opened.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    try:
        yield opened
    finally:
        context.close()
    assert alerts == [], "a page ran a script it should have shown as text"


def admin(stack: Stack) -> tuple[str, str]:
    assert stack.console_admin is not None
    return stack.console_admin


def session_cookie(page: Page) -> str | None:
    found = [c["value"] for c in page.context.cookies() if c["name"] == ConsoleAuth.COOKIE]
    return found[0] if found else None


def fetch(
    stack: Stack,
    page: Page,
    path: str,
    data: dict[str, str] | None = None,
    files: dict[str, tuple[str, bytes, str]] | None = None,
) -> requests.Response:
    """`path` asked outside the browser with the browser's session cookie, trusting the
    console's certificate: a POST when there is a form (`data`), with no CSRF token unless the
    form has one."""
    return requests.request(
        "GET" if data is None else "POST",
        stack.console_url + path,
        data=data,
        files=files,
        cookies={ConsoleAuth.COOKIE: session_cookie(page) or ""},
        verify=str(stack.ca_path),
        allow_redirects=False,
        timeout=30,
    )


def nav(page: Page, name: str) -> None:
    """Follow a link of the pages' navigation (the header's, by keyboard-visible name)."""
    page.get_by_role("navigation", name="Pages").get_by_role("link", name=name).click()


def device_row(page: Page, serial: str) -> Locator:
    return page.get_by_role("row").filter(has_text=serial)


def test_an_administrator_walks_from_sign_in_to_sign_out(
    stack: Stack, page: Page, frames: dict[str, Path]
) -> None:
    url, device = stack.console_url, stack.devices[0]
    name, password = admin(stack)

    page.goto(url + "/")
    expect(page).to_have_url(url + "/login")  # no session: the login page
    page.get_by_label("Administrator").fill(name)
    page.get_by_label("Password").fill(password + "x")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password")
    assert session_cookie(page) is None

    log_in(page, url, name, password)
    nav(page, "Devices")
    expect(device_row(page, device.serial)).to_be_visible()
    device_row(page, device.serial).get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(device.serial)

    upload_photo(page, url, device.serial, "Grace Hopper", frames["grace_hopper"])
    expect(page.get_by_role("status")).to_contain_text("Photo kept for Grace Hopper.")
    thumbnail = page.get_by_role("img", name=re.compile(r"^Photo 1 of Grace Hopper"))
    expect(thumbnail).to_be_visible()
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth > 0")
    photo = fetch(stack, page, thumbnail.get_attribute("src") or "")
    assert photo.headers["Content-Type"] == "image/jpeg"
    assert "no-store" in photo.headers["Cache-Control"]

    [answer] = verify(stack, device, frames["grace_hopper"])
    assert (answer["verdict"], answer["person"]) == ("match", "Grace Hopper")
    nav(page, "Audit")
    verifies = page.get_by_role("row").filter(has_text=device.serial).filter(has_text="verify")
    expect(verifies.filter(has_text="Grace Hopper").filter(has_text="match")).to_have_count(1)

    answers = verify(stack, device, frames["astronaut"], times=MAX_FAILURES)  # a stranger
    assert [a["code"] for a in answers] == ["not_recognized"] * MAX_FAILURES
    assert answers[-1]["retry_after_s"] > 0
    nav(page, "Devices")
    row = device_row(page, device.serial)
    expect(row).to_contain_text("locked out")
    row.get_by_role("button", name=re.compile(r"^End lockout")).click()
    expect(page.get_by_role("status")).to_be_visible()
    expect(device_row(page, device.serial)).not_to_contain_text("locked out")
    expect(device_row(page, device.serial).get_by_role("button")).to_have_count(0)
    [answer] = verify(stack, device, frames["grace_hopper"])  # the device may try again
    assert answer["verdict"] == "match"
    nav(page, "Audit")
    ended = page.get_by_role("row").filter(has_text="console_unlock_lockout")
    expect(ended.filter(has_text=name)).to_have_count(1)

    token = session_cookie(page)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    after = requests.get(
        url + "/devices",
        cookies={ConsoleAuth.COOKIE: token or ""},
        verify=str(stack.ca_path),
        allow_redirects=False,
        timeout=30,
    )
    assert (after.status_code, after.headers.get("Location")) == (303, "/login")


def test_a_form_sent_without_its_csrf_token_is_refused_and_changes_nothing(
    stack: Stack, page: Page, frames: dict[str, Path]
) -> None:
    device = stack.devices[1]
    log_in(page, stack.console_url, *admin(stack))
    page.goto(f"{stack.console_url}/devices/{device.serial}")
    action = upload_form(page, device.serial).get_attribute("action") or ""
    photo = {"photo": ("grace.jpg", frames["grace_hopper"].read_bytes(), "image/jpeg")}
    for csrf in ({}, {"csrf": "not-the-token"}):
        refused = fetch(stack, page, action, data={"person": "Mallory", **csrf}, files=photo)
        assert refused.status_code == 403
        assert "The form has expired" in refused.text
    assert fetch(stack, page, "/logout", data={}).status_code == 403
    page.reload()  # still signed in, and nobody was enrolled
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.get_by_role("heading", name="Mallory")).to_have_count(0)


def test_a_name_with_markup_is_shown_as_text_on_every_page(
    stack: Stack, page: Page, frames: dict[str, Path]
) -> None:
    url, device = stack.console_url, stack.devices[1]
    log_in(page, url, *admin(stack))
    upload_photo(page, url, device.serial, MARKUP, frames["grace_hopper"])
    expect(page.get_by_role("heading", name=MARKUP)).to_be_visible()
    [answer] = verify(stack, device, frames["grace_hopper"])
    assert answer["person"] == MARKUP
    scripts = None
    for path in ("/", "/devices", f"/devices/{device.serial}", "/audit"):
        shown = page.goto(url + path)
        assert shown is not None and shown.ok
        html = shown.text()
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;img src=x onerror=alert(2)&gt;" in html or path == "/"
        assert page.locator("img[src=x]").count() == 0
        count = page.locator("script").count()  # the page's own (htmx), never one more
        assert scripts is None or count == scripts
        scripts = count
    expect(page.get_by_role("row").filter(has_text=MARKUP).first).to_be_visible()


def unlabelled_fields(page: Page) -> list[str]:
    """The visible form fields that page.get_by_label cannot find by their label's text."""
    missing = []
    fields = page.locator(FIELDS)
    for i in range(fields.count()):
        field = fields.nth(i)
        if not field.is_visible():
            continue
        label = " ".join(field.evaluate(LABEL_OF).split())
        found = page.get_by_label(label, exact=True)
        if not label or not found.evaluate_all(
            "(all, field) => all.includes(field)", field.element_handle()
        ):
            missing.append(field.evaluate("f => f.outerHTML"))
    return missing


def test_every_page_has_labelled_fields_and_fits_a_tablet_without_scrolling_sideways(
    stack: Stack, page: Page
) -> None:
    url, device = stack.console_url, stack.devices[1]
    fit = {}
    for path in ("/login", "/", "/devices", f"/devices/{device.serial}", "/audit"):
        if path == "/":
            log_in(page, url, *admin(stack))  # by keyboard only
        page.goto(url + path)
        assert unlabelled_fields(page) == [], path
        for size in (TABLET, WIDE):
            page.set_viewport_size(size)
            fit[path, size["width"]] = page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth"
            )
    assert [where for where, fits in fit.items() if not fits] == []
