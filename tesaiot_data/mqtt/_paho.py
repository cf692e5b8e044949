"""The one place that knows paho-mqtt's insides: a client, reason codes, topics, read buffers.

The client, the tests' helpers and the benchmarks' bare clients all build their paho clients
here, so that a bare client in a benchmark is set up as the collector's is (the benchmarks say
when they differ by the read buffer).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "AUTH_REFUSED",
    "PAHO_V2",
    "PahoClient",
    "ReadBuffer",
    "buffered_socket",
    "disconnect_reason",
    "new_client",
    "reason_code",
    "reason_string",
    "reason_text",
    "session_arguments",
    "session_present",
    "set_connect_timeout",
    "topic_of",
]

PahoClient: TypeAlias = mqtt.Client
"""paho's client class, for annotations outside `tesaiot_data.mqtt`."""

PAHO_V2 = hasattr(mqtt, "CallbackAPIVersion")
"""Whether paho-mqtt is 2.x (callbacks with reason codes and properties) rather than 1.6."""

AUTH_REFUSED = frozenset({4, 5, 134, 135})
"""CONNACK codes meaning "your credentials were refused": MQTT 3.1.1's 4 and 5, and the
MQTT 5 reason codes 134 and 135 (Bad user name or password, Not authorized), which paho 2.x
also reports for 3.1.1's."""

_PROTOCOL_VERSIONS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}


_READ_SIZE = 65_536
"""Bytes a `ReadBuffer` asks its socket for at once (a TLS record is at most 16 KiB)."""


