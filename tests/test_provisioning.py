"""`admin add-device`'s checks (onboarding.py) and `admin provision` (provisioning.py) against a
simulated device over real HTTPS and its xAPI, with a real store; the function is the in-memory
comparator. The macro runtime is stood in for by a thread that reports in as the pushed macro
would (the real macro runs the whole flow in tests/test_demo.py and macro/test)."""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import replace

import pytest
from faceid_core.errors import FaceIdError
from PIL import Image

from connector.config import load_config
from connector.device import DeviceAccess, DeviceClient, TlsPolicy
from connector.memory import MemoryComparator
from connector.onboarding import examine
from connector.protocol import encode_key
from connector.provisioning import (
    Plan,
    filled_macro,
    plan_for,
    provision,
    shipped_macro,
)
from connector.store import AuditEntry, Store
from devkit.certs import self_signed_identity
from devkit.pushed_macro import device_key, pushed_settings, reporting_runtime
from devkit.simulator import DeviceSimulator
from tests.support.connector_config import BASE, load_error, write

SERIAL = "FOC2401TEST"
WEB_PASSWORD = "web-" + secrets.token_urlsafe(12)
ADMIN_PASSWORD = "adm-" + secrets.token_urlsafe(12)


def frame() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 360), (90, 140, 200)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def sim():
    with DeviceSimulator(
        {"faceid": WEB_PASSWORD}, [frame()], serial=SERIAL, admins={"admin": ADMIN_PASSWORD}
    ) as device:
        yield device


@pytest.fixture
def camera(store):
    client = DeviceClient(connect_timeout_s=2.0, read_timeout_s=5.0, ledger=store)
    yield client
    client.close()


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "faceid.db", secrets.token_bytes(32))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def every_session_is_signed_out(sim, camera):
    yield
    assert sim.stats()["open_sessions"] == 0, "a device session was left open"


def web(sim: DeviceSimulator, **changes) -> DeviceAccess:
    access = DeviceAccess(
        sim.host, "faceid", WEB_PASSWORD, TlsPolicy(fingerprint_sha256=sim.fingerprint)
    )
    return replace(access, **changes)


def admin(sim: DeviceSimulator, password: str = ADMIN_PASSWORD) -> DeviceAccess:
    return DeviceAccess(sim.host, "admin", password, TlsPolicy(fingerprint_sha256=sim.fingerprint))


def plan(sim: DeviceSimulator, *, wait_s: float = 20.0) -> Plan:
    return Plan(
        connector_urls=("https://faceid.example.internal:8443", "https://faceid-b.example:8443"),
        ca_certificates=(sim.cert_pem.decode(),),  # any certificate will do for the trust store
        macro_source=shipped_macro().read_text(),
        relock_idle_s=300,
        report_wait_s=wait_s,
    )


def audit_of(serial: str):
    def make(action: str, outcome: str, **fields) -> AuditEntry:
        return AuditEntry(action, outcome, serial=serial, actor="tester", **fields)

    return make


def record_report(store: Store):
    """The running connector's part: the macro's report lands in the store."""
    return lambda settings: store.record_report(SERIAL, settings["pushId"], now=0.0)


def macro_runtime(sim: DeviceSimulator, store: Store):
    return reporting_runtime(sim.macros, record_report(store))


# --- the macro's SETTINGS ----------------------------------------------------------------------


def test_filled_macro_writes_each_setting_as_a_literal_and_nothing_else():
    source = shipped_macro().read_text()
    values = {
        "connectorUrls": ["https://faceid.example:8443", "https://faceid-b.example:8443"],
        "deviceKey": "k" * 43,
        "allowInsecureHttps": False,
        "allowPlainHttp": False,
        "relockIdleSeconds": 120,
        "pushId": "abc_DEF-1",
    }
    filled = filled_macro(source, values)
    assert pushed_settings(filled) == values
    assert len(filled.splitlines()) == len(source.splitlines())
    changed = [a for a, b in zip(source.splitlines(), filled.splitlines(), strict=True) if a != b]
    assert len(changed) <= len(values)


