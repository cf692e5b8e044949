"""The live dashboard, headless, on a real broker with simulated devices."""

from __future__ import annotations

import base64
import dataclasses
import gc
import json
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import pytest

from tesaiot_data import Collector, load_recording
from tesaiot_data.dashboard import (
    MAX_CELL_CHARS,
    MAX_LEGEND_ENTRIES,
    MAX_TOOLTIP_CHARS,
    Dashboard,
    downsample,
    latest_table_html,
    short_ids,
)
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.messages import RawMessage
from tesaiot_data.settings import Settings
from tesaiot_data.status import status_line
from tests.helpers import wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.broker


@pytest.fixture
def collector(settings: Settings, tmp_path: Path) -> Iterator[Collector]:
    """A started collector on the session broker; snapshots go to tmp_path."""
    running = Collector(settings, window="5min", snapshot_dir=tmp_path / "snapshots").start()
    yield running
    running.stop()


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Dashboard]]:
    """Make dashboards of a collector; all are closed at teardown."""
    made: list[Dashboard] = []

    def make(collector: Collector, **options: object) -> Dashboard:
        dashboard = collector.dashboard(**options)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        dashboard.close()


def _devices_with(collector: Collector, metric: str) -> set[str]:
    frame = collector.frame(metrics=metric)
    return set(frame.loc[frame["value"].notna(), "device_id"].astype(str))


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
    dash = dashboards(collector, metric="temperature", refresh="10s")

    dash.refresh()

    assert dash.chart_png.startswith(PNG_MAGIC)
    assert dash.chart.value == dash.chart_png
    assert dash.metric_selector.value == "temperature"
    assert sorted(dash.device_selector.value) == ids
    assert dash.plotted_devices == ids
    assert dash.figure.axes[0].get_ylabel() == "temperature [celsius]"
    assert "time (UTC)" in dash.figure.axes[0].get_xlabel()
    legend = [t.get_text() for t in dash.figure.axes[0].get_legend().get_texts()]
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
    assert set(following.device_selector.options) == set(first.device_ids)
    assert following.metric_selector.value is not None  # the first metric seen

    second = fleet_factory(devices=2, rate=40, seed=22).start()
    everyone = set(first.device_ids) | set(second.device_ids)
    assert len(everyone) == 4

    wait_for(
        lambda: set(following.device_selector.options) == everyone,
        message="the device list grew by the second fleet's devices",
    )
    # Following all devices (the default) selects the new ones as well ...
    wait_for(lambda: set(following.device_selector.value) == everyone, message="all selected")
    # ... while an explicit choice is kept as new devices appear.
    wait_for(lambda: set(chosen.device_selector.options) == everyone, message="options grew")
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
) -> None:
    fleet_factory(devices=2, rate=40, seed=41).start()
    wait_for(lambda: collector.stats.rows > 10, message="rows")
    dash = dashboards(collector, refresh="10s")

    dash.snapshot_button.click()

    assert dash.record_label.value.startswith("snapshot saved to ")
    path = Path(dash.record_label.value.removeprefix("snapshot saved to "))
    assert path.parent == tmp_path / "snapshots"
    assert len(load_recording(path)) > 10


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
        left_open = collector.dashboard(refresh="0.1s", replace=False)
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
    dash = dashboards(collector, metric="battery", refresh="10s")
    dash.refresh()
    assert dash.plotted_devices == sorted(fleet.device_ids)
    legend = [t.get_text() for t in dash.figure.axes[0].get_legend().get_texts()]
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
    """A collector that is never started: tests feed it with `_ingest` as the client would."""
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
    collector._ingest(good + wrong)
    assert len(collector.frame()) == 35

    dash = dashboards(collector, metric="temperature", window="5min", refresh="1h")
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


def test_status_shows_no_rate_once_stopped() -> None:
    collector = _offline_collector()
    collector._ingest([_reading("d1", 1.0, pd.Timestamp.now(tz="UTC"), time.time())] * 100)
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
INGEST_CODE = ("*/tesaiot_data/store.py", "*/tesaiot_data/parsing.py", "*/tesaiot_data/client.py")


@pytest.mark.slow
def test_memory_stays_flat_over_hundreds_of_refreshes(
    settings: Settings,
    fleet_factory: Callable[..., DeviceFleet],
    dashboards: Callable[..., Dashboard],
) -> None:
    # No snapshot_dir: the dataset writer's pending rows would grow with time, too.
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
    dash = dashboards(collector, metric="temperature", refresh="1h")  # only our refreshes
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


# ------------------------------------------------------------ pure helpers


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
