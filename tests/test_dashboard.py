"""The live dashboard, headless, on a real broker with simulated devices."""

from __future__ import annotations

import base64
import dataclasses
import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import pytest

from tesaiot_data import Collector, load_recording
from tesaiot_data.collector.stats import status_line
from tesaiot_data.dashboard import (
    MAX_CELL_CHARS,
    MAX_LEGEND_ENTRIES,
    MAX_TOOLTIP_CHARS,
    Dashboard,
    alerts_table_html,
    downsample,
    health_table_html,
    latest_table_html,
    short_ids,
)
from tesaiot_data.dashboard.live_chart import LiveChart, decimate
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.messages import RawMessage
from tesaiot_data.settings import Settings
from tests.helpers import local, wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.broker


@pytest.fixture
def collector(settings: Settings, tmp_path: Path) -> Iterator[Collector]:
    """A started collector on the session broker; snapshots go to tmp_path."""
    running = Collector(settings, window="5min", dataset=tmp_path / "snapshots").start()
    yield running
    running.stop()


def _devices_with(collector: Collector, metric: str) -> set[str]:
    frame = collector.frame(metrics=metric)
    return set(frame.loc[frame["value"].notna(), "device_id"].astype(str))


def _device_options(dash: Dashboard) -> set[str]:
    """The full device ids the device list offers (it shows them by short id)."""
    return {device for _label, device in dash.device_selector.options}


def _dashboard_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tesaiot-dashboard-")]


