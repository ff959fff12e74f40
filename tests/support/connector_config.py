"""The connector's TOML file as the configuration tests write it: the smallest valid file, and a
load that must fail, read back as the message after the file's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from faceid_core.errors import FaceIdError

from connector.config import load_config

BASE = """\
[function]
url = "https://europe-west1-p.cloudfunctions.net/verify_faces"

[store]
path = "state/faceid.db"
key = "env:FACEID_TEST_STORE_KEY"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faceid.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    """What loading `text` refuses, without the file name every message starts with."""
    path = write(tmp_path, text)
    with pytest.raises(FaceIdError) as caught:
        load_config(path)
    assert caught.value.code == "config_error"
    assert caught.value.message.startswith(f"{path}: ")
    return caught.value.message[len(f"{path}: ") :]
