"""tesaiot-data: stream live TESAIoT telemetry into pandas, Parquet and Jupyter.

The public names below are imported lazily, on first use, so that `import tesaiot_data`
stays quick and reads nothing (no environment, no .env file).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tesaiot_data import compat
from tesaiot_data._version import __version__

compat.install()  # the module paths of 0.1 (tesaiot_data.parsing, ...) warn and still work

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector, CollectorStats, Recording
    from tesaiot_data.dashboard import Dashboard
    from tesaiot_data.errors import (
        AuthError,
        BrokerNotFoundError,
        ConfigError,
        ConnectError,
        ConnectTimeoutError,
        MissingExtraError,
        NotARecordingError,
        QueryError,
        RecordingError,
        StreamError,
        SubscribeError,
        TesaiotError,
        TLSError,
        TokenError,
    )
    from tesaiot_data.files.compaction import CompactionResult, compact_dataset
    from tesaiot_data.messages import RawMessage, Reject, RejectReason
    from tesaiot_data.monitor.events import AlertEvent
    from tesaiot_data.monitor.sidecar import load_alerts
    from tesaiot_data.mqtt.client import ClientStats, TESAIoTMQTTClient
    from tesaiot_data.parse.rows import ParseOptions
    from tesaiot_data.parse.single import Row, parse_message
    from tesaiot_data.readers.disk import load_recording, load_rejects, read_metadata
    from tesaiot_data.readers.sql import query
    from tesaiot_data.replay import Replayer, ReplayResult
    from tesaiot_data.settings import BrokerURL, Settings, mask_token
    from tesaiot_data.window.resample import resample_frame

_EXPORTS = {
    "monitor.events": ("AlertEvent",),
    "monitor.sidecar": ("load_alerts",),
    "mqtt.client": ("ClientStats", "TESAIoTMQTTClient"),
    "collector": ("Collector", "CollectorStats", "Recording"),
    "files.compaction": ("CompactionResult", "compact_dataset"),
    "dashboard": ("Dashboard",),
    "errors": (
        "AuthError",
        "BrokerNotFoundError",
        "ConfigError",
        "ConnectError",
        "ConnectTimeoutError",
        "MissingExtraError",
        "NotARecordingError",
        "QueryError",
        "RecordingError",
        "StreamError",
        "SubscribeError",
        "TLSError",
        "TesaiotError",
        "TokenError",
    ),
    "messages": ("RawMessage", "Reject", "RejectReason"),
    "parse.rows": ("ParseOptions",),
    "parse.single": ("Row", "parse_message"),
    # The function replay() stays in its module: a package attribute named like a submodule
    # is replaced by the module as soon as anything imports tesaiot_data.replay.
    "replay": ("ReplayResult", "Replayer"),
    "settings": ("BrokerURL", "Settings", "mask_token"),
    "readers.disk": ("load_recording", "load_rejects", "read_metadata"),
    "readers.sql": ("query",),  # DuckDB is imported on the first query, not here
    "window.resample": ("resample_frame",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AlertEvent",
    "AuthError",
    "BrokerNotFoundError",
    "BrokerURL",
    "ClientStats",
    "Collector",
    "CollectorStats",
    "CompactionResult",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "Dashboard",
    "MissingExtraError",
    "NotARecordingError",
    "ParseOptions",
    "QueryError",
    "RawMessage",
    "Recording",
    "RecordingError",
    "Reject",
    "RejectReason",
    "ReplayResult",
    "Replayer",
    "Row",
    "Settings",
    "StreamError",
    "SubscribeError",
    "TESAIoTMQTTClient",
    "TLSError",
    "TesaiotError",
    "TokenError",
    "__version__",
    "compact_dataset",
    "demo",
    "load_alerts",
    "load_recording",
    "load_rejects",
    "mask_token",
    "parse_message",
    "query",
    "read_metadata",
    "replay",
    "resample_frame",
]


def __getattr__(name: str) -> Any:
    if name in ("demo", "replay"):
        return importlib.import_module(f"tesaiot_data.{name}")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tesaiot_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tesaiot_data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
