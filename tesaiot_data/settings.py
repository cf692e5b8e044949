"""Connection settings: the broker URL, the platform token and how to reach them."""

from __future__ import annotations

import ipaddress
import logging
import math
import numbers
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from tesaiot_data.errors import ConfigError, TokenError

__all__ = [
    "DEFAULT_BROKER_URL",
    "DEFAULT_TOPIC",
    "PROTOCOLS",
    "SESSION_NEVER_EXPIRES",
    "BrokerURL",
    "Settings",
    "mask_token",
]

logger = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "wss://mqtt.tesaiot.com:8085/mqtt"
DEFAULT_TOPIC = "device/+/telemetry/#"
TOKEN_PREFIX = "tesa_mqtt_"
_TOKEN_SHAPE = re.compile(r"tesa_mqtt_[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*_[A-Za-z0-9]{32}")
_TOKEN_HELP = (
    "set MQTT_API_TOKEN in .env or in the environment to a token from the TESAIoT Admin UI: "
    "Organization Settings -> MQTT Tokens"
)
_URL_EXAMPLE = "for example wss://mqtt.tesaiot.com:8085/mqtt or mqtt://127.0.0.1:1883"
_DEFAULT_PORTS = {"wss": 8085, "ws": 80, "mqtts": 8883, "mqtt": 1883}
_MAX_TOPIC_BYTES = 65_535  # an MQTT string's length is two bytes
_SHARED_PREFIX = "$share"
# The user information of a URL, `user:password@`, after the scheme and before the host.
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")

Transport = Literal["websockets", "tcp"]

PROTOCOLS = ("3.1.1", "5")
"""The MQTT versions a client speaks, as `Settings.protocol` spells them."""
SESSION_NEVER_EXPIRES = 0xFFFF_FFFF
"""MQTT 5's largest Session Expiry Interval, in seconds (about 136 years): "never expires"."""
# What MQTT_PROTOCOL may say, after "mqtt"/"v" prefixes; "4" is 3.1.1's protocol level byte.
_PROTOCOL_NAMES = {"3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1", "5": "5", "5.0": "5"}
_PROTOCOL_HINT = "set MQTT_PROTOCOL (protocol=..., --protocol) to 3.1.1 (the default) or 5"
_SESSION_HINT = (
    "set MQTT_SESSION_EXPIRY (session_expiry=..., --session-expiry) to a duration such as "
    "1h or 7d, a number of seconds, 'never', or 0 for a clean session"
)
_SECONDS_PER_UNIT = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("w", "week", "weeks"), 604_800),
}
_DURATION_TERM = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")


