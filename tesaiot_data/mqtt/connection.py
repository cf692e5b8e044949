"""One connection to a broker: a configured paho client, its TLS, and its failures as typed errors.

The subscriber (`tesaiot_data.mqtt.client`), the replay's publisher and the demo fleet all build
their paho clients here, read a refused CONNACK here, and turn what the socket raised into a
`TesaiotError` with a hint here. The reconnect backoff of the subscriber lives here too.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tesaiot_data.errors import (
    AuthError,
    ConnectError,
    ConnectTimeoutError,
    SubscribeError,
    TesaiotError,
    TLSError,
)
from tesaiot_data.mqtt._paho import (
    AUTH_REFUSED,
    PahoClient,
    new_client,
    reason_code,
    reason_string,
    reason_text,
    session_arguments,
    session_present,
    set_connect_timeout,
)
from tesaiot_data.mqtt.probe import scheme_hint
from tesaiot_data.settings import SESSION_NEVER_EXPIRES, BrokerURL, Settings

__all__ = [
    "TOKEN_HINT",
    "Backoff",
    "ClientIdClash",
    "PahoClient",
    "client_for",
    "closed_before_connack",
    "configured_client",
    "connack_refusal",
    "connect_arguments",
    "connect_error",
    "ssl_context",
    "suback_refusal",
    "subscriber_connack",
]

logger = logging.getLogger(__name__)

TOKEN_HINT = (
    "check MQTT_API_TOKEN: copy it again from Admin UI -> Organization Settings -> MQTT Tokens"
)
"""The hint of an AuthError for a refused platform token."""

_TLS_HINT = (
    "set CA_CERT_PATH (ca_certs=..., --ca-certs FILE) to the CA that signed the broker's "
    "certificate; MQTT_INSECURE=true (insecure=True, --insecure) skips verification (not for "
    "production)"
)
_SCHEME_HINT = (
    "is the port right for the scheme? wss:// and ws:// are MQTT over WebSocket (with and "
    "without TLS), mqtts:// and mqtt:// MQTT over TCP (MQTT_BROKER_URL, --broker-url)"
)
# Two clients with one client id take the session from each other: the broker closes the
# older connection whenever the other one (re)connects. We warn after _CLASH_COUNT
# connections closed within _SHORT_CONNECTION s of their CONNACK, all within _CLASH_WINDOW s,
# and then at most once every _CLASH_WARN_EVERY s.
_SHORT_CONNECTION = 10.0
_CLASH_COUNT = 3
_CLASH_WINDOW = 120.0
_CLASH_WARN_EVERY = 600.0


class Backoff:
    """Exponential backoff with full jitter: 1 s, 2 s, 4 s ... up to a cap.

    Args:
        initial: The first delay's ceiling, in seconds.
        maximum: The largest ceiling, in seconds.
    """

    def __init__(self, *, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        """The next delay in seconds: uniform in [ceiling / 2, ceiling]; counts the attempt."""
        ceiling = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from `initial` (after a connection succeeded)."""
        self.attempt = 0

    def reconnect(self, client: PahoClient, *, url: BrokerURL, stopping: threading.Event) -> bool:
        """Wait the next delay, then reconnect `client` once.

        Args:
            client: A paho client whose connection was lost.
            url: The broker, for the log.
            stopping: Ends the wait early.

        Returns:
            True when reconnected (the CONNACK is yet to come); False when `stopping` was
            set or the attempt failed (the cause is logged: every failure here is retried).
        """
        delay = self.next_delay()
        logger.warning(
            "connection to %s lost; reconnecting in %.1f s (attempt %d)", url, delay, self.attempt
        )
        if stopping.wait(delay):
            return False
        try:
            client.reconnect()
        except Exception as exc:  # every failure here is retried; the cause is logged
            error = connect_error(exc, url, diagnose=False)
            logger.warning("reconnect to %s failed: %s", url, error)
            return False
        return True


