"""The connector's state, in SQLite (one connector) or PostgreSQL (any number sharing it)."""

from .core import Store
from .records import (
    AdminInfo,
    AuditEntry,
    Decision,
    DeviceWebSession,
    Enrollment,
    Gate,
    LockoutState,
    PersonInfo,
    Reference,
    ReferenceInfo,
    Session,
    Settlement,
)
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "AdminInfo",
    "AuditEntry",
    "Decision",
    "DeviceWebSession",
    "Enrollment",
    "Gate",
    "LockoutState",
    "PersonInfo",
    "Reference",
    "ReferenceInfo",
    "Session",
    "Settlement",
    "Store",
]
