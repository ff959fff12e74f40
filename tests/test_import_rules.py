"""Which part of the repository may import which, read from the source with `ast` (nothing is
imported or run): production code imports no development code, `devkit/` serves `demo/`,
`bench/` and `tests/`, which never import each other, no test module imports another, and the
connector ships no device simulator."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.imports import ROOT, imported, imports_of, python_files

DEVELOPMENT = {"devkit", "demo", "bench", "tests"}
#: Top-level folder -> the top-level packages its modules must not import.
MAY_NOT_IMPORT = {
    "function": DEVELOPMENT,
    "connector": DEVELOPMENT,
    "infra": DEVELOPMENT,
    "devkit": {"demo", "bench", "tests"},
    "demo": {"bench", "tests"},
    "bench": {"demo", "tests"},
    "tests": {"demo", "bench"},
}
TEST_MODULE = re.compile(r"^tests\.test_\w+(\.|$)")


def imports(path: Path) -> list[tuple[int, str]]:
    """What a file imports, as the name it has from the repository root (tests.support.x)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return list(imported(path, module))


def violations(folder: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in python_files(ROOT / folder):
        for line, name in imports(path):
            if name.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_every_top_level_folder_with_python_code_has_its_rule():
    folders = {
        path.relative_to(ROOT).parts[0] for path in python_files(ROOT) if path.parent != ROOT
    }
    assert folders == set(MAY_NOT_IMPORT)


def test_no_part_imports_what_its_rule_forbids():
    found = [
        v for folder, forbidden in MAY_NOT_IMPORT.items() for v in violations(folder, forbidden)
    ]
    assert found == []


def test_nothing_outside_the_tests_runs_a_tests_module_as_a_process():
    """`python -m tests.x` from a benchmark or the demo would be an import by other means."""
    found = []
    for folder in set(MAY_NOT_IMPORT) - {"tests"}:
        for path in python_files(ROOT / folder):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                value = node.value if isinstance(node, ast.Constant) else None
                if isinstance(value, str) and re.fullmatch(r"tests(\.\w+)+", value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} names {value}")
    assert found == []


def test_no_test_module_imports_another_test_module():
    """Helpers that tests share live in tests/support/ or are fixtures of tests/conftest.py."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in python_files(ROOT / "tests")
        for line, name in imports(path)
        if TEST_MODULE.match(name)
    ]
    assert found == []


def test_the_reader_finds_imports_of_every_form():
    """So that an empty list of violations means something."""
    source = (
        "import a.b\nfrom c import d\nfrom . import e\nfrom ..f import g\ndef h():\n    import i\n"
    )
    names = {name for _, name in imports_of(source, ["x", "y"])}
    assert names == {"a.b", "c", "c.d", "x.y", "x.y.e", "x.f", "x.f.g", "i"}


def test_the_connector_package_holds_no_device_simulator():
    modules = list(python_files(ROOT / "connector"))
    assert modules and not [p for p in modules if "simulat" in p.name]
    for path in modules:
        tree = ast.parse(path.read_text(), str(path))
        classes = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
        assert not [name for name in classes if "Simulator" in name], path
        assert "http.server" not in {name for _, name in imports(path)}, path
    assert (ROOT / "devkit" / "simulator.py").is_file()
