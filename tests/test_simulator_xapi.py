"""The simulated device speaks the HTTP xAPI of REFERENCE §6: getxml and putxml with Basic auth,
roles, the shared lockout, and the macros, configuration and CAs it records."""

from __future__ import annotations

import re
import secrets
import ssl
from http.client import HTTPSConnection
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import pytest
import requests

from devkit.certs import self_signed_identity
from devkit.procs import start_module
from devkit.simulator import MAX_XAPI_BODY, DeviceSimulator

USER_PASSWORD = "user-" + secrets.token_urlsafe(12)
ADMIN_PASSWORD = "admin-" + secrets.token_urlsafe(12)
SERIAL = "FOC1234ABCD"
MACRO = "import xapi from 'xapi';\nif (1 < 2 && 'a' > \"b\") { xapi.Event.on('x', () => {}); }\n"


@pytest.fixture
def sim():
    with DeviceSimulator(
        {"viewer": USER_PASSWORD}, admins={"provisioner": ADMIN_PASSWORD}, serial=SERIAL
    ) as device:
        yield device


@pytest.fixture
def http(sim):
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides Session.verify
    session.verify = sim.ca_pem_path
    yield session
    session.close()


def getxml(sim, http, location, auth=("viewer", USER_PASSWORD)) -> requests.Response:
    return http.get(f"{sim.url}/getxml", params={"location": location}, auth=auth)


def putxml(sim, http, body, auth=("provisioner", ADMIN_PASSWORD), **headers):
    headers = {"Content-Type": "text/xml", **headers}
    data = body.encode() if isinstance(body, str) else body
    return http.post(f"{sim.url}/putxml", data=data, headers=headers, auth=auth)


def leaf(response: requests.Response, path: str) -> str | None:
    return SafeET.fromstring(response.content).findtext(path)


def result(response: requests.Response) -> tuple[str, str | None]:
    """(status, Reason) of the one element with a status attribute."""
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/xml"
    root = SafeET.fromstring(response.content)
    (element,) = [e for e in root.iter() if "status" in e.attrib]
    return element.get("status"), element.findtext("Reason")


def command(*path: str, params: str = "") -> str:
    """`<Command><A><B>..params..</B></A></Command>`."""
    opened = "".join(f"<{p}>" for p in path)
    closed = "".join(f"</{p}>" for p in reversed(path))
    return f"<Command>{opened}{params}{closed}</Command>"


def save(name: str, source: str, overwrite: str | None = "True") -> str:
    flag = f"<OverWrite>{overwrite}</OverWrite>" if overwrite is not None else ""
    params = f"<Name>{name}</Name>{flag}<body>{escape(source)}</body>"
    return command("Macros", "Macro", "Save", params=params)


def named(action: str, name: str) -> str:
    return command("Macros", "Macro", action, params=f"<Name>{name}</Name>")


RESTART = (
    '<Command><Macros><Runtime><Restart command="True"></Restart></Runtime></Macros></Command>'
)
PROVISIONING_CONFIG = (
    "<Configuration><Macros><Mode>On</Mode><AutoStart>On</AutoStart></Macros>"
    "<HttpClient><Mode>On</Mode></HttpClient></Configuration>"
)


def add_ca(pem: str) -> str:
    return command("Security", "Certificates", "CA", "Add", params=f"<body>{escape(pem)}</body>")


def test_status_names_serial_product_software_and_option_key(sim, http):
    answer = getxml(sim, http, "/Status/SystemUnit")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/xml"
    root = SafeET.fromstring(answer.content)
    assert root.tag == "Status"
    assert root.findtext("SystemUnit/Hardware/Module/SerialNumber") == SERIAL
    assert root.findtext("SystemUnit/ProductId") == "Cisco Desk Pro"
    assert root.findtext("SystemUnit/Software/DisplayName").startswith("RoomOS ")
    assert root.findtext("SystemUnit/Software/Version").startswith("ce")
    assert root.findtext("SystemUnit/Software/OptionKeys/RemoteMonitoring") == "True"
    sim.set_mode(no_option_key=True)
    answer = getxml(sim, http, "/Status/SystemUnit/Software/OptionKeys")
    assert leaf(answer, "SystemUnit/Software/OptionKeys/RemoteMonitoring") == "False"