def test_a_macro_without_the_settings_lines_is_refused():
    with pytest.raises(Exception, match="no single SETTINGS line for connectorUrls"):
        filled_macro("const SETTINGS = {};", {"connectorUrls": ["https://x"]})


def test_the_plan_trusts_each_certificate_of_a_chain_file_and_names_what_is_missing(tmp_path):
    chain = tmp_path / "chain.pem"
    chain.write_bytes(self_signed_identity(["a.example"])[0] + self_signed_identity(["b"])[0])
    config = load_config(
        write(
            tmp_path,
            BASE
            + '[provisioning]\nconnector_urls = ["https://faceid.example:8443"]\n'
            + f'ca_cert = "{chain}"\nrelock_idle_s = 90\n',
        )
    )
    planned = plan_for(config)
    assert len(planned.ca_certificates) == 2 and planned.relock_idle_s == 90
    assert planned.macro_source == shipped_macro().read_text()
    with pytest.raises(FaceIdError, match=r"provisioning\.connector_urls is not set"):
        plan_for(load_config(write(tmp_path, BASE)))
    chain.write_text("not a certificate")
    with pytest.raises(FaceIdError, match="holds no readable PEM certificate"):
        plan_for(config)


def test_a_file_that_still_names_connector_url_is_told_the_new_field(tmp_path):
    said = load_error(
        tmp_path, BASE + '[provisioning]\nconnector_url = "https://faceid.example:8443"\n'
    )
    assert said == (
        "provisioning.connector_url is replaced by connector_urls, a list of URLs (first "
        'preferred): write connector_urls = ["https://faceid.example:8443"]'
    )


@pytest.mark.parametrize(
    ("urls", "said"),
    [
        ("[]", "provisioning.connector_urls must be a list of 1 to 4 URLs (strings)"),
        ('"https://a.example"', "provisioning.connector_urls must be a list of 1 to 4 URLs"),
        (
            '["https://a", "https://b", "https://c", "https://d", "https://e"]',
            "provisioning.connector_urls must be a list of 1 to 4 URLs",
        ),
        ('["https://a.example", 8443]', "provisioning.connector_urls must be a list of 1 to 4"),
        (
            '["https://a.example", "http://b.example:8080"]',
            "provisioning.connector_urls[1] must be an https:// URL (http:// only for "
            "127.0.0.1/localhost)",
        ),
        (
            '["https://a.example:8443/faceid"]',
            "provisioning.connector_urls[0] must be scheme, host and port only",
        ),
        ('["https://a.example?x=1"]', "provisioning.connector_urls[0] must be scheme, host"),
        ('["https://a.example", "https://a.example"]', "names a URL twice"),
    ],
)
def test_connector_urls_must_be_a_short_list_of_origins(tmp_path, urls, said):
    assert said in load_error(tmp_path, BASE + f"[provisioning]\nconnector_urls = {urls}\n")


def test_a_plain_http_url_on_loopback_is_pushed_with_plain_http_allowed(
    tmp_path, sim, camera, store
):
    config = load_config(
        write(
            tmp_path,
            BASE
            + "[provisioning]\n"
            + 'connector_urls = ["https://a.example:8443", "http://127.0.0.1:8080/"]\n'
            + f'ca_cert = "{sim_ca(tmp_path, sim)}"\n',
        )
    )
    planned = plan_for(config)
    assert planned.connector_urls == ("https://a.example:8443", "http://127.0.0.1:8080/")
    sim.set_configuration("HttpClient AllowHTTP", "False")
    with macro_runtime(sim, store):
        outcome = provision(camera, store, admin(sim), SERIAL, planned, audit=audit_of(SERIAL))
    assert outcome.ok, outcome
    (macro,) = sim.macros()["macros"]
    settings = pushed_settings(macro["source"])
    assert settings["connectorUrls"] == ["https://a.example:8443", "http://127.0.0.1:8080/"]
    assert settings["allowPlainHttp"] is True
    assert sim.configuration()["HttpClient AllowHTTP"] == "True"