def mask_token(token: str | None) -> str:
    """Return a token in a form that is safe to print or log.

    Keeps the `tesa_mqtt_<org>_` prefix and the last four characters, for example
    `tesa_mqtt_myorg_…o5p6`; anything else shows only its last two characters.

    Args:
        token: The secret, or None.

    Returns:
        The masked text.
    """
    if not token:
        return "<none>"
    if token.startswith(TOKEN_PREFIX) and len(token) > len(TOKEN_PREFIX) + 8:
        head, _, _ = token[len(TOKEN_PREFIX) :].rpartition("_")
        shown = f"{TOKEN_PREFIX}{head}_" if head and len(head) < 24 else TOKEN_PREFIX
        return f"{shown}…{token[-4:]}"
    return f"…{token[-2:]}" if len(token) > 8 else "…"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """A parsed broker URL.

    Args:
        scheme: One of `wss`, `ws`, `mqtts`, `mqtt`.
        host: Host name or IP address (IPv6 without brackets).
        port: TCP port.
        path: WebSocket path (`/mqtt` by default); empty for plain MQTT.
    """

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def transport(self) -> Transport:
        """`websockets` for ws/wss URLs, `tcp` for mqtt/mqtts."""
        return "websockets" if self.scheme in ("ws", "wss") else "tcp"

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.scheme in ("wss", "mqtts")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @classmethod
    def parse(cls, url: str, *, variable: str = "MQTT_BROKER_URL") -> BrokerURL:
        """Parse and check a broker URL.

        Args:
            url: For example `wss://mqtt.tesaiot.com:8085/mqtt`.
            variable: The setting's name, used in the error message.

        Returns:
            The parsed URL, with default port and path filled in.

        Raises:
            ConfigError: The scheme is not wss/ws/mqtts/mqtt, the host or port is bad, or the
                URL holds credentials (`wss://user:secret@host`: the token goes in
                `MQTT_API_TOKEN`). No message shows what stood before the `@`.
        """
        text = url.strip()
        shown = _USERINFO.sub("***@", text, count=1)  # never echo credentials
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(
                f"{variable}={shown!r} is not a valid URL: {exc}", hint=_URL_EXAMPLE
            ) from None
        if _USERINFO.search(text):
            raise ConfigError(
                f"{variable}={shown!r} holds a user name or password; the broker URL takes none",
                hint="remove the part before '@' and put the token in MQTT_API_TOKEN "
                "(Settings(token=...)): it is sent as both user name and password",
            )
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ConfigError(
                f"{variable}={shown!r} has scheme {scheme or '(none)'!r}; "
                "use wss://, ws://, mqtts:// or mqtt://",
                hint=_URL_EXAMPLE,
            )
        host = parts.hostname or ""
        if not host:
            raise ConfigError(f"{variable}={shown!r} has no host", hint=_URL_EXAMPLE)
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(
                    f"{variable}={shown!r}: bad IPv6 address", hint=_URL_EXAMPLE
                ) from None
        if port == 0:
            raise ConfigError(f"{variable}={shown!r}: port 0 is not a port", hint=_URL_EXAMPLE)
        path = ""
        if scheme in ("ws", "wss"):
            path = parts.path or "/mqtt"
            if parts.query:
                path = f"{path}?{parts.query}"
        return cls(scheme=scheme, host=host, port=port or _DEFAULT_PORTS[scheme], path=path)


def _clean_token(raw: str | None) -> str:
    token = (raw or "").strip().strip("'\"").strip()
    if not token:
        raise TokenError("no MQTT token is set", hint=_TOKEN_HELP)
    if not token.startswith(TOKEN_PREFIX):
        raise TokenError(
            f"the token {mask_token(token)} does not start with {TOKEN_PREFIX!r}", hint=_TOKEN_HELP
        )
    if not _TOKEN_SHAPE.fullmatch(token):
        logger.warning(
            "token %s is not of the documented shape tesa_mqtt_<org>_<32 letters or digits>; "
            "trying it anyway",
            mask_token(token),
        )
    return token


def _topic_filter_problem(topic: str) -> str | None:
    """Why `topic` is not a valid MQTT subscription filter, or None when it is one."""
    if not isinstance(topic, str):
        return f"it is a {type(topic).__name__}, not a string"
    if not topic.strip():
        return "it is empty"
    if "\x00" in topic:
        return "it contains a NUL character"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "it contains a lone surrogate, which is not valid Unicode"
    if size > _MAX_TOPIC_BYTES:
        return f"it is {size} bytes long in UTF-8; MQTT allows {_MAX_TOPIC_BYTES}"
    levels = topic.split("/")
    if levels[0] == _SHARED_PREFIX:  # $share/<group>/<filter>, for shared subscriptions
        if len(levels) < 3 or not "/".join(levels[2:]).strip():
            return "a shared subscription needs $share/<group>/<filter>"
        group = levels[1]
        if not group or any(char in group for char in "+#"):
            return "the group of $share/<group>/<filter> must be non-empty, without + or #"
        levels = levels[2:]
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level and the last one, as in device/+/telemetry/#"
        if "+" in level and level != "+":
            return "'+' must be a whole level, as in device/+/telemetry/#"
    return None