def test_a_sub_path_answers_only_its_subtree_under_the_root(sim, http):
    root = SafeET.fromstring(getxml(sim, http, "/Status/SystemUnit/Hardware").content)
    assert root.tag == "Status"
    assert [e.tag for e in root.find("SystemUnit")] == ["Hardware"]
    assert root.findtext("SystemUnit/Hardware/Module/SerialNumber") == SERIAL


def test_a_path_that_does_not_exist_or_no_location_answers_400_with_an_xml_error(sim, http):
    for location in ("/Status/SystemUnit/Nope", "/Configuration/Macros/Nope", "/Elsewhere", ""):
        refused = getxml(sim, http, location)
        assert refused.status_code == 400 and refused.headers["Content-Type"] == "text/xml"
        root = SafeET.fromstring(refused.content)
        assert root.get("status") == "Error"
        assert "No match on address expression" in root.findtext("Reason")
    no_location = http.get(f"{sim.url}/getxml", auth=("viewer", USER_PASSWORD))
    assert no_location.status_code == 400 and b"location" in no_location.content


def test_configuration_starts_factory_fresh(sim, http):
    fresh = {
        "Macros Mode": "Off",
        "Macros AutoStart": "On",
        "HttpClient Mode": "Off",
        "HttpClient AllowInsecureHTTPS": "False",
        "HttpClient AllowHTTP": "True",
        "HttpClient UseHttpProxy": "Off",
    }
    assert sim.configuration() == {**fresh, "ca_certificates": []}
    root = SafeET.fromstring(getxml(sim, http, "/Configuration").content)
    assert root.tag == "Configuration"
    assert {f"{group.tag} {item.tag}": item.text for group in root for item in group} == fresh


def test_a_configuration_set_is_read_back(sim, http):
    assert result(putxml(sim, http, PROVISIONING_CONFIG)) == ("OK", None)
    assert leaf(getxml(sim, http, "/Configuration/HttpClient/Mode"), "HttpClient/Mode") == "On"
    assert leaf(getxml(sim, http, "/Configuration/Macros"), "Macros/Mode") == "On"
    config = sim.configuration()
    assert (config["Macros Mode"], config["Macros AutoStart"], config["HttpClient Mode"]) == (
        "On",
        "On",
        "On",
    )


def test_a_bad_configuration_is_refused_whole_naming_the_problem(sim, http):
    unknown = (
        "<Configuration><Macros><Mode>On</Mode></Macros>"
        "<HttpClient><Nope>On</Nope></HttpClient></Configuration>"
    )
    status, reason = result(putxml(sim, http, unknown))
    assert status == "Error" and "HttpClient Nope" in reason
    maybe = "<Configuration><Macros><Mode>Maybe</Mode></Macros></Configuration>"
    status, reason = result(putxml(sim, http, maybe))
    assert status == "Error" and "Maybe" in reason and "Macros Mode" in reason
    status, reason = result(putxml(sim, http, "<Configuration/>"))
    assert status == "Error" and reason
    assert sim.configuration()["Macros Mode"] == "Off"  # nothing of the refused ones applied


def test_set_configuration_presets_a_leaf_and_refuses_a_bad_one(sim, http):
    sim.set_configuration("HttpClient Mode", "On")
    assert leaf(getxml(sim, http, "/Configuration/HttpClient/Mode"), "HttpClient/Mode") == "On"
    with pytest.raises(ValueError, match="Maybe"):
        sim.set_configuration("HttpClient Mode", "Maybe")
    with pytest.raises(ValueError, match="Unknown configuration"):
        sim.set_configuration("HttpClient Nope", "On")


