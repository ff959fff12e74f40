"""Offline unlock codes: what `admin unlock-code` prints and the macro checks with no network.

A code is HMAC-SHA256, keyed with the device's protocol key, of the serial and a time step (the
step in which the code stops working), truncated to 8 digits as HOTP does (RFC 4226 §5.3). Only
the device and the connector hold the key, so only they can make a code; the serial in the
message keeps a code of one device from opening another; nothing is stored, since the code
follows from the key and the time. The macro implements the same construction (macro/faceid.js,
checked against the vectors in tests/test_unlock_codes.py).

Steps are 5 minutes long, not HOTP/TOTP's 30 s: a code is read out over the phone and must keep
working for as long as the administrator chose (up to 12 hours), and the device checks every
step up to that far ahead. Wider steps mean fewer candidates per check, so a guess is less likely
to hit one (the macro's waits after wrong codes do the rest).
"""

from __future__ import annotations

import hashlib
import hmac
import math

#: One time step, in seconds: a code is valid until the end of its step.
STEP_S = 300
#: The longest a code may be issued for, and how far ahead the macro looks.
MAX_MINUTES = 720
DEFAULT_MINUTES = 10
DIGITS = 8
#: Clock difference between the connector and the device the macro tolerates, in seconds.
GRACE_S = 120
CONTEXT = "FACEID-UNLOCK-CODE-V1"


def expires_step(now: float, minutes: int) -> int:
    """The step a code issued at `now` for `minutes` names: the first step boundary at or after
    now + minutes, so a code never works for less than was asked (at most 5 minutes more)."""
    if not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"an unlock code lasts 1 to {MAX_MINUTES} minutes, not {minutes}")
    return math.ceil((now + minutes * 60) / STEP_S)


def code_for(key: bytes, serial: str, step: int) -> str:
    """The 8-digit code of the device with `key` and `serial` that expires at step `step`."""
    message = f"{CONTEXT}\n{serial}\n{step}".encode()
    mac = hmac.new(key, message, hashlib.sha256).digest()
    offset = mac[31] & 0x0F
    number = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(number % 10**DIGITS).zfill(DIGITS)


def grouped(code: str) -> str:
    """'1234 5678': easier to read aloud and to type back."""
    return f"{code[:4]} {code[4:]}"
