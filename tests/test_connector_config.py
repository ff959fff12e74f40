"""The connector's TOML file: defaults as documented, every mistake named by its field, secrets
only by reference, and admin edits that keep the rest of the file as it was."""

from __future__ import annotations

import base64
import json
import os
import re
import stat

import pytest
from faceid_core.errors import FaceIdError

from connector.__main__ import main
from connector.admin import Exit
from connector.config import (
    ConnectorConfig,
    DeviceDefaults,
    PolicyConfig,
    ServerConfig,
    TlsPolicy,
    add_device,
    check,
    config_path,
    decode_store_key,
    load_config,
    problems,
    reference,
    remove_device,
)
from connector.reload import in_force
from connector.secretref import resolve_secret
from devkit.fakes.secret_manager import FakeSecretManager
from devkit.procs import REPO
from tests.support.connector_config import BASE, load_error, write

EXAMPLE = REPO / "infra" / "connector" / "faceid.example.toml"


def device(serial: str = "FOC1", **fields: str) -> str:
    values = {
        "serial": f'"{serial}"',
        "host": '"10.0.0.5"',
        "username": '"faceid"',
        "password": '"env:DEVICE_PW"',
        "tls": "{ insecure = true }",
        **fields,
    }
    body = "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)
    return f"\n[[devices]]\n{body}"


# --- loading -------------------------------------------------------------------------------


def test_the_example_file_loads_with_its_devices_commented_out():
    config = load_config(EXAMPLE)
    assert config.devices == ()
    assert config.device_defaults.password == "file:/etc/faceid/secrets/device-password"
    assert config.store.path == "/var/lib/faceid/faceid.db"
    assert config.store.key == "file:/etc/faceid/secrets/store-key"
    assert config.function.audience == config.function.url
    assert config.policy == PolicyConfig() and config.webex is None


def documented_defaults() -> list[tuple[str, str, object]]:
    """(section, field, value) of every literal default in README's table (`reference()`)."""
    import tomllib

    rows = []
    for m in re.finditer(r"^\| `(\w+)\.(\w+)` \| `([^`]+)` \|", reference(), re.M):
        try:
            value = tomllib.loads(f"v = {m.group(3)}")["v"]
        except tomllib.TOMLDecodeError:
            continue  # a reference to another field, not a literal
        rows.append((m.group(1), m.group(2), value))
    return rows


def test_defaults_are_the_documented_ones(tmp_path):
    optional = '[webex]\nbot_token = "env:T"\nroom_id = "R"\n[admin_ui]\nhost = "127.0.0.1"\n'
    config = load_config(write(tmp_path, BASE + optional))
    rows = documented_defaults()
    assert len(rows) == 35
    for section, field, value in rows:
        assert getattr(getattr(config, section), field) == value, f"{section}.{field}"
    assert config.server == ServerConfig() and config.device_defaults == DeviceDefaults()
    assert config.policy.threshold is None and config.devices == ()


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "ca.pem").write_text("pem")
    text = BASE.replace('"env:FACEID_TEST_STORE_KEY"', '"file:secrets/key"') + device(
        tls='{ ca_bundle = "ca.pem" }', password='"file:pw"'
    )
    config = load_config(write(tmp_path, text))
    assert config.store.path == str(tmp_path / "state" / "faceid.db")
    assert config.store.key == f"file:{tmp_path / 'secrets' / 'key'}"
    assert config.devices[0].tls.ca_bundle == str(tmp_path / "ca.pem")
    assert config.devices[0].password == f"file:{tmp_path / 'pw'}"


