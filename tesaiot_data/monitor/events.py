"""Alert events: what a rule's state change records, and the frame users read them in.

An `AlertEvent` is made by the engine (`monitor.alerts`), kept in memory, written beside a
recording (`monitor.sidecar`) and handed to users as the rows of `events_frame`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["ALERT_COLUMNS", "DEVICE_ALIAS", "AlertEvent", "AlertState", "events_frame"]

AlertState = Literal["firing", "cleared"]
DEVICE_ALIAS = "device"
"""The 0.1 name of the `device_id` column of `health()` and `alerts()`, kept as a trailing copy
of it so that code written for 0.1 goes on working; deprecated, to be removed in 0.3."""
ALERT_COLUMNS = ("time", "rule", "device_id", "metric", "value", "state", DEVICE_ALIAS)
"""The columns of `events_frame`, `Collector.alerts()` and `load_alerts`, in order."""
_STATES = ("firing", "cleared")


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A rule's condition started (`firing`) or ended (`cleared`) for one device.

    Args:
        time_ns: When, in epoch ns UTC. Threshold rules: the receive time of the row that
            changed the state. Silent rules: firing at last receive time + `silent`, cleared
            at the receive time of the device's next message.
        rule: The rule's name.
        device: The device id.
        metric: The rule's metric; None for silent rules.
        value: The row's value (threshold rules) or the device's silence in seconds when the
            state changed (silent rules).
        state: `"firing"` or `"cleared"`.
    """

    time_ns: int
    rule: str
    device: str
    metric: str | None
    value: float
    state: AlertState

    @property
    def device_id(self) -> str:
        """`device`, by the name the frames use (`frame()`, `alerts()`, `health()`)."""
        return self.device

    @property
    def time(self) -> pd.Timestamp:
        """`time_ns` as a UTC Timestamp."""
        return pd.Timestamp(self.time_ns, unit="ns", tz="UTC")


def events_frame(events: Iterable[AlertEvent]) -> pd.DataFrame:
    """Return alert events as a DataFrame.

    Returns:
        Columns time (datetime64[ns, UTC]), rule (category), device_id (str), metric (str,
        missing for silent rules), value (float64), state (category of "firing",
        "cleared") and device (the same as device_id: its 0.1 name, deprecated); a
        RangeIndex.
    """
    events = list(events)
    devices = pd.Series([e.device for e in events], dtype=str)
    return pd.DataFrame(
        {
            "time": pd.DatetimeIndex(
                np.array([e.time_ns for e in events], dtype=np.int64).view("M8[ns]")
            ).tz_localize("UTC"),
            "rule": pd.Categorical([e.rule for e in events]),
            "device_id": devices,
            "metric": pd.Series([e.metric for e in events], dtype=str),
            "value": np.array([e.value for e in events], dtype=np.float64),
            "state": pd.Categorical([e.state for e in events], categories=_STATES),
            DEVICE_ALIAS: devices.copy(),
        }
    )
