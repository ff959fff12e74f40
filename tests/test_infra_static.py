"""Static checks of the deployment files, with no cloud access: the Terraform module, deploy.sh,
the connector's container image and its systemd unit agree with the code and pass their linters.

checkov, hadolint and shellcheck come from the infra venv (requirements-infra.txt): $INFRA_BIN,
else .venv-infra/bin, else PATH. A missing linter fails the test with the install command;
only gcloud and systemd-analyze are used where the machine has them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "infra" / "terraform"
DEPLOY = ROOT / "infra" / "deploy.sh"
DOCKERFILE = ROOT / "infra" / "connector" / "Dockerfile"
HEALTHCHECK = ROOT / "infra" / "connector" / "healthcheck.py"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "infra" / "systemd" / "faceid-connector.service"
CONFIG_PY = ROOT / "function" / "faceverify" / "config.py"
MAIN_PY = ROOT / "function" / "main.py"

# Variables the function reads that are not tuning: the engine switch and the key's two routes.
NOT_TUNING = {"FACE_ENGINE", "MXFACE_KEY", "MXFACE_KEY_SECRET"}


def tool(name: str) -> str:
    """The linter from the infra venv, else PATH; absent means the setup is wrong: fail."""
    bin_dir = Path(os.environ.get("INFRA_BIN") or ROOT / ".venv-infra" / "bin")
    for candidate in (bin_dir / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(
        f"{name} not found in {bin_dir} or on PATH: build the infra venv "
        f"(python3 -m venv .venv-infra && .venv-infra/bin/pip install -r requirements-infra.txt)"
    )


def optional_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed on this machine")
    return path


# --- Terraform ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> dict[str, list[Any]]:
    """All .tf files merged by top-level block type, strings without their HCL quotes."""
    import hcl2

    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    merged: dict[str, list[Any]] = {}
    files = sorted(TF_DIR.glob("*.tf"))
    assert files, f"no Terraform files in {TF_DIR}"
    for path in files:
        with path.open() as f:
            for kind, blocks in hcl2.load(f, serialization_options=options).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def resources(tf: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in tf.get("resource", []):
        for name, body in block.get(kind, {}).items():
            found[name] = body
    return found


def variables(tf: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    return {name: body for block in tf["variable"] for name, body in block.items()}


def the_function(tf: dict[str, list[Any]]) -> dict[str, Any]:
    functions = resources(tf, "google_cloudfunctions2_function")
    assert list(functions) == ["verify"], "exactly one function, named verify"
    return functions["verify"]


def env_names_read_by_function() -> set[str]:
    """Names config.py reads (env.get("X"), _number(env, "X", ...), _integer(env, "X", ...))."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(CONFIG_PY.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        reader = (isinstance(func, ast.Attribute) and func.attr == "get") or (
            isinstance(func, ast.Name) and func.id in ("_number", "_integer")
        )
        if reader:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.update(re.findall(r"^[A-Z][A-Z0-9_]+$", arg.value))
    assert "FACE_ENGINE" in names, "could not find the variables config.py reads"
    return names


def functions_framework_reads_threads() -> bool:
    import functions_framework

    source = Path(functions_framework.__file__).parent / "_http" / "gunicorn.py"
    return '"THREADS"' in source.read_text()


def tf_function_settings_names(tf: dict[str, list[Any]]) -> set[str]:
    condition = variables(tf)["function_settings"]["validation"][0]["condition"]
    return set(re.findall(r'"([A-Z][A-Z0-9_]+)"', condition))


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
    locals_ = {k: v for block in tf["locals"] for k, v in block.items()}
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
    locals_ = {k: v for block in tf["locals"] for k, v in block.items()}
    assert service["max_instance_request_concurrency"] == "${local.concurrency}"
    assert "THREADS = tostring(local.concurrency)" in locals_["environment"]
    profiles = locals_["engine_profiles"]
    assert profiles["local"]["memory"] == "2Gi"
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


