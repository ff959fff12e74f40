"""ID tokens through Workload Identity Federation: a credential configuration of type
`external_account` (subject token from a file) exchanged at a fake Security Token Service, then
the connector account's ID token minted by a fake IAM Credentials API (`generateIdToken`), all
driven by the real google-auth and the real function client; no Google server is contacted."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest

from connector.config import FunctionConfig, load_config
from connector.idtoken import IdTokenSource
from connector.relay import FunctionClient
from devkit.fakes.function import PROBE, REFS, FakeFunction
from devkit.fakes.google_token import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    WORKLOAD_PROVIDER,
    FakeGoogleTokenServer,
    ServiceAccountKey,
    federated_principal,
    write_credential_configuration,
)
from devkit.procs import free_port
from devkit.secrets_used import register
from tests.support.connector_config import BASE, load_error, write
from tests.support.errors import error_of

CONNECTOR = "faceid-connector@faceid-test.iam.gserviceaccount.com"
OPEN_ID_TOKEN_CREATOR = "roles/iam.serviceAccountOpenIdTokenCreator"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
SUBJECT = "connector-host-1"
PRINCIPAL = federated_principal(WORKLOAD_PROVIDER, SUBJECT)
AUDIENCE = "https://verify-faces-abc123-ew.a.run.app"

pytestmark = pytest.mark.usefixtures("no_google_metadata")


@pytest.fixture(scope="module")
def google_server():
    # The key holder is another account: the connector account itself has no key.
    with FakeGoogleTokenServer(
        ServiceAccountKey.generate("deployer@faceid-test.iam.gserviceaccount.com")
    ) as server:
        yield server


@pytest.fixture
def google(google_server, monkeypatch):
    google_server.reset()
    monkeypatch.setenv("IAM_CREDENTIALS_EMULATOR_HOST", google_server.iam_host)
    return google_server


@pytest.fixture
def subject_token(google):
    """What the on-prem identity provider left in the credential source file."""
    token = "eyJ.subject." + secrets.token_urlsafe(24)
    register("federated subject token", token)
    google.federated[token] = SUBJECT
    google.grant_role(CONNECTOR, OPEN_ID_TOKEN_CREATOR, PRINCIPAL)
    return token


@pytest.fixture
def wif_file(google, subject_token, tmp_path):
    token_file = tmp_path / "oidc-token"
    token_file.write_text(subject_token)
    return write_credential_configuration(tmp_path / "wif.json", token_file, google.sts_uri)


@pytest.fixture
def function():
    with FakeFunction() as fake:
        yield fake


def wif_client(function: FakeFunction, credentials_file: str | None) -> FunctionClient:
    return FunctionClient(
        FunctionConfig(
            url=function.url,
            audience=function.url,
            credentials_file=credentials_file,
            impersonate_service_account=CONNECTOR,
        )
    )


def sent_token(function: FakeFunction) -> str:
    scheme, token = function.seen[-1][1]["authorization"].split(" ", 1)
    assert scheme == "Bearer"
    return token


def source(credentials_file: str, clock: Any = time.time) -> IdTokenSource:
    return IdTokenSource(AUDIENCE, credentials_file, impersonate=CONNECTOR, clock=clock)


def assert_no_secret(message: str, *secrets_: str) -> None:
    assert "ya29" not in message and "eyJ" not in message
    for secret in secrets_:
        assert secret not in message


# --- the flow ----------------------------------------------------------------------------------


def test_the_function_receives_the_id_token_iam_minted_for_the_connector_account(
    google, wif_file, function
):
    result = wif_client(function, wif_file).verify(PROBE, REFS)

    assert result.verdict == "match"
    claims = google.verify(sent_token(function), audience=function.url)
    assert (claims["email"], claims["aud"], claims["email_verified"]) == (
        CONNECTOR,
        function.url,
        True,
    )
    assert google.iam_calls == [("generateIdToken", CONNECTOR, PRINCIPAL)]
    assert google.grants == []  # no key-file grant anywhere


def test_the_sts_receives_the_subject_token_in_an_rfc_8693_exchange(
    google, wif_file, subject_token
):
    source(wif_file).token()

    [form] = google.exchanges
    assert form["grant_type"] == TOKEN_EXCHANGE
    assert form["audience"] == WORKLOAD_PROVIDER
    assert form["subject_token"] == subject_token
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert form["requested_token_type"] == ACCESS_TOKEN_TYPE
    assert google.access_grants == [(PRINCIPAL, IAM_SCOPE)]


def test_application_default_credentials_can_be_the_credential_configuration(
    google, wif_file, function, monkeypatch
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", wif_file)
    wif_client(function, None).verify(PROBE, REFS)
    assert google.verify(sent_token(function), function.url)["email"] == CONNECTOR
    assert len(google.exchanges) == 1


def test_a_key_file_of_another_account_can_be_the_source(google, tmp_path):
    deployer = google.account
    key_file = deployer.write(tmp_path / "deployer.json", google.token_uri)
    google.grant_role(CONNECTOR, OPEN_ID_TOKEN_CREATOR, f"serviceAccount:{deployer.email}")

    claims = google.verify(source(key_file).token(), AUDIENCE)

    assert claims["email"] == CONNECTOR
    assert google.access_grants == [(f"serviceAccount:{deployer.email}", IAM_SCOPE)]
    assert google.exchanges == []


# --- caching -------------------------------------------------------------------------------------


def test_tokens_are_cached_and_refreshed_only_within_five_minutes_of_expiry(google, wif_file):
    offset = 0.0
    tokens = source(wif_file, clock=lambda: time.time() + offset)
    first = tokens.token()
    expires = google.verify(first, AUDIENCE)["exp"]

    offset = expires - time.time() - 301
    assert tokens.token() == first and len(google.iam_calls) == 1
    offset = expires - time.time() - 299
    tokens.token()
    assert len(google.iam_calls) == 2
    assert len(google.exchanges) == 1  # the federated access token is still good: reused


def test_a_revoked_access_token_is_exchanged_again_once(google, wif_file):
    offset = 0.0
    tokens = source(wif_file, clock=lambda: time.time() + offset)
    expires = google.verify(tokens.token(), AUDIENCE)["exp"]
    google.revoke_access_tokens()

    offset = expires - time.time() - 200
    assert google.verify(tokens.token(), AUDIENCE)["email"] == CONNECTOR
    assert [caller for _, _, caller in google.iam_calls] == [PRINCIPAL, "", PRINCIPAL]
    assert len(google.exchanges) == 2


# --- failures: never a match, a specific message, no token ---------------------------------------


@pytest.mark.parametrize(
    ("refusal", "code"), [("unknown subject token", "invalid_grant"), (401, "invalid_client")]
)
def test_a_refused_exchange_is_engine_unavailable_and_reaches_neither_iam_nor_the_function(
    google, wif_file, subject_token, function, refusal, code
):
    if refusal == 401:
        google.sts_fail_status = 401
    else:
        google.federated.clear()

    error = error_of(lambda: wif_client(function, wif_file).verify(PROBE, REFS))

    assert error.code == "engine_unavailable"
    assert error.message == (
        f"Google's Security Token Service refused the connector's credentials ({code})"
    )
    assert_no_secret(error.message, subject_token)
    assert len(google.exchanges) == 1
    assert google.iam_calls == [] and function.seen == []


def test_a_refused_generate_id_token_is_engine_unavailable_naming_the_missing_role(
    google, tmp_path, function
):
    token = "eyJ.other." + secrets.token_urlsafe(24)
    register("federated subject token", token)
    google.federated[token] = "some-other-host"  # federated, but granted nothing
    token_file = tmp_path / "oidc-token"
    token_file.write_text(token)
    config = write_credential_configuration(tmp_path / "wif.json", token_file, google.sts_uri)

    error = error_of(lambda: wif_client(function, config).verify(PROBE, REFS))

    assert error.code == "engine_unavailable"
    assert error.message == (
        f"IAM refused to mint an ID token for {CONNECTOR} (HTTP 403 PERMISSION_DENIED): the "
        f"connector's credentials need {OPEN_ID_TOKEN_CREATOR} on it"
    )
    assert_no_secret(error.message, token)
    assert len(google.iam_calls) == 1 and function.seen == []


def test_a_refusal_is_retried_after_30_s_not_by_every_call(google, wif_file):
    offset = 0.0
    tokens = source(wif_file, clock=lambda: time.time() + offset)
    google.sts_fail_status = 400
    for _ in range(3):
        assert error_of(tokens.token).code == "engine_unavailable"
    assert len(google.exchanges) == 1
    google.sts_fail_status = None
    offset = 31
    assert google.verify(tokens.token(), AUDIENCE)["email"] == CONNECTOR


def test_an_unreachable_iam_api_is_engine_unavailable(google, wif_file, monkeypatch):
    monkeypatch.setenv("IAM_CREDENTIALS_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    error = error_of(source(wif_file).token)
    assert (error.code, error.message) == (
        "engine_unavailable",
        "the IAM Credentials API is unreachable",
    )


def test_an_unreadable_credential_file_stops_start_up(tmp_path):
    error = error_of(lambda: source(str(tmp_path / "absent.json")))
    assert error.code == "config_error" and "absent.json does not exist" in error.message
    (tmp_path / "odd.json").write_text(json.dumps({"type": "something_else"}))
    error = error_of(lambda: source(str(tmp_path / "odd.json")))
    assert error.code == "config_error" and "is not a credential file" in error.message


def test_the_iam_emulator_must_be_a_loopback_address(wif_file, monkeypatch):
    monkeypatch.setenv("IAM_CREDENTIALS_EMULATOR_HOST", "iamcredentials.example.com:80")
    error = error_of(lambda: source(wif_file))
    assert error.code == "config_error" and "IAM_CREDENTIALS_EMULATOR_HOST" in error.message


# --- configuration -------------------------------------------------------------------------------


def test_impersonate_service_account_is_read_with_any_credential_file(tmp_path):
    (tmp_path / "wif.json").write_text("{}")
    text = BASE.replace(
        "[function]\n",
        f'[function]\ncredentials_file = "wif.json"\nimpersonate_service_account = "{CONNECTOR}"\n',
    )
    function = load_config(write(tmp_path, text)).function
    assert function.impersonate_service_account == CONNECTOR
    assert function.credentials_file == str(tmp_path / "wif.json")
    assert load_config(write(tmp_path, BASE)).function.impersonate_service_account is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("faceid-connector", "must be a service-account email"),
        ("faceid-connector@example.com", "must be a service-account email"),
        ("Faceid@faceid-test.iam.gserviceaccount.com", "must be a service-account email"),
        ("", "must be a non-empty string"),
    ],
)
def test_impersonate_service_account_must_be_a_service_account_email(tmp_path, value, message):
    text = BASE.replace("[function]\n", f'[function]\nimpersonate_service_account = "{value}"\n')
    assert f"function.impersonate_service_account {message}" in load_error(tmp_path, text)


def test_impersonate_service_account_needs_google_id_tokens(tmp_path):
    text = BASE.replace(
        "[function]\n", f"[function]\nauth = 'none'\nimpersonate_service_account = '{CONNECTOR}'\n"
    )
    assert 'function.impersonate_service_account is set but function.auth is "none"' in (
        load_error(tmp_path, text)
    )
