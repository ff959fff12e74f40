"""infra/deploy.sh: what its dry run would do, what it does against a gcloud stand-in, and that
gcloud and shellcheck accept it."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.infra import (
    DEPLOY,
    NOT_TUNING,
    ROOT,
    TF_DIR,
    deploy_command,
    deploy_dry_run,
    env_names_read_by_function,
    flag,
    gcloud_commands,
    locals_of,
    optional_tool,
    tf_function_settings_names,
    tool,
    variables,
)

pytestmark = pytest.mark.slow  # starts real processes


def test_deploy_dry_run_creates_only_after_a_describe_and_deploys_privately():
    output = deploy_dry_run("--engine", "mxface")
    commands = list(gcloud_commands(output))
    previous: list[str] | None = None
    creates = 0
    for conditional, argv in commands:
        if "create" in argv:
            creates += 1
            assert conditional, f"unconditional create: {argv}"
            assert previous is not None and "describe" in previous, argv
            assert previous[1 : previous.index("describe")] == argv[1 : argv.index("create")]
        previous = argv
    assert creates == 4  # two service accounts, two secret containers

    deploy = deploy_command(output)
    for expected in ("--gen2", "--trigger-http", "--no-allow-unauthenticated"):
        assert expected in deploy
    assert flag(deploy, "runtime") == "python312"
    assert flag(deploy, "entry-point") == "verify_faces"
    assert flag(deploy, "source") == str(ROOT / "function")
    assert flag(deploy, "service-account") == "faceid-fn-runtime@acme-prod.iam.gserviceaccount.com"
    assert flag(deploy, "memory") == "512Mi"
    assert "--allow-unauthenticated" not in deploy

    invoke = [a for _, a in commands if a[1:4] == ["run", "services", "add-iam-policy-binding"]]
    assert len(invoke) == 1
    assert flag(invoke[0], "role") == "roles/run.invoker"
    connector = "faceid-connector@acme-prod.iam.gserviceaccount.com"
    assert flag(invoke[0], "member") == f"serviceAccount:{connector}"
    for _, argv in commands:
        assert "projects/add-iam-policy-binding" not in " ".join(argv)
        assert argv[1:3] != ["projects", "add-iam-policy-binding"], "no project-wide grant"


def test_deploy_environment_matches_what_terraform_sets(tf):
    runtime = deploy_command(deploy_dry_run("--engine", "mxface", "--set", "UPSTREAM_TIMEOUT_S=8"))
    env = dict(item.split("=", 1) for item in flag(runtime, "set-env-vars").split(","))
    assert env == {
        "FACE_ENGINE": "mxface",
        "THREADS": flag(runtime, "concurrency"),
        "MXFACE_KEY_SECRET": "projects/acme-prod/secrets/faceid-mxface-key/versions/latest",
        "UPSTREAM_TIMEOUT_S": "8",
    }
    assert "--clear-secrets" in runtime

    pinned = deploy_command(deploy_dry_run("--engine", "mxface", "--key-delivery", "pinned",
                                           "--key-version", "3"))  # fmt: skip
    assert flag(pinned, "set-secrets") == "MXFACE_KEY=faceid-mxface-key:3"
    assert "MXFACE_KEY_SECRET" not in flag(pinned, "set-env-vars")

    local = deploy_command(deploy_dry_run())
    assert flag(local, "memory") == "1Gi"
    assert flag(local, "set-env-vars") == f"FACE_ENGINE=local,THREADS={flag(local, 'concurrency')}"
    assert "--clear-secrets" in local

    read = env_names_read_by_function()
    script = DEPLOY.read_text()
    allowed = set(re.search(r'ALLOWED_SETTINGS=" ([A-Z_ ]+) "', script).group(1).split())
    assert allowed == tf_function_settings_names(tf) == read - NOT_TUNING


def test_deploy_uses_the_names_terraform_uses(tf):
    output = deploy_dry_run("--engine", "mxface")
    declared = variables(tf)
    for name in (
        "function_name",
        "mxface_key_secret_id",
        "webex_bot_token_secret_id",
        "runtime_service_account_id",
        "connector_service_account_id",
    ):
        default = re.escape(declared[name]["default"])
        assert re.search(rf"(?<![\w-]){default}(?![\w-])", output), name
    deploy = deploy_command(output)
    locals_ = locals_of(tf)
    profile = locals_["engine_profiles"]["mxface"]
    assert flag(deploy, "concurrency") == str(profile["concurrency"])
    assert flag(deploy, "cpu") == profile["cpu"]
    assert flag(deploy, "timeout") == f"{declared['timeout_seconds']['default']}s"
    assert flag(deploy, "max-instances") == str(declared["max_instances"]["default"])
    assert flag(deploy, "ingress-settings") == "all"
    tf_apis = set(re.findall(r'"([a-z]+\.googleapis\.com)"', (TF_DIR / "locals.tf").read_text()))
    enable = next(a for _, a in gcloud_commands(output) if a[1:3] == ["services", "enable"])
    assert {a for a in enable if a.endswith(".googleapis.com")} == tf_apis


def test_deploy_output_carries_no_secret_value():
    planted = {
        name: secrets.token_urlsafe(24)
        for name in ("MXFACE_KEY", "FACEID_STORE_KEY", "WEBEX_BOT_TOKEN", "FACEID_DEVICE_PASSWORD")
    }
    output = deploy_dry_run(
        "--engine", "mxface", "--connector-reads-secret", "faceid-webex-bot-token", env=planted
    )
    for value in planted.values():
        assert value not in output
    for _, argv in gcloud_commands(output):
        assert "versions" not in argv and not flag(argv, "data-file"), "no secret value is written"


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "SECRET_MANAGER_EMULATOR_HOST=127.0.0.1:1"],
        ["--engine", "dlib"],
        ["--key-version", "0"],
        ["--ingress", "public"],
        ["--wif-principal", "user:someone@example.com"],
    ],
)
def test_deploy_refuses_values_the_function_or_gcloud_would_not_take(args):
    result = subprocess.run(
        ["bash", str(DEPLOY), "--project", "p", "--region", "r", "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "deploy.sh:" in result.stderr


FAKE_GCLOUD = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "describe" in args and args[0] in ("iam", "secrets"):
    name = args[args.index("describe") + 1]
    if os.environ.get("FAKE_GCLOUD_DESCRIBE") == "denied":
        sys.exit("ERROR: (gcloud) PERMISSION_DENIED: caller lacks permission on " + name)
    if os.environ.get("FAKE_GCLOUD_DESCRIBE") != "exists":
        sys.exit("ERROR: (gcloud) NOT_FOUND: " + name + " not found")
if args[:2] == ["functions", "describe"]:
    print("https://faceid-verify-abc123-ew.a.run.app")
"""


