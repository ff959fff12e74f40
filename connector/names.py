"""When two person names are the same name: compared after NFKC, case folding and the Unicode
confusable skeleton (UTS #39, from ICU's SpoofChecker), with invisible characters dropped and
spaces collapsed, so that "Grace Hopper", "grace  hopper", "Ｇｒａｃｅ Ｈｏｐｐｅｒ", "Grace\u200b
Hopper" and "Grаce Hоpper" (Cyrillic а and о) are one person on a device; and a name nobody can
see is no name at all."""

from __future__ import annotations

import threading
import unicodedata

import icu

#: Categories that show nothing on their own: marks, format and control characters, separators.
_UNSEEN_CATEGORIES = frozenset({"Mn", "Me", "Mc", "Cf", "Cc", "Zs", "Zl", "Zp"})
_SPACES = frozenset({"Zs", "Zl", "Zp"})
_local = threading.local()


def _checker() -> icu.SpoofChecker:
    """One SpoofChecker per thread: ICU documents it as not safe to share while configured."""
    checker = getattr(_local, "checker", None)
    if checker is None:
        checker = _local.checker = icu.SpoofChecker()
    return checker


def name_key(name: str) -> str:
    """What two names must share to be the same person's (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    skeleton = unicodedata.normalize("NFKC", str(_checker().getSkeleton(0, folded))).casefold()
    kept = "".join(
        " " if unicodedata.category(ch) in _SPACES else ch
        for ch in skeleton
        if _seen(ch) or unicodedata.category(ch) in _SPACES
    )
    return " ".join(kept.split())


def _seen(ch: str) -> bool:
    ignorable = icu.Char.hasBinaryProperty(ch, icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT)
    return not ignorable and unicodedata.category(ch) not in _UNSEEN_CATEGORIES


def visible(name: str) -> bool:
    """False for a name made only of invisible, combining or default-ignorable characters."""
    return any(_seen(ch) for ch in unicodedata.normalize("NFKC", name))
