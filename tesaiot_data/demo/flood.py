"""Test and benchmark tooling: flood the local broker with raw MQTT PUBLISH packets.

Not for notebooks or applications (use `DeviceFleet`, which publishes through paho, paced
or on demand). Here the packets are encoded first and written later over a bare MQTT 3.1.1
session on a TCP socket, so the sender costs next to nothing and a load test measures the
receiving side. Every packet is QoS 0: nothing is acknowledged, nothing is retried.
"""

from __future__ import annotations

import secrets
import socket

from tesaiot_data.demo.broker import PublisherConfig
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.errors import AuthError, ConnectError

__all__ = ["fleet_packets", "flood", "publish_packet"]


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def publish_packet(topic: str, payload: bytes) -> bytes:
    """Encode one MQTT 3.1.1 PUBLISH packet, QoS 0, not retained.

    Args:
        topic: The topic name.
        payload: The payload, as is.

    Returns:
        The packet's bytes.
    """
    body = _string(topic) + payload
    return b"\x30" + _remaining_length(len(body)) + body


def fleet_packets(fleet: DeviceFleet, count: int) -> bytes:
    """Encode the next `count` messages of a fleet's stream as PUBLISH packets.

    The fleet counts them as published (see `DeviceFleet.take`); they are stamped with the
    fleet clock's time of this call.

    Args:
        fleet: The fleet whose stream to take; it need not be connected.
        count: How many messages.

    Returns:
        The packets, back to back, for `flood()`.
    """
    return b"".join(publish_packet(topic, payload) for topic, payload in fleet.take(count))


def flood(publisher: PublisherConfig, packets: bytes, *, timeout: float = 60.0) -> None:
    """Write pre-encoded PUBLISH packets to the broker as fast as its socket takes them.

    Returns once the broker has handled every packet and closed the connection.

    Args:
        publisher: The publisher account of a `LocalBroker`.
        packets: From `fleet_packets()` or `publish_packet()`.
        timeout: Seconds the whole exchange may take.

    Raises:
        AuthError: The broker refused the publisher account.
        ConnectError: The broker closed the connection early.
    """
    flags = 0xC2  # username, password, clean session
    body = (
        _string("MQTT")
        + bytes([4, flags])
        + (60).to_bytes(2, "big")
        + _string(f"flood-{secrets.token_hex(4)}")
        + _string(publisher.username)
        + _string(publisher.password)
    )
    with socket.create_connection((publisher.host, publisher.port), timeout=timeout) as sock:
        sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        connack = sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20:
            raise ConnectError("the broker closed the flood connection before CONNACK")
        if connack[3] != 0:
            raise AuthError(
                f"the broker refused the publisher account (CONNACK {connack[3]})",
                hint="use the PublisherConfig from LocalBroker.publisher()",
            )
        sock.sendall(packets)
        sock.sendall(b"\xe0\x00")  # DISCONNECT: the broker handles everything before it first
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # wait for the broker to close its side
            pass
