"""The installed version of tesaiot-data, looked up once: `__version__` and file metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION", "__version__"]

try:
    VERSION: str = version("tesaiot-data")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"

#: The same, under the name `tesaiot_data.__version__` re-exports.
__version__ = VERSION
