"""Module paths from before the 0.2 layout, kept importable for one release with a warning.

`import tesaiot_data.parsing` (or `from tesaiot_data.alerts import load_alerts`) still works:
it gives a module whose public names are those of the modules the old one was split into, and
warns with a `DeprecationWarning` that names the new home. `install()` puts the finder on
`sys.meta_path` when `tesaiot_data` is imported; nothing is loaded until an old path is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

# Old module -> the modules that hold its public names now (the first one is named in the
# warning as the new home).
MOVED: dict[str, tuple[str, ...]] = {
    "tesaiot_data.alerts": (
        "tesaiot_data.monitor.alerts",
        "tesaiot_data.monitor.events",
        "tesaiot_data.monitor.rules",
        "tesaiot_data.monitor.sidecar",
    ),
    "tesaiot_data.client": ("tesaiot_data.mqtt.client", "tesaiot_data.mqtt.connection"),
    "tesaiot_data.compaction": ("tesaiot_data.files.compaction",),
    "tesaiot_data.health": ("tesaiot_data.monitor.health",),
    "tesaiot_data.history": ("tesaiot_data.readers.history",),
    "tesaiot_data.parquet": ("tesaiot_data.files.parquet", "tesaiot_data.readers.disk"),
    "tesaiot_data.parsing": (
        "tesaiot_data.parse.rows",
        "tesaiot_data.parse.payload",
        "tesaiot_data.parse.single",
    ),
    "tesaiot_data.resample": ("tesaiot_data.window.resample",),
    "tesaiot_data.sql": ("tesaiot_data.readers.sql",),
    "tesaiot_data.status": ("tesaiot_data.collector.stats",),
    "tesaiot_data.timestamps": ("tesaiot_data.parse.timestamps", "tesaiot_data.arguments"),
}

# Names that changed with the move: old name -> the new one (same call), per old module.
RENAMED: dict[str, dict[str, str]] = {
    "tesaiot_data.timestamps": {"since_ns": "moment_ns"},  # tesaiot_data.arguments
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, targets: Sequence[str]) -> None:
        self._targets = tuple(targets)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default: a fresh module object

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self._targets[0]} in tesaiot-data 0.2; import "
            f"from there (or from tesaiot_data) instead: the old path goes in 0.3",
            DeprecationWarning,
            stacklevel=2,  # warnings skips importlib's frames: this is the import line
        )
        for target in reversed(self._targets):
            source = importlib.import_module(target)
            public = getattr(source, "__all__", None) or [
                name for name in vars(source) if not name.startswith("_")
            ]
            for name in public:
                setattr(module, name, getattr(source, name))
        for old, new in RENAMED.get(module.__name__, {}).items():
            setattr(module, old, getattr(module, new))


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(targets))


def install() -> None:
    """Put the finder for the old module paths on `sys.meta_path` (once)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
