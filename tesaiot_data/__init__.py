"""tesaiot-data: stream live TESAIoT telemetry into pandas, Parquet and Jupyter.

The public names below are imported lazily, on first use, so that `import tesaiot_data`
stays quick and reads nothing (no environment, no .env file).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tesaiot_data._version import __version__

if TYPE_CHECKING:
    from tesaiot_data.client import ClientStats, TESAIoTMQTTClient
    from tesaiot_data.collector import Collector, CollectorStats, Recording
    from tesaiot_data.dashboard import Dashboard
    from tesaiot_data.errors import (
        AuthError,
        BrokerNotFoundError,
        ConfigError,
        ConnectError,
        ConnectTimeoutError,
        NotARecordingError,
        RecordingError,
        StreamError,
        SubscribeError,
        TesaiotError,
        TLSError,
        TokenError,
    )
    from tesaiot_data.messages import RawMessage, Reject, RejectReason
    from tesaiot_data.parquet import load_recording, load_rejects, read_metadata
    from tesaiot_data.parsing import ParseOptions, Row, parse_message
    from tesaiot_data.settings import BrokerURL, Settings, mask_token

_EXPORTS = {
    "client": ("ClientStats", "TESAIoTMQTTClient"),
    "collector": ("Collector", "CollectorStats", "Recording"),
    "dashboard": ("Dashboard",),
    "errors": (
        "AuthError",
        "BrokerNotFoundError",
        "ConfigError",
        "ConnectError",
        "ConnectTimeoutError",
        "NotARecordingError",
        "RecordingError",
        "StreamError",
        "SubscribeError",
        "TLSError",
        "TesaiotError",
        "TokenError",
    ),
    "messages": ("RawMessage", "Reject", "RejectReason"),
    "parsing": ("ParseOptions", "Row", "parse_message"),
    "settings": ("BrokerURL", "Settings", "mask_token"),
    "parquet": ("load_recording", "load_rejects", "read_metadata"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AuthError",
    "BrokerNotFoundError",
    "BrokerURL",
    "ClientStats",
    "Collector",
    "CollectorStats",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "Dashboard",
    "NotARecordingError",
    "ParseOptions",
    "RawMessage",
    "Recording",
    "RecordingError",
    "Reject",
    "RejectReason",
    "Row",
    "Settings",
    "StreamError",
    "SubscribeError",
    "TESAIoTMQTTClient",
    "TLSError",
    "TesaiotError",
    "TokenError",
    "__version__",
    "demo",
    "load_recording",
    "load_rejects",
    "mask_token",
    "parse_message",
    "read_metadata",
]


def __getattr__(name: str) -> Any:
    if name == "demo":
        return importlib.import_module("tesaiot_data.demo")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tesaiot_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tesaiot_data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
