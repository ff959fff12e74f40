"""Signed verify answers: the macro unlocks only on an answer it can check with its own token."""

from __future__ import annotations

import hashlib
import hmac


def signature(
    token: str, serial: str, nonce: str, verdict: str, person: str | None, expires_at: int
) -> str:
    """HMAC-SHA256 over `serial|nonce|verdict|person|expires_at`, keyed with the device token."""
    message = f"{serial}|{nonce}|{verdict}|{person or ''}|{expires_at}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
