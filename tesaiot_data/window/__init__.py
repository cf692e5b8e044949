"""The window stage: the rolling, bounded columnar store of recent rows, and resampling."""

from tesaiot_data.window.chunk import Chunk
from tesaiot_data.window.rolling import RollingWindow

__all__ = ["Chunk", "RollingWindow"]