def test_bad_or_missing_credentials_answer_401_with_a_basic_challenge(sim, http):
    answers = [
        getxml(sim, http, "/Status/SystemUnit", auth=("viewer", "wrong")),
        getxml(sim, http, "/Status/SystemUnit", auth=("nobody", USER_PASSWORD)),
        getxml(sim, http, "/Status/SystemUnit", auth=None),
        putxml(sim, http, PROVISIONING_CONFIG, auth=("provisioner", "wrong")),
        http.get(
            f"{sim.url}/getxml?location=/Status", headers={"Authorization": "Basic %%%notbase64"}
        ),
    ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert sim.configuration()["Macros Mode"] == "Off"
    assert sim.stats()["failed_logins"] == 3  # bad passwords and unknown users count


def test_five_bad_logins_lock_the_account_for_xapi_and_web_sign_in_alike(sim, http):
    for _ in range(3):
        assert getxml(sim, http, "/Status", auth=("provisioner", "bad")).status_code == 401
    form = {"username": "provisioner", "password": "bad"}
    for _ in range(2):
        assert http.post(f"{sim.url}/web/signin/open", data=form).status_code == 401
    assert putxml(sim, http, PROVISIONING_CONFIG).status_code == 401  # right password, locked
    form["password"] = ADMIN_PASSWORD
    assert http.post(f"{sim.url}/web/signin/open", data=form).status_code == 401
    assert sim.stats()["locked_accounts"] == 1
    assert getxml(sim, http, "/Status").status_code == 200  # another account is not locked


def test_a_good_xapi_login_resets_the_failure_count(sim, http):
    for _ in range(4):
        assert getxml(sim, http, "/Status", auth=("viewer", "bad")).status_code == 401
    assert getxml(sim, http, "/Status").status_code == 200
    for _ in range(4):
        assert getxml(sim, http, "/Status", auth=("viewer", "bad")).status_code == 401
    assert getxml(sim, http, "/Status").status_code == 200


def test_a_user_account_reads_but_putxml_needs_an_admin(sim, http):
    refused = putxml(sim, http, PROVISIONING_CONFIG, auth=("viewer", USER_PASSWORD))
    assert refused.status_code == 403 and b"Admin" in refused.content
    assert sim.configuration()["Macros Mode"] == "Off"
    assert getxml(sim, http, "/Configuration", auth=("provisioner", ADMIN_PASSWORD)).ok


def test_an_admin_also_signs_in_to_the_web_api_and_takes_a_snapshot(sim, http):
    form = {"username": "provisioner", "password": ADMIN_PASSWORD}
    signed_in = http.post(f"{sim.url}/web/signin/open", data=form)
    assert signed_in.status_code == 200
    cookies = {"SessionId": signed_in.cookies["SessionId"]}
    snapshot = http.get(
        f"{sim.url}/web/api/snapshot/get_b64?SourceType=localInput&SourceId=1", cookies=cookies
    )
    assert snapshot.status_code == 200 and snapshot.json()["data"]
    assert http.get(f"{sim.url}/web/signin/signout", cookies=cookies).status_code == 200


def test_macro_save_keeps_the_source_and_overwrite_false_refuses_an_existing_name(sim, http):
    answer = putxml(sim, http, save("faceid", MACRO, overwrite=None))
    root = SafeET.fromstring(answer.content)
    assert (root.tag, root[0].tag, root[0].get("status")) == ("Command", "MacroSaveResult", "OK")
    assert sim.macros()["macros"] == [{"name": "faceid", "active": False, "source": MACRO}]
    status, reason = result(putxml(sim, http, save("faceid", "// other", overwrite="False")))
    assert status == "Error" and "already exists" in reason
    assert result(putxml(sim, http, save("faceid", "// v2"))) == ("OK", None)
    assert sim.macros()["macros"][0]["source"] == "// v2"
    for bad in (
        save("faceid", "x", overwrite="Maybe"),
        save("bad name!", "x"),
        command("Macros", "Macro", "Save", params="<Name>faceid</Name><Body>x</Body>"),
        command("Macros", "Macro", "Save", params="<Name>faceid</Name>"),
    ):
        status, reason = result(putxml(sim, http, bad))
        assert status == "Error" and reason


def test_activate_then_runtime_restart_records_the_running_macros(sim, http):
    assert result(putxml(sim, http, PROVISIONING_CONFIG)) == ("OK", None)
    for name in ("faceid", "helper"):
        assert result(putxml(sim, http, save(name, f"// {name}"))) == ("OK", None)
    assert result(putxml(sim, http, named("Activate", "faceid"))) == ("OK", None)
    assert result(putxml(sim, http, named("Activate", "helper"))) == ("OK", None)
    assert result(putxml(sim, http, named("Deactivate", "helper"))) == ("OK", None)
    assert sim.macros()["restarts"] == 0
    assert result(putxml(sim, http, RESTART)) == ("OK", None)
    macros = sim.macros()
    assert (macros["restarts"], macros["running"]) == (1, ["faceid"])
    assert [(m["name"], m["active"]) for m in macros["macros"]] == [
        ("faceid", True),
        ("helper", False),
    ]
    assert result(putxml(sim, http, save("faceid", "// v3"))) == ("OK", None)
    assert sim.macros()["macros"][0]["active"] is True  # an overwrite keeps its state


def test_unknown_macro_unknown_command_and_restart_with_macros_off_are_errors(sim, http):
    status, reason = result(putxml(sim, http, named("Activate", "ghost")))
    assert status == "Error" and "ghost" in reason
    status, reason = result(putxml(sim, http, named("Deactivate", "ghost")))
    assert status == "Error" and "ghost" in reason
    status, reason = result(putxml(sim, http, RESTART))  # Macros Mode is still Off
    assert status == "Error" and "Macros Mode" in reason
    status, reason = result(putxml(sim, http, command("Macros", "Macro", "Explode")))
    assert status == "Error" and "Unknown command" in reason
    two = "<Command><Macros/><Security/></Command>"
    assert result(putxml(sim, http, two))[0] == "Error"
    assert sim.macros() == {"macros": [], "restarts": 0, "running": []}


def test_ca_add_trusts_a_certificate_once_and_refuses_garbage(sim, http):
    pem = sim.cert_pem.decode()
    answer = putxml(sim, http, add_ca(pem))
    assert result(answer) == ("OK", None)
    assert sim.configuration()["ca_certificates"] == [sim.fingerprint]
    status, reason = result(putxml(sim, http, add_ca(pem)))
    assert status == "Error" and "already" in reason
    other_pem = self_signed_identity(["connector.invalid"])[0].decode()
    for garbage in ("not a certificate", pem.replace("MII", "XYZ"), pem + other_pem):
        status, reason = result(putxml(sim, http, add_ca(garbage)))
        assert status == "Error" and reason
    assert result(putxml(sim, http, add_ca(other_pem))) == ("OK", None)
    assert len(sim.configuration()["ca_certificates"]) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"<Configuration><Macros>",
        b"\xff\xfe not xml",
        b"",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<Command><Macros><Macro><Save><Name>x</Name><body>&b;</body></Save></Macro></Macros>"
        b"</Command>",
        b'<?xml version="1.0" encoding="no-such-encoding"?><Command/>',
        b"<Status><SystemUnit/></Status>",
    ],
    ids=["unclosed", "not-text", "empty", "entities", "unknown-encoding", "foreign-root"],
)
def test_what_is_not_an_xapi_document_answers_400_with_an_xml_error(sim, http, body):
    refused = putxml(sim, http, body)
    assert refused.status_code == 400 and refused.headers["Content-Type"] == "text/xml"
    root = SafeET.fromstring(refused.content)
    assert root.get("status") == "Error" and root.findtext("Reason")
    assert sim.macros()["macros"] == []


