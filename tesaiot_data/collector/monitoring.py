"""The collector's monitoring face: device health and alert rules, read and set by the user.

`Monitoring` holds `Collector.health()`, `alert()`, `remove_alert()` and `alerts()`: what a
user asks of the monitors (`tesaiot_data.monitor`) that the ingest path feeds with every
batch and the housekeeping thread ticks. `Collector` inherits it; it has no state of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pandas as pd

from tesaiot_data.arguments import TimeLike, duration_seconds, moment_ns
from tesaiot_data.collector.ingest import Ingest
from tesaiot_data.monitor.events import AlertEvent
from tesaiot_data.monitor.rules import AlertRule

__all__ = ["Monitoring"]


class Monitoring:
    """Device health and alerts of a collector's ingest path (a base of `Collector`).

    The subclass sets `_ingest`, the ingest path whose monitors these methods read and set.
    """

    _ingest: Ingest

    def health(self, *, silent_after: str | float | pd.Timedelta | None = None) -> pd.DataFrame:
        """Return one row per device: when it was last heard of, how often, and how well.

        Every message counts, rejected ones too (a device that sends garbage is alive);
        retained messages the broker replays on subscribing do not. Memory is bounded by
        the number of devices (see `tesaiot_data.monitor.health`): devices not seen for a day, or
        the least recently seen beyond `health.MAX_DEVICES`, are forgotten
        (`stats.devices_evicted`).

        Args:
            silent_after: Call every device silent after this long without a message
                (`"30s"`); None judges each device by its own pace: silent after 5 of its
                usual intervals, at least 5 s (60 s for a device seen only once).

        Returns:
            Silent devices first, then by device id; a RangeIndex and the columns
            device (str), last_seen (datetime64[ns, UTC], receive time of its last
            message), age_s (float64 s since then), msgs_per_s (float64, over the last
            minute, or since it was first seen if later), usual_interval_s (float64,
            median gap between its last 32 messages; NaN after one message), silent
            (bool), clock_skew_s (float64, median of device time minus receive time over
            its last 32 messages with a timestamp: positive means the device clock is
            ahead, network delay included; NaN without timestamps), messages (int64,
            since first seen), rejected (int64), reject_share (float64, rejected /
            messages) and metrics (str, the metrics it sent, sorted, comma-separated).

        Raises:
            ConfigError: `silent_after` is not a positive duration (a ValueError too).
        """
        limit = None
        if silent_after is not None:
            limit = duration_seconds(silent_after, name="silent_after")
        return self._ingest.health.frame(now_ns=time.time_ns(), silent_after=limit)

    def alert(
        self,
        name: str,
        *,
        metric: str | None = None,
        above: float | None = None,
        below: float | None = None,
        for_: str | float | pd.Timedelta = "0s",
        devices: Iterable[str] | str | None = None,
        silent: str | float | pd.Timedelta | None = None,
        callback: Callable[[AlertEvent], object] | None = None,
        replace: bool = False,
    ) -> None:
        """Add an alert rule: a threshold on a metric, or a device gone silent.

        An alert fires once when its condition starts and clears once when it ends, per
        (rule, device); each event is kept (see `alerts()`), logged (WARNING when firing,
        INFO when cleared) and passed to `callback` on the housekeeping thread, within
        about 0.25 s. A callback that raises is logged once per rule and counted in
        `stats.alert_callback_errors`; the alert goes on. Recordings keep the events of
        their time in `<stem>.alerts.parquet`.

        Threshold rules are evaluated on every batch as it arrives: the condition holds
        for a numeric row of `metric` whose value is greater than `above` or less than
        `below` (with both: outside the band). With `for_`, the alert fires at the first
        row whose device's rows of that metric have all been in breach since a row at least
        `for_` earlier, by receive time (device clocks can be wrong); one row back in range
        clears it. Silent rules are evaluated four times a second while connected: the
        alert fires when a device sent nothing for `silent` (devices named in `devices`
        count even if never seen) and clears on its next message.

        Example:
            >>> collector.alert("hot", metric="temperature", above=30, for_="1m")  # doctest: +SKIP
            >>> collector.alert("gone", silent="30s")  # doctest: +SKIP

        Args:
            name: The rule's name, unique among this collector's rules.
            metric: The metric a threshold rule watches (required with above/below).
            above: Fire while a value is greater than this.
            below: Fire while a value is less than this.
            for_: How long the breach must last before firing (`"30s"`); default at once.
            devices: Only these device ids; default every device.
            silent: Fire when a device sent nothing for this long (`"30s"`), instead of a
                threshold.
            callback: Called with each `AlertEvent` (time_ns, rule, device, metric, value,
                state) of this rule.
            replace: Replace an existing rule of the same name (its alerts start afresh,
                with no cleared events for those firing).

        Raises:
            ConfigError: No condition, both a threshold and `silent`, a threshold without
                `metric`, `below >= above`, a bad duration, or a duplicate name.
        """
        rule = AlertRule.make(
            name,
            metric=metric,
            above=above,
            below=below,
            for_=for_,
            devices=devices,
            silent=silent,
            callback=callback,
        )
        self._ingest.alerts.add(rule, now_ns=time.time_ns(), replace=replace)

    def remove_alert(self, name: str) -> bool:
        """Remove an alert rule; its firing alerts end without a cleared event.

        Returns:
            Whether there was a rule of that name.
        """
        return self._ingest.alerts.remove(name)

    def alerts(self, *, since: TimeLike | None = None, active: bool = False) -> pd.DataFrame:
        """Return the alert events, oldest first (the last `alerts.MAX_EVENTS`).

        Cheap to poll: `stats.alert_events` grows with every new event.

        Args:
            since: Only events at or after this time: a duration back from now (`"5min"`)
                or a point in time (naive means UTC).
            active: Only the alerts firing now, one row each (its firing event).

        Returns:
            A RangeIndex and the columns time (datetime64[ns, UTC]), rule (category),
            device (str), metric (str; missing for silent rules), value (float64: the
            row's value, or for silent rules the seconds of silence) and state (category:
            "firing" or "cleared").

        Raises:
            ValueError: `since` is neither a duration nor a time.
        """
        return self._ingest.alerts.frame(since_ns=moment_ns(since), active=active)