def test_refresh_draws_one_line_per_selected_device(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    fleet = fleet_factory(devices=3, rate=60, seed=11).start()
    ids = sorted(fleet.device_ids)
    wait_for(
        lambda: _devices_with(collector, "temperature") == set(ids),
        message="temperature rows from every device",
    )
    # The matplotlib chart: the fallback where widget JavaScript cannot run.
    dash = dashboards(collector, metric="temperature", refresh="10s", interactive=False)
    assert not dash.interactive

    dash.refresh()

    assert dash.chart_png.startswith(PNG_MAGIC)
    assert dash.chart.value == dash.chart_png
    assert dash.metric_selector.value == "temperature"
    assert sorted(dash.device_selector.value) == ids
    assert dash.plotted_devices == ids
    assert dash.figure.axes[0].get_ylabel() == "temperature [celsius]"
    assert "time (UTC)" in dash.figure.axes[0].get_xlabel()
    legend_box = dash.figure.axes[0].get_legend()
    assert legend_box is not None
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert legend == [d[:8] for d in ids]

    # Deselecting a device (as a click does) redraws without it.
    dash.device_selector.value = tuple(ids[:2])
    assert dash.plotted_devices == ids[:2]
    assert dash.chart_png.startswith(PNG_MAGIC)

    # Another metric: the unit follows.
    wait_for(lambda: _devices_with(collector, "humidity") >= set(ids[:2]), message="humidity")
    dash.metric_selector.value = "humidity"
    assert dash.plotted_devices == ids[:2]
    assert dash.figure.axes[0].get_ylabel() == "humidity [percent]"

    # The status line and the latest-values table come from the collector.
    assert dash.status_label.value.startswith("connected |")
    assert "rows in window" in dash.status_label.value
    assert ids[0][:8] in dash.table.value
    assert ids[2][:8] not in dash.table.value  # only selected devices are listed


def test_selectors_follow_new_devices_and_keep_the_users_choice(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    first = fleet_factory(devices=2, rate=40, seed=21).start()
    wait_for(
        lambda: set(collector.frame()["device_id"].astype(str)) == set(first.device_ids),
        message="rows from the first fleet",
    )
    following = dashboards(collector, refresh="0.1s")
    chosen = dashboards(collector, devices=[first.device_ids[0]], refresh="0.1s", replace=False)
    assert _device_options(following) == set(first.device_ids)
    assert following.metric_selector.value is not None  # the first metric seen

    second = fleet_factory(devices=2, rate=40, seed=22).start()
    everyone = set(first.device_ids) | set(second.device_ids)
    assert len(everyone) == 4

    wait_for(
        lambda: _device_options(following) == everyone,
        message="the device list grew by the second fleet's devices",
    )
    # Following all devices (the default) selects the new ones as well ...
    wait_for(lambda: set(following.device_selector.value) == everyone, message="all selected")
    # ... while an explicit choice is kept as new devices appear.
    wait_for(lambda: _device_options(chosen) == everyone, message="options grew")
    assert chosen.device_selector.value == (first.device_ids[0],)
    chosen.refresh()
    assert set(chosen.plotted_devices) <= {first.device_ids[0]}

    # Metrics only ever grow and stay sorted.
    metrics = list(following.metric_selector.options)
    assert metrics == sorted(metrics)
    assert "temperature" in metrics


def test_record_toggle_writes_a_loadable_recording(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
    tmp_path: Path,
) -> None:
    fleet = fleet_factory(devices=2, rate=40, seed=31).start()
    dash = dashboards(collector, refresh="0.1s")
    target = tmp_path / "captures" / "session.parquet"
    dash.record_name.value = str(target)

    dash.record_button.value = True
    assert dash.recording is not None
    assert dash.record_name.disabled
    wait_for(lambda: dash.recording is not None and dash.recording.rows > 20, message="rows")
    wait_for(lambda: dash.record_label.value.startswith("recording to"), message="progress")

    dash.record_button.value = False
    assert dash.recording is None
    assert dash.saved_path == target
    assert dash.record_label.value.startswith(f"saved {target}")
    assert not dash.record_name.disabled
    assert dash.record_name.value != str(target)  # a fresh name for the next recording

    frame = load_recording(target)
    assert len(frame) > 20
    assert set(frame["device_id"].astype(str)) <= set(fleet.device_ids)


def test_snapshot_button_writes_the_window(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    fleet_factory(devices=2, rate=40, seed=41).start()
    wait_for(lambda: collector.stats.rows > 10, message="rows")
    dash = dashboards(collector, refresh="10s")

    dash.snapshot_button.click()

    assert dash.record_label.value.startswith("snapshot saved to ")
    path = Path(dash.record_label.value.removeprefix("snapshot saved to "))
    assert path.parent == Path("recordings")  # beside Record's files, relative like them
    assert path.name.startswith("snapshot-")
    assert len(load_recording(path)) > 10


def test_record_names_its_file_when_clicked_not_when_the_dashboard_was_made(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    fleet_factory(devices=2, rate=40, seed=43).start()
    dash = dashboards(collector, refresh="10s")
    made = datetime.now(timezone.utc).replace(microsecond=0)
    # The next second has begun, so a name stamped at creation would differ from the click's.
    wait_for(lambda: datetime.now(timezone.utc).replace(microsecond=0) > made, message="tick")
    clicked = datetime.now(timezone.utc).replace(microsecond=0)

    dash.record_button.value = True
    recording = dash.recording
    assert recording is not None
    dash.record_button.value = False

    path = local(recording.path)
    assert path.parent == Path("recordings")
    stamp = datetime.strptime(path.name, "session-%Y%m%dT%H%M%S.parquet")
    assert stamp.replace(tzinfo=timezone.utc) >= clicked
    assert (tmp_path / path).exists()


def test_pause_freezes_the_chart_while_collection_goes_on(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    fleet_factory(devices=2, rate=50, seed=51).start()
    wait_for(lambda: collector.stats.rows > 0, message="rows")
    dash = dashboards(collector, refresh="0.1s")
    start = dash.frames
    wait_for(lambda: dash.frames >= start + 3, message="the timer redraws while data flows")

    dash.pause_button.value = True
    assert dash.pause_button.description == "Resume"
    # A redraw the timer began before the click may still finish: let ten periods' worth
    # of rows arrive first, then nothing may be drawn while ten more periods' worth come.
    rows = collector.stats.rows_total
    wait_for(lambda: collector.stats.rows_total >= rows + 50, message="collection goes on")
    frozen, png, rows = dash.frames, dash.chart_png, collector.stats.rows_total
    status = dash.status_label.value
    wait_for(lambda: collector.stats.rows_total >= rows + 50, message="collection goes on")
    wait_for(lambda: dash.status_label.value != status, message="the status line updates")
    assert dash.frames == frozen
    assert dash.chart_png is png

    dash.pause_button.value = False
    assert dash.frames > frozen
    assert dash.pause_button.description == "Pause"


def test_close_and_collector_stop_end_the_refresh_thread(
    settings: Settings,
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    fleet_factory(devices=1, rate=20, seed=61).start()
    collector = Collector(settings, window="1min").start()
    try:
        before = set(_dashboard_threads())
        closed = collector.dashboard(refresh="0.1s")
        left_open = collector.dashboard(refresh="0.1s", replace=False, interactive=False)
        assert closed.timer_alive
        assert left_open.timer_alive
        assert len(set(_dashboard_threads()) - before) == 2

        closed.close()
        assert not closed.timer_alive
        assert len(set(_dashboard_threads()) - before) == 1
        closed.close()  # idempotent
    finally:
        collector.stop()
    wait_for(lambda: not left_open.timer_alive, message="the thread ends with the collector")
    assert set(_dashboard_threads()) == before
    assert left_open.status_label.value.startswith("stopped |")
    assert "msg/s" not in left_open.status_label.value  # no current rate once stopped
    left_open.refresh()  # still draws what the collector holds
    assert left_open.chart_png.startswith(PNG_MAGIC)
    left_open.close()


def test_legend_stays_readable_with_many_devices(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    fleet = fleet_factory(devices=13, rate=200, seed=81, mixed_shapes=False).start()
    wait_for(
        lambda: _devices_with(collector, "battery") == set(fleet.device_ids),
        message="battery rows from all 13 devices",
    )
    dash = dashboards(collector, metric="battery", refresh="10s", interactive=False)
    dash.refresh()
    assert dash.plotted_devices == sorted(fleet.device_ids)
    legend_box = dash.figure.axes[0].get_legend()
    assert legend_box is not None
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert len(legend) == MAX_LEGEND_ENTRIES + 1
    assert legend[:-1] == [d[:8] for d in sorted(fleet.device_ids)[:MAX_LEGEND_ENTRIES]]
    assert legend[-1] == "+3 more"


def test_a_new_dashboard_closes_the_previous_ones_of_its_collector(
    collector: Collector, dashboards: Callable[..., Dashboard]
) -> None:
    # Running the dashboard cell three times.
    before = set(_dashboard_threads())
    first, second, third = (dashboards(collector, refresh="0.1s") for _ in range(3))

    assert [d.timer_alive for d in (first, second, third)] == [False, False, True]
    assert [d.closed for d in (first, second, third)] == [True, True, False]
    assert len(set(_dashboard_threads()) - before) == 1

    # replace=False keeps the others: two views of one collector side by side.
    beside = dashboards(collector, refresh="0.1s", replace=False)
    assert third.timer_alive
    assert beside.timer_alive
    assert len(set(_dashboard_threads()) - before) == 2
    # ... and the next default one closes both.
    last = dashboards(collector, refresh="0.1s")
    assert (third.closed, beside.closed, last.closed) == (True, True, False)
    assert len(set(_dashboard_threads()) - before) == 1


def _offline_collector() -> Collector:
    """A collector that is never started: tests feed it through `ingest` as the client would."""
    settings = Settings(token="tesa_mqtt_demo_" + "D" * 32, broker_url="mqtt://127.0.0.1:1")
    return Collector(settings, window="15min")


def _reading(device: str, value: float, stamp: pd.Timestamp, received: float) -> RawMessage:
    payload = {"value": value, "unit": "celsius", "timestamp": stamp.isoformat()}
    return RawMessage(
        f"device/{device}/telemetry/temperature",
        json.dumps(payload).encode(),
        round(received * 1e9),
    )


def test_wrong_device_clocks_do_not_move_the_time_axis(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    received = time.time()
    now = pd.Timestamp(received, unit="s", tz="UTC")
    good = [
        _reading("good-device", 20 + i, now - pd.Timedelta(seconds=200 - 10 * i), received)
        for i in range(20)
    ]
    wrong = (
        [_reading("bad-clock", 1.0, now - pd.Timedelta(seconds=s), received) for s in (30, 20, 10)]
        + [_reading("bad-clock", 9e9, pd.Timestamp("2262-01-01", tz="UTC"), received)] * 5
        + [_reading("bad-clock", -9e9, now + pd.Timedelta(hours=7), received)] * 7
    )
    collector.ingest(good + wrong)
    assert len(collector.frame()) == 35

    dash = dashboards(
        collector, metric="temperature", window="5min", refresh="1h", interactive=False
    )
    rendered_before = time.time_ns()
    dash.refresh()
    rendered_after = time.time_ns()  # the render's "now" is between the two

    ax = dash.figure.axes[0]
    left, right = ax.get_xlim()
    window_ns = 300 * 10**9

    def num(ns: int) -> float:
        return float(mdates.date2num(np.datetime64(ns, "ns")))  # type: ignore[no-untyped-call]

    slack = 1e-8  # days: below a millisecond, for float rounding
    assert num(rendered_before - window_ns) - slack <= left <= num(rendered_after - window_ns)
    assert num(rendered_before) <= right <= num(rendered_after + window_ns // 10)

    lines = {line.get_label(): line for line in ax.lines}
    good_x = np.asarray(lines["good-device"].get_xdata())
    assert len(good_x) == 20
    assert left <= good_x.min()
    assert good_x.max() <= right
    assert len(np.asarray(lines["bad-clock"].get_xdata())) == 3
    assert dash.plotted_devices == ["bad-clock", "good-device"]
    # The y axis fits the points drawn, not the 9e9 of the wrong clock.
    assert ax.get_ylim()[1] < 100

    assert dash.off_axis_points == 12
    notes = [text.get_text() for text in ax.texts]
    assert "12 points outside the time axis (device clock?)" in notes


def test_latest_values_keep_the_unit_when_the_newest_reading_has_none(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    received = time.time()
    collector.ingest([_reading("d1", 20.0, pd.Timestamp(received, unit="s", tz="UTC"), received)])
    dash = dashboards(collector, metric="temperature", refresh="1h", interactive=False)
    dash.refresh()  # the first refresh reads latest() of the whole window
    assert "<small>celsius</small>" in dash.table.value  # the grid's column header
    # A flat payload without a unit, merged into the table by the next (incremental) refresh.
    flat = json.dumps({"value": 21.5}).encode()
    collector.ingest([RawMessage("device/d1/telemetry/temperature", flat, time.time_ns())])
    dash.refresh()
    assert collector.frame()["unit"].isna().iloc[-1]
    assert collector.latest()[["value", "unit"]].values.tolist() == [[21.5, "celsius"]]
    assert ">21.5</td>" in dash.table.value
    assert "<small>celsius</small>" in dash.table.value


def test_status_shows_no_rate_once_stopped() -> None:
    collector = _offline_collector()
    collector.ingest([_reading("d1", 1.0, pd.Timestamp.now(tz="UTC"), time.time())] * 100)
    # The last rate a collector measured before it stopped.
    stats = dataclasses.replace(collector.stats, rate=20.0)
    assert status_line(stats, running=False) == (
        "stopped | 100 rows in window | 0 rejects | 0 reconnects"
    )
    assert status_line(stats, running=True).startswith("reconnecting | 20 msg/s |")
    revoked = status_line(dataclasses.replace(stats, error="not authorized"), running=True)
    assert revoked.startswith("stopped: not authorized | 100 rows")


# Allocations of the collector's ingest path: the window legitimately grows as rows arrive
# while the test runs (and so does any collector another test left running).
INGEST_CODE = (
    "*/tesaiot_data/store.py",
    "*/tesaiot_data/parse/*",  # was parsing.py
    "*/tesaiot_data/mqtt/*",  # was client.py
)


@pytest.mark.slow
def test_memory_stays_flat_over_hundreds_of_refreshes(
    settings: Settings,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    # No dataset=: the dataset writer's pending rows would grow with time, too.
    collector = Collector(settings, window="5min").start()
    try:
        _refresh_and_measure(collector, fleet_factory, dashboards)
    finally:
        collector.stop()


def _refresh_and_measure(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    fleet_factory(devices=3, rate=20, seed=71).start()
    wait_for(lambda: collector.stats.rows > 30, message="rows")
    # only our refreshes
    dash = dashboards(collector, metric="temperature", refresh="1h", interactive=False)
    for _ in range(50):
        dash.refresh()
    gc.collect()
    # From refresh 50 on, every allocation still alive at refresh 150 is counted, except
    # the ingest path's. One leaked Figure per frame would be about 700 kB a frame, a leaked
    # PNG over 100 kB and a leaked line of 100 points over 30 kB: 100 frames of any of them
    # is above the bound.
    tracemalloc.start()
    try:
        for _ in range(100):
            dash.refresh()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    kept = snapshot.filter_traces([tracemalloc.Filter(False, path) for path in INGEST_CODE])
    stats = kept.statistics("lineno")
    growth = sum(stat.size for stat in stats)
    where = "\n".join(str(stat) for stat in stats[:10])
    assert dash.frames >= 150
    assert growth < 2_000_000, f"memory grew by {growth:,} bytes over 100 refreshes:\n{where}"
    assert len(dash.figure.axes) == 1
    assert len(dash.figure.axes[0].lines) == 3


def test_latest_table_escapes_every_string() -> None:
    latest = pd.DataFrame(
        {
            "device_id": pd.Categorical(["<script>alert(1)</script>"]),
            "metric": pd.Categorical(["<b>temp</b>"]),
            "value": [np.nan],
            "unit": pd.Categorical(["&amp"]),
            "value_text": pd.Categorical(["<img src=x onerror=alert(1)>"]),
            "age_s": [1.5],
        }
    )
    html = latest_table_html(latest)
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>temp" not in html
    assert "&lt;b&gt;temp&lt;/b&gt;" in html
    assert "&amp;amp" in html
    assert "1.5 s" in html


def test_long_text_values_are_cut_short_in_the_table() -> None:
    frame = base64.b64encode(np.random.default_rng(0).bytes(225_000)).decode()  # ~300 KB
    assert len(frame) == 300_000
    markup = "<b>" + "x" * 500
    latest = pd.DataFrame(
        {
            "device_id": pd.Categorical(["camera-1", "camera-1"]),
            "metric": pd.Categorical(["frame", "m" * 1_000]),
            "value": [np.nan, np.nan],
            "unit": pd.Categorical([None, None]),
            "value_text": pd.Categorical([frame, markup]),
            "age_s": [0.5, 0.5],
        }
    )
    html = latest_table_html(latest)
    assert len(html) < 3_000
    assert frame[: MAX_CELL_CHARS - 1] + "\u2026" in html
    assert ">" + frame[: MAX_CELL_CHARS - 1] + "\u2026</td>" in html
    titles = re.findall(r'title="([^"]*)"', html)
    assert f"{frame[: MAX_TOOLTIP_CHARS - 1]}\u2026" in titles
    assert all(len(title) <= 2 * MAX_TOOLTIP_CHARS for title in titles)  # escapes included
    assert "<b>" not in html
    assert "&lt;b&gt;xxx" in html
    assert ">" + "m" * (MAX_CELL_CHARS - 1) + "\u2026<" in html


def test_latest_table_counts_rows_beyond_the_limit() -> None:
    latest = pd.DataFrame(
        {
            "device_id": pd.Categorical([f"device-{i:03d}" for i in range(70)]),
            "metric": pd.Categorical(["temperature"] * 70),
            "value": np.arange(70, dtype=float),
            "unit": pd.Categorical(["celsius"] * 70),
            "value_text": pd.Categorical([None] * 70),
            "age_s": np.zeros(70),
        }
    )
    html = latest_table_html(latest, max_rows=60)
    assert html.count("<tr>") == 61  # the header and 60 rows
    assert "+10 more rows" in html


def test_short_ids_stay_unique() -> None:
    ids = ["abcdefgh-1111", "abcdefgh-2222", "12345678-0000", "short"]
    names = short_ids(ids)
    assert len(set(names.values())) == len(ids)
    assert names["12345678-0000"].startswith("12345678")
    assert names["short"] == "short"
    assert short_ids(["0123456789", "abcdefghij"]) == {
        "0123456789": "01234567",
        "abcdefghij": "abcdefgh",
    }


def test_downsample_keeps_extremes_and_bounds_points() -> None:
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 500.0)
    y[54_321] = 50.0  # a spike that every-n-th-point thinning would miss
    dx, dy = downsample(x, y, 2_000)
    assert len(dx) <= 2_000 + 100
    assert dy.max() == 50.0
    assert np.all(np.diff(dx) > 0)
    small_x, small_y = downsample(x[:10], y[:10], 2_000)
    assert np.array_equal(small_x, x[:10])
    assert np.array_equal(small_y, y[:10])


# ------------------------------------------------------- the interactive chart


def _expected_points(collector: Collector, metric: str, devices: list[str]) -> int:
    frame = collector.frame(metrics=metric, devices=devices)
    return int(frame["value"].notna().sum())


def test_live_chart_sends_the_window_then_only_new_points(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    fleet = fleet_factory(devices=3, rate=30, seed=91).start()
    ids = sorted(fleet.device_ids)
    wait_for(lambda: _devices_with(collector, "temperature") == set(ids), message="all devices")
    dash = dashboards(collector, metric="temperature", refresh="1h")
    assert dash.interactive
    chart = dash.chart
    assert isinstance(chart, LiveChart)
    collector.wait_idle()
    dash.refresh()
    assert chart.metric == "temperature"
    assert chart.unit == "celsius"
    assert chart.devices == ids == dash.plotted_devices
    assert [entry["label"] for entry in chart.series] == [d[:8] for d in ids]
    assert len({entry["color"] for entry in chart.series}) == 3
    held = chart.points
    assert held >= _expected_points(collector, "temperature", ids) - 3  # rows since refresh
    t, y = chart.data(ids[0])
    assert np.all(np.diff(t) >= 0)
    assert np.all(np.isfinite(y))

    # The next refresh sends only the points that arrived since: 16 bytes each at most.
    sent, sent_bytes = chart.messages_sent, chart.bytes_sent
    rows = collector.stats.rows_total
    wait_for(lambda: collector.stats.rows_total >= rows + 60, message="more rows")
    fleet.stop()  # then the chart catches up with every row: exact counts below
    # Every message the broker acknowledged has reached the collector, so no late one changes
    # the counts between a refresh and the count it is compared with.
    wait_for(lambda: collector.stats.messages >= fleet.published, message="the last messages")

    def caught_up() -> bool:
        collector.wait_idle()
        dash.refresh()
        return chart.points == _expected_points(collector, "temperature", ids)

    wait_for(caught_up, message="the chart holds every point of the window")
    grown = chart.points - held
    assert grown > 0
    assert chart.messages_sent > sent  # one per refresh
    assert 0 < chart.bytes_sent - sent_bytes <= 16 * grown

    # A view that opens asks for the window; a zoom asks for its range in detail.
    sent = chart.messages_sent
    chart._handle_custom_msg({"type": "hello", "width": 500}, [])
    assert chart.plot_width == 500
    assert chart.messages_sent == sent + 1
    t, _y = chart.data(ids[0])
    chart._handle_custom_msg({"type": "view", "min": t[0], "max": t[-1], "width": 500}, [])
    assert chart.messages_sent == sent + 2

    # Another device choice sends the window anew, without the device left out.
    dash.device_selector.value = tuple(ids[:2])
    assert chart.devices == ids[:2]
    assert chart.points == _expected_points(collector, "temperature", ids[:2])


def test_live_chart_leaves_out_points_of_wrong_clocks(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    received = time.time()
    now = pd.Timestamp(received, unit="s", tz="UTC")
    good = [
        _reading("good-device", 20 + i, now - pd.Timedelta(seconds=200 - 10 * i), received)
        for i in range(20)
    ]
    wrong = [_reading("bad-clock", 1.0, now - pd.Timedelta(seconds=10), received)] + [
        _reading("bad-clock", 9e9, pd.Timestamp("2262-01-01", tz="UTC"), received)
    ] * 5
    collector.ingest(good + wrong)
    dash = dashboards(collector, metric="temperature", window="5min", refresh="1h")
    assert dash.interactive
    dash.refresh()
    chart = dash.chart
    assert isinstance(chart, LiveChart)
    assert dash.plotted_devices == ["bad-clock", "good-device"]
    assert dash.off_axis_points == 5
    assert chart.note == "5 points outside the time axis (device clock?)"
    t, y = chart.data("good-device")
    assert len(t) == 20
    assert list(y) == [20.0 + i for i in range(20)]
    assert np.array_equal(t, np.sort(t))
    bad_t, bad_y = chart.data("bad-clock")
    assert list(bad_y) == [1.0]
    assert abs(bad_t[0] - (now - pd.Timedelta(seconds=10)).value / 1e6) < 1


def test_save_png_draws_the_interactive_dashboards_chart(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
    tmp_path: Path,
) -> None:
    fleet = fleet_factory(devices=2, rate=40, seed=93).start()
    wait_for(lambda: _devices_with(collector, "humidity") == set(fleet.device_ids), message="rows")
    dash = dashboards(collector, metric="humidity", refresh="1h")
    assert dash.chart_png == b""  # the interactive chart draws no PNG on refresh
    path = dash.save_png(tmp_path / "out" / "chart.png")
    assert path == tmp_path / "out" / "chart.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert dash.figure.axes[0].get_ylabel() == "humidity [percent]"
    assert not list(path.parent.glob(".*.tmp"))


# The collector's own ingest path: the window, the device health and the alert state
# legitimately hold the rows that arrive while the test runs.
LIVE_INGEST_CODE = (
    *INGEST_CODE,
    "*/tesaiot_data/window/*",  # was window.py (parse/timestamps.py is in INGEST_CODE)
    "*/tesaiot_data/monitor/*",  # was health.py and alerts.py
    "*/tesaiot_data/collector/*",  # was collector.py
)


@pytest.mark.slow
def test_memory_stays_flat_over_a_thousand_live_refreshes(
    dashboards: Callable[..., Dashboard],
) -> None:
    # Rows arrive between refreshes as the client's worker thread would hand them over.
    collector = _offline_collector()
    devices = [f"device-{i:02d}-{'x' * 24}" for i in range(3)]
    sent = 0

    def arrive(count: int) -> None:
        nonlocal sent
        received = time.time()
        stamp = pd.Timestamp(received, unit="s", tz="UTC")
        batch = [
            _reading(devices[(sent + i) % 3], float(sent + i), stamp, received)
            for i in range(count)
        ]
        collector.ingest(batch)
        sent += count

    arrive(3_000)
    dash = dashboards(collector, metric="temperature", refresh="1h")
    assert dash.interactive
    chart = dash.chart
    assert isinstance(chart, LiveChart)
    for _ in range(50):
        arrive(3)
        dash.refresh()
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(1_000):
            arrive(3)
            dash.refresh()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    kept = snapshot.filter_traces([tracemalloc.Filter(False, path) for path in LIVE_INGEST_CODE])
    stats = kept.statistics("lineno")
    growth = sum(stat.size for stat in stats)
    where = "\n".join(str(stat) for stat in stats[:10])
    assert dash.frames >= 1_050
    assert chart.points == sent  # every point of the window is held for zooming ...
    assert chart.messages_sent >= 1_050  # ... and each refresh sent its few new ones
    # The chart legitimately holds the 3,000 points that arrived meanwhile (16 bytes each:
    # 48 kB, in arrays that are copied as they grow); a leak of 500 bytes per refresh
    # would be 500 kB.
    assert growth < 500_000, f"memory grew by {growth:,} bytes over 1,000 refreshes:\n{where}"


def test_health_and_alerts_panels(
    collector: Collector,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    if not callable(getattr(collector, "health", None)):
        pytest.skip("Collector.health() is not there yet")
    fleet = fleet_factory(devices=2, rate=40, seed=97).start()
    wait_for(lambda: collector.stats.rows > 10, message="rows")
    dash = dashboards(collector, refresh="1h")

    def listed() -> bool:
        dash.refresh()
        return all(f'data-device="{d}"' in dash.health_table.value for d in fleet.device_ids)

    wait_for(listed, message="the health table lists every device")
    assert dash.health_table.layout.display != "none"

    # A rule that every temperature reading breaks: its firing shows in the alerts table.
    collector.alert("any-temperature", metric="temperature", above=-1e9)

    def fired() -> bool:
        dash.refresh()
        return 'class="firing"' in dash.alerts_table.value

    wait_for(fired, message="a firing alert in the alerts table")
    assert "any-temperature" in dash.alerts_table.value
    assert dash.alerts_table.layout.display != "none"


# ------------------------------------------------------------ pure helpers


def test_health_table_lists_silent_devices_first_and_escapes() -> None:
    health = pd.DataFrame(
        {
            "device": ["aaaaaaaa-ok", "zzzzzzzz-quiet", "<b>mmmmmmm"],
            "last_seen": pd.to_datetime([1, 2, 3], unit="s", utc=True),
            "age_s": [0.5, 95.0, 1.0],
            "msgs_per_s": [4.0, 0.0, 2.0],
            "usual_interval_s": [0.25, 1.0, 0.5],
            "silent": [False, True, False],
            "clock_skew_s": [0.01, np.nan, -3.0],
            "reject_share": [0.0, 0.5, 0.01],
            "metrics": [["temperature"], ["humidity", "battery"], []],
        }
    )
    html = health_table_html(health)
    rows = re.findall(r'<tr(?: class="silent")? data-device="([^"]*)"', html)
    assert rows == ["zzzzzzzz-quiet", "&lt;b&gt;mmmmmmm", "aaaaaaaa-ok"]
    assert html.count('class="silent"') == 1
    assert "<b>mmm" not in html
    assert "95 s" in html
    assert "50.0 %" in html
    assert "humidity, battery" in html
    assert health_table_html(health.iloc[:0]) == "<i>no devices yet</i>"


def test_alerts_table_lists_newest_first() -> None:
    alerts = pd.DataFrame(
        {
            "time": pd.to_datetime([1_000, 3_000, 2_000], unit="ms", utc=True),
            "rule": ["hot", "silent", "hot"],
            "device": ["dev-1", "dev-2", "dev-1"],
            "metric": ["temperature", None, "temperature"],
            "value": [31.5, 12.0, 29.0],
            "state": ["firing", "firing", "cleared"],
        }
    )
    html = alerts_table_html(alerts)
    assert html.index("00:00:03.000") < html.index("00:00:02.000") < html.index("00:00:01.000")
    assert html.count('class="firing"') == 2
    assert "31.5" in html
    assert alerts_table_html(alerts.iloc[:0]) == "<i>no alerts</i>"


def test_decimate_keeps_spikes_and_agrees_piece_by_piece() -> None:
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 300_000, 50_000))
    y = np.sin(t / 5_000)
    y[12_345] = 99.0
    y[40_000] = -99.0
    dt, dy = decimate(t, y, 500.0)
    assert len(dt) <= 2 * 600
    assert dy.max() == 99.0
    assert dy.min() == -99.0
    assert np.all(np.diff(dt) >= 0)
    # Sent in two pieces cut at a bucket edge, the same points as at once.
    cut = int(np.searchsorted(t, 100_000))
    first, second = (
        decimate(t[:cut], y[:cut], 500.0),
        decimate(t[cut:], y[cut:], 500.0),
    )
    assert np.array_equal(np.concatenate([first[0], second[0]]), dt)
    few_t, _few_y = decimate(t[:3], y[:3], 1.0)
    assert np.array_equal(few_t, t[:3])


def test_without_anywidget_the_dashboard_draws_png(tmp_path: Path) -> None:
    # A fresh interpreter in which anywidget cannot be imported.
    script = tmp_path / "no_anywidget.py"
    script.write_text(
        "import sys\n"
        "sys.modules['anywidget'] = None  # import anywidget -> ImportError\n"
        "import json, time\n"
        "from tesaiot_data import Collector\n"
        "from tesaiot_data.messages import RawMessage\n"
        "from tesaiot_data.settings import Settings\n"
        "token = 'tesa_mqtt_demo_' + 'D' * 32\n"
        "settings = Settings(token=token, broker_url='mqtt://127.0.0.1:1')\n"
        "collector = Collector(settings, window='15min')\n"
        "payload = json.dumps({'value': 21.5, 'unit': 'celsius'}).encode()\n"
        "topic = 'device/d1/telemetry/temperature'\n"
        "collector.ingest([RawMessage(topic, payload, time.time_ns()) for _ in range(5)])\n"
        "dash = collector.dashboard(metric='temperature', refresh='1h')\n"
        "assert not dash.interactive, dash.chart\n"
        "assert dash.chart_png.startswith(b'\\x89PNG'), dash.chart_png[:8]\n"
        "assert dash.plotted_devices == ['d1']\n"
        "try:\n"
        "    collector.dashboard(interactive=True)\n"
        "except ImportError as exc:\n"
        "    assert 'anywidget' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('interactive=True without anywidget')\n"
        "dash.close()\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