def test_putxml_needs_text_xml_and_takes_up_to_one_mebibyte(sim, http):
    wrong_type = putxml(sim, http, PROVISIONING_CONFIG, **{"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    big = "// " + "x" * (MAX_XAPI_BODY - 1000)  # far over the web API's 64 KiB
    assert result(putxml(sim, http, save("big", big))) == ("OK", None)
    context = ssl.create_default_context(cafile=sim.ca_pem_path)
    connection = HTTPSConnection("127.0.0.1", sim.port, context=context, timeout=10)
    try:  # the answer comes before any of the announced body is sent
        connection.putrequest("POST", "/putxml")
        connection.putheader("Content-Type", "text/xml")
        connection.putheader("Content-Length", str(MAX_XAPI_BODY + 1))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()


def test_macro_and_config_reports_need_the_control_token(sim, http):
    putxml(sim, http, save("faceid", MACRO))
    for path in ("/_sim/macros", "/_sim/config"):
        assert http.get(sim.url + path).status_code == 403
        assert http.get(sim.url + path, headers={"X-Sim-Control": "wrong"}).status_code == 403
    control = {"X-Sim-Control": sim.control_token}
    assert http.get(sim.url + "/_sim/macros", headers=control).json() == sim.macros()
    assert sim.macros()["macros"][0]["source"] == MACRO
    assert http.get(sim.url + "/_sim/config", headers=control).json() == sim.configuration()


def test_xapi_requests_are_counted_and_down_resets_them(sim, http):
    getxml(sim, http, "/Status")
    putxml(sim, http, PROVISIONING_CONFIG)
    stats = sim.stats()
    assert (stats["getxml_requests"], stats["putxml_requests"]) == (1, 1)
    sim.set_mode(down=True)
    with pytest.raises(requests.ConnectionError):
        getxml(sim, http, "/Status")
    with pytest.raises(requests.ConnectionError):
        putxml(sim, http, PROVISIONING_CONFIG)
    sim.set_mode(down=False)
    assert getxml(sim, http, "/Status").status_code == 200


def test_a_generated_serial_looks_real_and_bad_arguments_are_refused():
    with DeviceSimulator({"viewer": USER_PASSWORD}) as device:
        assert re.fullmatch(r"FOC[0-9A-F]{8}", device.serial)
    for bad in ("", "two words", "tab\there"):
        with pytest.raises(ValueError, match="serial"):
            DeviceSimulator({"viewer": USER_PASSWORD}, serial=bad)
    with pytest.raises(ValueError, match="not both"):
        DeviceSimulator({"viewer": USER_PASSWORD}, admins={"viewer": ADMIN_PASSWORD})


@pytest.mark.slow
def test_command_line_takes_admins_and_a_serial_and_prints_each_devices_serial(tmp_path):
    cert = tmp_path / "device.pem"
    env = {"SIM_ADMIN": f"provisioner:{ADMIN_PASSWORD}"}
    args = [
        "--admin-env",
        "SIM_ADMIN",
        "--serial",
        "SIMX",
        "--devices",
        "2",
        "--cert-out",
        str(cert),
    ]
    with start_module("devkit.simulator", args, env, ready_line=r"^https://\S+") as sim:
        block = r"^(https://\S+)\nfingerprint \S+\ncontrol-token \S+\nserial (\S+)$"
        sim.wait_line(r"^serial SIMX-1$")
        devices = re.findall(block, sim.stdout(), re.MULTILINE)
        assert [serial for _, serial in devices] == ["SIMX-0", "SIMX-1"]
        with requests.Session() as http:
            http.trust_env, http.verify = False, str(cert)
            url = devices[1][0]
            auth = ("provisioner", ADMIN_PASSWORD)
            status = http.get(f"{url}/getxml?location=/Status/SystemUnit/Hardware", auth=auth)
            assert leaf(status, "SystemUnit/Hardware/Module/SerialNumber") == "SIMX-1"
            configured = http.post(
                f"{url}/putxml",
                data=PROVISIONING_CONFIG,
                headers={"Content-Type": "text/xml"},
                auth=auth,
            )
            assert result(configured) == ("OK", None)
