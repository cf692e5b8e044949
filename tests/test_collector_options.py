"""Collector options without a broker: `dataset=` / `flush_every=` and their old names."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from tesaiot_data import Collector, ConfigError, Settings

SETTINGS = Settings(token="tesa_mqtt_demo_" + "O" * 32, broker_url="mqtt://127.0.0.1:1")


def test_dataset_and_flush_every_name_the_auto_persist_dataset(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        collector = Collector(SETTINGS, dataset=tmp_path / "ds", flush_every="5s")
    assert collector.history().empty  # the own dataset: no ConfigError, nothing yet
    assert collector.snapshot().parent == tmp_path / "ds"


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [("snapshot_dir", "ds", "dataset"), ("snapshot_every", "5s", "flush_every")],
)
def test_the_old_names_still_work_and_warn_at_the_callers_line(
    tmp_path: Path, old: str, value: str, new: str
) -> None:
    given = str(tmp_path / value) if old == "snapshot_dir" else value
    expected = rf"Collector\({old}=\.\.\.\) is now Collector\({new}=\.\.\.\)"
    options: dict[str, Any] = {old: given}
    with pytest.warns(DeprecationWarning, match=expected) as info:
        collector = Collector(SETTINGS, **options)
    assert [Path(w.filename).name for w in info.list] == [Path(__file__).name]
    if old == "snapshot_dir":
        assert collector.history().empty
        assert collector.snapshot().parent == tmp_path / value


def test_old_snapshot_every_is_read_as_flush_every() -> None:
    with (
        pytest.warns(DeprecationWarning, match="snapshot_every"),
        pytest.raises(ConfigError, match="snapshot_every='soon' is not a duration"),
    ):
        Collector(SETTINGS, snapshot_every="soon")


@pytest.mark.parametrize(
    "options",
    [
        {"snapshot_dir": "a", "dataset": "b"},
        {"snapshot_every": "1s", "flush_every": "2s"},
    ],
)
def test_an_option_given_by_both_names_is_a_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="old name"):
        Collector(SETTINGS, **options)
