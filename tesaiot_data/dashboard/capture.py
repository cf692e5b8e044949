"""The dashboard's capture row: Record (start and stop a recording) and Snapshot now.

Both name their file from the moment of the click, in one folder (`format.RECORDINGS_DIR`),
unless a file name was typed. A recording started here is stopped (and saved) when the
dashboard closes or its collector stops; the label says where it went.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from tesaiot_data.dashboard.format import default_recording_path, format_elapsed
from tesaiot_data.files.store import StorePath

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector, Recording

__all__ = ["Capture"]

logger = logging.getLogger(__name__)


class Capture:
    """The Record and Snapshot controls of one dashboard, and the recording they started.

    Args:
        collector: The collector to record or snapshot.
        closed: Whether the dashboard is closed (then the buttons are left as they are).
        on_started: Called once a recording has started (to refresh the labels).

    Attributes:
        record_name: Text with the file the next recording goes to.
        record_button: ToggleButton that starts and stops a recording.
        record_label: Label with the recording's progress, or the saved path.
        snapshot_button: Button that writes the window to Parquet now.
        saved_path: The file the last recording was saved to.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        closed: Callable[[], bool],
        on_started: Callable[[], None],
    ) -> None:
        self._collector = collector
        self._closed = closed
        self._on_started = on_started
        self._recording: Recording | None = None
        self._lock = threading.RLock()  # start/stop from a click or the timer thread
        self.saved_path: Path | StorePath | None = None
        # Empty: Record names the file when clicked (see `format.default_recording_path`).
        self.record_name = widgets.Text(
            value="",
            placeholder="recordings/session-<time of the click>.parquet",
            description="file",
            layout=widgets.Layout(width="420px"),
        )
        self.record_button = widgets.ToggleButton(
            value=False,
            description="Record",
            icon="circle",
            tooltip="record every row to Parquet",
            layout=widgets.Layout(width="110px"),
        )
        self.snapshot_button = widgets.Button(
            description="Snapshot now",
            icon="camera",
            tooltip="write the window to Parquet now",
            layout=widgets.Layout(width="130px"),
        )
        self.record_label = widgets.Label(value="not recording")
        self.record_button.observe(self._on_record, names="value")
        self.snapshot_button.on_click(self._on_snapshot)

    @property
    def recording(self) -> Recording | None:
        """The recording started with the record button, while it runs."""
        return self._recording

    def show_progress(self) -> None:
        """Show the running recording's rows and time in the record label (if one runs)."""
        recording = self._recording
        if recording is not None:
            self.record_label.value = (
                f"recording to {recording.path}: {recording.rows:,} rows, "
                f"{format_elapsed(recording.elapsed)}"
            )

    def stop(self) -> None:
        """Stop and save the recording started here, if one runs; the label says where."""
        with self._lock:
            recording, self._recording = self._recording, None
        if recording is None:
            return
        try:
            path = recording.stop()
        except Exception as exc:
            logger.exception("stopping the recording to %s failed", recording.path)
            self.record_label.value = f"recording to {recording.path} failed: {exc}"
        else:
            self.record_label.value = (
                f"saved {path} ({recording.rows:,} rows, {format_elapsed(recording.elapsed)})"
            )
            self.saved_path = path
        if not self._closed():
            self.record_button.description = "Record"
            self.record_button.icon = "circle"
            self.record_name.disabled = False
            if self.record_name.value.strip() == str(recording.path):
                self.record_name.value = ""
            if self.record_button.value:
                self.record_button.value = False

    def _on_record(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._start()
        else:
            self.stop()

    def _start(self) -> None:
        with self._lock:
            if self._recording is not None:
                return
            self._begin()

    def _begin(self) -> None:
        typed = self.record_name.value.strip()
        path = Path(typed or _clicked("session")).expanduser()
        try:
            if not self._collector.running:
                raise RuntimeError("the collector is not running; start() it first")
            path.parent.mkdir(parents=True, exist_ok=True)  # fail now, not when stopping
            self._recording = self._collector.record(path)
        except Exception as exc:
            logger.warning("cannot start recording to %s: %s", path, exc)
            self.record_label.value = f"cannot record to {path}: {exc}"
            self.record_button.value = False
            return
        self.record_button.description = "Stop"
        self.record_button.icon = "stop"
        self.record_name.disabled = True
        self._on_started()

    def _on_snapshot(self, _button: widgets.Button) -> None:
        try:
            path = Path(_clicked("snapshot"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._collector.snapshot(path)  # a local file: the path given
        except Exception as exc:
            logger.exception("snapshot failed")
            self.record_label.value = f"snapshot failed: {exc}"
            return
        self.record_label.value = f"snapshot saved to {path}"


def _clicked(kind: str) -> Path:
    # Record and Snapshot: one folder, named from the moment of the click.
    return default_recording_path(kind, datetime.now(timezone.utc))