class ClientIdClash:
    """Warns (rate-limited) when the broker keeps closing connections soon after they are made.

    That is the mark of another client with the same client id: each connection takes the
    session from the other, so each gets part of the stream.

    Args:
        url: The broker, for the warning.
        client_id: The client id, for the warning.
    """

    def __init__(self, *, url: BrokerURL, client_id: str) -> None:
        self._url = url
        self._client_id = client_id
        self._connack_at: float | None = None  # monotonic time of the current CONNACK
        self._short_connections: deque[float] = deque(maxlen=_CLASH_COUNT)  # when they ended
        self._warned_at: float | None = None

    def connected(self) -> None:
        """A CONNACK accepted the connection now."""
        self._connack_at = time.monotonic()

    def connection_ended(self, *, by_broker: bool) -> None:
        """The connection ended now; `by_broker` when the broker (not this side) closed it."""
        connack_at, self._connack_at = self._connack_at, None
        if not by_broker or connack_at is None:
            return
        now = time.monotonic()
        if now - connack_at > _SHORT_CONNECTION:
            return
        ends = self._short_connections
        ends.append(now)
        if len(ends) < _CLASH_COUNT or now - ends[0] > _CLASH_WINDOW:
            return
        if self._warned_at is not None and now - self._warned_at < _CLASH_WARN_EVERY:
            return
        self._warned_at = now
        logger.warning(
            "%d connections to %s were closed by the broker within %g s of being made, in "
            "the last %.0f s: another client with the same client id %r is the likely cause "
            "(the broker closes the older connection whenever a client with the same id "
            "connects, so each gets part of the stream) (hint: give each collector its own "
            "MQTT_CLIENT_ID / client_id)",
            len(ends),
            self._url,
            _SHORT_CONNECTION,
            now - ends[0],
            self._client_id,
        )