def test_device_defaults_fill_in_and_are_overridden(tmp_path):
    text = (
        BASE
        + '[device_defaults]\nusername = "svc"\npassword = "env:SHARED"\n'
        + device("A", username=None, password=None)
        + device("B", username='"own"', password=None)
    )
    a, b = load_config(write(tmp_path, text)).devices
    assert (a.username, a.password, b.username, b.password) == (
        "svc",
        "env:SHARED",
        "own",
        "env:SHARED",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store]\npath = 'x'\nkey = 'env:K'\n", "function is required"),
        (BASE.replace("https://", "http://"), "function.url must be an https:// URL"),
        (BASE + device(tls='{ insecure = true, fingerprint_sha256 = "' + "a" * 64 + '" }'),
         "devices[0].tls: set exactly one of ca_bundle, fingerprint_sha256, insecure = true"),
        (BASE + device(tls=None),
         "devices[0].tls: set exactly one of ca_bundle, fingerprint_sha256, insecure = true"),
        (BASE + device(tls="{ insecure = false }"), "devices[0].tls: set exactly one of"),
        (BASE + device(tls='{ ca_bundle = "nope.pem" }'), "devices[0].tls.ca_bundle: file "),
        (BASE + device(tls='{ fingerprint_sha256 = "abc" }'),
         "devices[0].tls.fingerprint_sha256 must be 64 hex characters"),
        (BASE + "[server]\nprot = 1\n", "server: unknown key 'prot'"),
        (BASE + "[extra]\n", "unknown section [extra]"),
        (BASE + "[server]\nport = true\n", "server.port must be a whole number from 1 to 65535"),
        (BASE + "[server]\ntls_cert = 'c.pem'\n", "server.tls_cert: file"),
        (BASE + device(serial="bad serial"), "devices[0].serial has an invalid value"),
        (BASE + device("A") + device("A"),
         "devices[1].serial 'A' is already used by devices[0]"),
        (BASE + device(token_sha256='"' + "ab" * 32 + '"'),
         "devices[0].token_sha256 is no longer used: device keys live in the store"),
        (BASE + device(host='"https://10.0.0.5"'), "devices[0].host has an invalid value"),
        (BASE + device(username=None),
         "devices[0].username is required (here or in [device_defaults])"),
        (BASE + "[policy]\nthreshold = 'high'\n", "policy.threshold must be a number"),
        (BASE + "[policy]\nmax_people_per_device = 11\n",
         "policy.max_people_per_device must be a whole number from 1 to 10"),
        (BASE + "[policy]\nlockout_base_s = 60\nlockout_max_s = 30\n",
         "policy.lockout_max_s must not be less than policy.lockout_base_s"),
        (BASE + "[webex]\nbot_token = 'env:T'\nroom_id = 'R'\nevents = 'some'\n",
         "webex.events must be one of 'failures', 'all'"),
        (BASE + "[webex]\nroom_id = 'R'\n", "webex.bot_token is required"),
        (BASE + "[function]\n", "not valid TOML"),
        (BASE + "[devices]\nserial = 'A'\n", "devices must be an array of tables"),
        (BASE.replace("[function]\n", "[function]\nauth = 'none'\ncredentials_file = 'k.json'\n"),
         "function.credentials_file: file"),
        (BASE + "[log]\nlevel = 'LOUD'\n", "log.level must be one of"),
        (BASE.replace('path = "state/faceid.db"', 'path = "a.db"\nurl = "postgresql://f@127.0.0.1/f"'),
         "set exactly one of store.path (SQLite, one connector) and store.url"),
        (BASE.replace('path = "state/faceid.db"', 'url = "mysql://f@127.0.0.1/f"'),
         "store.url must start with postgresql:// or postgres:// (its value is not shown)"),
        (BASE.replace('path = "state/faceid.db"', 'url = "postgresql://f:hunter2@127.0.0.1/f"'),
         "store.url must not hold a password"),
        (BASE.replace('path = "state/faceid.db"', 'url = "postgresql://f@127.0.0.1/f?password=x"'),
         "store.url must not hold a password"),
        (BASE.replace('path = "state/faceid.db"', 'url = "postgresql://f@db.internal/f"'),
         "store.url reaches a database off this host without checking its certificate"),
        (BASE.replace('path = "state/faceid.db"', 'url = "postgresql://f@db/f?sslmode=require"'),
         "store.url reaches a database off this host without checking its certificate"),
        (BASE + "password = 'env:P'\n",
         "store.password is for PostgreSQL: set store.url too"),
    ],
)  # fmt: skip
def test_a_mistake_is_named_by_its_field(tmp_path, text, message):
    assert message in load_error(tmp_path, text)


