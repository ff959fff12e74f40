"""Running the admin commands as an administrator does (`python -m connector admin ...`)."""

from __future__ import annotations

from devkit.stack import Stack


def admin_ok(stack: Stack, *args: str) -> str:
    """The command's whole output (stdout, then stderr); it must succeed."""
    code, output = stack.admin(*args)
    assert code == 0, output
    return output
