"""Shared by the deployment tests: where the files are, the linters, the Terraform module parsed
once, and deploy.sh's dry run read back as argv lists.

checkov, hadolint and shellcheck come from the infra venv (requirements-infra.txt): $INFRA_BIN,
else .venv-infra/bin, else PATH. A missing linter fails the test with the install command;
gcloud, terraform and systemd-analyze belong to the machine, not to pip: used where present.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
DEPLOY = ROOT / "infra" / "deploy.sh"
DOCKERFILE = ROOT / "infra" / "connector" / "Dockerfile"
HEALTHCHECK = ROOT / "infra" / "connector" / "healthcheck.py"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "infra" / "systemd" / "faceid-connector.service"
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


@functools.cache
def terraform_module() -> dict[str, list[Any]]:
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


def locals_of(tf: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: value for block in tf["locals"] for name, value in block.items()}


def the_function(tf: dict[str, list[Any]]) -> dict[str, Any]:
    functions = resources(tf, "google_cloudfunctions2_function")
    assert list(functions) == ["verify"], "exactly one function, named verify"
    return functions["verify"]


def env_names_read_by_function() -> set[str]:
    """The variables load_settings reads: each declared once, on its Settings field."""
    from faceverify.config import variables

    return {v.name for _, v in variables()}


def functions_framework_reads_threads() -> bool:
    import functions_framework

    source = Path(functions_framework.__file__).parent / "_http" / "gunicorn.py"
    return '"THREADS"' in source.read_text()


def tf_function_settings_names(tf: dict[str, list[Any]]) -> set[str]:
    condition = variables(tf)["function_settings"]["validation"][0]["condition"]
    return set(re.findall(r'"([A-Z][A-Z0-9_]+)"', condition))


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
