"""The macro (JavaScript, on the device) and the connector (Python) apply one serial rule, one
device-key rule and one person-name rule: the macro's own functions (`cleanSerial`,
`deviceKeyBytes`, `cleanName`, `checkVerifyAnswer`, `authorization`), run under Node by
macro/testing/rules.mjs, against `connector.validation` and `connector.protocol`, on shared
tables and on every Unicode code point.

Serials and keys agree exactly. Names agree on everything a person types on a keyboard: spaces
around, case, markup, slashes, control characters, length in characters. Where the names differ,
the table says why. The connector is the stricter one: besides the macro's rule it refuses any
character Python does not call printable (spaces other than U+0020 inside a name, format
characters such as U+200B or the U+200D of emoji sequences, private-use, unassigned and
surrogate code points), names longer than 64 characters once NFC-normalised, and, by design,
names with nothing visible (its ICU check, connector/names.py). The macro then sends the name,
the connector answers 400 `bad_request` before any snapshot, and the person reads the macro's
`serviceError` message ("The face login service failed...") instead of `badName`: a wrong
message, nothing unlocked and nothing stored. The other way round the macro is stricter only
where Python's `str.strip()` removes a character that JavaScript's `trim()` leaves and the macro
then refuses as a control character (U+001C..U+001F, U+0085 at either end), and for names over
64 code points that NFC makes short enough: such a name is refused on the device, nothing sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector import unlockcode, validation
from connector.config.schema import MAX_CONNECTOR_URLS
from connector.protocol import Authenticator, ReplayCache, decode_key, encode_key
from connector.store import Store

REPO = Path(__file__).resolve().parents[1]
RULES_JS = REPO / "macro" / "testing" / "rules.mjs"
NODE = shutil.which("node")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NODE is None, reason="Node.js 20.6 or later runs the macro"),
]

LAST_CODE_POINT = 0x10FFFF
LAST_BMP = 0xFFFF
#: What Python's str.isprintable() refuses beyond the macro's control characters (Cc).
UNPRINTABLE_NOT_CONTROL = frozenset({"Zs", "Zl", "Zp", "Cf", "Cs", "Co", "Cn"})
#: Python's str.strip() removes these, JavaScript's trim() does not: the macro then refuses them.
STRIPPED_ONLY_BY_PYTHON = frozenset({0x1C, 0x1D, 0x1E, 0x1F, 0x85})
BOM = 0xFEFF  # trim() removes it (and the macro sends the rest); it is no space for Python


@dataclass(frozen=True)
class Name:
    typed: Any  # what the person typed (None, 42: not a string at all)
    sent: str | None  # what the macro sends; None: refused on the device (MESSAGES.badName)
    kept: str | None  # what the connector keeps of what it gets; None: 400 bad_request
    why: str = ""  # required when exactly one side refuses


# `kept` is the connector's verdict on `sent`, or on `typed` when the macro sends nothing (what it
# would have answered had the macro let it through).
NAMES = [
    Name("Alice Example", "Alice Example", "Alice Example"),
    Name("  Alice Example\t", "Alice Example", "Alice Example"),
    Name("Alice\n", "Alice", "Alice"),
    Name("\u3000Alice\u3000", "Alice", "Alice"),  # ideographic spaces around: trimmed by both
    Name("\ufeffAlice", "Alice", "Alice"),  # the macro trims a BOM; the connector never sees it
    # Case is kept as typed on both sides: "alice" and "ALICE" being one person is the store's
    # rule (connector/names.py, name_taken), not input validation.
    Name("alice EXAMPLE", "alice EXAMPLE", "alice EXAMPLE"),
    Name("O'Brien-Smith", "O'Brien-Smith", "O'Brien-Smith"),
    Name("Zoë Ødegård 李 😀", "Zoë Ødegård 李 😀", "Zoë Ødegård 李 😀"),
    Name("Zoe\u0308", "Zoe\u0308", "Zo\u00eb"),  # the connector keeps the NFC form
    # Markup: '<', '>', '&' are not part of either rule; the '/' of a closing tag is.
    Name("<Alice & Bob>", "<Alice & Bob>", "<Alice & Bob>"),
    Name("<i>Alice</i>", None, None),
    Name("a/b", None, None),
    Name("back\\slash", None, None),
    Name("x" * 64, "x" * 64, "x" * 64),
    Name(" " + "x" * 64 + " ", "x" * 64, "x" * 64),
    Name("x" * 65, None, None),
    Name("😀" * 64, "😀" * 64, "😀" * 64),  # characters are counted, not UTF-16 units
    Name("😀" * 65, None, None),
    Name("", None, None),
    Name("   ", None, None),
    Name("\t\n", None, None),
    Name("tab\there", None, None),
    Name("line\nbreak", None, None),
    Name("nul\x00", None, None),
    Name("del\x7f", None, None),
    Name("csi\x9b", None, None),  # C1 control
    Name(None, None, None),
    Name(42, None, None),
    # The connector is stricter (see the module docstring for what the person then reads).
    Name("Grace\u00a0Hopper", "Grace\u00a0Hopper", None, "a no-break space inside: unprintable"),
    Name("Grace\u2009Hopper", "Grace\u2009Hopper", None, "a thin space inside: unprintable"),
    Name("Grace\u200bHopper", "Grace\u200bHopper", None, "zero-width space (Cf): unprintable"),
    Name("👩\u200d💻", "👩\u200d💻", None, "the joiner of an emoji sequence (Cf): unprintable"),
    Name("\u05e9\u05e8\u05d4\u200e", "\u05e9\u05e8\u05d4\u200e", None, "a LRM mark (Cf)"),
    Name("Ann\u2028Lee", "Ann\u2028Lee", None, "a line separator inside (Zl): unprintable"),
    Name("\ue000", "\ue000", None, "private use (Co): unprintable"),
    Name("A\ud83dB", "A\ud83dB", None, "a lone surrogate (Cs): unprintable"),
    Name("\u200b", "\u200b", None, "nothing visible: unprintable"),
    Name("\u0301\u0302", "\u0301\u0302", None, "only combining marks: the connector's ICU check"),
    Name("\u0f73" * 64, "\u0f73" * 64, None, "NFC makes 64 characters 128"),
    # The macro is stricter: refused on the device, nothing sent.
    Name("Alice\x1c", None, "Alice", "str.strip() removes U+001C, trim() does not"),
    Name("\x85Alice", None, "Alice", "str.strip() removes NEL (U+0085), trim() does not"),
    Name("e\u0301" * 40, None, "\u00e9" * 40, "80 code points as typed, 40 once NFC-normalised"),
]

SERIALS_VALID = ["FOC1234X5YZ", "SIM0000", "a", "_-_", "0", "A" * 64]
SERIALS_INVALID = [
    "",
    "A" * 65,
    "FOC 1234",
    "FOC1234\n",  # Python's "$" would allow this one; both use an end-of-text anchor
    "\nFOC1234",
    "FOC/1",
    "FOC.1",
    "\uff26OC1",  # fullwidth F
    "FOC1234\u200b",
    None,
    1234,
]

KEYS_BYTES = [bytes(32), b"\xff" * 32] + [hashlib.sha256(bytes([i])).digest() for i in range(30)]
KEYS_INVALID = [
    "",
    "A" * 42,
    "A" * 44,
    "A" * 42 + "=",
    "A" * 42 + "+",
    "A" * 42 + "B",  # stray low bits: not canonical
    "A" * 42 + "/",
    encode_key(bytes(32)) + "=",
    " " + encode_key(bytes(32)),  # start() trims the setting first; the key rule itself does not
]
SIGNED_TS = 1767225600
SIGNED_PATH = "/v1/verify"


def refused_as_bad_request(exc: Exception) -> bool:
    """The connector's refusal of an input: its error with the code bad_request (told by the code,
    wherever the error class lives; connector/app.py answers it with a 400)."""
    return getattr(exc, "code", None) == "bad_request"


def connector_verdict(rule: Callable[[Any], str], value: Any) -> str | None:
    """What the connector's input rule keeps of `value`, or None when it refuses it (a 400)."""
    try:
        return rule(value)
    except Exception as exc:
        if not refused_as_bad_request(exc):
            raise
        return None