def test_every_problem_of_the_file_is_named_in_one_message(tmp_path):
    text = BASE + "[server]\nport = 0\n[policy]\nthreshold = 0\n[log]\nlevel = 'LOUD'\n"
    message = load_error(tmp_path, text)
    assert message.startswith("3 problems: "), message
    assert "server.port must be a whole number from 1 to 65535" in message
    assert "policy.threshold must be above 0" in message
    assert "log.level must be one of" in message


def test_a_section_is_read_to_its_end_past_a_bad_field(tmp_path):
    text = (
        BASE
        + "[policy]\nmax_failures = 0\nself_enroll = 'always'\nnope = 1\n"
        + device("A", host='"https://10.0.0.5"', tls='{ fingerprint_sha256 = "abc" }')
        + device("A")
    )
    assert load_error(tmp_path, text).split("; ") == [
        "6 problems: policy.max_failures must be a whole number from 1 to 100",
        "policy.self_enroll must be one of 'first', 'never'",
        "policy: unknown key 'nope'",
        "devices[0].host has an invalid value 'https://10.0.0.5'",
        "devices[0].tls.fingerprint_sha256 must be 64 hex characters (colons allowed)",
        "devices[1].serial 'A' is already used by devices[0]",
    ]


def test_a_missing_section_is_one_problem_not_one_per_field(tmp_path):
    text = "[store]\npath = 'x'\nkey = 'env:K'\n[server]\nport = 0\n"
    assert load_error(tmp_path, text) == (
        "2 problems: server.port must be a whole number from 1 to 65535; function is required"
    )
    assert load_error(tmp_path, "[store]\npath = 'x'\nkey = 'env:K'\n") == "function is required"


@pytest.mark.parametrize("threshold", ["0", "0.0", "-1", "-0.5", "-inf"])
def test_a_threshold_that_accepts_anyone_stops_start_up(tmp_path, threshold):
    message = load_error(tmp_path, BASE + f"[policy]\nthreshold = {threshold}\n")
    assert message == (
        "policy.threshold must be above 0 (0 would accept anyone), or left out to use the "
        "function's default"
    )


def test_a_positive_threshold_is_sent_as_written(tmp_path):
    """Whether it is under the engine's floor only the function knows (it answers 400)."""
    config = load_config(write(tmp_path, BASE + "[policy]\nthreshold = 0.01\n"))
    assert config.policy.threshold == 0.01


def test_http_is_accepted_for_a_loopback_function(tmp_path):
    text = BASE.replace("https://europe-west1-p.cloudfunctions.net", "http://127.0.0.1:8080")
    assert load_config(write(tmp_path, text)).function.url == "http://127.0.0.1:8080/verify_faces"


@pytest.mark.parametrize("where", ["device", "store", "webex"])
def test_a_literal_secret_is_refused_without_being_echoed(tmp_path, where):
    secret = "Hunter2-correct-horse"
    if where == "device":
        text = BASE + device(password=f'"{secret}"')
        field = "devices[0].password"
    elif where == "store":
        text = BASE.replace('"env:FACEID_TEST_STORE_KEY"', f'"{secret}"')
        field = "store.key"
    else:
        text = BASE + f'[webex]\nbot_token = "{secret}"\nroom_id = "R"\n'
        field = "webex.bot_token"
    message = load_error(tmp_path, text)
    assert f"{field} must be a secret reference" in message and "literal" in message
    assert secret not in message


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(FaceIdError) as caught:
        load_config(tmp_path / "absent.toml")
    assert caught.value.code == "config_error" and "does not exist" in caught.value.message


def test_config_path_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.setenv("FACEID_CONFIG", "/etc/faceid/from-env.toml")
    assert config_path("/tmp/cli.toml") == "/tmp/cli.toml"
    assert config_path(None) == "/etc/faceid/from-env.toml"
    monkeypatch.delenv("FACEID_CONFIG")
    with pytest.raises(FaceIdError, match="FACEID_CONFIG"):
        config_path(None)


