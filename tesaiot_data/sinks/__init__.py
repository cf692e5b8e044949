"""Sinks: where rows go on their way to disk (a recording, a hive-partitioned dataset)."""
