"""Sinks: where rows go on their way to disk (a recording, a hive-partitioned dataset).

`Sink` is the protocol (`sinks.base`), `Recorder` the crash-safe recording (`sinks.recorder`),
`DatasetWriter` the multi-writer dataset (`sinks.dataset`); `from tesaiot_data.sinks import
Recorder` keeps working as it did when `sinks` was one module.
"""

from tesaiot_data.sinks.base import Sink
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder

__all__ = ["DatasetWriter", "Recorder", "Sink"]