# --- secrets ---------------------------------------------------------------------------------


KEY = bytes(range(32))


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        base64.b64encode(KEY).decode() + "\n",
    ],
)
def test_store_key_is_32_bytes_in_hex_or_base64(text):
    assert decode_store_key(text) == KEY


@pytest.mark.parametrize(
    "text", [KEY[:16].hex(), base64.b64encode(KEY[:31]).decode(), "x" * 44, "!" + "A" * 43]
)
def test_a_store_key_of_the_wrong_length_stops_start_up(text):
    with pytest.raises(FaceIdError) as caught:
        decode_store_key(text)
    assert "must be 32 bytes" in caught.value.message and text not in caught.value.message


def test_resolve_helpers_read_each_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", KEY.hex())
    monkeypatch.setenv("DEVICE_PW", "device-pw")
    text = BASE + device() + '[webex]\nbot_token = "file:bot"\nroom_id = "R"\n'
    (tmp_path / "bot").write_text("bot-token\n")
    (tmp_path / "bot").chmod(0o600)
    config: ConnectorConfig = load_config(write(tmp_path, text))
    assert config.store.resolve_key() == KEY
    assert config.devices[0].resolve_password() == "device-pw"
    assert config.webex is not None and config.webex.resolve_bot_token() == "bot-token"


def test_env_reference(monkeypatch):
    monkeypatch.setenv("FACEID_PW", " spaced pw ")
    assert resolve_secret("env:FACEID_PW", "x") == " spaced pw "
    monkeypatch.setenv("FACEID_PW", "")
    with pytest.raises(FaceIdError, match="x: environment variable FACEID_PW is not set or empty"):
        resolve_secret("env:FACEID_PW", "x")


def test_file_reference_drops_one_trailing_newline(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"line one\r\n")
    path.chmod(0o600)
    assert resolve_secret(f"file:{path}", "x") == "line one"
    path.write_bytes(b"pw \n\n")
    assert resolve_secret(f"file:{path}", "x") == "pw \n"


def test_file_reference_failures_name_the_file_not_the_value(tmp_path):
    with pytest.raises(FaceIdError, match=r"devices\[0\]\.password: secret file .*absent"):
        resolve_secret(f"file:{tmp_path / 'absent'}", "devices[0].password")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(FaceIdError, match="is empty"):
        resolve_secret(f"file:{empty}", "x")
    with pytest.raises(FaceIdError, match=r"is not a regular file \(a folder\)"):
        resolve_secret(f"file:{tmp_path}", "x")


def test_a_secret_file_readable_by_others_is_used_with_a_warning(tmp_path, capsys):
    path = tmp_path / "pw"
    path.write_text("s3cret-value")
    path.chmod(0o644)
    assert resolve_secret(f"file:{path}", "store.key") == "s3cret-value"
    out = capsys.readouterr().out
    assert "readable by group or others" in out and "s3cret-value" not in out


def test_gsm_reference_reads_secret_manager(monkeypatch):
    with FakeSecretManager() as gsm:
        monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", gsm.address)
        name = gsm.add_version("projects/p/secrets/device-pw", "from-gsm\n")
        assert resolve_secret(f"gsm:{name}", "devices[0].password") == "from-gsm"
        gsm.set_state(name, "DISABLED")
        with pytest.raises(FaceIdError) as caught:
            resolve_secret(f"gsm:{name}", "devices[0].password")
        assert caught.value.code == "config_error"
        assert "devices[0].password" in caught.value.message and name in caught.value.message
        assert "from-gsm" not in caught.value.message


# --- admin edits -----------------------------------------------------------------------------

COMMENTED = (
    "# Connector for building 4\n"
    + BASE.replace('path = "state/faceid.db"', 'path = "state/faceid.db"  # keep on the SSD')
    + "\n# Boardroom: pinned certificate\n"
    + device("FOC1").lstrip("\n")
    + "\n# The lab desk (comment introducing the next block)\n"
    + device("FOC2").lstrip("\n")
    + "\n[log]\nlevel = 'DEBUG'  # for now\n"
)


