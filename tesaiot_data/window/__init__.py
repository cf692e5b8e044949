"""The window stage: the rolling, bounded columnar store of recent rows, and resampling."""