def sim_ca(tmp_path, sim: DeviceSimulator) -> str:
    path = tmp_path / "ca.pem"
    path.write_bytes(sim.cert_pem)
    return str(path)


def test_each_certificate_of_the_plan_is_added_once(sim, camera, store):
    two = (sim.cert_pem.decode(), self_signed_identity(["ca.example"])[0].decode())
    with macro_runtime(sim, store):
        first, again = (
            provision(
                camera,
                store,
                admin(sim),
                SERIAL,
                replace(plan(sim), ca_certificates=two),
                audit=audit_of(SERIAL),
            )
            for _ in range(2)
        )
    assert "2 CAs added" in first.done and "2 CAs kept" in again.done
    assert len(sim.configuration()["ca_certificates"]) == 2


# --- add-device's checks -----------------------------------------------------------------------


def test_examining_a_good_device_reads_its_identity_and_finds_the_face(sim, camera):
    function = MemoryComparator()
    result = examine(camera, function, web(sim), expected_serial=SERIAL)
    verdicts = {c.name: c.verdict for c in result.checks}
    assert result.ok, result.checks
    assert result.serial == SERIAL and result.product and result.software
    assert verdicts["option key"] == "ok" and verdicts["face"] == "ok"
    assert verdicts["HttpClient"] == "warning"  # factory default Off: provision switches it on
    assert result.frame is not None and [c.kind for c in function.calls] == ["inspect"]


def test_a_device_without_the_option_key_fails_with_its_fix(sim, camera):
    sim.set_mode(no_option_key=True)
    result = examine(camera, MemoryComparator(), web(sim))
    failed = [c for c in result.checks if c.verdict == "failed"]
    assert not result.ok and failed[0].name == "option key"
    assert "Remote Monitoring option key" in (failed[0].fix or "")


def test_a_wrong_password_is_tried_once_and_nothing_after_it(sim, camera):
    result = examine(camera, MemoryComparator(), web(sim, password="wrong"))
    assert not result.ok and result.checks[-1].name == "sign-in"
    assert "password" in (result.checks[-1].fix or "")
    assert sim.stats()["failed_logins"] == 1 and sim.stats()["signins"] == 0


def test_a_certificate_that_is_not_the_pinned_one_stops_before_any_credential(sim, camera):
    other = "ab" * 32
    result = examine(camera, MemoryComparator(), web(sim, tls=TlsPolicy(fingerprint_sha256=other)))
    assert not result.ok and [c.name for c in result.checks] == ["certificate"]
    assert sim.stats()["failed_logins"] == 0 and sim.stats()["signins"] == 0


def test_a_device_that_is_not_the_serial_given_is_refused(sim, camera):
    result = examine(camera, MemoryComparator(), web(sim), expected_serial="FOC0000OTHER")
    assert not result.ok and f"is {SERIAL}, not FOC0000OTHER" in result.checks[-1].detail


def test_no_face_in_view_is_a_warning_that_says_how_to_look(sim, camera):
    result = examine(camera, MemoryComparator(faces_otherwise=[]), web(sim))
    face = next(c for c in result.checks if c.name == "face")
    assert result.ok and face.verdict == "warning" and "--save" in (face.fix or "")


# --- provision ---------------------------------------------------------------------------------