class ReadBuffer:
    """A socket whose small reads are served from one large read.

    paho reads each packet with three or more `recv` calls (the command byte, each byte of the
    remaining length, then the rest), and its WebSocket layer reads each frame's header a byte
    at a time and parses it again for each of those calls. Over WSS that is six or more
    `SSLSocket.recv` calls and three frame parses per message. Under a `ReadBuffer` each call
    returns bytes already read, and the socket is read `_READ_SIZE` bytes at a time.

    The semantics of a non-blocking socket are kept: `recv(n)` returns at most `n` bytes, and
    fewer when fewer are buffered (as a socket may); it raises what the socket raises
    (`BlockingIOError`, `ssl.SSLWantReadError`) only when nothing is buffered; `b""` means the
    peer closed. `pending()` counts the buffered bytes, so paho's `loop()`, which asks
    `pending()` before it waits in `select()`, never waits while bytes are buffered.

    Args:
        sock: A connected socket, `ssl.SSLSocket`, or paho's WebSocket wrapper.
        below: The buffer under `sock`'s own socket, when `sock` is paho's WebSocket wrapper:
            its bytes count as pending too (the wrapper's `pending()` asks its socket only
            over TLS).
    """

    __slots__ = ("_below", "_buffer", "_position", "_sock")

    def __init__(self, sock: Any, *, below: ReadBuffer | None = None) -> None:
        self._sock = sock
        self._below = below
        self._buffer = b""
        self._position = 0

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes: from the buffer, or from one read of the socket."""
        buffer, position = self._buffer, self._position
        if position < len(buffer):
            end = position + size
            if end >= len(buffer):
                self._buffer, self._position = b"", 0
                return buffer[position:] if position else buffer
            self._position = end
            return buffer[position:end]
        data: bytes = self._sock.recv(max(size, _READ_SIZE))
        if len(data) <= size:
            return data
        self._buffer, self._position = data, size
        return data[:size]

    read = recv

    def pending(self) -> int:
        """Bytes readable without waiting: buffered here, plus what the socket holds decrypted."""
        held = len(self._buffer) - self._position
        if self._below is not None:
            return held + self._below.pending()
        inner = getattr(self._sock, "pending", None)
        return held + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        """Write to the socket (writes are not buffered)."""
        sent: int = self._sock.send(data)
        return sent

    write = send

    def fileno(self) -> int:
        """The socket's file descriptor, for `select()`."""
        fileno: int = self._sock.fileno()
        return fileno

    def close(self) -> None:
        """Close the socket and forget what is buffered."""
        self._buffer, self._position = b"", 0
        self._sock.close()

    def setblocking(self, flag: bool) -> None:
        """Passed to the socket."""
        self._sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        """Passed to the socket."""
        self._sock.settimeout(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffered_socket(sock: Any) -> Any:
    """`sock` with a `ReadBuffer` over it, and under paho's WebSocket wrapper too.

    Args:
        sock: What paho's `Client._create_socket` made: a socket, an `ssl.SSLSocket` or
            paho's WebSocket wrapper (whose own socket is buffered too).

    Returns:
        The `ReadBuffer` paho reads from.
    """
    websocket: Any = getattr(mqtt, "_WebsocketWrapper", None)
    inner = getattr(sock, "_socket", None)  # where paho 2.x's _WebsocketWrapper keeps its socket
    if websocket is not None and isinstance(sock, websocket) and inner is not None:
        below = ReadBuffer(inner)  # its header reads: one TLS read per 64 KiB
        sock._socket = below
        return ReadBuffer(sock, below=below)  # paho's 3+ reads per packet: one frame parse
    return ReadBuffer(sock)


class _BufferedClient(mqtt.Client):
    """A paho 2.x client that reads each socket it makes through `ReadBuffer`s."""

    def _create_socket(self) -> Any:
        return buffered_socket(super()._create_socket())  # type: ignore[misc,unused-ignore]


_CAN_BUFFER = PAHO_V2 and hasattr(mqtt.Client, "_create_socket")


def new_client(
    client_id: str,
    *,
    clean_session: bool = True,
    transport: str = "tcp",
    protocol: str = "3.1.1",
    read_buffer: bool = False,
) -> mqtt.Client:
    """A paho client with the same callback signatures on paho 1.6 and 2.x, MQTT 3.1.1 or 5.

    On paho 2.x it uses `CallbackAPIVersion.VERSION2`, whose signatures are the same for both
    MQTT versions: `on_connect(client, userdata, flags, reason, properties)`,
    `on_disconnect(client, userdata, flags, reason, properties)`,
    `on_subscribe(client, userdata, mid, reasons, properties)`, each reason a `ReasonCode`.
    paho 1.6 passes fewer arguments, and different ones per version: on MQTT 3.1.1
    `on_connect(client, userdata, flags, rc)`, `on_disconnect(client, userdata, rc)` and
    `on_subscribe(client, userdata, mid, granted_qos)` with ints; on MQTT 5
    `on_connect(client, userdata, flags, reason, properties)`,
    `on_disconnect(client, userdata, reason, properties)` and
    `on_subscribe(client, userdata, mid, reasons, properties)` with `ReasonCodes`. So a
    callback takes `*args`, and `reason_code` reads an int or a reason alike.

    An MQTT 5 client has no clean-session flag: `clean_session` is then ignored here, and
    the session is chosen when connecting (`session_arguments`).

    Args:
        client_id: The MQTT client id.
        clean_session: Whether the broker forgets the session on disconnect (MQTT 3.1.1).
        transport: `"tcp"` or `"websockets"`.
        protocol: The MQTT version, `"3.1.1"` (the default) or `"5"`, as `Settings` spells it.
        read_buffer: Read the socket through `ReadBuffer`s (paho 2.x, which builds its socket
            in `Client._create_socket`; with paho 1.6 this is ignored). On this project's
            standard messages it took paho's CPU per message from 63 to 48 us over WSS and
            from 29 to 26 over TCP (offline, `benchmarks/stages.py`, 2026-12-01). False gives
            paho exactly as it ships, as the benchmarks' baseline needs.

    Returns:
        The client, not yet connected.
    """
    version = _PROTOCOL_VERSIONS[protocol]
    options: dict[str, Any] = {
        "client_id": client_id,
        "clean_session": None if version == mqtt.MQTTv5 else clean_session,
        "transport": transport,
        "protocol": version,
    }
    if PAHO_V2:
        cls = _BufferedClient if read_buffer and _CAN_BUFFER else mqtt.Client
        return cls(mqtt.CallbackAPIVersion.VERSION2, **options)  # type: ignore[attr-defined,unused-ignore]
    return mqtt.Client(**options)


def session_arguments(
    protocol: str, *, clean_session: bool, session_expiry: int, receive_maximum: int = 0
) -> dict[str, Any]:
    """Keyword arguments of paho's `connect()` that choose the session, on MQTT 5.

    MQTT 3.1.1 chooses it with the client's clean-session flag (`new_client`) and has no
    expiry on the wire, so there are none. On MQTT 5, a clean session is Clean Start 1 on
    every connect and no Session Expiry Interval (0: the session ends with the connection);
    a persistent one is Clean Start 0 on every connect, the first one too, so that a
    restarted process resumes the session its predecessor left, with the interval given.
    paho keeps both for its `reconnect()`.

    Args:
        protocol: `"3.1.1"` or `"5"`.
        clean_session: Whether to start afresh on every connect.
        session_expiry: The Session Expiry Interval in seconds (0xFFFFFFFF: never).
        receive_maximum: The Receive Maximum to announce (MQTT 5); 0 announces none.

    Returns:
        `{}` on MQTT 3.1.1; else `clean_start` and `properties` for `connect()`.
    """
    if _PROTOCOL_VERSIONS[protocol] != mqtt.MQTTv5:
        return {}
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call,unused-ignore]
    if session_expiry:
        properties.SessionExpiryInterval = session_expiry
    if receive_maximum:
        properties.ReceiveMaximum = receive_maximum
    return {"clean_start": clean_session, "properties": properties}