def ssl_context(
    url: BrokerURL, *, ca_certs: str | Path | None = None, insecure: bool = False
) -> ssl.SSLContext:
    """The TLS context of a connection: system or given CAs, TLS 1.2 at least.

    Verification stays on unless `insecure`, which logs a warning.

    Args:
        url: The broker, for the warning.
        ca_certs: A PEM file of trusted CAs; None uses the system store.
        insecure: Skip certificate verification.

    Returns:
        A client-side context.

    Raises:
        TLSError: `ca_certs` cannot be read or holds no PEM certificate (the message names
            the file).
    """
    try:
        context = ssl.create_default_context(cafile=str(ca_certs) if ca_certs else None)
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(
            f"the CA file {str(ca_certs)!r} cannot be used: {exc}",
            hint="set CA_CERT_PATH (ca_certs=..., --ca-certs) to a PEM file of trusted CA "
            "certificates",
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        logger.warning(
            "TLS certificate verification is OFF for %s (insecure=True): the connection "
            "is encrypted but the broker's identity is not checked",
            url,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def configured_client(
    url: BrokerURL,
    *,
    client_id: str,
    username: str,
    password: str,
    clean_session: bool = True,
    ca_certs: str | Path | None = None,
    insecure: bool = False,
    connect_timeout: float = 10.0,
    read_buffer: bool = False,
    protocol: str = "3.1.1",
) -> PahoClient:
    """A paho client set up to reach `url`: transport, WebSocket path, TLS and credentials.

    It keeps every QoS > 0 message published while offline (no queue limit). Callbacks
    are the caller's to set; see `tesaiot_data.mqtt._paho.new_client` for their signatures.

    Args:
        url: The broker.
        client_id: The MQTT client id.
        username: The MQTT username.
        password: The MQTT password.
        clean_session: Whether the broker forgets the session on disconnect (MQTT 3.1.1;
            on MQTT 5 the session is chosen in `connect()`, see `connect_arguments`).
        ca_certs: A PEM file of trusted CAs (TLS URLs); None uses the system store.
        insecure: Skip certificate verification (TLS URLs; a warning is logged).
        connect_timeout: Seconds `connect()` waits for the TCP connection.
        read_buffer: Read the socket through `ReadBuffer`s (see `new_client`).
        protocol: The MQTT version, `"3.1.1"` or `"5"`.

    Returns:
        The client, not yet connected.

    Raises:
        OSError: `ca_certs` cannot be read.
        ssl.SSLError: `ca_certs` holds no certificate.
    """
    client = new_client(
        client_id,
        clean_session=clean_session,
        transport=url.transport,
        protocol=protocol,
        read_buffer=read_buffer,
    )
    client.username_pw_set(username, password)
    if url.transport == "websockets":
        client.ws_set_options(path=url.path)
    if url.tls:
        client.tls_set_context(ssl_context(url, ca_certs=ca_certs, insecure=insecure))
        if insecure:
            client.tls_insecure_set(True)
    elif insecure:
        logger.warning("insecure=True has no effect on %s (no TLS)", url)
    set_connect_timeout(client, connect_timeout)
    client.max_queued_messages_set(0)
    return client


def client_for(
    settings: Settings,
    *,
    client_id: str | None = None,
    clean_session: bool | None = None,
    username: str | None = None,
    password: str | None = None,
    read_buffer: bool = False,
) -> PahoClient:
    """`configured_client` for `settings`: the token is username and password by default.

    The client speaks `settings.protocol`; connect it with `connect_arguments(settings)`,
    which MQTT 5 needs to keep a persistent session.

    Args:
        settings: The broker URL, token, username, TLS options, connect timeout, protocol
            and session.
        client_id: Instead of `settings.client_id`.
        clean_session: Instead of `settings.persistent_session` (its opposite): True for a
            clean session (MQTT 3.1.1; on MQTT 5, `connect()` without `connect_arguments`
            starts a session that ends with the connection).
        username: Instead of `settings.username` (or the token).
        password: Instead of the token.
        read_buffer: Read the socket through `ReadBuffer`s (see `new_client`).

    Returns:
        The client, not yet connected.

    Raises:
        OSError: `settings.ca_certs` cannot be read.
        ssl.SSLError: `settings.ca_certs` holds no certificate.
    """
    return configured_client(
        settings.url,
        client_id=settings.client_id if client_id is None else client_id,
        username=username or settings.username or settings.token,
        password=settings.token if password is None else password,
        clean_session=not settings.persistent_session if clean_session is None else clean_session,
        ca_certs=settings.ca_certs,
        insecure=settings.insecure,
        connect_timeout=settings.connect_timeout,
        read_buffer=read_buffer,
        protocol=settings.protocol,
    )


def connect_arguments(settings: Settings, *, receive_maximum: int = 0) -> dict[str, Any]:
    """Keyword arguments for `connect()` of a `client_for(settings)`: the session, on MQTT 5.

    MQTT 3.1.1 maps a persistent session to `clean_session=False`, set when the client was
    made, and sends no expiry (the broker's own applies). MQTT 5 sends Clean Start 0 and a
    Session Expiry Interval of `settings.session_expiry_interval` seconds for a persistent
    session, Clean Start 1 and none for a clean one (see `_paho.session_arguments`).

    Args:
        settings: The protocol and the session.
        receive_maximum: On MQTT 5, the Receive Maximum to announce: the most QoS 1/2
            messages the broker may send unacknowledged (1-65,535); 0 announces none (the
            protocol's default, 65,535).

    Returns:
        `{}` on MQTT 3.1.1; `clean_start` and `properties` on MQTT 5.
    """
    return session_arguments(
        settings.protocol,
        clean_session=not settings.persistent_session,
        session_expiry=settings.session_expiry_interval,
        receive_maximum=receive_maximum,
    )


def connack_refusal(
    reason: Any, *, broker: object, who: str, hint: str, properties: Any = None
) -> ConnectError | None:
    """The typed error of a refused CONNACK, or None when the broker accepted the connection.

    Args:
        reason: The reason paho passed to `on_connect` (a `ReasonCode`, or paho 1.6's int).
        broker: The broker as the message names it (a `BrokerURL`, or words).
        who: Whose credentials, for example `"token tesa_mqtt_org_…a1b2"`.
        hint: The hint of an AuthError.
        properties: The CONNACK's properties (MQTT 5), if paho passed any: the broker's
            Reason String, when it sent one, goes into the message.

    Returns:
        An AuthError when the credentials were refused (MQTT 3.1.1 codes 4 and 5, MQTT 5
        codes 134 and 135), a ConnectError for any other refusal, None for success.
    """
    code = reason_code(reason)
    if code == 0:
        return None
    text = reason_text(reason)
    if (words := reason_string(properties)) is not None:
        text = f"{text} ({words})"
    if code in AUTH_REFUSED:
        return AuthError(f"{broker} refused {who}: {text}", hint=hint)
    return ConnectError(f"{broker} refused the connection: {text}")


def subscriber_connack(
    settings: Settings, flags: Any, reason: Any, properties: Any
) -> ConnectError | None:
    """The subscriber's reading of a CONNACK: the typed refusal, or None and the session logged.

    Args:
        settings: The broker, the token and the session, for the messages.
        flags: The flags paho passed to `on_connect` (Session Present).
        reason: The reason paho passed to `on_connect`.
        properties: The CONNACK's properties (MQTT 5), or None.

    Returns:
        An AuthError for a refused token (with `TOKEN_HINT`), a ConnectError for another
        refusal, None when accepted.
    """
    who = f"token {settings.masked_token}"
    refused = connack_refusal(
        reason, broker=settings.url, who=who, hint=TOKEN_HINT, properties=properties
    )
    if refused is None and settings.persistent_session:
        if session_present(flags):
            logger.info("%s resumed the session of client id %r", settings.url, settings.client_id)
        else:
            logger.info(
                "%s had no session for client id %r: a persistent session begins (%s)",
                settings.url,
                settings.client_id,
                _expiry_words(settings),
            )
        # An MQTT 5 broker may keep the session for less than asked (its own maximum).
        granted = getattr(properties, "SessionExpiryInterval", None)
        if granted is not None and granted != settings.session_expiry_interval:
            logger.warning(
                "%s keeps the session of client id %r for %s s after a disconnect, not the "
                "%s s asked for: an outage longer than that loses what was published meanwhile",
                settings.url,
                settings.client_id,
                f"{granted:,}",
                f"{settings.session_expiry_interval:,}",
            )
    return refused


def _expiry_words(settings: Settings) -> str:
    seconds = settings.session_expiry_interval
    if settings.protocol != "5":
        return "MQTT 3.1.1: the broker decides how long it keeps it"
    if seconds == SESSION_NEVER_EXPIRES:
        return "it never expires"
    return f"kept for {seconds:,} s after a disconnect"


def suback_refusal(
    granted: Any, *, settings: Settings, properties: Any = None
) -> SubscribeError | None:
    """The typed error of a refused subscription, or None when every filter was granted.

    Args:
        granted: What paho passed to `on_subscribe`: granted QoS or reason codes.
        settings: The subscription, the broker and the token, for the message.
        properties: The SUBACK's properties (MQTT 5), if paho passed any.

    Returns:
        A SubscribeError when any code is a failure (0x80 or above: MQTT 3.1.1's 0x80, MQTT
        5's 0x80 to 0xA2, for example 0x87 Not authorized), else None.
    """
    refused = [item for item in granted if reason_code(item) >= 0x80]
    if not refused:
        return None
    # A ReasonCode names itself; paho 1.6 gives MQTT 3.1.1's bare 0x80.
    words = [str(it) if hasattr(it, "getName") else f"0x{reason_code(it):02X}" for it in refused]
    if (said := reason_string(properties)) is not None:
        words.append(said)
    hint = "the token may only read device/+/telemetry/#; check MQTT_SUBSCRIBE_TOPIC"
    if settings.subscription.startswith("$share/"):
        hint += " (and that the broker's ACL allows shared subscriptions, $share/...)"
    return SubscribeError(
        f"{settings.url} refused the subscription to {settings.subscription!r} "
        f"for token {settings.masked_token}: {'; '.join(words)}",
        hint=hint,
    )


def closed_before_connack(url: BrokerURL, rc: object, *, diagnose: bool = True) -> ConnectError:
    """The error of a connection the broker closed before its CONNACK, with a hint.

    That is what a port of another protocol does (for example `mqtts://` at a TLS WebSocket
    port: TLS works, then the MQTT CONNECT is not HTTP), so the port is asked what it speaks.

    Args:
        url: The broker.
        rc: What paho's loop returned, for the message.
        diagnose: Ask the port which scheme it serves (up to four short connections).

    Returns:
        A ConnectError whose hint names the scheme that fits, when the port tells.
    """
    found = scheme_hint(url) if diagnose else None
    return ConnectError(
        f"{url} closed the connection before accepting it ({rc})", hint=found or _SCHEME_HINT
    )


def connect_error(exc: BaseException, url: BrokerURL, *, diagnose: bool = True) -> TesaiotError:
    """The typed error, with a hint, for an exception raised while connecting to `url`.

    A failure that a wrong scheme for the port explains (a TLS handshake that fails, a
    WebSocket upgrade refused, a connection reset) asks the port what it speaks
    (`tesaiot_data.mqtt.probe`), and the hint names the scheme that fits.

    Args:
        exc: What paho or the socket raised.
        url: The broker.
        diagnose: Ask the port which scheme it serves (up to four short connections, only
            for those failures); False for a quick answer, as on a reconnect.

    Returns:
        `exc` itself when it is already a TesaiotError; else a TLSError, ConnectError or
        ConnectTimeoutError.
    """
    if isinstance(exc, TesaiotError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(
            f"the certificate of {url.host} could not be verified: "
            f"{getattr(exc, 'verify_message', None) or exc}",
            hint=_TLS_HINT,
        )
    found = scheme_hint(url) if diagnose and _may_be_the_scheme(exc) else None
    if isinstance(exc, ssl.SSLError):
        return TLSError(
            f"TLS handshake with {url.host}:{url.port} failed: {exc}",
            hint=found
            or f"is {url.port} a TLS port? use {'ws' if url.scheme == 'wss' else 'mqtt'}:// "
            "for a plain one (MQTT_BROKER_URL, --broker-url)",
        )
    if isinstance(exc, socket.gaierror):
        return ConnectError(
            f"cannot resolve {url.host!r}: {exc.strerror}",
            hint="check the host in MQTT_BROKER_URL (--broker-url)",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConnectTimeoutError(
            f"{url.host}:{url.port} did not answer in time",
            hint="check MQTT_BROKER_URL (--broker-url) and that a firewall does not block the port",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(
            f"{url.host}:{url.port} refused the connection",
            hint="check the port in MQTT_BROKER_URL (--broker-url; the platform uses 8085 for wss)",
        )
    if type(exc).__name__ == "WebsocketConnectionError":
        return ConnectError(
            f"{url} did not accept the WebSocket upgrade: {exc}",
            hint=found
            or "check the path in MQTT_BROKER_URL (--broker-url; the platform uses /mqtt) "
            "and that the port serves MQTT over WebSocket",
        )
    if isinstance(exc, OSError | ValueError):
        return ConnectError(f"cannot connect to {url}: {exc}", hint=found or _SCHEME_HINT)
    return ConnectError(f"cannot connect to {url}: {exc!r}")


def _may_be_the_scheme(exc: BaseException) -> bool:
    """Whether a wrong scheme for the port may explain `exc` (then the port is asked)."""
    if isinstance(exc, socket.gaierror | TimeoutError | socket.timeout | ConnectionRefusedError):
        return False
    return isinstance(exc, OSError | ValueError) or type(exc).__name__ == (
        "WebsocketConnectionError"
    )