def _share_group_problem(group: object) -> str | None:
    """Why `group` cannot be the group of a shared subscription, or None when it can."""
    if not isinstance(group, str):
        return f"it is a {type(group).__name__}, not a string"
    if not group.strip():
        return "it is empty"
    if bad := sorted({char for char in group if char in "/+#\x00"}):
        shown = " ".join(repr(char) for char in bad)
        return f"it contains {shown}; a group name is one topic level, without / + or #"
    return None


def _new_client_id() -> str:
    return f"tesaiot-data-{secrets.token_hex(4)}"


_AUTO_CLIENT_ID = re.compile(r"tesaiot-data-[0-9a-f]{8}")


def _session_seconds(value: object) -> float | None:
    """Seconds in a session expiry (`"1h"`, `"1h30min"`, `90`, a timedelta), or None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, timedelta):  # pandas' Timedelta is one too
        return value.total_seconds()
    if isinstance(value, numbers.Real):  # numpy's numbers too
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in ("never", "inf", "infinity"):
        return math.inf
    if text.startswith("-"):  # said to be negative, not "not a duration"
        magnitude = _session_seconds(text[1:])
        return None if magnitude is None else -magnitude
    seconds, position = 0.0, 0
    while position < len(text):
        term = _DURATION_TERM.match(text, position)
        if term is None or term.group(2) not in (*_SECONDS_PER_UNIT, ""):
            return None
        if not term.group(2) and (position or term.end() < len(text)):
            return None  # a bare number is the whole value: "90", not "1h 90"
        seconds += float(term.group(1)) * _SECONDS_PER_UNIT.get(term.group(2), 1)
        position = term.end()
    return seconds if text else None


def _session_expiry_seconds(value: object, *, variable: str = "MQTT_SESSION_EXPIRY") -> int | None:
    """Read a session expiry: whole seconds the broker keeps a session, or None for a clean one.

    Args:
        value: A duration (`"1h"`, `"7d"`, `"1h30min"`, a number of seconds, a `timedelta` or
            pandas `Timedelta`), `"never"`, or 0 / None for a clean session.
        variable: The setting's name, used in the error message.

    Returns:
        Seconds rounded up to a whole second, at most `SESSION_NEVER_EXPIRES` (`"never"` and
        anything longer); None for 0 or None.

    Raises:
        ConfigError: `value` is not a duration, or is negative.
    """
    if value is None:
        return None
    seconds = _session_seconds(value)
    if seconds is None or math.isnan(seconds):
        raise ConfigError(f"{variable}={value!r} is not a duration", hint=_SESSION_HINT)
    if seconds < 0:
        raise ConfigError(f"{variable}={value!r} is negative", hint=_SESSION_HINT)
    if seconds == 0:
        return None
    if seconds >= SESSION_NEVER_EXPIRES:  # also infinity, which ceil() cannot take
        return SESSION_NEVER_EXPIRES
    return math.ceil(seconds)


def _protocol_name(value: object) -> str:
    text = str(value).strip().lower().removeprefix("mqtt").strip().removeprefix("v")
    if text not in _PROTOCOL_NAMES or isinstance(value, bool):
        raise ConfigError(
            f"MQTT_PROTOCOL={value!r} is not an MQTT version this client speaks",
            hint=_PROTOCOL_HINT,
        )
    return _PROTOCOL_NAMES[text]


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean", hint=f"set {name}=true or {name}=false")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything needed to reach the broker. Validated when made.

    Args:
        token: The platform's MQTT token, `tesa_mqtt_<org>_<32 characters>`; it is both the
            username and the password. Surrounding whitespace and quotes are removed.
        broker_url: `wss://host:port/path` (the platform), `ws://`, `mqtts://` or `mqtt://`.
        topic: The subscription filter: `+` and `#` stand for whole levels, `#` only last;
            `$share/<group>/<filter>` makes a shared subscription.
        share_group: Subscribe to `topic` as a member of this shared-subscription group
            (`$share/<group>/<topic>`): the broker hands each message to one member only,
            so several collectors split the stream between them. None (the default)
            receives every message. One topic level: no `/`, `+` or `#`.
        client_id: The MQTT client id. By default `tesaiot-data-<8 hex digits>`, new for
            each `Settings`; a persistent session needs a fixed one of your own (an id of the
            generated form counts as not set).
        qos: Subscription QoS, 0, 1 or 2.
        ca_certs: A PEM file of trusted CAs; None uses the system store.
        insecure: Skip certificate verification (a warning is logged when used).
        keepalive: Seconds between keepalive pings.
        clean_session: Start with a fresh session on every connect (the default). False
            keeps a persistent session with no expiry of its own, as in 0.1: on MQTT 3.1.1 the
            broker keeps it as long as its own configuration says, on MQTT 5 it is sent as a
            Session Expiry Interval of "never" (`SESSION_NEVER_EXPIRES`). A `session_expiry`
            makes the session persistent whatever this says.
        connect_timeout: Seconds `connect()` waits for the broker to answer.
        username: The MQTT username, by default the token (the platform's convention).
        session_expiry: How long the broker keeps the session (subscription and the QoS 1/2
            messages published meanwhile) after the client goes away: `"1h"`, `"7d"`, seconds,
            a `timedelta` or pandas `Timedelta`, or `"never"`; 0 or None (the default) is a
            clean session. Stored as whole seconds (None when clean). Needs a fixed
            `client_id`. MQTT 3.1.1 has no expiry on the wire: there it means
            `clean_session=False` and the broker's own session expiry applies; MQTT 5 sends
            Clean Start 0 and this Session Expiry Interval.
        protocol: The MQTT version, `"3.1.1"` (the default) or `"5"` (`"5.0"`, `"MQTTv5"`
            and `5` are read as `"5"`).

    Raises:
        TokenError: The token is missing or not a TESAIoT MQTT token.
        ConfigError: Another field has a value that cannot work, for example a topic that
            is not a valid subscription filter, an unknown protocol, a session expiry that is
            not a duration, or a persistent session without a fixed client id.
    """

    token: str = field(repr=False)
    broker_url: str = DEFAULT_BROKER_URL
    topic: str = DEFAULT_TOPIC
    share_group: str | None = None
    client_id: str = field(default_factory=_new_client_id)
    qos: int = 1
    ca_certs: str | Path | None = None
    insecure: bool = False
    keepalive: int = 60
    clean_session: bool = True
    connect_timeout: float = 10.0
    username: str | None = field(default=None, repr=False)
    session_expiry: int | float | str | timedelta | None = None
    protocol: str = "3.1.1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", _clean_token(self.token))
        object.__setattr__(self, "protocol", _protocol_name(self.protocol))
        object.__setattr__(self, "session_expiry", _session_expiry_seconds(self.session_expiry))
        if self.persistent_session and _AUTO_CLIENT_ID.fullmatch(self.client_id):
            raise ConfigError(
                "a persistent session (MQTT_SESSION_EXPIRY / session_expiry, or "
                "clean_session=False) needs a fixed client id, and none is set: the broker "
                "finds the session by the client id, which is random by default",
                hint="set MQTT_CLIENT_ID (client_id=..., --client-id) to a name of your own that "
                "only this collector uses, for example recorder-line-7",
            )
        BrokerURL.parse(self.broker_url)  # fail here, where the value was made
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"qos={self.qos!r} must be 0, 1 or 2", hint="set MQTT_QOS=1")
        if (problem := _topic_filter_problem(self.topic)) is not None:
            shown = self.topic if len(self.topic) <= 80 else f"{self.topic[:60]}…"
            raise ConfigError(
                f"MQTT_SUBSCRIBE_TOPIC={shown!r} is not a valid subscription topic: {problem}",
                hint=f"set MQTT_SUBSCRIBE_TOPIC (topic=...) to a filter such as {DEFAULT_TOPIC}",
            )
        if self.share_group is not None:
            self._check_share_group()
        if self.ca_certs is not None:
            self._check_ca_certs()
        if self.keepalive < 5 or self.connect_timeout <= 0:
            raise ConfigError("keepalive must be >= 5 s and connect_timeout > 0")

    def _check_ca_certs(self) -> None:
        # Only that it is a file: its certificates are read when a connection is made
        # (`mqtt.connection.ssl_context`, a TLSError naming the file if it holds none).
        if not Path(str(self.ca_certs)).is_file():
            raise ConfigError(
                f"ca_certs={str(self.ca_certs)!r} is not a file",
                hint="set CA_CERT_PATH (ca_certs=..., --ca-certs) to a PEM file of trusted CA "
                "certificates",
            )

    def _check_share_group(self) -> None:
        if (problem := _share_group_problem(self.share_group)) is not None:
            raise ConfigError(
                f"MQTT_SHARE_GROUP={self.share_group!r} is not a shared-subscription group: "
                f"{problem}",
                hint="set MQTT_SHARE_GROUP (share_group=...) to a name such as 'analytics'",
            )
        if self.topic.split("/", 1)[0] == _SHARED_PREFIX:
            raise ConfigError(
                f"MQTT_SUBSCRIBE_TOPIC={self.topic!r} is already a shared subscription, and "
                f"MQTT_SHARE_GROUP={self.share_group!r} would make it one again",
                hint="set either MQTT_SHARE_GROUP with a plain filter such as "
                f"{DEFAULT_TOPIC}, or a $share/<group>/<filter> topic, not both",
            )

    def __repr__(self) -> str:
        shared = f", share_group={self.share_group!r}" if self.share_group is not None else ""
        session = f", session_expiry={self.session_expiry!r}" if self.session_expiry else ""
        session += ", clean_session=False" if not self.clean_session else ""
        protocol = f", protocol={self.protocol!r}" if self.protocol != "3.1.1" else ""
        return (
            f"Settings(token={mask_token(self.token)!r}, broker_url={self.broker_url!r}, "
            f"topic={self.topic!r}{shared}, client_id={self.client_id!r}, qos={self.qos}, "
            f"insecure={self.insecure}{session}{protocol})"
        )

    @property
    def persistent_session(self) -> bool:
        """Whether the broker keeps the session after a disconnect.

        True with a `session_expiry`, or with `clean_session=False`.
        """
        return bool(self.session_expiry) or not self.clean_session

    @property
    def session_expiry_interval(self) -> int:
        """The MQTT 5 Session Expiry Interval, in seconds.

        0 for a clean session; else `session_expiry`, or `SESSION_NEVER_EXPIRES` for
        `clean_session=False` without one.
        """
        if isinstance(self.session_expiry, int) and self.session_expiry > 0:
            return self.session_expiry
        return 0 if self.clean_session else SESSION_NEVER_EXPIRES

    @property
    def subscription(self) -> str:
        """The filter sent in SUBSCRIBE: `$share/<share_group>/<topic>`, or `topic` itself.

        Messages of a shared subscription still arrive on their own topic
        (`device/<id>/telemetry/...`), so they are read as any other.
        """
        if self.share_group is None:
            return self.topic
        return f"{_SHARED_PREFIX}/{self.share_group}/{self.topic}"

    @property
    def url(self) -> BrokerURL:
        """The parsed broker URL."""
        return BrokerURL.parse(self.broker_url)

    @property
    def masked_token(self) -> str:
        """The token in a form safe to print."""
        return mask_token(self.token)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again).

        A copy that joins a shared-subscription group (`share_group` given) is another
        member of the group, so it gets a client id of its own unless `client_id` is
        given or was set by the user: two connections with one client id take the
        session from each other.
        """
        if (
            changes.get("share_group") is not None
            and "client_id" not in changes
            and _AUTO_CLIENT_ID.fullmatch(self.client_id)
        ):
            changes["client_id"] = _new_client_id()
        return replace(self, **changes)

    @classmethod
    def resolve(cls, settings: Settings | None, **overrides: Any) -> Settings:
        """The settings a component was given, or the environment's when it was given None.

        The one rule behind every `settings=None` parameter (the client, the collector,
        the replay): None reads `Settings.from_env(**overrides)`; given settings are copied
        with `overrides` changed (see `replace`), or returned as they are without any.

        Args:
            settings: What the caller passed.
            **overrides: Field values that take precedence, for example `topic=...`.

        Returns:
            The settings to use.

        Raises:
            TokenError: `settings` is None and the environment has no valid token.
            ConfigError: A variable or an override has a bad value.
        """
        if settings is None:
            return cls.from_env(**overrides)
        return settings.replace(**overrides) if overrides else settings

    @classmethod
    def from_env(
        cls,
        env_file: str | Path | None = ".env",
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from the platform's environment variables.

        Reads `MQTT_API_TOKEN`, `MQTT_BROKER_URL`, `MQTT_SUBSCRIBE_TOPIC` (or its alias
        `MQTT_TOPIC`), `MQTT_SHARE_GROUP`, `MQTT_CLIENT_ID`, `CA_CERT_PATH`, `MQTT_INSECURE`,
        `MQTT_QOS`, `MQTT_SESSION_EXPIRY` and `MQTT_PROTOCOL`.
        Real environment variables win over the file; keyword overrides win over both.

        Args:
            env_file: A dotenv file to read if it exists; None reads none.
            environ: The environment to use instead of `os.environ` (for tests).
            **overrides: Field values that take precedence, for example `broker_url=...`.

        Returns:
            The settings.

        Raises:
            TokenError: No token, or not a TESAIoT MQTT token.
            ConfigError: Another variable has a bad value.
        """
        from dotenv import dotenv_values  # noqa: PLC0415  (keeps import of the package light)

        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        # An empty variable (a common container default) does not hide the file's value.
        environment = os.environ if environ is None else environ
        values.update({k: v for k, v in environment.items() if v.strip()})

        def get(*names: str) -> str | None:
            for name in names:
                value = values.get(name)
                if value is not None and value.strip() != "":
                    return value.strip()
            return None

        kwargs: dict[str, Any] = {"token": values.get("MQTT_API_TOKEN", "")}
        if (url := get("MQTT_BROKER_URL")) is not None:
            BrokerURL.parse(url, variable="MQTT_BROKER_URL")
            kwargs["broker_url"] = url
        if (topic := get("MQTT_SUBSCRIBE_TOPIC", "MQTT_TOPIC")) is not None:
            kwargs["topic"] = topic
        if (group := get("MQTT_SHARE_GROUP")) is not None:
            kwargs["share_group"] = group
        if (client_id := get("MQTT_CLIENT_ID")) is not None:
            kwargs["client_id"] = client_id
        if (ca := get("CA_CERT_PATH")) is not None:
            kwargs["ca_certs"] = ca
        if (insecure := get("MQTT_INSECURE")) is not None:
            kwargs["insecure"] = _parse_bool("MQTT_INSECURE", insecure)
        if (qos := get("MQTT_QOS")) is not None:
            try:
                kwargs["qos"] = int(qos)
            except ValueError:
                raise ConfigError(
                    f"MQTT_QOS={qos!r} is not 0, 1 or 2", hint="set MQTT_QOS=1"
                ) from None
        if (expiry := get("MQTT_SESSION_EXPIRY")) is not None:
            kwargs["session_expiry"] = expiry
        if (protocol := get("MQTT_PROTOCOL")) is not None:
            kwargs["protocol"] = protocol
        kwargs.update(overrides)
        return cls(**kwargs)