def test_provision_sets_up_a_fresh_device_and_waits_for_its_macro_to_report(sim, camera, store):
    with macro_runtime(sim, store) as reported:
        outcome = provision(camera, store, admin(sim), SERIAL, plan(sim), audit=audit_of(SERIAL))
    assert outcome.ok, outcome
    config = sim.configuration()
    assert (config["Macros Mode"], config["Macros AutoStart"], config["HttpClient Mode"]) == (
        "On",
        "On",
        "On",
    )
    assert len(config["ca_certificates"]) == 1
    (macro,) = sim.macros()["macros"]
    settings = pushed_settings(macro["source"])
    key = store.device_key(SERIAL)
    assert key is not None and settings["deviceKey"] == encode_key(key)
    assert settings["connectorUrls"] == [
        "https://faceid.example.internal:8443",
        "https://faceid-b.example:8443",
    ]
    assert settings["allowPlainHttp"] is False
    assert settings["relockIdleSeconds"] == 300 and reported == [settings]
    assert macro["active"] and sim.macros()["running"] == ["faceid"]
    entries = [(e.action, e.outcome, e.actor) for e in store.audit(serial=SERIAL)]
    assert entries[0] == ("provision", "done", "tester")


def test_provisioning_again_upgrades_the_macro_and_keeps_the_key(sim, camera, store):
    with macro_runtime(sim, store):
        first = provision(camera, store, admin(sim), SERIAL, plan(sim), audit=audit_of(SERIAL))
        key = store.device_key(SERIAL)
        again = provision(camera, store, admin(sim), SERIAL, plan(sim), audit=audit_of(SERIAL))
    assert first.ok and again.ok, again
    assert store.device_key(SERIAL) == key
    assert "config already right" in again.done and "CA kept" in again.done
    assert "new device key" not in again.done
    assert sim.macros()["restarts"] == 2 and len(sim.configuration()["ca_certificates"]) == 1


def test_a_new_key_is_stored_only_once_the_macro_holding_it_is_saved(sim, camera, store):
    old = secrets.token_bytes(32)
    store.set_device_key(SERIAL, old)
    with macro_runtime(sim, store):
        rotated = provision(
            camera, store, admin(sim), SERIAL, plan(sim), new_key=True, audit=audit_of(SERIAL)
        )
    assert rotated.ok and store.device_key(SERIAL) not in (None, old)
    (macro,) = sim.macros()["macros"]
    assert device_key(pushed_settings(macro["source"])) == store.device_key(SERIAL)
    # A device account that may not save macros: the device keeps its working key.
    refused = provision(
        camera,
        store,
        DeviceAccess(
            sim.host, "faceid", WEB_PASSWORD, TlsPolicy(fingerprint_sha256=sim.fingerprint)
        ),
        SERIAL,
        plan(sim),
        new_key=True,
        audit=audit_of(SERIAL),
    )
    assert not refused.ok and "Admin role" in (refused.why or "")
    assert store.device_key(SERIAL) == device_key(pushed_settings(macro["source"]))


def test_a_wrong_admin_password_fails_once_with_its_fix(sim, camera, store):
    outcome = provision(
        camera, store, admin(sim, "wrong"), SERIAL, plan(sim), audit=audit_of(SERIAL)
    )
    assert (outcome.failed, outcome.done) == ("identity", [])
    assert "password" in (outcome.fix or "") and sim.stats()["failed_logins"] == 1
    assert store.audit(serial=SERIAL)[0].code == "failed_at_identity"


def test_a_device_that_is_another_serial_is_not_provisioned(sim, camera, store):
    outcome = provision(camera, store, admin(sim), "FOC0000OTHER", plan(sim), audit=audit_of("x"))
    assert outcome.failed == "identity" and f"is {SERIAL}" in (outcome.why or "")
    assert sim.macros()["macros"] == []


def test_a_macro_that_never_reports_in_fails_with_what_to_check(sim, camera, store):
    outcome = provision(
        camera, store, admin(sim), SERIAL, plan(sim, wait_s=1.0), audit=audit_of(SERIAL)
    )
    assert outcome.failed == "report" and "did not report in within 1 s" in (outcome.why or "")
    assert "faceid.example.internal:8443" in (outcome.fix or "")
    assert re.search(r"macro saved", " ".join(outcome.done))