def test_mxface_key_reaches_the_function_by_pinned_secret_or_secret_name(tf):
    service = the_function(tf)["service_config"][0]
    pinned = service["dynamic"][0]["secret_environment_variables"]
    assert pinned["for_each"] == "${local.pinned_key ? [var.mxface_key_version] : []}"
    assert pinned["content"][0]["version"] == "${secret_environment_variables.value}"
    locals_ = {k: v for block in tf["locals"] for k, v in block.items()}
    assert (
        'MXFACE_KEY_SECRET = "projects/${var.project_id}/secrets/${var.mxface_key_secret_id}'
        '/versions/${var.mxface_key_version}"' in locals_["environment"]
    )
    from faceverify.secrets import SECRET_VERSION_RE

    assert SECRET_VERSION_RE.match("projects/p/secrets/faceid-mxface-key/versions/latest")


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


# --- deploy.sh -----------------------------------------------------------------------------------


def deploy_dry_run(*args: str, env: dict[str, str] | None = None) -> str:
    argv = ["bash", str(DEPLOY), "--project", "acme-prod", "--region", "europe-west1", "--dry-run"]
    result = subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def gcloud_commands(output: str) -> Iterator[tuple[bool, list[str]]]:
    """(conditional, argv) for each printed command."""
    for line in output.splitlines():
        stripped = line.strip()
        conditional = stripped.startswith("(if absent) ")
        stripped = stripped.removeprefix("(if absent) ")
        if stripped.startswith("+ "):
            argv = shlex.split(stripped[2:])
            assert argv[0] == "gcloud", line
            yield conditional, argv


