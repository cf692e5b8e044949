"""Acknowledgement after the disk: the durable inbox of a collector that writes a dataset.

When the session is persistent (`Settings.persistent_session`) and the collector writes a
dataset, received messages go to a durable inbox (`tesaiot_data.mqtt.inbox`) in the
dataset folder, `.inbox/<client id>/`, and are acknowledged to the broker once fsynced
there. The dataset's feed says how far its rows are in durable Parquet parts
(`Feed.durable_through`); the housekeeping tick releases the inbox up to there
(`Durability.settle`). A restarted collector first drains what the inbox still holds into
the dataset (`Durability.recover`), then subscribes, and the broker resends only what was
never acknowledged.

What a crash can lose: nothing that was acknowledged. What it can store twice: rows whose
Parquet part was written in the instant between the part's rename and the inbox's release
mark (at most one flush's rows, removed by `load_recording(..., dedupe=True)`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote

from tesaiot_data.collector.ingest import Ingest
from tesaiot_data.files.store import Location, StorePath
from tesaiot_data.mqtt.client import TESAIoTMQTTClient
from tesaiot_data.mqtt.inbox import DurableInbox
from tesaiot_data.settings import Settings
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.feed import Feed

__all__ = ["INBOX_FOLDER", "Durability", "inbox_folder", "open_dataset"]

logger = logging.getLogger(__name__)

#: The folder of a dataset that holds the durable inboxes, one per client id. Its leading
#: "." keeps it out of hive-partitioned reads (pyarrow and DuckDB skip such names).
INBOX_FOLDER = ".inbox"


def inbox_folder(dataset: Location, client_id: str) -> Path:
    """The durable inbox of `client_id` in `dataset`: `<dataset>/.inbox/<client id, quoted>`.

    Args:
        dataset: The dataset folder.
        client_id: The MQTT client id (fixed, as a persistent session needs).

    Returns:
        The folder; a client id is %-quoted so that any id is one safe name.
    """
    if isinstance(dataset, StorePath):
        # The inbox is fsynced segments, never objects: a store's dataset keeps it on local
        # disk, one folder per dataset URL and client.
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return (
            state
            / "tesaiot-data"
            / "inbox"
            / quote(str(dataset), safe="")
            / quote(client_id, safe="")
        )
    return dataset / INBOX_FOLDER / quote(client_id, safe="")


def open_dataset(
    dataset: Location, *, flush_every: float, metadata: dict[str, str], settings: Settings
) -> tuple[Feed, Durability | None]:
    """The auto-persist dataset's feed, and its durable inbox when acks wait for the disk.

    Args:
        dataset: The dataset folder.
        flush_every: Seconds between its parts.
        metadata: The `tesaiot.*` keys of its files.
        settings: The session: a persistent one (`Settings.persistent_session`) makes the
            dataset durable, with an inbox for `settings.client_id`.

    Returns:
        The feed to attach, and the `Durability` (None for a clean session).

    Raises:
        RecordingError: The folder cannot be written (see `DatasetWriter`).
        ConfigError: The inbox is in use by another process or cannot be created.
    """
    feed = Feed(DatasetWriter(dataset, flush_every=flush_every, metadata=metadata))
    if not settings.persistent_session:
        return feed, None
    return feed, Durability(inbox_folder(dataset, settings.client_id), feed=feed)


class Durability:
    """The durable inbox of one collector run and the release of what the dataset holds.

    Args:
        folder: The inbox folder (see `inbox_folder`).
        feed: The dataset's feed; made durable here (its `mark` reads the client's
            `handled_seq`, or the last recovered message before the client exists).

    Raises:
        ConfigError: The inbox is in use by another process or cannot be created.

    Attributes:
        inbox: The durable inbox.
        feed: The dataset's feed.
        recovered: Messages a previous run left unreleased, drained by `recover`.
    """

    def __init__(self, folder: Path, *, feed: Feed) -> None:
        self.inbox = DurableInbox(folder)
        self.feed = feed
        self.recovered = 0
        self._recovered_seq = self.inbox.released
        self._client: TESAIoTMQTTClient | None = None
        feed.mark = self._mark

    def recover(self, ingest: Ingest) -> int:
        """Drain what a previous run left into `ingest` and write it out, before subscribing.

        Args:
            ingest: The collector's ingest path (the feed is attached to it).

        Returns:
            Messages recovered (0 after a clean stop).
        """
        for seq, messages in self.inbox.recover():
            ingest(messages)
            self._recovered_seq = seq
            self.recovered += len(messages)
        if self.recovered:
            logger.info(
                "recovered %d messages a previous run received and had not yet written to %s",
                self.recovered,
                self.feed.where,
            )
            self.feed.flush()  # a failure is logged; the inbox keeps them until a flush works
            self.settle()
        return self.recovered

    def client(self, client: TESAIoTMQTTClient) -> None:
        """From now on, the feed's mark is `client.handled_seq`."""
        self._client = client

    def settle(self) -> None:
        """Release the inbox up to what the dataset holds on disk (the housekeeping tick)."""
        self.feed.settle()
        self.inbox.release(self.feed.durable_through)

    def close(self, *, written: bool) -> None:
        """Release what the closed dataset wrote, and unlock the inbox. Idempotent.

        Args:
            written: Whether the dataset closed with every row on disk.
        """
        feed = self.feed
        if written and not feed.sink.rows_dropped:
            feed.durable_through = max(feed.durable_through, self._mark())
        self.inbox.release(feed.durable_through)
        self.inbox.close()

    def _mark(self) -> int:
        client = self._client
        return self._recovered_seq if client is None else client.handled_seq
