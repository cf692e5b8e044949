"""What a subscriber counted, read at one moment: `ClientStats`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["ClientStats", "utc"]


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters of a client, read at one moment.

    Args:
        received: Messages taken from the network.
        processed: Messages handled without error.
        failed: Messages whose handler raised (logged with traceback).
        rejected: Messages on a topic outside `device/<id>/telemetry[/...]`.
        dropped: Messages dropped because the internal queue was full.
        reconnects: Successful reconnections after a lost connection.
        connected: Whether the client is connected now.
        connected_since: When the current connection was made (UTC), or None.
        last_message_at: When the last message arrived (UTC), or None.
        redelivered: Messages the broker resent (DUP) that the durable inbox already held:
            acknowledged, not stored twice (0 without a durable inbox).
        unacknowledged: Messages received and not yet acknowledged, waiting for the disk
            (0 without a durable inbox).
    """

    received: int
    processed: int
    failed: int
    rejected: int
    dropped: int
    reconnects: int
    connected: bool
    connected_since: datetime | None
    last_message_at: datetime | None
    redelivered: int = 0
    unacknowledged: int = 0


def utc(epoch: float) -> datetime:
    """A POSIX time in seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc)
