"""The collector: live telemetry into a rolling DataFrame, Parquet datasets and recordings.

It conducts the stages: the subscriber's worker hands it batches, which it parses, stores in
the window, passes to monitors and feeds to sinks.
"""

from tesaiot_data.collector.collector import Collector, CollectorStats, Recording

__all__ = ["Collector", "CollectorStats", "Recording"]