@pytest.fixture
def fake_gcloud(tmp_path) -> Any:
    """deploy.sh for real against a gcloud stand-in that logs its calls and answers describes
    with NOT_FOUND, success, or PERMISSION_DENIED."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "calls.jsonl"

    def run(describe: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        log.write_text("")
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_GCLOUD_LOG": str(log),
            "FAKE_GCLOUD_DESCRIBE": describe,
        }
        result = subprocess.run(
            ["bash", str(DEPLOY), "--project", "acme-prod", "--region", "europe-west1",
             "--engine", "mxface"],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return result, calls

    return run


def test_deploy_creates_what_is_missing_and_keeps_what_exists(fake_gcloud):
    result, calls = fake_gcloud("not-found")
    assert result.returncode == 0, result.stderr
    assert sum("create" in c for c in calls) == 4
    assert any(c[:2] == ["functions", "deploy"] for c in calls)
    assert result.stdout.rstrip().endswith("faceid-connector@acme-prod.iam.gserviceaccount.com")
    assert "https://faceid-verify-abc123-ew.a.run.app" in result.stdout

    result, calls = fake_gcloud("exists")
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if "create" in c]
    assert result.stdout.count("exists, kept") == 4
    assert any(c[:2] == ["functions", "deploy"] for c in calls), "an update still deploys"


def test_deploy_stops_on_a_describe_error_other_than_not_found(fake_gcloud):
    result, calls = fake_gcloud("denied")
    assert result.returncode != 0
    assert "PERMISSION_DENIED" in result.stderr
    assert not [c for c in calls if "create" in c or c[:2] == ["functions", "deploy"]]


def test_deploy_script_is_strict_and_shellcheck_clean():
    head = DEPLOY.read_text().splitlines()[:12]
    assert "set -euo pipefail" in head
    result = subprocess.run(
        [tool("shellcheck"), "--severity=style", str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_uses_only_flags_gcloud_knows():
    gcloud = optional_tool("gcloud")
    output = deploy_dry_run(
        "--engine", "mxface", "--wif-principal", "principal://iam.googleapis.com/x",
        "--connector-reads-secret", "s", "--build-service-account", "b@p.iam.gserviceaccount.com",
    )  # fmt: skip
    output += deploy_dry_run("--engine", "mxface", "--key-delivery", "pinned")
    depth = {"iam": 3, "run": 3, "services": 2, "secrets": 2, "functions": 2}
    used: dict[tuple[str, ...], set[str]] = {}
    for _, argv in gcloud_commands(output):
        path = tuple(argv[1 : 1 + depth[argv[1]]])
        used.setdefault(path, set()).update(a.split("=", 1)[0] for a in argv if a.startswith("--"))

    def help_text(path: tuple[str, ...]) -> str:
        result = subprocess.run(
            [gcloud, *path, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "PAGER": "cat"},
            check=False,
        )
        assert result.returncode == 0, f"gcloud {' '.join(path)}: {result.stderr[-500:]}"
        return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)

    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(used, pool.map(help_text, used), strict=True))
    for path, flags in used.items():
        for name in flags:
            negated = name.startswith("--no-") and f"--[no-]{name[5:]}" in helps[path]
            assert name in helps[path] or negated, f"gcloud {' '.join(path)} has no {name}"