def session_present(flags: Any) -> bool:
    """Whether the broker resumed a session, from the flags paho passed to `on_connect`.

    Args:
        flags: paho 2.x's `ConnectFlags`, or paho 1.6's dict.

    Returns:
        The CONNACK's Session Present flag.
    """
    if isinstance(flags, dict):
        return bool(flags.get("session present"))
    return bool(getattr(flags, "session_present", False))


def reason_string(properties: Any) -> str | None:
    """The Reason String an MQTT 5 broker may send with a CONNACK, SUBACK or DISCONNECT.

    Args:
        properties: The properties paho passed to the callback, or None (MQTT 3.1.1 on
            paho 1.6 passes none).

    Returns:
        The broker's words, or None when it sent none.
    """
    text = getattr(properties, "ReasonString", None)
    return str(text) if text else None


def disconnect_reason(args: tuple[Any, ...]) -> str:
    """Why the connection ended, in words, from what paho passed to `on_disconnect`.

    Args:
        args: The arguments after `client, userdata`: paho 2.x `(flags, reason, properties)`,
            paho 1.6 `(rc,)` on MQTT 3.1.1 or `(reason, properties)` on MQTT 5.

    Returns:
        For example `"Unspecified error"`, `"7"`, or `"Session taken over (another client)"`
        with the Reason String of an MQTT 5 broker's DISCONNECT.
    """
    if not args:
        return "?"
    at = 1 if PAHO_V2 and len(args) > 1 else 0
    text = str(args[at])
    said = reason_string(args[at + 1]) if len(args) > at + 1 else None
    return text if said is None else f"{text} ({said})"


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
    if PAHO_V2 or hasattr(reason, "getName"):  # a ReasonCode(s): MQTT 5 on paho 1.6 too
        return str(reason)
    return mqtt.connack_string(reason_code(reason))


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


def topic_of(message: mqtt.MQTTMessage) -> str:
    """A received message's topic; bytes that are not UTF-8 become lone surrogates, not an error.

    A broker may forward such a topic, and paho's `message.topic` raises on it. The parser
    rejects the surrogates as a bad topic, so the message is counted and kept, not lost.

    Args:
        message: What paho passed to `on_message`.

    Returns:
        The topic as text.
    """
    raw = message._topic  # bytes in paho 1.6 and 2.x
    if not isinstance(raw, bytes):
        return str(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def user_property(message: mqtt.MQTTMessage, name: str) -> str | None:
    """The value of an MQTT 5 user property of a received message, or None.

    Args:
        message: What paho passed to `on_message`.
        name: The property's name; the first pair with it wins.

    Returns:
        Its value, or None when the message has no such property (always on MQTT 3.1.1).
    """
    properties = getattr(message, "properties", None)
    pairs = getattr(properties, "UserProperty", None) if properties is not None else None
    if not pairs:
        return None
    for key, value in pairs:
        if key == name:
            return str(value)
    return None
