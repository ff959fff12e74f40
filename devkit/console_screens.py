"""Screenshots of the administrators' console for README, and the browser steps that
tests/test_console_browser.py takes with them.

`python -m devkit.console_screens OUT_DIR` starts a stack with the console on, enrolls Grace
Hopper by upload, makes a match, a no-match and a lockout on the simulated device, and saves the
login, overview, devices, device and audit pages at 1280 px as PNG files in OUT_DIR. Only
pictures that ship inside packages appear (devkit/photos.py), never a real person's photo.

The browser is Debian's chromium (`make system-packages`), driven by Playwright, which is never
asked to download one. It trusts exactly the console's certificate (its public key pinned on the
command line) rather than ignoring every certificate error."""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from devkit.photos import write_frames
from devkit.stack import SimDevice, Stack, start_stack

CHROMIUM = Path("/usr/bin/chromium")
WIDE: ViewportSize = {"width": 1280, "height": 900}
#: For every wait on a page: a cold stack on a busy 2-core machine answers its first page slowly.
WAIT_MS = 30_000


def spki_pin(cert_pem: bytes) -> str:
    """What chromium's --ignore-certificate-errors-spki-list takes: the base64 SHA-256 of the
    certificate's public key."""
    public_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def launch(playwright: Playwright, cert_pem: bytes) -> Browser:
    """Debian's chromium, headless, trusting the certificate `cert_pem` and no other unknown one;
    every expect() then waits up to WAIT_MS. Chromium's sandbox refuses to start as root (a
    container, CI): then it runs without."""
    expect.set_options(timeout=WAIT_MS)  # Playwright's own 5 s is a guess on a busy machine
    args = [f"--ignore-certificate-errors-spki-list={spki_pin(cert_pem)}"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)


def log_in(page: Page, console_url: str, name: str, password: str) -> None:
    """Sign in from the login page with the keyboard only, as someone without a mouse would."""
    page.goto(f"{console_url}/login")
    page.get_by_label("Administrator").focus()
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def upload_photo(page: Page, console_url: str, serial: str, person: str, photo: Path) -> None:
    """Add `person` to the device by uploading `photo` from the device's page; waits for the
    console's answer (a notice), whatever it says. A page just loaded shows no notice."""
    page.goto(f"{console_url}/devices/{serial}")
    form = upload_form(page, serial)
    form.get_by_label("Name").fill(person)
    form.get_by_label(re.compile("^Photo")).set_input_files(photo)
    form.get_by_role("button", name="Upload and enroll").click()
    expect(page.get_by_role("status")).to_be_visible()  # the page again, with its notice


def upload_form(page: Page, serial: str) -> Locator:
    return page.locator(f'form[action$="/devices/{serial}/people"][enctype="multipart/form-data"]')


def verify(stack: Stack, device: SimDevice, frame: Path, times: int = 1) -> list[dict[str, Any]]:
    """Show `frame` to the device's camera and verify `times` times, as the macro does."""
    device.control(images=str(frame))
    answers = []
    for _ in range(times):
        answer = stack.call("/v1/verify", device, {"serial": device.serial}, timeout=60)
        answer.raise_for_status()
        answers.append(answer.json())
    return answers


def shoot(page: Page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def screenshots(out: Path, workdir: Path) -> list[Path]:
    """Start a stack with the console, give it something to show, and photograph its pages."""
    frames = write_frames(workdir / "frames")
    stack = start_stack(workdir / "stack", images=frames["grace_hopper"], console=True)
    device = stack.devices[0]
    shots = []
    try:
        if stack.console_admin is None:
            raise RuntimeError("the stack was started without its console")
        name, password = stack.console_admin
        with sync_playwright() as playwright:
            browser = launch(playwright, stack.ca_path.read_bytes())
            page = browser.new_page(viewport=WIDE)
            page.goto(f"{stack.console_url}/login")
            page.get_by_label("Administrator").fill(name)
            shots.append(shoot(page, out, "login"))
            log_in(page, stack.console_url, name, password)
            upload_photo(
                page, stack.console_url, device.serial, "Grace Hopper", frames["grace_hopper"]
            )
            verify(stack, device, frames["grace_hopper"])
            verify(stack, device, frames["no_face"])
            verify(stack, device, frames["astronaut"], times=5)  # policy.max_failures: locked
            for screen, path in (
                ("overview", "/"),
                ("devices", "/devices"),
                ("device", f"/devices/{device.serial}"),
                ("audit", "/audit"),
            ):
                page.goto(stack.console_url + path)
                shots.append(shoot(page, out, screen))
            browser.close()
    finally:
        stack.stop()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.console_screens", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", type=Path, help="where the PNG files go (docs/console)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: run `make system-packages`", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="console-screens-") as workdir:
        for path in screenshots(args.out_dir, Path(workdir)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
