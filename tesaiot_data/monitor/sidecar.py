"""The alerts file of a recording: `<stem>.alerts.parquet`, its schema, writing and reading it.

A recording's alert events are written beside it when it stops (`write_alerts`, atomically,
in `ALERTS_SCHEMA`) and read back as `Collector.alerts()` gives them (`load_alerts`). The
format's write and read live together here so that they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tesaiot_data.errors import NotARecordingError
from tesaiot_data.files.layout import ALERTS_SUFFIX, alerts_sidecar
from tesaiot_data.files.metadata import check_metadata
from tesaiot_data.files.parquet import write_table
from tesaiot_data.files.store import Location, StorePath, filesystem_path, location, translated
from tesaiot_data.monitor.events import AlertEvent, events_frame
from tesaiot_data.schema import TIME_TYPE, epoch_ns

__all__ = ["ALERTS_SCHEMA", "alerts_sidecar", "load_alerts", "write_alerts"]

ALERTS_SCHEMA = pa.schema(
    [
        pa.field("time", TIME_TYPE, nullable=False),
        pa.field("rule", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("state", pa.dictionary(pa.int8(), pa.string()), nullable=False),
    ]
)


_COLUMNS_0_1 = ["time", "rule", "device", "metric", "value", "state"]


def write_alerts(
    events: Iterable[AlertEvent], path: Location, *, metadata: Mapping[str, str] | None = None
) -> Location:
    """Write alert events to a Parquet file atomically, in `ALERTS_SCHEMA`.

    Raises:
        OSError: The file could not be written; an old file at `path` is left as it was.
    """
    events = list(events)
    table = pa.table(
        [
            pa.array(
                np.array([e.time_ns for e in events], dtype=np.int64).view("M8[ns]"), type=TIME_TYPE
            ),
            pa.array([e.rule for e in events], type=pa.string()).dictionary_encode(),
            pa.array([e.device for e in events], type=pa.string()),
            pa.array([e.metric for e in events], type=pa.string()),
            pa.array([e.value for e in events], type=pa.float64()),
            pa.array([e.state for e in events], type=pa.string())
            .dictionary_encode()
            .cast(pa.dictionary(pa.int8(), pa.string())),
        ],
        schema=ALERTS_SCHEMA,
    )
    return write_table(table, path, metadata=check_metadata(metadata), time_column="time")


def load_alerts(path: str | Path | StorePath) -> pd.DataFrame:
    """Read the alert events recorded beside a recording.

    Args:
        path: The recording (its `<stem>.alerts.parquet` is read) or the alerts file itself.

    Returns:
        The events as `Collector.alerts()` returns them (same columns and dtypes).

    Raises:
        FileNotFoundError: There is no alerts file (the collector had no alert rules).
        NotARecordingError: The file is not an alerts file.
    """
    path = location(path)
    if not path.name.endswith(ALERTS_SUFFIX):
        path = alerts_sidecar(path)
    filesystem, where = filesystem_path(path)
    with translated(path):
        table = pq.read_table(where, filesystem=filesystem)
    if table.schema.names == _COLUMNS_0_1:  # written by 0.1: `device` was `device_id`
        table = table.rename_columns(ALERTS_SCHEMA.names)
    if table.schema.names != ALERTS_SCHEMA.names:
        raise NotARecordingError(
            f"{path} is not an alerts file (columns {table.schema.names})",
            hint="pass the recording or its <stem>.alerts.parquet",
        )
    times = epoch_ns(table.column("time"))
    events = [
        AlertEvent(int(t), str(r), str(d), m, float(v), s)
        for t, r, d, m, v, s in zip(
            times.tolist(),
            table.column("rule").to_pylist(),
            table.column("device_id").to_pylist(),
            table.column("metric").to_pylist(),
            table.column("value").to_pylist(),
            table.column("state").to_pylist(),
            strict=True,
        )
    ]
    return events_frame(events)
