"""The dashboard's controls: the metric, window and device selectors and the pause button.

The selectors offer what the collector has seen: `sync_options` adds newly seen metrics and
devices while keeping the user's choice (and, while every device is chosen, choosing the new
ones too). Their own updates are not clicks: only a user's change (or code's) calls back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import pandas as pd

from tesaiot_data.dashboard.format import short_ids

__all__ = ["WINDOWS", "Controls", "window_options"]

#: Device ids named in the device list's tooltip; the rest are counted.
MAX_TOOLTIP_DEVICES = 40

#: The time windows offered by the window selector: (label, value).
WINDOWS: tuple[tuple[str, str], ...] = (
    ("1 min", "1min"),
    ("5 min", "5min"),
    ("15 min", "15min"),
    ("1 h", "1h"),
)


def window_options(window: str | pd.Timedelta) -> tuple[list[tuple[str, str]], str]:
    """The window selector's options, with `window` added when it is not a standard one.

    Args:
        window: The window to select first: `"5min"`, `pd.Timedelta(...)` and the like.

    Returns:
        The options as (label, value) pairs sorted by duration, and the value to select.

    Raises:
        ValueError: `window` is not a positive duration.
    """
    wanted = pd.Timedelta(window)
    if wanted <= pd.Timedelta(0):
        raise ValueError(f"window={window!r} must be a positive duration, for example '5min'")
    options = list(WINDOWS)
    for _label, value in options:
        if pd.Timedelta(value) == wanted:
            return options, value
    custom = str(window) if isinstance(window, str) else f"{int(wanted.total_seconds())}s"
    options.append((custom, custom))
    options.sort(key=lambda option: pd.Timedelta(option[1]))
    return options, custom


class Controls:
    """The selectors and the pause button of one dashboard, and the options they offer.

    Args:
        metric: The metric to select first, or None for the first numeric one seen.
        devices: The devices to select first (sorted, unique), or None for all, new ones too.
        window: The window to select first.
        on_change: Called when the user (or code) changes the selection, and on resume.

    Raises:
        ValueError: `window` is not a positive duration.

    Attributes:
        metric_selector: Dropdown of the metrics seen.
        device_selector: SelectMultiple of the devices seen, labelled by short id (the
            shortest prefixes that tell them apart), the full ids in its tooltip.
        window_selector: Dropdown of time windows.
        pause_button: ToggleButton; when down, the chart stops following the data.
    """

    def __init__(
        self,
        *,
        metric: str | None,
        devices: list[str] | None,
        window: str | pd.Timedelta,
        on_change: Callable[[], None],
    ) -> None:
        options, value = window_options(window)
        self._on_change = on_change
        self._follow_all_devices = devices is None
        # The thread that is updating the selectors' options: their events are not clicks.
        self._syncing_thread: int | None = None
        self._metric_options: list[str] = [metric] if metric else []
        self._device_options: list[str] = list(devices or [])
        self.metric_selector = widgets.Dropdown(
            options=self._metric_options,
            value=metric,
            description="metric",
            layout=widgets.Layout(width="260px"),
        )
        self.window_selector = widgets.Dropdown(
            options=options,
            value=value,
            description="window",
            layout=widgets.Layout(width="180px"),
        )
        self.pause_button = widgets.ToggleButton(
            value=False,
            description="Pause",
            icon="pause",
            tooltip="freeze the chart",
            layout=widgets.Layout(width="100px"),
        )
        self.device_selector = widgets.SelectMultiple(
            options=_labelled(self._device_options),
            value=tuple(devices or ()),
            description="",  # ipywidgets 8 shows a select's tooltip only without a description
            rows=12,
            tooltip=_device_tooltip(self._device_options),
            layout=widgets.Layout(width="240px", flex="0 0 auto"),
        )
        self.metric_selector.observe(self._on_selection, names="value")
        self.device_selector.observe(self._on_devices, names="value")
        self.window_selector.observe(self._on_selection, names="value")
        self.pause_button.observe(self._on_pause, names="value")

    @property
    def metric(self) -> str | None:
        """The metric selected."""
        metric: str | None = self.metric_selector.value
        return metric

    @property
    def devices(self) -> list[str]:
        """The devices selected."""
        return list(self.device_selector.value)

    @property
    def window_ns(self) -> int:
        """The window selected, in ns."""
        return int(pd.Timedelta(self.window_selector.value).value)

    @property
    def paused(self) -> bool:
        """Whether the pause button is down."""
        return bool(self.pause_button.value)

    def sync_options(self, latest: pd.DataFrame) -> None:
        """Add newly seen metrics and devices to the selectors, keeping the selection.

        Args:
            latest: The newest row of each device and metric (`Collector.latest()`).
        """
        metrics = [str(m) for m in latest["metric"].unique()]
        devices = [str(d) for d in latest["device_id"].unique()]
        new_metrics = sorted(set(metrics) - set(self._metric_options))
        new_devices = sorted(set(devices) - set(self._device_options))
        if not (new_metrics or new_devices):
            return
        self._syncing_thread = threading.get_ident()
        try:
            if new_metrics:
                current = self.metric_selector.value
                if current is None:
                    current = _first_numeric_metric(latest)
                self._metric_options = sorted({*self._metric_options, *new_metrics})
                with self.metric_selector.hold_sync():
                    self.metric_selector.options = self._metric_options
                    self.metric_selector.value = current
            if new_devices:
                selected = list(self.device_selector.value)
                if self._follow_all_devices:
                    selected += new_devices
                self._device_options = sorted({*self._device_options, *new_devices})
                with self.device_selector.hold_sync():
                    self.device_selector.options = _labelled(self._device_options)
                    self.device_selector.tooltip = _device_tooltip(self._device_options)
                    self.device_selector.value = tuple(sorted(set(selected)))
        finally:
            self._syncing_thread = None

    def _syncing(self) -> bool:
        return self._syncing_thread == threading.get_ident()

    def _on_selection(self, _change: dict[str, Any]) -> None:
        if self._syncing():
            return
        self._on_change()

    def _on_devices(self, _change: dict[str, Any]) -> None:
        if self._syncing():
            return
        # Choosing every device (again) means "follow new devices too".
        self._follow_all_devices = set(self.device_selector.value) == set(self._device_options)
        self._on_change()

    def _on_pause(self, change: dict[str, Any]) -> None:
        paused = bool(change["new"])
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        if not paused:
            self._on_change()


def _first_numeric_metric(latest: pd.DataFrame) -> str | None:
    # The metric column's categories are in first-seen order (the store's dictionary).
    numeric = set(latest.loc[latest["value"].notna(), "metric"].astype(str))
    column = latest["metric"]
    seen = (
        column.cat.categories
        if isinstance(column.dtype, pd.CategoricalDtype)
        else column.astype(str).unique()
    )
    for metric in seen:
        if metric in numeric:
            return str(metric)
    return str(latest["metric"].iloc[0]) if len(latest) else None


def _labelled(devices: list[str]) -> list[tuple[str, str]]:
    # A UUID is 36 characters: the list would need a horizontal scroll bar.
    names = short_ids(devices)
    return [(names[device], device) for device in devices]


def _device_tooltip(devices: list[str]) -> str:
    shown = devices[:MAX_TOOLTIP_DEVICES]
    more = len(devices) - len(shown)
    return "\n".join([*shown, *([f"+{more} more"] if more > 0 else [])]) or "devices"
