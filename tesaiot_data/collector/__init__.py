"""The collector: live telemetry into a rolling DataFrame, Parquet datasets and recordings.

It conducts the stages, one file per job: `collector` (the notebook API), `ingest` (the
worker thread's batch: parse, window, monitors, feeds, counters), `housekeeping` (the
0.25 s tick thread), `recording` (the `Recording` handle) and `stats` (`CollectorStats` and
the status line).
"""

from tesaiot_data.collector.collector import Collector
from tesaiot_data.collector.ingest import Ingest
from tesaiot_data.collector.recording import Recording
from tesaiot_data.collector.stats import CollectorStats

__all__ = ["Collector", "CollectorStats", "Ingest", "Recording"]
