"""The one place that knows how paho-mqtt 1.6 and 2.x differ: building a client, reason codes.

The client, the tests' helpers and the benchmarks' bare clients all build their paho clients
here, so that a bare client in a benchmark is set up exactly as the collector's is.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

__all__ = [
    "AUTH_REFUSED",
    "PAHO_V2",
    "new_client",
    "reason_code",
    "reason_text",
    "set_connect_timeout",
]

PAHO_V2 = hasattr(mqtt, "CallbackAPIVersion")
"""Whether paho-mqtt is 2.x (callbacks with reason codes and properties) rather than 1.6."""

AUTH_REFUSED = frozenset({4, 5, 134, 135})
"""CONNACK codes meaning "your credentials were refused": MQTT 3.1.1's 4 and 5, and the
MQTT 5 reason codes 134 and 135 that paho 2.x reports for them."""


def new_client(
    client_id: str,
    *,
    clean_session: bool = True,
    transport: str = "tcp",
    protocol: int = mqtt.MQTTv311,
) -> mqtt.Client:
    """A paho client with the same callback signatures on paho 1.6 and 2.x.

    On paho 2.x it uses `CallbackAPIVersion.VERSION2`: `on_connect(client, userdata, flags,
    reason, properties)`, `on_disconnect(client, userdata, flags, reason, properties)`,
    `on_subscribe(client, userdata, mid, reasons, properties)`; paho 1.6 passes fewer
    arguments (see `reason_code`).

    Args:
        client_id: The MQTT client id.
        clean_session: Whether the broker forgets the session on disconnect.
        transport: `"tcp"` or `"websockets"`.
        protocol: The MQTT protocol version, `mqtt.MQTTv311` by default.

    Returns:
        The client, not yet connected.
    """
    options: dict[str, Any] = {
        "client_id": client_id,
        "clean_session": clean_session,
        "transport": transport,
        "protocol": protocol,
    }
    if PAHO_V2:
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **options)  # type: ignore[attr-defined,unused-ignore]
    return mqtt.Client(**options)


def reason_code(reason: Any) -> int:
    """The number of a paho 2.x `ReasonCode` (or granted QoS) or a paho 1.6 int.

    Args:
        reason: What paho passed to a callback.

    Returns:
        The integer code.
    """
    return int(getattr(reason, "value", reason))


def reason_text(reason: Any) -> str:
    """A CONNACK reason in words, as paho names it.

    Args:
        reason: The reason passed to `on_connect`.

    Returns:
        For example `"Not authorized"`.
    """
    return str(reason) if PAHO_V2 else mqtt.connack_string(reason_code(reason))


def set_connect_timeout(client: mqtt.Client, seconds: float) -> None:
    """Set how long `connect()` waits for the TCP connection, on paho 1.6 and 2.x.

    Args:
        client: A client not yet connected.
        seconds: The timeout.
    """
    if PAHO_V2:
        client.connect_timeout = seconds
    else:
        client._connect_timeout = seconds  # no setter in paho 1.6