def test_add_device_appends_a_block_that_holds_no_key(tmp_path):
    path = write(tmp_path, COMMENTED)
    path.chmod(0o640)
    add_device(
        path,
        serial="FOC3",
        host="10.0.0.9:8443",
        tls=TlsPolicy(fingerprint_sha256="AB:" * 31 + "AB"),
        username="faceid",
        password_ref="file:/etc/faceid/secrets/foc3",
        name='Room "3"',
    )
    text = path.read_text()
    assert text.startswith(COMMENTED)
    assert "key" not in text[len(COMMENTED) :] and "token" not in text[len(COMMENTED) :]
    added = load_config(path).device("FOC3")
    assert added is not None
    assert (added.host, added.name, added.tls.fingerprint_sha256) == (
        "10.0.0.9:8443",
        'Room "3"',
        "ab" * 32,
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["faceid.toml"]  # no temporary file left behind


def test_add_device_refuses_a_bad_or_duplicate_device_and_leaves_the_file(tmp_path):
    path = write(tmp_path, COMMENTED)
    with pytest.raises(FaceIdError, match="already configured"):
        add_device(path, serial="FOC1", host="10.0.0.9", tls=TlsPolicy(insecure=True))
    with pytest.raises(FaceIdError, match=r"devices\[2\]\.host has an invalid value"):
        add_device(path, serial="FOC3", host="https://x", tls=TlsPolicy(insecure=True),
                   username="u", password_ref="env:P")  # fmt: skip
    with pytest.raises(FaceIdError, match=r"devices\[2\]\.password must be a secret reference"):
        add_device(path, serial="FOC3", host="10.0.0.9", tls=TlsPolicy(insecure=True),
                   username="u", password_ref="plain-password")  # fmt: skip
    assert path.read_text() == COMMENTED


def test_remove_device_deletes_only_its_block(tmp_path):
    path = write(tmp_path, COMMENTED)
    assert remove_device(path, "FOC1") is True
    text = path.read_text()
    assert 'serial = "FOC1"' not in text
    for kept in ("# Connector for building 4", "# keep on the SSD", "# The lab desk",
                 'serial = "FOC2"', "level = 'DEBUG'  # for now"):  # fmt: skip
        assert kept in text
    assert [d.serial for d in load_config(path).devices] == ["FOC2"]
    assert remove_device(path, "FOC1") is False
    assert remove_device(path, "FOC2") is True
    assert load_config(path).devices == ()
    assert "[log]" in path.read_text()


def test_remove_device_handles_a_tls_sub_table(tmp_path):
    text = BASE + device("FOC1", tls=None) + '[devices.tls]\nfingerprint_sha256 = "' + "c" * 64
    text += '"\n' + device("FOC2")
    path = write(tmp_path, text)
    assert load_config(path).devices[0].tls.fingerprint_sha256 == "c" * 64
    assert remove_device(path, "FOC1") is True
    assert [d.serial for d in load_config(path).devices] == ["FOC2"]
    assert "c" * 64 not in path.read_text()


def test_added_then_removed_device_restores_the_file(tmp_path):
    path = write(tmp_path, COMMENTED)
    add_device(path, serial="FOC3", host="h", tls=TlsPolicy(insecure=True), username="u",
               password_ref="env:P")  # fmt: skip
    assert remove_device(path, "FOC3") is True
    assert path.read_text() == COMMENTED


# --- checks (admin check-config, and a reload) -------------------------------------------------


def test_check_lists_each_problem_of_the_file_apart_as_loading_names_them(tmp_path):
    text = BASE + "[server]\nport = 0\n[policy]\nthreshold = 0\n[log]\nlevel = 'LOUD'\n"
    checked = check(write(tmp_path, text))
    assert not checked.ok and checked.config is None
    assert "3 problems: " + "; ".join(checked.problems) == load_error(tmp_path, text)
    assert problems(tmp_path / "faceid.toml") == list(checked.problems)


def test_check_resolves_every_secret_and_names_the_field_of_each_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEID_TEST_STORE_KEY", raising=False)
    monkeypatch.delenv("SHARED_PW", raising=False)
    text = (
        BASE
        + '[device_defaults]\nusername = "faceid"\npassword = "env:SHARED_PW"\n'
        + device("FOC1", username=None, password=None)
        + device("FOC2", username=None, password=None)
        + device("FOC3", password='"file:absent-pw"')
        + '[webex]\nbot_token = "file:absent-token"\nroom_id = "R"\n'
    )
    assert problems(write(tmp_path, text)) == [
        "store.key: environment variable FACEID_TEST_STORE_KEY is not set or empty",
        "device_defaults.password: environment variable SHARED_PW is not set or empty",
        f"devices[2].password: secret file {tmp_path / 'absent-pw'} does not exist",
        f"webex.bot_token: secret file {tmp_path / 'absent-token'} does not exist",
    ]
    assert not (tmp_path / "state").exists()  # the store is neither opened nor created


def test_check_refuses_a_store_key_of_the_wrong_length_without_showing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", "c2hvcnQta2V5")
    [problem] = problems(write(tmp_path, BASE))
    assert problem.startswith("store.key: the referenced value must be 32 bytes")
    assert "c2hvcnQta2V5" not in problem


def test_check_of_a_good_file_gives_each_device_its_password(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", KEY.hex())
    monkeypatch.setenv("DEVICE_PW", "device-pw")
    checked = check(write(tmp_path, BASE + device("FOC1") + device("FOC2")))
    assert checked.ok and checked.config is not None
    assert dict(checked.passwords) == {"FOC1": "device-pw", "FOC2": "device-pw"}
    assert "device-pw" not in repr(checked)


def test_check_keeps_what_secret_manager_said(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", KEY.hex())
    with FakeSecretManager() as gsm:
        monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", gsm.address)
        name = gsm.add_version("projects/p/secrets/device-pw", "from-gsm")
        gsm.set_state(name, "DISABLED")
        found = problems(write(tmp_path, BASE + device(password=f'"gsm:{name}"')))
    assert found == [f"devices[0].password {name} is disabled or destroyed"]


def test_check_of_a_missing_file_is_its_one_problem(tmp_path):
    assert problems(tmp_path / "absent.toml") == [
        f"configuration file {tmp_path / 'absent.toml'} does not exist"
    ]


def test_admin_check_config_prints_each_problem_on_its_own_line(tmp_path, capsys):
    path = write(tmp_path, BASE + "[server]\nport = 0\n[log]\nlevel = 'LOUD'\n")
    assert main(["--config", str(path), "admin", "check-config"]) == Exit.FAILED
    assert capsys.readouterr().out.splitlines() == [
        "server.port must be a whole number from 1 to 65535",
        "log.level must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
    ]
    assert main(["--config", str(path), "admin", "check-config", "--json"]) == Exit.FAILED
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and len(answer["problems"]) == 2


def test_admin_check_config_says_ok_with_the_device_count(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FACEID_TEST_STORE_KEY", KEY.hex())
    monkeypatch.setenv("DEVICE_PW", "device-pw")
    path = write(tmp_path, BASE + device("FOC1") + device("FOC2"))
    assert main(["--config", str(path), "admin", "check-config"]) == Exit.DONE
    assert capsys.readouterr().out == "configuration OK: 2 devices\n"
    assert main(["--config", str(path), "admin", "check-config", "--json"]) == Exit.DONE
    assert json.loads(capsys.readouterr().out) == {"ok": True, "problems": []}


# --- [admin_ui] ------------------------------------------------------------------------------


def tls_files(tmp_path, *names: str) -> str:
    for name in names:
        (tmp_path / name).write_text("pem")
    return "".join(
        f'tls_{kind} = "{name}"\n' for kind, name in zip(("cert", "key"), names, strict=True)
    )


def test_without_admin_ui_there_is_no_console(tmp_path):
    assert load_config(write(tmp_path, BASE)).admin_ui is None


def test_admin_ui_takes_its_defaults_and_the_servers_tls_files(tmp_path):
    server = "[server]\n" + tls_files(tmp_path, "c.pem", "k.pem")
    config = load_config(write(tmp_path, BASE + server + '[admin_ui]\nhost = "10.0.0.2"\n'))
    ui = config.admin_ui
    assert ui is not None
    assert (ui.host, ui.port, ui.session_idle_s, ui.login_failures, ui.login_window_s) == (
        "10.0.0.2",
        8444,
        900,
        5,
        900,
    )
    assert (ui.tls_cert, ui.tls_key) == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))


def test_admin_ui_may_have_tls_files_of_its_own(tmp_path):
    text = BASE + '[admin_ui]\nhost = "0.0.0.0"\n' + tls_files(tmp_path, "ui.crt", "ui.key")
    ui = load_config(write(tmp_path, text)).admin_ui
    assert ui is not None and ui.tls_cert == str(tmp_path / "ui.crt")


def test_admin_ui_serves_plain_http_on_a_loopback_host_only(tmp_path):
    for host in ("127.0.0.1", "localhost", "::1"):
        ui = load_config(write(tmp_path, BASE + f'[admin_ui]\nhost = "{host}"\n')).admin_ui
        assert ui is not None and ui.tls_cert is None
    message = load_error(tmp_path, BASE + '[admin_ui]\nhost = "10.0.0.2"\n')
    assert "plain HTTP on 10.0.0.2" in message
    assert "set admin_ui.tls_cert and admin_ui.tls_key" in message


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("[admin_ui]\nport = 8444\n", "admin_ui.host is required"),
        ('[admin_ui]\nhost = "127.0.0.1"\ntls_cert = "c.pem"\n', "set both tls_cert and tls_key"),
        ('[admin_ui]\nhost = "127.0.0.1"\nport = 8443\n', "admin_ui.port 8443 is the macros'"),
        ('[admin_ui]\nhost = "a host"\n', "admin_ui.host has an invalid value"),
        ('[admin_ui]\nhost = "127.0.0.1"\nsession_idle_s = 30\n', "from 60 to 86400"),
        ('[admin_ui]\nhost = "127.0.0.1"\nlogin_failures = 0\n', "login_failures must be"),
        ('[admin_ui]\nhost = "127.0.0.1"\npassword = "x"\n', "unknown key 'password'"),
    ],
)
def test_admin_ui_mistakes_are_named_with_their_field(tmp_path, section, expected):
    (tmp_path / "c.pem").write_text("pem")
    assert expected in load_error(tmp_path, BASE + section)