def flag(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def deploy_command(output: str) -> list[str]:
    found = [argv for _, argv in gcloud_commands(output) if argv[1:3] == ["functions", "deploy"]]
    assert len(found) == 1
    return found[0]


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
    assert flag(local, "memory") == "2Gi"
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
    locals_ = {k: v for block in tf["locals"] for k, v in block.items()}
    profile = locals_["engine_profiles"]["mxface"]
    assert flag(deploy, "concurrency") == str(profile["concurrency"])
    assert flag(deploy, "cpu") == profile["cpu"]
    assert flag(deploy, "timeout") == f"{declared['timeout_seconds']['default']}s"
    assert flag(deploy, "max-instances") == str(declared["max_instances"]["default"])
    assert flag(deploy, "ingress-settings") == "all"
    tf_apis = set(re.findall(r'"([a-z]+\.googleapis\.com)"', (TF_DIR / "main.tf").read_text()))
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


# --- linters over the whole infra/ tree ----------------------------------------------------------


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


def test_hadolint_passes_on_the_dockerfile():
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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


# --- the connector's container -------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_image_is_pinned_non_root_and_checks_its_health_with_python():
    steps = dockerfile_instructions()
    base = [arg for op, arg in steps if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"python:3\.12\.\d+-slim-[a-z]+", base[0]), base
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = next(arg for op, arg in steps if op == "HEALTHCHECK")
    assert '"python", "/opt/faceid/healthcheck.py"' in health
    copies = [arg.split() for op, arg in steps if op == "COPY"]
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
    installs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert installs == ["pip install --no-cache-dir --requirement /opt/faceid/requirements.txt"]
    assert ["connector/requirements.txt", "/opt/faceid/requirements.txt"] in copies
    assert not any("function/requirements.txt" in arg for _, arg in steps)
    assert steps[-2:] == [("ENTRYPOINT", '["python", "-m", "connector"]'), ("CMD", '["serve"]')]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers what lies below it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_skips_the_heavy_and_private_but_keeps_what_the_image_copies():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for skipped in (".venv/bin/python", ".git/HEAD", "tests/test_x.py", "bench/run.py",
                    "connector/__pycache__/app.cpython-312.pyc", "faceid.db", "state/faceid.db-wal",
                    "infra/terraform/terraform.tfstate", "sa-key.json"):  # fmt: skip
        assert dockerignore_excludes(skipped, patterns), skipped
    copied = [arg.split()[:-1] for op, arg in dockerfile_instructions() if op == "COPY"]
    for sources in copied:
        for source in sources:
            files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py")
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert not dockerignore_excludes(rel, patterns), rel


def test_connector_imports_need_only_the_connector_requirements():
    """The image installs connector/requirements.txt alone: importing every connector module
    must not need a package only the function requires (dlib, numpy, functions-framework)."""
    from importlib.metadata import distributions

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    def names(path: Path) -> set[str]:
        found = set()
        for line in path.read_text().splitlines():
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
            if match:
                found.add(canonical(match.group(1)))
        return found

    function_only = names(ROOT / "function/requirements.txt") - names(
        ROOT / "connector/requirements.txt"
    )
    assert "dlib-bin" in function_only

    def top_levels(dist: Any) -> set[str]:
        tops = set()
        for file in dist.files or []:
            top = file.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith((".dist-info", ".pth")):
                tops.add(top.split(".")[0])
        return tops

    blocked: set[str] = set()
    shared: set[str] = set()
    for dist in distributions():
        target = blocked if canonical(dist.metadata["Name"]) in function_only else shared
        target |= top_levels(dist)
    modules = sorted(blocked - shared)  # namespace packages such as google stay importable
    assert {"dlib", "numpy", "functions_framework"} <= set(modules), modules
    script = (
        "import sys, pkgutil, importlib, connector\n"
        f"sys.modules.update(dict.fromkeys({modules!r}))\n"
        "for info in pkgutil.walk_packages(connector.__path__, 'connector.'):\n"
        "    importlib.import_module(info.name)\n"
        "importlib.import_module('connector.__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_connector_cli_has_the_serve_command_the_image_and_unit_run():
    result = subprocess.run(
        [sys.executable, "-m", "connector", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


class _Health(BaseHTTPRequestHandler):
    status = 200
    body = b'{"status": "ok"}'

    def do_GET(self) -> None:
        code = 404 if self.path != "/healthz" else self.status
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "faceid.toml"
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\n'
        '[function]\nurl = "https://function.invalid/"\n'
        '[store]\npath = "faceid.db"\nkey = "env:FACEID_STORE_KEY"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "FACEID_HEALTH_URL"}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "FACEID_CONFIG": str(config)},
        check=False,
    )


@pytest.mark.parametrize(
    ("status", "body", "healthy"),
    [
        (200, b'{"status": "ok", "checks": {"store": "ok"}}', True),
        (503, b'{"status": "degraded"}', False),
        (200, b"<html>not the connector</html>", False),
    ],
)
def test_container_healthcheck_follows_the_configured_port_and_status(
    tmp_path, health_server, monkeypatch, status, body, healthy
):
    monkeypatch.setattr(_Health, "status", status)
    monkeypatch.setattr(_Health, "body", body)
    result = run_healthcheck(tmp_path, health_server.server_address[1])
    assert (result.returncode == 0) is healthy, result.stdout + result.stderr


def test_container_healthcheck_fails_when_nothing_listens(tmp_path):
    from tests.procs import free_port

    result = run_healthcheck(tmp_path, free_port())
    assert result.returncode == 1
    assert "unhealthy" in result.stdout


# --- the systemd unit ----------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_runs_a_dedicated_user_with_the_hardening_required():
    d = unit_directives()
    expected = {
        "User": "faceid",
        "StateDirectory": "faceid",
        "ReadWritePaths": "/var/lib/faceid",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure",
        "EnvironmentFile": "-/etc/faceid/faceid.env",
        "Environment": "FACEID_CONFIG=/etc/faceid/faceid.toml",
    }
    for key, value in expected.items():
        assert value in d.get(key, []), f"{key}={value}"
    assert d["SystemCallFilter"][0] == "@system-service"
    assert d["ExecStart"] == ["/opt/faceid/venv/bin/python -m connector serve"]
    assert "AmbientCapabilities" in d and d["AmbientCapabilities"] == [""]


@pytest.fixture
def unit_with_real_python(tmp_path) -> Path:
    """The unit as shipped, except ExecStart points at an interpreter that exists here (verify
    refuses a missing executable)."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/faceid/venv/bin/python", sys.executable))
    return copy


def test_systemd_analyze_verify_accepts_the_unit(unit_with_real_python):
    analyze = optional_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", str(unit_with_real_python)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_with_real_python.parent,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_rates_the_unit_exposure_low(unit_with_real_python):
    analyze = optional_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit_with_real_python)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_with_real_python.parent,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    if match is None and "--offline" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline mode")
    assert match is not None, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout[-3000:]


# Runs argv[1:] with PR_SET_MDWE (PR_MDWE_REFUSE_EXEC_GAIN) set: inherited across fork and exec,
# it refuses the writable+executable mappings systemd's MemoryDenyWriteExecute= refuses.
UNDER_MDWE = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    print("no-mdwe"); sys.exit(3)
os.execv(sys.argv[1], sys.argv[1:])
"""

LIBRARY_PROBE = """
import ctypes, io, mmap, os, sqlite3, ssl, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("writable+executable memory was allowed"); sys.exit(1)
except OSError:
    pass
import pkgutil, importlib, connector
for info in pkgutil.walk_packages(connector.__path__, "connector."):
    importlib.import_module(info.name)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = AESGCM(AESGCM.generate_key(256)); nonce = os.urandom(12)
assert key.decrypt(nonce, key.encrypt(nonce, b"crop", None), None) == b"crop"
from PIL import Image
buf = io.BytesIO(); Image.new("RGB", (64, 48)).save(buf, "JPEG")
Image.open(io.BytesIO(buf.getvalue())).load()
sqlite3.connect(":memory:").execute("create table t (x)")
ssl.create_default_context()
import grpc; grpc.insecure_channel("127.0.0.1:9").close()
import google.auth.transport.requests, gunicorn.app.base, requests
assert ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)(1) == 2
print("ok")
"""


def under_mdwe(*argv: str) -> list[str]:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_MDWE is Linux only")
    probe = subprocess.run(
        [sys.executable, "-c", UNDER_MDWE, "/bin/true"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    return [sys.executable, "-c", UNDER_MDWE, *argv]


def test_connector_libraries_run_without_writable_executable_memory():
    """Backs MemoryDenyWriteExecute=yes in the unit: cffi (cryptography), Pillow, grpc, sqlite
    and ctypes callbacks work when the kernel refuses writable+executable memory."""
    result = subprocess.run(
        under_mdwe(sys.executable, "-c", LIBRARY_PROBE),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_connector_serves_health_without_writable_executable_memory(tmp_path):
    """The real service (gunicorn, its forked worker, the SQLite store) under the same rule,
    probed by the container's health check."""
    from tests.procs import ServerProcess, free_port

    port = free_port()
    config = tmp_path / "faceid.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nthreads = 2\n'
        '[function]\nurl = "https://function.invalid/"\nauth = "none"\n'
        '[store]\npath = "faceid.db"\nkey = "env:FACEID_STORE_KEY"\n'
    )
    env = {
        "FACEID_CONFIG": str(config),
        "FACEID_STORE_KEY": secrets.token_hex(32),
        "FACEID_HEALTH_URL": None,
    }
    argv = under_mdwe(sys.executable, "-m", "connector", "serve")
    with ServerProcess(argv, env=env, cwd=tmp_path).start() as server:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=60)
        health = subprocess.run(
            [sys.executable, str(HEALTHCHECK)],
            capture_output=True,
            text=True,
            timeout=30,
            env=server.env,
            check=False,
        )
        assert health.returncode == 0, health.stdout + server.stdout() + server.stderr()
