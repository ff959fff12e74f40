"""The ways a Secret Manager secret breaks (on devkit's fake), each with the words the function's
refusal must name: shared by the tests of comparisons and of /ready."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Breakage = Callable[[Any, str], None]


def deny(sm: Any, name: str) -> None:
    sm.deny(name)


def delete(sm: Any, name: str) -> None:
    sm.delete_secret(name)


def disable(sm: Any, name: str) -> None:
    sm.set_state(f"{name}/versions/1", "DISABLED")


def destroy(sm: Any, name: str) -> None:
    sm.set_state(f"{name}/versions/1", "DESTROYED")


def disable_newest(sm: Any, name: str) -> None:
    sm.set_state(sm.add_version(name, "newer-key"), "DISABLED")  # latest never falls back


def corrupt(sm: Any, name: str) -> None:
    sm.corrupt(f"{name}/versions/1")


def empty(sm: Any, name: str) -> None:
    sm.add_version(name, "  \n")


#: (breakage, a phrase of the refusal it must cause)
BREAKAGES: dict[str, tuple[Breakage, str]] = {
    "denied": (deny, "permission denied"),
    "deleted": (delete, "was not found"),
    "disabled": (disable, "disabled or destroyed"),
    "destroyed": (destroy, "disabled or destroyed"),
    "newest disabled": (disable_newest, "disabled or destroyed"),
    "corrupt": (corrupt, "CRC32C"),
    "empty": (empty, "is empty"),
}


def cases(*names: str) -> list[tuple[Breakage, str]]:
    """The named breakages, for `pytest.mark.parametrize(("breakage", "phrase"), ...)`."""
    return [BREAKAGES[name] for name in names]
