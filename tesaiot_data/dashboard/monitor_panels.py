"""The dashboard's device health and alerts tables, refreshed from the collector.

Each is shown only where the collector has `health()` or `alerts()`; both refresh at every
period, new rows or not (a device that goes silent sends none), and the alerts table only
when the number of alert events changed. The HTML comes from `panels`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import ipywidgets as widgets

from tesaiot_data.dashboard.panels import alerts_table_html, health_table_html

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector

__all__ = ["MonitorPanels"]

logger = logging.getLogger(__name__)


class MonitorPanels:
    """The health and alerts tables of one dashboard, with their titles.

    Args:
        collector: The collector shown.

    Attributes:
        health_table: HTML table of `collector.health()`, silent devices first (hidden
            where the collector has no `health()`).
        alerts_table: HTML table of `collector.alerts()`, newest first (hidden likewise).
        children: The titles and tables, in the order they are shown.
    """

    def __init__(self, collector: Collector) -> None:
        self._collector = collector
        self._alert_events: int | None = None  # collector.stats.alert_events last shown
        self.health_table = widgets.HTML(value="<i>no devices yet</i>")
        self.alerts_table = widgets.HTML(value="<i>no alerts</i>")
        self.health_table.add_class("tesaiot-health")
        self.alerts_table.add_class("tesaiot-alerts")
        health_title = widgets.HTML("<b>Device health</b>")
        alerts_title = widgets.HTML("<b>Alerts</b>")
        if not callable(getattr(collector, "health", None)):
            health_title.layout.display = self.health_table.layout.display = "none"
        if not callable(getattr(collector, "alerts", None)):
            alerts_title.layout.display = self.alerts_table.layout.display = "none"
        self.children: list[widgets.Widget] = [
            health_title,
            self.health_table,
            alerts_title,
            self.alerts_table,
        ]

    def update(self) -> None:
        """Refresh the tables from the collector, where it has them; failures are logged."""
        health = getattr(self._collector, "health", None)
        if callable(health):
            try:
                self.health_table.value = health_table_html(health())
            except Exception:
                logger.exception("dashboard: collector.health() failed")
        alerts = getattr(self._collector, "alerts", None)
        if callable(alerts):
            # Events only ever add up: the table changes only when their count does.
            events = getattr(self._collector.stats, "alert_events", None)
            if events is not None and events == self._alert_events:
                return
            try:
                self.alerts_table.value = alerts_table_html(alerts())
            except Exception:
                logger.exception("dashboard: collector.alerts() failed")
            else:
                self._alert_events = events
