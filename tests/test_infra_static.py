"""The Terraform module agrees with the function's code and with deploy.sh, and checkov and
hadolint find nothing in infra/ (tests/support/infra.py says where the linters come from)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import time
from typing import Any

import pytest

from tests.support.infra import (
    DOCKERFILE,
    MAIN_PY,
    NOT_TUNING,
    ROOT,
    TF_DIR,
    deploy_command,
    deploy_dry_run,
    env_names_read_by_function,
    flag,
    functions_framework_reads_threads,
    locals_of,
    optional_tool,
    resources,
    tf_function_settings_names,
    the_function,
    tool,
    variables,
)


def test_terraform_pins_its_providers_and_version(tf):
    terraform = tf["terraform"][0]
    assert terraform["required_version"], "required_version is set"
    providers = terraform["required_providers"][0]
    assert providers["google"]["source"] == "hashicorp/google"
    assert providers["archive"]["source"] == "hashicorp/archive"
    for name in ("google", "archive"):
        assert re.fullmatch(r"~> \d+\.\d+(\.\d+)?", providers[name]["version"]), name


def test_function_is_python312_with_the_entry_point_main_py_defines(tf):
    build = the_function(tf)["build_config"][0]
    assert build["runtime"] == "python312"
    entry = build["entry_point"]
    tree = ast.parse(MAIN_PY.read_text())
    defined = {
        node.name: [ast.unparse(d) for d in node.decorator_list]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }
    assert entry in defined, f"{entry} is not defined in function/main.py"
    assert "functions_framework.http" in defined[entry]


def test_every_variable_terraform_sets_is_one_the_function_reads(tf):
    service = the_function(tf)["service_config"][0]
    assert service["environment_variables"] == "${local.environment}"
    locals_ = locals_of(tf)
    set_names = set(re.findall(r"\b([A-Z][A-Z0-9_]{2,})\s*=", locals_["environment"]))
    assert {"FACE_ENGINE", "THREADS", "MXFACE_KEY_SECRET"} <= set_names
    secret_env = service["dynamic"][0]["secret_environment_variables"]["content"][0]["key"]
    settings = tf_function_settings_names(tf)

    read = env_names_read_by_function()
    assert functions_framework_reads_threads(), "functions-framework no longer reads THREADS"
    unknown = (set_names | {secret_env} | settings) - read - {"THREADS"}
    assert not unknown, f"Terraform sets variables the function never reads: {sorted(unknown)}"
    assert settings == read - NOT_TUNING, "function_settings must accept exactly the tunables"


def test_threads_follow_request_concurrency_and_memory_follows_the_engine(tf):
    service = the_function(tf)["service_config"][0]
    locals_ = locals_of(tf)
    assert service["max_instance_request_concurrency"] == "${local.concurrency}"
    assert "THREADS = tostring(local.concurrency)" in locals_["environment"]
    profiles = locals_["engine_profiles"]
    assert profiles["local"]["memory"] == "1Gi"
    assert profiles["mxface"]["memory"] == "512Mi"
    for engine, profile in profiles.items():
        # Cloud Run serves more than one request per instance only with at least 1 vCPU.
        assert float(profile["cpu"]) >= 1, engine
        assert profile["concurrency"] > 1, engine
    assert service["available_memory"] == "${local.memory}"
    assert service["available_cpu"] == "${local.cpu}"


def test_variables_are_documented_and_nothing_project_specific_is_hard_coded(tf):
    declared = variables(tf)
    for name, body in declared.items():
        assert body.get("description"), f"variable {name} has no description"
    for name in ("project_id", "region"):
        assert "default" not in declared[name], f"{name} must have no default"
    for path in TF_DIR.glob("*.tf"):
        for line in path.read_text().splitlines():
            if "projects/" in line and not line.lstrip().startswith("#"):
                assert "projects/${var.project_id}" in line, f"{path.name}: {line.strip()}"
    referenced = set()
    for path in TF_DIR.glob("*.tf"):
        referenced |= set(re.findall(r"\bvar\.([a-z0-9_]+)", path.read_text()))
    assert set(declared) == referenced, "every variable is declared once and used"


def test_secrets_are_containers_and_every_grant_names_one_resource(tf):
    kinds = {kind for block in tf["resource"] for kind in block}
    assert "google_secret_manager_secret_version" not in kinds, "secret values stay out of state"
    assert not {k for k in kinds if k.startswith(("google_project_iam", "google_organization"))}
    members = [
        body["member"]
        for kind in kinds
        if kind.endswith("_iam_member")
        for body in resources(tf, kind).values()
    ]
    assert members and not [m for m in members if m.startswith(("allUsers", "allAuthenticated"))]

    secrets_ = resources(tf, "google_secret_manager_secret")
    assert set(secrets_) == {"mxface_key", "webex_bot_token"}
    accessors = resources(tf, "google_secret_manager_secret_iam_member")
    runtime = accessors["runtime_reads_mxface_key"]
    assert runtime["role"] == "roles/secretmanager.secretAccessor"
    assert runtime["secret_id"] == "${google_secret_manager_secret.mxface_key.secret_id}"
    assert runtime["member"] == "serviceAccount:${google_service_account.runtime.email}"
    assert accessors["connector_reads"]["for_each"] == "${toset(var.connector_readable_secret_ids)}"
    assert variables(tf)["connector_readable_secret_ids"]["default"] == []

    invokers = resources(tf, "google_cloud_run_service_iam_member")
    assert list(invokers) == ["connector_invokes"]
    invoker = invokers["connector_invokes"]
    assert invoker["role"] == "roles/run.invoker"
    assert invoker["service"] == "${google_cloudfunctions2_function.verify.name}"
    assert invoker["member"] == "serviceAccount:${google_service_account.connector.email}"
    assert the_function(tf)["service_config"][0]["service_account_email"] == (
        "${google_service_account.runtime.email}"
    )


def test_pinned_mxface_key_is_a_secret_env_only_in_pinned_mode(tf):
    service = the_function(tf)["service_config"][0]
    pinned = service["dynamic"][0]["secret_environment_variables"]
    assert pinned["for_each"] == "${local.pinned_key ? [var.mxface_key_version] : []}"
    content = pinned["content"][0]
    assert content["key"] == "MXFACE_KEY"
    assert content["secret"] == "${google_secret_manager_secret.mxface_key.secret_id}"
    assert content["version"] == "${secret_environment_variables.value}"


def test_source_bucket_is_private_versioned_and_zips_the_function(tf):
    bucket = resources(tf, "google_storage_bucket")["source"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"][0]["enabled"] is True
    archive = next(b["archive_file"]["function_source"] for b in tf["data"] if "archive_file" in b)
    assert archive["source_dir"] == "${path.module}/../../function"
    assert (TF_DIR / "../../function/main.py").resolve() == MAIN_PY
    assert (TF_DIR / "../../function/requirements.txt").resolve().is_file()


def test_no_unauthenticated_access_and_ingress_is_a_variable(tf):
    service = the_function(tf)["service_config"][0]
    assert service["ingress_settings"] == "${var.ingress_settings}"
    assert variables(tf)["ingress_settings"]["default"] == "ALLOW_ALL"


@pytest.fixture(scope="module")
def tf_console(tmp_path_factory) -> Any:
    """Evaluates the module's variables and locals with `terraform console` (no provider
    needed, so it works offline); skips where terraform is not installed."""
    terraform = optional_tool("terraform")
    work = tmp_path_factory.mktemp("tf-console")
    for name in ("variables.tf", "locals.tf"):
        shutil.copy(TF_DIR / name, work / name)
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}
    init = subprocess.run(
        [terraform, "init", "-input=false", "-backend=false"],
        cwd=work, capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr

    def evaluate(expression: str, **tf_vars: str) -> subprocess.CompletedProcess[str]:
        argv = [terraform, "console", "-var", "project_id=acme-prod", "-var", "region=europe-west1"]
        for name, value in tf_vars.items():
            argv += ["-var", f"{name}={value}"]
        return subprocess.run(
            argv, input=f"jsonencode({expression})\n", cwd=work, capture_output=True, text=True,
            timeout=60, env=env, check=False,
        )  # fmt: skip

    return evaluate


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tf_vars", "deploy_args"),
    [
        ({}, []),
        ({"face_engine": "mxface"}, ["--engine", "mxface"]),
        (
            {"face_engine": "mxface", "mxface_key_delivery": "pinned", "mxface_key_version": "3"},
            ["--engine", "mxface", "--key-delivery", "pinned", "--key-version", "3"],
        ),
        (
            {"face_engine": "mxface", "mxface_key_version": "7", "concurrency": "12",
             "memory": "1Gi", "function_settings": '{UPSTREAM_TIMEOUT_S="8"}'},
            ["--engine", "mxface", "--key-version", "7", "--concurrency", "12", "--memory", "1Gi",
             "--set", "UPSTREAM_TIMEOUT_S=8"],
        ),
    ],
)  # fmt: skip
def test_terraform_and_deploy_sh_give_the_function_the_same_settings(
    tf_console, tf_vars, deploy_args
):
    result = tf_console(
        "[local.environment, local.memory, local.cpu, local.concurrency, local.pinned_key]",
        **tf_vars,
    )
    assert result.returncode == 0 and "Error" not in result.stdout + result.stderr, result.stdout
    environment, memory, cpu, concurrency, pinned = json.loads(json.loads(result.stdout))

    deploy = deploy_command(deploy_dry_run(*deploy_args))
    env = dict(item.split("=", 1) for item in flag(deploy, "set-env-vars").split(","))
    assert env == environment
    assert env["THREADS"] == str(concurrency) == flag(deploy, "concurrency")
    assert (flag(deploy, "memory"), flag(deploy, "cpu")) == (memory, cpu)
    secret_env = flag(deploy, "set-secrets")
    if pinned:
        assert secret_env == f"MXFACE_KEY=faceid-mxface-key:{tf_vars['mxface_key_version']}"
    else:
        assert secret_env is None and "--clear-secrets" in deploy
    if "MXFACE_KEY_SECRET" in env:
        from faceid_core.secrets import SECRET_VERSION_RE

        assert SECRET_VERSION_RE.match(env["MXFACE_KEY_SECRET"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tf_vars", "message"),
    [
        ({"function_settings": '{SECRET_MANAGER_EMULATOR_HOST="x"}'}, "function_settings accepts"),
        ({"face_engine": "dlib"}, "face_engine must be"),
        ({"mxface_key_version": "0"}, "mxface_key_version must be"),
        ({"ingress_settings": "PUBLIC"}, "ingress_settings must be"),
        ({"concurrency": "0"}, "concurrency must be"),
    ],
)
def test_terraform_refuses_values_the_function_or_cloud_would_not_take(
    tf_console, tf_vars, message
):
    # terraform console reports a failed validation without always exiting non-zero: read it
    result = tf_console("[local.environment, var.ingress_settings]", **tf_vars)
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert "Invalid value for variable" in output
    assert message in output


@pytest.mark.slow
def test_terraform_is_formatted():
    terraform = optional_tool("terraform")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", "-recursive", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.fixture(scope="module")
def checkov_reports() -> list[dict[str, Any]]:
    """One checkov run over infra/ for every framework we use; its run time is printed."""
    started = time.monotonic()
    result = subprocess.run(
        [
            tool("checkov"),
            "--directory", str(ROOT / "infra"),
            "--framework", "terraform", "dockerfile", "secrets",
            "--compact", "--skip-download", "--output", "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )  # fmt: skip
    print(f"checkov ran in {time.monotonic() - started:.1f} s")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    parsed, _ = json.JSONDecoder().raw_decode(result.stdout)
    return parsed if isinstance(parsed, list) else [parsed]


@pytest.mark.slow
def test_checkov_finds_no_failed_check_and_every_skip_says_why(checkov_reports):
    scanned = {report["check_type"] for report in checkov_reports}
    assert {"terraform", "dockerfile"} <= scanned, scanned
    for report in checkov_reports:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
        failed = [
            f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for c in report["results"]["failed_checks"]
        ]
        assert not failed, f"{report['check_type']}: {failed}"
        for check in report["results"]["skipped_checks"]:
            reason = check["check_result"].get("suppress_comment") or ""
            assert len(reason) >= 30, f"{check['check_id']} on {check['resource']}: no reason"


@pytest.mark.slow
def test_hadolint_passes_on_the_dockerfile():
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
