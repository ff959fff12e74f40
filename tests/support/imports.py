"""What a Python file imports, read with `ast` (nothing is imported or run): for the tests of which
part of the repository may import which, and of what the connector's image and install need."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = re.compile(r"^(\..*|__pycache__|node_modules|build|.*\.egg-info)$")


def python_files(folder: Path) -> Iterator[Path]:
    """Every .py file under `folder`, hidden folders, caches and build output left out."""
    for path in sorted(folder.rglob("*.py")):
        if not any(SKIPPED.match(part) for part in path.relative_to(folder).parts[:-1]):
            yield path


def imports_of(source: str, package: list[str]) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module `source` imports, wherever it does (inside functions
    too); relative imports resolved against `package`, and `from m import n` counted as both m
    and m.n (n may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def imported(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """What the file `path`, imported as `module`, imports."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    return imports_of(path.read_text(), package)