def test_admin_ui_may_share_the_macros_port_on_another_address(tmp_path):
    text = BASE + '[server]\nhost = "10.0.0.1"\n[admin_ui]\nhost = "127.0.0.1"\nport = 8443\n'
    ui = load_config(write(tmp_path, text)).admin_ui
    assert ui is not None and ui.port == 8443
    wildcard = BASE + '[server]\nhost = "0.0.0.0"\n[admin_ui]\nhost = "127.0.0.1"\nport = 8443\n'
    assert "is the macros' listener" in load_error(tmp_path, wildcard)


def test_admin_ui_changes_wait_for_a_restart_like_the_servers(tmp_path):
    ui = '[admin_ui]\nhost = "127.0.0.1"\n'
    without = load_config(write(tmp_path, BASE))
    with_ui = load_config(write(tmp_path, BASE + ui))
    moved = load_config(write(tmp_path, BASE + ui + "port = 9444\nsession_idle_s = 60\n"))
    assert in_force(without, with_ui) == (without, ["admin_ui"])
    assert in_force(with_ui, without) == (with_ui, ["admin_ui"])
    taken, pending = in_force(with_ui, moved)
    assert taken.admin_ui == with_ui.admin_ui
    assert pending == ["admin_ui.port", "admin_ui.session_idle_s"]