def connector_keeps(value: Any) -> str | None:
    """The connector's verdict on a person name: the name it keeps, or None (a 400)."""
    return connector_verdict(validation.person, value)


def connector_serial(value: Any) -> str | None:
    return connector_verdict(validation.serial, value)


def connector_key(text: str) -> bytes | None:
    try:
        return decode_key(text)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def macro() -> dict[str, Any]:
    """One Node run of macro/testing/rules.mjs over every table here, and its code-point sweeps."""
    assert NODE is not None
    asked = {
        "names": [name.typed for name in NAMES],
        "serials": SERIALS_VALID + SERIALS_INVALID,
        "keys": [encode_key(key) for key in KEYS_BYTES] + KEYS_INVALID,
        "greet": sorted({name.kept for name in NAMES if name.kept is not None}),
        "signed": {
            "key": encode_key(KEYS_BYTES[2]),
            "serials": SERIALS_VALID,
            "ts": SIGNED_TS,
            "path": SIGNED_PATH,
        },
    }
    ran = subprocess.run(
        [NODE, str(RULES_JS)],
        input=json.dumps(asked),
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO / "macro",
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    answer: dict[str, Any] = json.loads(ran.stdout)
    return answer


@pytest.mark.parametrize("index", range(len(NAMES)), ids=[repr(n.typed)[:30] for n in NAMES])
def test_the_macro_sends_a_name_exactly_when_the_connector_keeps_it_or_the_table_says_why(
    macro, index
):
    case = NAMES[index]
    sent = macro["names"][index]
    assert sent == case.sent, "what the macro sends"
    kept = connector_keeps(case.typed if sent is None else sent)
    assert kept == case.kept, "what the connector keeps"
    if (sent is None) != (kept is None):
        assert case.why, "the two sides differ here: the table must say why"
    else:
        assert not case.why, "the two sides agree here: drop the explanation"
    if sent is not None and kept is not None:
        assert kept == unicodedata.normalize("NFC", sent), "kept as sent, up to NFC"


def test_on_every_code_point_names_differ_only_where_the_module_docstring_says(macro):
    sweep = macro["sweep"]
    assert sweep["trimmedAstral"] == []
    assert not any(chr(cp).isspace() for cp in range(LAST_BMP + 1, LAST_CODE_POINT + 1))
    unprintable = {
        cp
        for cp in range(LAST_CODE_POINT + 1)
        if unicodedata.category(chr(cp)) in UNPRINTABLE_NOT_CONTROL and cp != 0x20
    }
    forms = {
        "nameMiddle": (lambda c: f"A{c}B", LAST_CODE_POINT),
        "nameStart": (lambda c: f"{c}A", LAST_BMP),
        "nameEnd": (lambda c: f"A{c}", LAST_BMP),
    }
    for form, (make, last) in forms.items():
        refused = set(sweep[form]["refused"])
        changed = dict(sweep[form]["changed"])
        only_connector_refuses, only_macro_refuses = set(), set()
        for cp in range(last + 1):
            typed = make(chr(cp))
            if cp in refused:
                if connector_keeps(typed) is not None:
                    only_macro_refuses.add(cp)
                continue
            sent = changed.get(cp, typed)
            kept = connector_keeps(sent)
            if kept is None:
                only_connector_refuses.add(cp)
            else:
                assert kept == unicodedata.normalize("NFC", sent), (form, hex(cp))
        if form == "nameMiddle":
            assert only_connector_refuses == unprintable
            assert only_macro_refuses == set()
        else:  # at either end both trim every space but the BOM, which only trim() removes
            trimmed = {cp for cp in unprintable if chr(cp).isspace() or cp == BOM}
            assert only_connector_refuses == {cp for cp in unprintable if cp <= last} - trimmed
            assert only_macro_refuses == STRIPPED_ONLY_BY_PYTHON


def test_every_name_the_connector_keeps_the_macro_greets_on_a_match(macro):
    greeted = sorted({name.kept for name in NAMES if name.kept is not None})
    for person, outcome in zip(greeted, macro["greet"], strict=True):
        assert outcome == {"unlock": True, "message": f"Welcome, {person}"}, person
    kept_alone = [cp for cp in macro["sweep"]["greetRefused"] if connector_keeps(chr(cp))]
    assert kept_alone == [], "one-character names the connector keeps and the macro refuses"


def test_serials_follow_one_rule_on_both_sides(macro):
    asked = SERIALS_VALID + SERIALS_INVALID
    for serial, cleaned in zip(asked, macro["serials"], strict=True):
        assert cleaned == connector_serial(serial), repr(serial)
        assert (cleaned is not None) == (serial in SERIALS_VALID), repr(serial)
    accepted = {cp for cp in range(LAST_CODE_POINT + 1) if connector_serial(chr(cp)) is not None}
    assert set(macro["sweep"]["serialsAccepted"]) == accepted
    assert len(accepted) == 64  # A-Z, a-z, 0-9, '_' and '-'


def test_a_request_the_macro_signs_for_any_valid_serial_identifies_that_device(macro, tmp_path):
    key = KEYS_BYTES[2]
    store = Store.open(tmp_path / "faceid.db", os.urandom(32))
    for signed in macro["signed"]:
        serial = signed["serial"]
        authenticator = Authenticator(
            {serial: key}.get, ReplayCache(store), clock=lambda: float(SIGNED_TS)
        )
        caller = authenticator.identify(
            signed["authorization"], "POST", SIGNED_PATH, signed["body"].encode()
        )
        assert caller.serial == serial
        assert json.loads(signed["body"]) == {"serial": serial}


def test_every_key_the_connector_prints_the_macro_reads_and_no_other(macro):
    asked = [encode_key(key) for key in KEYS_BYTES] + KEYS_INVALID
    for text, read in zip(asked, macro["keys"], strict=True):
        expected = connector_key(text)
        assert read == (expected.hex() if expected is not None else None), repr(text)
    assert macro["keys"][: len(KEYS_BYTES)] == [key.hex() for key in KEYS_BYTES]


def test_the_macro_and_the_connector_share_the_unlock_code_and_fail_over_numbers(macro):
    assert macro["limits"] == {
        "codeStepS": unlockcode.STEP_S,
        "codeMaxMinutes": unlockcode.MAX_MINUTES,
        "codeDigits": unlockcode.DIGITS,
        "codeGraceS": unlockcode.GRACE_S,
        "codeMaxWaitS": validation.WAIT_MAX_S,
        "codeEventsPerReport": validation.MAX_CODE_EVENTS,
        "maxConnectors": MAX_CONNECTOR_URLS,
    }
