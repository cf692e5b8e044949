"""What a port speaks, asked when a connection failed: MQTT or WebSocket, with TLS or without.

A URL whose scheme does not fit its port fails in ways that do not say so: `ws://` at a TLS
WebSocket port is "a WebSocket handshake error", `mqtts://` at one is a connection closed
before the CONNACK, `wss://` at a plain MQTT port a reset. `scheme_hint` asks the port once
(an MQTT CONNECT in the clear, then inside TLS) and names the scheme that fits, so an error
can say `use wss://127.0.0.1:8085/mqtt`. Only failed connections are probed: the probe opens
at most four short connections (a CONNECT without credentials, which a broker refuses).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

from tesaiot_data.settings import BrokerURL

__all__ = ["port_scheme", "scheme_hint"]

logger = logging.getLogger(__name__)

_CLIENT_ID = b"tesaiot-probe"
# MQTT 3.1.1 CONNECT: protocol name, level 4, clean session, keepalive 10 s, the client id.
_VARIABLE = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(_CLIENT_ID).to_bytes(2, "big") + _CLIENT_ID
_CONNECT = bytes([0x10, len(_VARIABLE)]) + _VARIABLE
_CONNACK = 0x20
_WORDS = {
    "mqtt": "plain MQTT (TCP, no TLS)",
    "mqtts": "MQTT over TLS",
    "ws": "MQTT over WebSocket without TLS",
    "wss": "MQTT over WebSocket with TLS",
}


def _upgrade(host: str, path: str) -> bytes:
    return (
        f"GET {path or '/mqtt'} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()


def _answer(host: str, port: int, *, tls: bool, send: bytes, timeout: float) -> bytes | None:
    """The first bytes `host:port` answers to `send`; None when it cannot be asked (TLS fails)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False  # only the protocol is asked, not the identity
            context.verify_mode = ssl.CERT_NONE
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
            except (ssl.SSLError, OSError):
                return None
        sock.sendall(send)
        try:
            return sock.recv(8)
        except OSError:  # reset or closed: it did not take what was sent
            return b""


def port_scheme(host: str, port: int, *, path: str = "/mqtt", timeout: float = 1.0) -> str | None:
    """Which URL scheme `host:port` serves, asked over the network.

    Args:
        host: The broker's host.
        port: Its port.
        path: The WebSocket path to ask for (only when a port answers neither MQTT nor HTTP
            to an MQTT CONNECT).
        timeout: Seconds each of the (at most four) connections may take.

    Returns:
        `"mqtt"`, `"mqtts"`, `"ws"` or `"wss"`; None when nothing answers in a way that
        tells (nothing listens, a firewall, or a server of another kind).
    """
    for ask in (_CONNECT, _upgrade(host, path)):
        for tls in (False, True):
            try:
                reply = _answer(host, port, tls=tls, send=ask, timeout=timeout)
            except OSError:
                return None  # nothing listens, or it does not answer: nothing to tell
            if not reply:
                continue
            if reply[0] == _CONNACK:
                return "mqtts" if tls else "mqtt"
            if reply.startswith(b"HTTP/"):
                return "wss" if tls else "ws"
    return None


def scheme_hint(url: BrokerURL, *, timeout: float = 1.0) -> str | None:
    """A hint naming the scheme that fits `url`'s port, when it is not `url`'s own.

    Args:
        url: The URL a connection failed with.
        timeout: Seconds each probe connection may take.

    Returns:
        For example `"port 8085 speaks MQTT over WebSocket with TLS: use
        wss://host:8085/mqtt (MQTT_BROKER_URL, --broker-url)"`; None when the port speaks
        `url`'s scheme, or cannot tell.
    """
    started = time.monotonic()
    found = port_scheme(url.host, url.port, path=url.path or "/mqtt", timeout=timeout)
    logger.debug(
        "%s:%s speaks %s (%.2f s to ask)", url.host, url.port, found, time.monotonic() - started
    )
    if found is None or found == url.scheme:
        return None
    host = f"[{url.host}]" if ":" in url.host else url.host
    path = (url.path or "/mqtt") if found in ("ws", "wss") else ""
    return (
        f"port {url.port} speaks {_WORDS[found]}, not {_WORDS[url.scheme]}: use "
        f"{found}://{host}:{url.port}{path} (MQTT_BROKER_URL, --broker-url)"
    )
