"""The module paths of 0.1 still import, with a DeprecationWarning that names the new home."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

# The public names each 0.1 module had (read from its source at 0.1), and what a user wrote.
OLD_NAMES = {
    "tesaiot_data.alerts": [
        "AlertEvent",
        "AlertEngine",
        "AlertRule",
        "events_frame",
        "load_alerts",
    ],
    "tesaiot_data.client": ["ClientStats", "TESAIoTMQTTClient", "connect_error"],
    "tesaiot_data.compaction": ["CompactionResult", "compact_dataset"],
    "tesaiot_data.health": ["DeviceHealth", "HEALTH_COLUMNS"],
    "tesaiot_data.history": ["DatasetFeed", "history_frame"],
    "tesaiot_data.parquet": [
        "load_recording",
        "load_rejects",
        "read_metadata",
        "write_frame",
        "write_table",
        "table_from_frame",
        "merge_files",
    ],
    "tesaiot_data.parsing": [
        "ParseOptions",
        "Row",
        "ParseResult",
        "parse_topic",
        "decode_payload",
        "parse_batch",
        "parse_message",
    ],
    "tesaiot_data.resample": ["resample_frame", "Watermark", "rule_ns"],
    "tesaiot_data.sql": ["query"],
    "tesaiot_data.status": ["status_line", "stats_summary"],
    "tesaiot_data.timestamps": ["NaiveZone", "timestamp_ns", "parse_timedelta", "since_ns"],
}
# Packages that took the name of a 0.1 module keep its names on their face, without a warning.
SAME_NAME = {
    "tesaiot_data.window": ["Chunk", "RollingWindow"],
    "tesaiot_data.sinks": ["Sink", "Recorder", "DatasetWriter"],
    "tesaiot_data.collector": ["Collector", "CollectorStats", "Recording"],
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_module_path_warns_and_still_gives_its_names(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to tesaiot_data\.") as caught:
        module = __import__(old, fromlist=["*"])  # as an import statement does: no frame between
    assert caught[0].filename == __file__  # the warning points at the importing line
    for name in OLD_NAMES[old]:
        assert getattr(module, name) is not None, name
    assert sorted(name for name in OLD_NAMES[old] if not hasattr(module, name)) == []


@pytest.mark.parametrize("package", sorted(SAME_NAME))
def test_a_package_named_like_an_old_module_keeps_its_names(package: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module(package)
    assert [name for name in SAME_NAME[package] if not hasattr(module, name)] == []


def test_names_from_an_old_path_are_the_new_objects() -> None:
    from tesaiot_data.parse.rows import parse_batch  # noqa: PLC0415
    from tesaiot_data.readers.disk import load_recording  # noqa: PLC0415

    sys.modules.pop("tesaiot_data.parsing", None)
    sys.modules.pop("tesaiot_data.parquet", None)
    with pytest.warns(DeprecationWarning, match="moved to tesaiot_data.parse.rows"):
        old_parsing = __import__("tesaiot_data.parsing", fromlist=["*"])
    with pytest.warns(DeprecationWarning, match="moved to tesaiot_data.files.parquet"):
        old_parquet = __import__("tesaiot_data.parquet", fromlist=["*"])
    assert old_parsing.parse_batch is parse_batch
    assert old_parquet.load_recording is load_recording


def test_an_unknown_module_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tesaiot_data.no_such_module")


def test_the_functions_the_readme_imports_from_the_package_need_no_module_path() -> None:
    import tesaiot_data  # noqa: PLC0415
    from tesaiot_data.monitor.sidecar import load_alerts  # noqa: PLC0415
    from tesaiot_data.window.resample import resample_frame  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tesaiot_data.resample_frame is resample_frame
        assert tesaiot_data.load_alerts is load_alerts
    assert {"resample_frame", "load_alerts"} <= set(dir(tesaiot_data))
