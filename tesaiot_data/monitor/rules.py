"""Alert rules: a threshold on a metric or the silence of a device, checked where it is made.

`AlertRule.make` reads the options of `Collector.alert` (durations through
`tesaiot_data.arguments`, so an error names the option) and refuses any set of options that
does not make exactly one rule. The engine that evaluates rules is `monitor.alerts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from tesaiot_data.arguments import duration_seconds, name_list, parse_timedelta
from tesaiot_data.errors import ConfigError
from tesaiot_data.monitor.events import AlertEvent

__all__ = ["AlertRule"]


def _zero_or_duration(value: str | float | pd.Timedelta, *, name: str) -> float:
    if isinstance(value, str | pd.Timedelta) and not isinstance(value, bool):
        try:
            if parse_timedelta(value) == pd.Timedelta(0):
                return 0.0
        except ValueError:
            pass
    elif value == 0 and not isinstance(value, bool):
        return 0.0
    return duration_seconds(value, name=name)


def _threshold(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} is not a finite number", hint=f"pass {name}=30.0")
    return float(value)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule: a threshold on a metric, or silence of a device.

    Build it with `AlertRule.make` (what `Collector.alert` does), which checks the options.

    Args:
        name: Unique among the collector's rules.
        metric: The metric a threshold rule watches; None for a silent rule.
        above: Fire while a value is greater than this.
        below: Fire while a value is less than this (with `above`: outside the band).
        for_s: Seconds the condition must hold (by receive time) before firing.
        devices: Only these device ids; None watches every device.
        silent_s: Fire when a device sent nothing for this many seconds.
        hysteresis: How far back inside the threshold a value must be to clear a firing
            alert (`above - hysteresis`, `below + hysteresis`), in the metric's unit.
        keep_firing_s: Seconds a firing alert's rows must all be back in range (by receive
            time) before it clears.
        callback: Called with each `AlertEvent` of the rule, on the housekeeping thread.
    """

    name: str
    metric: str | None = None
    above: float | None = None
    below: float | None = None
    for_s: float = 0.0
    devices: frozenset[str] | None = None
    silent_s: float | None = None
    hysteresis: float = 0.0
    keep_firing_s: float = 0.0
    callback: Callable[[AlertEvent], object] | None = field(default=None, compare=False)

    @classmethod
    def make(
        cls,
        name: str,
        *,
        metric: str | None = None,
        above: float | None = None,
        below: float | None = None,
        for_: str | float | pd.Timedelta = "0s",
        devices: Iterable[str] | str | None = None,
        silent: str | float | pd.Timedelta | None = None,
        hysteresis: float = 0.0,
        keep_firing_for: str | float | pd.Timedelta = "0s",
        callback: Callable[[AlertEvent], object] | None = None,
    ) -> AlertRule:
        """Check the options of `Collector.alert` and return the rule.

        Raises:
            ConfigError: The options do not make one rule (see the message and hint).
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"alert name {name!r} must be a non-empty string", hint="'too-hot'")
        high, low = _threshold(above, "above"), _threshold(below, "below")
        for_s = _zero_or_duration(for_, name="for_")
        keep_s = _zero_or_duration(keep_firing_for, name="keep_firing_for")
        margin = _threshold(hysteresis, "hysteresis") or 0.0
        if margin < 0:
            raise ConfigError(
                f"hysteresis={hysteresis!r} must be zero or more",
                hint="pass hysteresis=0.5: a firing alert clears at above - 0.5",
            )
        silent_s = None if silent is None else duration_seconds(silent, name="silent")
        if high is None and low is None and silent_s is None:
            raise ConfigError(
                f"alert {name!r} has no condition",
                hint="pass metric= with above= and/or below=, or silent='30s'",
            )
        if silent_s is not None:
            if high is not None or low is not None:
                raise ConfigError(
                    f"alert {name!r} has both a threshold and silent=",
                    hint="make two rules with different names",
                )
            if metric is not None or for_s:
                raise ConfigError(
                    f"alert {name!r}: a silent rule watches whole devices",
                    hint="drop metric= and for_= (silent= is itself the duration)",
                )
            if margin or keep_s:
                option = "hysteresis" if margin else "keep_firing_for"
                raise ConfigError(
                    f"{option}= is for threshold rules; alert {name!r} is a silent rule",
                    hint=f"drop {option}= (a silent alert clears on the device's next message)",
                )
        elif not isinstance(metric, str) or not metric:
            raise ConfigError(
                f"alert {name!r} has a threshold but no metric",
                hint="pass metric='temperature'",
            )
        if high is not None and low is not None and not low < high:
            raise ConfigError(
                f"alert {name!r}: below={low} must be less than above={high}",
                hint="the rule fires while a value is outside [below, above]",
            )
        if high is not None and low is not None and not low + margin <= high - margin:
            raise ConfigError(
                f"hysteresis={margin:g} leaves no value that clears alert {name!r} "
                f"(below + hysteresis > above - hysteresis)",
                hint=f"pass hysteresis of at most {(high - low) / 2:g}",
            )
        if callback is not None and not callable(callback):
            raise ConfigError(
                f"alert {name!r}: callback {callback!r} is not callable",
                hint="pass a function that takes an AlertEvent",
            )
        chosen = None
        if devices is not None:
            chosen = frozenset(name_list(devices) or ())
            if not chosen or not all(chosen):
                raise ConfigError(
                    f"alert {name!r}: devices={devices!r} must name one or more device ids",
                    hint="pass devices=['dev-1'] or leave it out for every device",
                )
        return cls(
            name,
            metric,
            high,
            low,
            for_s,
            chosen,
            silent_s,
            hysteresis=margin,
            keep_firing_s=keep_s,
            callback=callback,
        )

    @property
    def is_silent(self) -> bool:
        """Whether this is a silent rule (else a threshold rule)."""
        return self.silent_s is not None
