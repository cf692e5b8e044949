"""tesaiot-data: stream live TESAIoT telemetry into pandas, Parquet and Jupyter."""

from importlib.metadata import PackageNotFoundError, version

from tesaiot_data.errors import (
    AuthError,
    BrokerNotFoundError,
    ConfigError,
    ConnectError,
    ConnectTimeoutError,
    SubscribeError,
    TesaiotError,
    TLSError,
    TokenError,
)
from tesaiot_data.settings import BrokerURL, Settings, mask_token

try:
    __version__ = version("tesaiot-data")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AuthError",
    "BrokerNotFoundError",
    "BrokerURL",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "Settings",
    "SubscribeError",
    "TLSError",
    "TesaiotError",
    "TokenError",
    "__version__",
    "mask_token",
]
