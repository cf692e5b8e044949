"""The dashboard as people look at it (issue 17, section 4): strict options, a PNG for front
ends without widgets, a compact latest-values grid, controls on top, short device ids, text
metrics, and no "-0.0 s"."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import pytest
from IPython.core.formatters import DisplayFormatter

from tesaiot_data import Collector
from tesaiot_data.dashboard import (
    Dashboard,
    health_table_html,
    latest_grid_html,
    latest_table_html,
    text_states_html,
)
from tesaiot_data.dashboard.live_chart import LiveChart
from tesaiot_data.messages import RawMessage
from tesaiot_data.settings import Settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLEET = [f"{n:08x}-4d2c-4a0e-9f55-{n:012x}" for n in (0xA1, 0xB2, 0xC3)]  # UUID-like


def _offline_collector() -> Collector:
    """A collector that is never started: fed through `ingest` as the client would."""
    settings = Settings(token="tesa_mqtt_demo_" + "D" * 32, broker_url="mqtt://127.0.0.1:1")
    return Collector(settings, window="15min")


def _message(device: str, sensor: str, payload: object) -> RawMessage:
    body = json.dumps(payload).encode()
    return RawMessage(f"device/{device}/telemetry/{sensor}", body, time.time_ns())


def _feed_fleet(collector: Collector) -> None:
    messages = []
    for i, device in enumerate(FLEET):
        messages.append(_message(device, "temperature", {"value": 20.0 + i, "unit": "celsius"}))
        messages.append(_message(device, "humidity", {"value": 50.0 + i, "unit": "percent"}))
        for state in ("normal", "normal", "anomaly", "normal"):
            messages.append(_message(device, "ai_prediction", {"value": state}))
    collector.ingest(messages)


Reading = tuple[str, str, float, "str | None", "str | None", float]


def _latest(rows: Sequence[Reading]) -> pd.DataFrame:
    device, metric, value, unit, text, age = (list(column) for column in zip(*rows, strict=True))
    return pd.DataFrame(
        {
            "device_id": pd.Categorical(device),
            "metric": pd.Categorical(metric),
            "value": np.array(value, dtype=float),
            "unit": pd.Categorical(unit),
            "value_text": pd.Categorical(text),
            "age_s": np.array(age, dtype=float),
        }
    )


# ----------------------------------------------------------------- options


def test_an_unknown_dashboard_keyword_is_a_type_error(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    with pytest.raises(TypeError, match="bogus"):
        collector.dashboard(bogus=1)
    with pytest.raises(TypeError, match="metrics"):
        Dashboard(collector, metrics="temperature", refresh="1h")  # type: ignore[call-arg]
    # The one box option that was ever useful is a real parameter.
    dash = dashboards(collector, layout=widgets.Layout(width="90%"), refresh="1h")
    assert dash.layout.width == "90%"


def test_the_options_are_documented_parameters() -> None:
    import inspect  # noqa: PLC0415

    parameters = inspect.signature(Dashboard).parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    doc = Dashboard.__doc__ or ""
    for name in parameters:
        if name != "collector":
            assert re.search(rf"^\s+{name}:", doc, re.MULTILINE), name


# ------------------------------------------------------------ display data


def test_a_static_dashboard_offers_a_png_to_front_ends_without_widgets(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    _feed_fleet(collector)
    dash = dashboards(collector, metric="temperature", refresh="1h", interactive=False)
    data, _metadata = DisplayFormatter().format(dash)  # type: ignore[no-untyped-call]
    assert "image/png" in data
    png = base64.b64decode(data["image/png"])
    assert png.startswith(PNG_MAGIC)
    assert "text/plain" in data
    # The picture is the chart as shown now, redrawn since.
    assert png == dash.chart_png


# ------------------------------------------------------------------ labels


def test_no_label_says_minus_zero_seconds() -> None:
    health = pd.DataFrame(
        {
            "device": FLEET,
            "silent": [False, False, True],
            "age_s": [-0.02, -0.0, 12.0],
            "msgs_per_s": [1.0, 2.0, 0.0],
            "usual_interval_s": [-0.0, 0.04, 1.0],
            "clock_skew_s": [-0.03, -0.4, -25.0],
            "reject_share": [0.0, 0.0, 0.0],
        }
    )
    table = health_table_html(health)
    assert not re.search(r"-0(\.0)? s", table), table
    assert "0.0 s" in table
    assert "-0.4 s" in table  # a real skew keeps its sign
    assert "-25 s" in table
    latest = _latest([(FLEET[0], "temperature", 20.0, "celsius", None, -0.01)])
    for html in (latest_grid_html(latest), latest_table_html(latest)):
        assert not re.search(r"-0(\.0)? s", html), html


# ---------------------------------------------------------- latest values


def test_latest_values_are_a_device_by_metric_grid() -> None:
    metrics = ["temperature", "humidity", "pressure", "co2", "lux", "ai_prediction"]
    rows: list[Reading] = []
    for d, device in enumerate(FLEET):
        for m, metric in enumerate(metrics):
            if metric == "ai_prediction":
                rows.append((device, metric, np.nan, None, "normal", 1.0))
            else:
                rows.append((device, metric, 10.0 * d + m, "unit" + str(m), None, 0.5 + d))
    html = latest_grid_html(_latest(rows))
    body = html.split("<tbody>")[1]
    assert body.count("<tr") == len(FLEET)  # one row per device, not one per reading
    header = html.split("<thead>")[1].split("</thead>")[0]
    for metric in metrics:
        assert header.count(f">{metric}") == 1
    # Short ids shown, the full id on hover.
    for device in FLEET:
        assert f'title="{device}"' in body
        assert f">{device}<" not in body
    assert ">normal<" in body
    assert "unit2" in header  # one unit per column, in its header
    assert "21" in body


def test_the_grid_gives_a_reading_with_another_unit_its_own_unit() -> None:
    latest = _latest(
        [
            (FLEET[0], "temperature", 20.0, "celsius", None, 0.1),
            (FLEET[1], "temperature", 68.0, "fahrenheit", None, 0.1),
            (FLEET[2], "temperature", 21.0, "celsius", None, 0.1),
        ]
    )
    html = latest_grid_html(latest)
    assert "68 fahrenheit" in html
    assert "celsius" in html.split("</thead>")[0]


def test_the_dashboard_shows_the_grid_with_controls_on_top(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    _feed_fleet(collector)
    dash = dashboards(collector, metric="temperature", refresh="1h", interactive=False)
    assert dash.table.value.split("<tbody>")[1].count("<tr") == len(FLEET)

    def position(widget: widgets.Widget) -> int:
        for index, child in enumerate(dash.children):
            if child is widget or widget in getattr(child, "children", ()):
                return index
        raise AssertionError(f"{widget!r} is not in the dashboard")

    chart = position(dash.chart) if dash.chart in dash.children else _chart_row(dash)
    for control in (dash.record_button, dash.snapshot_button, dash.metric_selector):
        assert position(control) < chart
    assert chart < position(dash.table) < position(dash.health_table)


def _chart_row(dash: Dashboard) -> int:
    for index, child in enumerate(dash.children):
        stack = list(getattr(child, "children", ()))
        while stack:
            widget = stack.pop()
            if widget is dash.chart:
                return index
            stack.extend(getattr(widget, "children", ()))
    raise AssertionError("no chart")


def test_the_device_list_shows_short_ids_and_keeps_full_ones(
    dashboards: Callable[..., Dashboard],
) -> None:
    collector = _offline_collector()
    _feed_fleet(collector)
    dash = dashboards(collector, metric="temperature", refresh="1h", interactive=False)
    labels = list(dash.device_selector.label)  # every device is selected
    assert sorted(dash.device_selector.value) == sorted(FLEET)
    assert all(len(label) <= 12 for label in labels), labels
    assert len(set(labels)) == len(FLEET)
    # The full ids are one hover away.
    assert all(device in dash.device_selector.tooltip for device in FLEET)


# ------------------------------------------------------------- text metrics


def test_a_text_metric_shows_its_values(dashboards: Callable[..., Dashboard]) -> None:
    collector = _offline_collector()
    _feed_fleet(collector)
    for interactive in (False, True):
        dash = dashboards(collector, metric="ai_prediction", refresh="1h", interactive=interactive)
        shown = dash.text_view.value
        assert dash.text_view.layout.display != "none"
        assert "no ai_prediction values" not in shown
        assert "anomaly" in shown
        assert "normal" in shown
        # A state timeline: each device's changes, normal -> anomaly -> normal.
        body = shown.split("<tbody>")[1]
        assert body.count("<tr") == 3 * len(FLEET)
        assert dash.chart.layout.display == "none"
        # Back to a numeric metric: the chart again.
        dash.metric_selector.value = "temperature"
        assert dash.text_view.layout.display == "none"
        assert dash.chart.layout.display != "none"


def test_text_states_collapse_repeats_and_escape() -> None:
    now = pd.Timestamp.now(tz="UTC")
    frame = pd.DataFrame(
        {
            "timestamp": [now + pd.Timedelta(seconds=s) for s in range(5)],
            "received_at": [now + pd.Timedelta(seconds=s) for s in range(5)],
            "device_id": pd.Categorical(["a", "a", "a", "b", "a"]),
            "metric": pd.Categorical(["state"] * 5),
            "value": [np.nan] * 5,
            "value_text": pd.Categorical(["on", "on", "<off>", "on", "<off>"]),
        }
    )
    html = text_states_html(frame)
    body = html.split("<tbody>")[1]
    assert body.count("<tr") == 3  # a: on, <off> (twice in a row: once); b: on
    assert "<off>" not in html
    assert "&lt;off&gt;" in html
    assert text_states_html(frame.iloc[:0]).startswith("<i>")


def test_the_unit_label_follows_new_data(dashboards: Callable[..., Dashboard]) -> None:
    collector = _offline_collector()
    collector.ingest([_message(FLEET[0], "temperature", {"value": 20.0})])
    dash = dashboards(collector, metric="temperature", refresh="1h", interactive=True)
    chart = dash.chart
    assert isinstance(chart, LiveChart)
    assert chart.unit == ""
    collector.ingest([_message(FLEET[0], "temperature", {"value": 21.0, "unit": "celsius"})])
    dash.refresh()  # sends only the new point
    assert chart.unit == "celsius"
