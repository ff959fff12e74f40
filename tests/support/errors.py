"""The expected failure a call raises, for tests that check its code and message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from faceid_core.errors import FaceIdError


def error_of(call: Callable[[], Any]) -> FaceIdError:
    with pytest.raises(FaceIdError) as caught:
        call()
    return caught.value
