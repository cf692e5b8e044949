"""A publishing connection: connect, publish within a bounded window, drain, and typed refusals.

The replay publishes through a `Publisher`, which turns paho's network loop itself in the
publishing thread (with paho's own loop thread, every publish from another thread wakes it
through a socket pair, which costs more than the publish). `publish_message` is the one
reading of what paho answers to a publish, shared with the demo fleet.

Under MQTT 3.1.1 a broker drops a message its ACL denies without telling the publisher, so
a read-only token would "replay" a whole recording into nothing. `Publisher.check_may_publish`
sends the first message over a short MQTT 5 connection at QoS 1 and reads the broker's
answer (PUBACK reason code 135, Not authorized, or a closed connection) before the rest go.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from tesaiot_data.errors import AuthError, ConnectError, ConnectTimeoutError
from tesaiot_data.mqtt._paho import PahoClient, reason_code, reason_text
from tesaiot_data.mqtt.connection import (
    client_for,
    closed_before_connack,
    configured_client,
    connack_refusal,
    connect_error,
)
from tesaiot_data.settings import BrokerURL, Settings

__all__ = ["NO_TOKEN", "PUBLISH_HINT", "READ_ONLY_HINT", "Publisher", "publish_message"]

logger = logging.getLogger(__name__)

NO_TOKEN = "tesa_mqtt_none_" + "0" * 32
"""Stands in for the platform token when publishing with a username and password; never sent."""
PUBLISH_HINT = "check that this account may publish (the platform's tokens only read)"
"""The hint of a ConnectError for a message paho refused."""
READ_ONLY_HINT = (
    "a platform token (and the demo broker's token) only reads: publish as an account that "
    "may, with --username and its password in MQTT_PASSWORD (environment or --env-file), or "
    "username=... and password=... in Python"
)
"""The hint of the AuthError raised when the broker refuses to take a message."""

_BACKLOG = 5_000  # messages handed to paho but not yet written (QoS 0) or acknowledged
_INFLIGHT = 100  # QoS 1/2 messages awaiting their acknowledgement at once
_LOOP_EVERY = 20  # messages published between two turns of the network loop
_LOOP_TIMEOUT = 0.1  # seconds one turn of the network loop may wait
_RECONNECT_DELAY = 1.0
_CHECK_SUFFIX = "-check"  # the check's own client id: the publishing connection keeps its own
_TOKEN_HINT = "check the token (MQTT_API_TOKEN) or the username and password that publish"


def publish_message(client: PahoClient, topic: str, payload: bytes, qos: int) -> bool:
    """Hand one message to paho.

    Args:
        client: A paho client, connected or not.
        topic: The topic.
        payload: The payload.
        qos: 0, 1 or 2.

    Returns:
        True when paho took it (sent, or with QoS 1/2 kept to send after a reconnect);
        False when QoS 0 and the connection is down (the message is lost).

    Raises:
        ConnectError: paho refused the message (for example a topic it cannot send).
    """
    info = client.publish(topic, payload, qos)
    if info.rc in (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
        if qos == 0:
            return False
        # paho keeps a QoS > 0 message published while offline and sends it after the
        # reconnect, yet leaves the error in rc, which would make wait_for_publish raise.
        info.rc = mqtt.MQTT_ERR_SUCCESS
    elif info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise ConnectError(
            f"paho refused a message: {mqtt.error_string(info.rc)}", hint=PUBLISH_HINT
        )
    return True


class Publisher:
    """One publishing connection whose network loop the publishing thread turns.

    At most 5,000 messages wait in paho at once (not yet written, or with QoS 1/2 not yet
    acknowledged) and 100 QoS 1/2 messages are in flight; a lost connection is retried
    every second while publishing goes on (QoS 0 messages are dropped meanwhile).

    Args:
        settings: The broker URL, TLS options, keepalive and connect timeout, and the
            token (both username and password unless `username`/`password` are given).
        client_id: The MQTT client id.
        username: Publish as this account instead of the token.
        password: Its password (default: the token).
        qos: The QoS of every message, 0, 1 or 2.
        halt: Ends every wait early once set (`publish`, `pause`, `drain`).

    Attributes:
        published: Messages paho took.
        completed: Of those, written to the socket (QoS 0) or acknowledged (QoS 1/2).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        qos: int = 0,
        halt: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.url: BrokerURL = settings.url
        self.client_id = client_id
        self.qos = qos
        self._username = username
        self._password = password
        account = username or settings.username
        self._who = f"the account {account}" if account else f"token {settings.masked_token}"
        self._halt = halt or threading.Event()
        self.published = 0
        self.completed = 0
        self._client: PahoClient | None = None
        self._connack = False
        self._refused: Any = None
        self._reconnect_at: float | None = None  # while the connection is down

    @property
    def connected(self) -> bool:
        """Whether `connect()` succeeded and `disconnect()` was not called since."""
        return self._client is not None

    def connect(self) -> None:
        """Connect and wait for the broker's CONNACK.

        Raises:
            AuthError: The broker refused the credentials.
            TLSError: The broker's certificate could not be verified.
            ConnectError: The broker cannot be reached, or refused the connection.
            ConnectTimeoutError: The broker did not answer in time.
        """
        settings, url = self.settings, self.url
        client = client_for(
            settings,
            client_id=self.client_id,
            clean_session=True,
            username=self._username,
            password=self._password,
        )
        client.max_inflight_messages_set(_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        self._connack = False
        self._refused = None
        logger.info("replay connecting to %s as client %s", url, self.client_id)
        try:
            client.connect(url.host, url.port, keepalive=settings.keepalive)
            deadline = time.monotonic() + settings.connect_timeout
            rc = mqtt.MQTT_ERR_SUCCESS
            while not self._connack and rc == mqtt.MQTT_ERR_SUCCESS:
                if time.monotonic() >= deadline:
                    raise ConnectTimeoutError(
                        f"{url} did not accept the connection within "
                        f"{settings.connect_timeout:g} s",
                        hint="check MQTT_BROKER_URL (host, port, path) and your network",
                    )
                rc = client.loop(timeout=_LOOP_TIMEOUT)
            self._raise_refusal()
            if not self._connack:
                raise closed_before_connack(url, rc)
        except Exception as exc:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise connect_error(exc, url) from None
        self._client = client
        self._reconnect_at = None

    def check_may_publish(self, topic: str, payload: bytes) -> bool:
        """Publish one message at QoS 1 over a short MQTT 5 connection; raise if refused.

        A broker that speaks MQTT 5 answers a message its ACL denies with PUBACK reason code
        135 (Not authorized); some close the connection instead. Either is raised, before
        anything else was published. The check connects as the publisher does (same
        credentials) with the client id `<client_id>-check`, so it may run while the
        publishing connection is up.

        Args:
            topic: The first message's topic.
            payload: Its payload: the message is delivered when allowed (as its first one).

        Returns:
            True when the broker acknowledged the message (it is delivered); False when the
            broker cannot tell (no MQTT 5, no answer in time): then nothing was delivered,
            and the message is to be published as usual.

        Raises:
            AuthError: The broker refused the message, or closed the connection after it:
                the account (a read-only token) may not publish there.
        """
        settings, url = self.settings, self.url
        answer: dict[str, Any] = {}
        try:
            client = configured_client(
                url,
                client_id=self.client_id + _CHECK_SUFFIX,
                username=self._username or settings.username or settings.token,
                password=settings.token if self._password is None else self._password,
                ca_certs=settings.ca_certs,
                insecure=settings.insecure,
                connect_timeout=settings.connect_timeout,
                protocol="5",
            )
            client.on_connect = lambda *args: answer.setdefault("connack", args[3])
            # paho 1.6 passes no reason code to on_publish: success, or a closed connection
            client.on_publish = lambda *args: answer.setdefault(
                "puback", args[3] if len(args) > 3 else 0
            )
            client.connect(url.host, url.port, keepalive=settings.keepalive)
        except Exception as exc:  # the publishing connection works: this is only a check
            logger.info("replay: could not check that %s may publish: %s", self._who, exc)
            return False
        try:
            if not self._turn(client, answer, "connack") or reason_code(answer["connack"]):
                logger.info(
                    "replay: %s did not take an MQTT 5 connection; publishing without checking "
                    "that %s may publish",
                    url,
                    self._who,
                )
                return False
            publish_message(client, topic, payload, 1)
            if self._turn(client, answer, "puback"):
                code = reason_code(answer["puback"])
                if code < 0x80:
                    return True
                raise self._read_only(topic, reason_text(answer["puback"]))
            if "closed" in answer:
                raise self._read_only(topic, "the broker closed the connection")
            return False
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()

    def _turn(self, client: PahoClient, answer: dict[str, Any], key: str) -> bool:
        """Turn `client`'s loop until `answer` holds `key`; False on a closed connection."""
        deadline = time.monotonic() + self.settings.connect_timeout
        while key not in answer and time.monotonic() < deadline and not self._halt.is_set():
            if client.loop(timeout=_LOOP_TIMEOUT) != mqtt.MQTT_ERR_SUCCESS:
                answer["closed"] = True
                break
        return key in answer

    def _read_only(self, topic: str, why: str) -> AuthError:
        return AuthError(
            f"{self.url} does not let {self._who} publish to {topic!r} ({why}): it is "
            "read-only here; nothing was replayed",
            hint=READ_ONLY_HINT,
        )

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish one message at the publisher's QoS; turns the network loop now and then.

        Waits (turning the loop) while 5,000 messages are not yet out, unless `halt` is set.

        Args:
            topic: The topic.
            payload: The payload.

        Returns:
            False when QoS 0 and the connection is down (the message is lost), else True.

        Raises:
            ConnectError: paho refused the message.
            AuthError: A reconnect was refused.
        """
        client = self._client
        assert client is not None, "connect() first"
        while self.published - self.completed >= _BACKLOG and not self._halt.is_set():
            self.network(_LOOP_TIMEOUT)  # bounded memory: paho holds what is not yet out
        if not publish_message(client, topic, payload, self.qos):
            return False
        self.published += 1
        if self.published % _LOOP_EVERY == 0:
            self.network(0.0)  # acknowledgements, keepalive
        return True

    def pause(self, seconds: float) -> bool:
        """Turn the network loop for `seconds`.

        Args:
            seconds: How long.

        Returns:
            True when `halt` was set meanwhile, else False.
        """
        deadline = time.monotonic() + seconds
        while not self._halt.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.network(min(left, _LOOP_TIMEOUT))
        return True

    def network(self, timeout: float) -> None:
        """One turn of paho's loop in this thread: read, write, keepalive, reconnect.

        Args:
            timeout: Seconds the turn may wait for the socket.

        Raises:
            AuthError: A reconnect was refused (ConnectError for another refusal).
        """
        client = self._client
        assert client is not None, "connect() first"
        if self._reconnect_at is not None:
            wait = self._reconnect_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout))
                return
            try:
                client.reconnect()
            except Exception as exc:  # retried; the cause is logged
                logger.warning(
                    "replay: reconnect to %s failed: %s",
                    self.url,
                    connect_error(exc, self.url, diagnose=False),
                )
                self._reconnect_at = time.monotonic() + _RECONNECT_DELAY
                return
            self._reconnect_at = None
        rc = client.loop(timeout=timeout)
        self._raise_refusal()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("replay lost its connection to %s (%s); reconnecting", self.url, rc)
            self._reconnect_at = time.monotonic() + _RECONNECT_DELAY

    def drain(self, timeout: float) -> None:
        """Wait until every message is written (QoS 0) or acknowledged (QoS 1/2).

        Args:
            timeout: Seconds to wait at most.

        Raises:
            ConnectError: QoS 1/2 messages were not all acknowledged within `timeout` (QoS 0
                messages not written are logged).
        """
        deadline = time.monotonic() + timeout
        while self.completed < self.published and time.monotonic() < deadline:
            self.network(_LOOP_TIMEOUT)
        missing = self.published - self.completed
        if not missing:
            return
        if self.qos == 0:
            logger.warning("%d QoS 0 messages were not written to %s", missing, self.url)
            return
        raise ConnectError(
            f"{missing} of {self.published} QoS {self.qos} messages were not "
            f"acknowledged by {self.url} within {timeout:g} s",
            hint="check the connection to the broker, and that this account may publish: a "
            "broker closes the connection of one that may not (the platform's tokens only read)",
        )

    def disconnect(self) -> None:
        """Send DISCONNECT (at once: no loop thread runs) and forget the client. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()

    def _raise_refusal(self) -> None:
        if self._refused is None:
            return
        refused = connack_refusal(self._refused, broker=self.url, who=self._who, hint=_TOKEN_HINT)
        if refused is not None:
            raise refused

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, *_: Any) -> None:
        if reason_code(reason) != 0:
            self._refused = reason
        elif self._connack:
            logger.info("replay reconnected to %s", self.url)
        self._connack = True

    def _on_publish(self, *_args: Any) -> None:
        self.completed += 1  # called in the publishing thread, from paho's loop
