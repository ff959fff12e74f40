"""The connector's one TOML file.

schema.py declares every field once (type, default, bounds, meaning) in the frozen dataclasses
the rest of the connector reads; loading.py reads and checks a file by those declarations, naming
every bad field in one message; checks.py lists every problem of a file, its secrets included
(`admin check-config`, and the service before it takes a changed file); edits.py holds the
administrator's edits (add or remove a device).
README's table of fields is printed by `python -m connector config-reference`.
"""

from ..device import TlsPolicy
from .checks import Checked, check, problems
from .edits import add_device, remove_device
from .loading import CONFIG_ENV, config_path, load_config
from .schema import (
    ConnectorConfig,
    DeviceConfig,
    DeviceDefaults,
    FunctionConfig,
    LogConfig,
    PolicyConfig,
    ProvisioningConfig,
    ServerConfig,
    StoreConfig,
    WebexConfig,
    decode_store_key,
    reference,
)

__all__ = [
    "CONFIG_ENV",
    "Checked",
    "ConnectorConfig",
    "DeviceConfig",
    "DeviceDefaults",
    "FunctionConfig",
    "LogConfig",
    "PolicyConfig",
    "ProvisioningConfig",
    "ServerConfig",
    "StoreConfig",
    "TlsPolicy",
    "WebexConfig",
    "add_device",
    "check",
    "config_path",
    "decode_store_key",
    "load_config",
    "problems",
    "reference",
    "remove_device",
]
