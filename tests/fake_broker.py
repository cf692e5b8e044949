"""A scripted MQTT 3.1.1 broker on a real loopback socket, for what Mosquitto will not send.

In the spirit of paho's own `FakeBroker` test fixture: the bytes go over a real TCP socket,
so the client under test runs its real network code. Every connection is greeted on a
background thread (CONNECT gets CONNACK, the first SUBSCRIBE gets a SUBACK granting the
requested QoS) and then handed to the test, which sends whatever packets it wants, valid or
not, and may close the connection to make the client reconnect.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
SUBSCRIBE = 0x80
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

_IO_TIMEOUT = 10.0  # seconds a greeting may take
_ACCEPT_POLL = 0.05  # seconds between checks for close() while waiting in accept()


def _remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def packet(header: int, body: bytes) -> bytes:
    """An MQTT packet: the fixed header byte, the remaining length, the body."""
    return bytes([header]) + _remaining_length(len(body)) + body


def publish(topic: bytes, payload: bytes, *, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH; `topic` goes on the wire as given, valid UTF-8 or not."""
    return packet(PUBLISH | int(retain), struct.pack("!H", len(topic)) + topic + payload)


def publish_with_a_lying_topic_length(topic: bytes, payload: bytes) -> bytes:
    """A malformed PUBLISH whose topic length claims more bytes than the packet holds."""
    return packet(PUBLISH, struct.pack("!H", 0xFFFF) + topic + payload)


@dataclass
class FakeConnection:
    """One accepted client connection, already past CONNECT and the first SUBSCRIBE."""

    sock: socket.socket
    client_id: str = ""
    filters: list[str] = field(default_factory=list)
    received: list[int] = field(default_factory=list)  # packet types read after the greeting
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: threading.Event = field(default_factory=threading.Event)

    def send(self, data: bytes) -> None:
        """Send raw bytes to the client."""
        with self._lock:
            self.sock.sendall(data)

    def close(self) -> None:
        """Close the connection, as a broker does when another client takes the client id."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    @property
    def closed(self) -> bool:
        """Whether the client disconnected or the test closed the connection."""
        return self._closed.is_set()

    def read_packet(self) -> tuple[int, bytes]:
        """Read one packet: (fixed header byte, body). Raises EOFError when the peer closed."""
        header = self._read(1)[0]
        size, shift = 0, 0
        while True:
            byte = self._read(1)[0]
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return header, self._read(size)

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError("the client closed the connection")
            data += chunk
        return bytes(data)

    def greet(self) -> None:
        """Answer CONNECT with CONNACK 0 and the first SUBSCRIBE with a SUBACK."""
        header, body = self.read_packet()
        if header & 0xF0 != CONNECT:
            raise ValueError(f"expected CONNECT, got packet type {header >> 4}")
        # Protocol name, level, flags and keepalive come before the client id.
        (name_length,) = struct.unpack_from("!H", body, 0)
        offset = 2 + name_length + 4
        (id_length,) = struct.unpack_from("!H", body, offset)
        self.client_id = body[offset + 2 : offset + 2 + id_length].decode("utf-8")
        self.send(packet(CONNACK, b"\x00\x00"))
        header, body = self.read_packet()
        if header & 0xF0 != SUBSCRIBE:
            raise ValueError(f"expected SUBSCRIBE, got packet type {header >> 4}")
        (mid,) = struct.unpack_from("!H", body, 0)
        granted, offset = bytearray(), 2
        while offset < len(body):
            (length,) = struct.unpack_from("!H", body, offset)
            self.filters.append(body[offset + 2 : offset + 2 + length].decode("utf-8"))
            granted.append(body[offset + 2 + length])
            offset += 3 + length
        self.send(packet(SUBACK, struct.pack("!H", mid) + bytes(granted)))

    def serve(self) -> None:
        """Read until the client goes: answer PINGREQ, note every other packet's type."""
        try:
            while not self._closed.is_set():
                header, _ = self.read_packet()
                self.received.append(header & 0xF0)
                if header & 0xF0 == PINGREQ:
                    self.send(packet(PINGRESP, b""))
                elif header & 0xF0 == DISCONNECT:
                    break
        except (EOFError, OSError):
            pass
        finally:
            self._closed.set()


class FakeBroker:
    """Listens on a free loopback port and greets every client; see the module docstring.

    Example:
        with FakeBroker() as broker:
            client.connect()  # to mqtt://127.0.0.1:{broker.port}
            broker.next_connection().send(publish(b"device/\\xff/telemetry", b"1"))
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(_ACCEPT_POLL)
        self.port: int = self._server.getsockname()[1]
        self.connections: list[FakeConnection] = []  # every greeted connection, in order
        self.errors: list[BaseException] = []  # greetings that failed
        self._greeted: queue.Queue[FakeConnection] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fake-broker", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The broker URL for `Settings(broker_url=...)`."""
        return f"mqtt://127.0.0.1:{self.port}"

    def next_connection(self, *, timeout: float = 10.0) -> FakeConnection:
        """The next greeted connection, in the order they came.

        Raises:
            AssertionError: None came within `timeout` seconds.
        """
        try:
            return self._greeted.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no client connected and subscribed within {timeout:g} s; errors: {self.errors}"
            ) from None

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closing.set()
        self._thread.join(timeout=10)
        self._server.close()
        for connection in self.connections:
            connection.close()

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(_IO_TIMEOUT)
            connection = FakeConnection(sock)
            self.connections.append(connection)
            try:
                connection.greet()
            except (EOFError, OSError, ValueError, struct.error) as exc:
                self.errors.append(exc)
                connection.close()
                continue
            sock.settimeout(None)
            threading.Thread(
                target=connection.serve, name="fake-broker-connection", daemon=True
            ).start()
            self._greeted.put(connection)
