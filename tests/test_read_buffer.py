"""`_paho.ReadBuffer` on real loopback sockets: socket semantics, and paho's WebSocket layer.

The client's end-to-end behaviour with the buffer (packets split anywhere, every size over
WSS and TCP) is in test_client.py; these check what a lost byte or a stalled `select()` would
need to go wrong.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme

from tesaiot_data.mqtt._paho import PAHO_V2, ReadBuffer, buffered_socket
from tests.fake_broker import publish
from tests.helpers import wait_for

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


def readable(sock: Any) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def frame(data: bytes) -> bytes:
    """One unmasked binary WebSocket frame, as a server sends it (payloads < 64 KiB)."""
    size = bytes([len(data)]) if len(data) < 126 else b"\x7e" + struct.pack("!H", len(data))
    return b"\x82" + size + data


def test_a_read_buffer_keeps_the_semantics_of_a_non_blocking_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        buffered = ReadBuffer(left)
        with pytest.raises(BlockingIOError):
            buffered.recv(1)  # nothing sent: what the socket raises
        assert buffered.pending() == 0
        right.sendall(b"abcdefghij")
        wait_for(lambda: readable(left), message="nothing to read")
        assert buffered.recv(1) == b"a"  # one read took all ten bytes
        assert buffered.pending() == 9  # so paho's loop() does not wait in select()
        assert not readable(left)
        assert buffered.recv(3) == b"bcd"
        assert buffered.recv(100) == b"efghij"  # fewer than asked, as a socket may return
        assert buffered.pending() == 0
        right.sendall(b"xyz")
        right.shutdown(socket.SHUT_WR)
        wait_for(lambda: readable(left), message="nothing to read")
        assert buffered.recv(2) == b"xy"
        assert buffered.recv(2) == b"z"
        assert buffered.recv(2) == b""  # the peer closed
        assert buffered.fileno() == left.fileno()
        buffered.close()
        assert left.fileno() == -1


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts trusting one throw-away CA."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


class WebSocketPeer:
    """The server end of a socket pair: answers paho's WebSocket handshake, then sends bytes."""

    def __init__(self, sock: socket.socket, server_context: ssl.SSLContext | None) -> None:
        self.sock: Any = sock
        self._context = server_context
        self._thread = threading.Thread(target=self._handshake, daemon=True)
        self.error: BaseException | None = None
        self._thread.start()

    def _handshake(self) -> None:
        try:
            if self._context is not None:
                self.sock = self._context.wrap_socket(self.sock, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request:
                request += self.sock.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self) -> None:
        self._thread.join(timeout=10)
        assert self.error is None, self.error


@pytest.fixture(params=["ws", "wss"])
def websocket(
    request: pytest.FixtureRequest, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> Iterator[tuple[Any, WebSocketPeer]]:
    """(paho's WebSocket wrapper under and over ReadBuffers, as the client has it; the peer)."""
    if not PAHO_V2:
        pytest.skip("the read buffer is for paho 2.x")
    ours, theirs = socket.socketpair()
    tls = request.param == "wss"
    peer = WebSocketPeer(theirs, contexts[0] if tls else None)
    sock: Any = contexts[1].wrap_socket(ours, server_hostname="localhost") if tls else ours
    wrapper = mqtt._WebsocketWrapper(
        socket=sock, host="localhost", port=1, is_ssl=tls, path="/mqtt", extra_headers=None
    )
    peer.join()
    sock.setblocking(False)
    yield buffered_socket(wrapper), peer
    peer.sock.close()
    sock.close()


def test_bytes_buffered_under_paho_websocket_layer_count_as_pending(
    websocket: tuple[Any, WebSocketPeer],
) -> None:
    buffered, peer = websocket
    first, second = publish(b"device/a/telemetry/t", b"1"), publish(b"device/b/telemetry/t", b"22")
    peer.sock.sendall(frame(first) + frame(second))  # two frames, one read
    wait_for(lambda: buffered.pending() or readable(buffered), message="nothing arrived")
    received = b""
    while len(received) < len(first):  # as paho reads a packet: 1 byte, 1 byte, the rest
        try:
            received += buffered.recv(1 if len(received) < 2 else len(first) - len(received))
        except (BlockingIOError, ssl.SSLWantReadError):
            wait_for(lambda: readable(buffered), message="the first frame did not arrive")
    assert received == first
    # The second frame was read with the first and sits under the WebSocket layer: a select()
    # would wait for bytes that already came, so pending() must say so.
    assert not readable(buffered)
    assert buffered.pending() >= len(frame(second))
    assert buffered.recv(len(second)) == second
    assert buffered.pending() == 0


def test_a_frame_larger_than_one_read_arrives_whole(websocket: tuple[Any, WebSocketPeer]) -> None:
    buffered, peer = websocket
    packet = publish(b"device/big/telemetry/t", bytes(range(256)) * 300)  # 76,8xx bytes
    data = b"\x82\x7f" + struct.pack("!Q", len(packet)) + packet  # 64-bit frame length
    sender = threading.Thread(target=peer.sock.sendall, args=(data,), daemon=True)
    sender.start()
    received = b""

    def read_more() -> bool:
        nonlocal received
        with contextlib.suppress(BlockingIOError, ssl.SSLWantReadError):
            received += buffered.recv(len(packet) - len(received))
        return len(received) == len(packet)

    wait_for(read_more, period=0.001, message="the large frame did not arrive whole")
    sender.join(timeout=10)
    assert received == packet
