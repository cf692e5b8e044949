"""The exceptions a user can act on; every one carries a hint."""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BrokerNotFoundError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "SubscribeError",
    "TLSError",
    "TesaiotError",
    "TokenError",
]


class TesaiotError(Exception):
    """Base class of every error raised by tesaiot-data.

    Args:
        message: What went wrong.
        hint: What the user can do about it; appended to the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class ConfigError(TesaiotError, ValueError):
    """A setting has a value that cannot work (a bad broker URL, port or QoS)."""


class TokenError(ConfigError):
    """The platform token is missing or not a TESAIoT MQTT token."""


class ConnectError(TesaiotError, ConnectionError):
    """The broker could not be reached or refused the connection for a reason other than auth."""


class AuthError(ConnectError):
    """The broker refused the token (not authorized or bad username/password)."""


class SubscribeError(AuthError):
    """The broker refused a subscription, usually because its ACL does not allow the topic."""


class TLSError(ConnectError):
    """The TLS handshake failed, most often because the certificate could not be verified."""


class ConnectTimeoutError(ConnectError, TimeoutError):
    """Nothing answered within the connect timeout."""


class BrokerNotFoundError(TesaiotError, FileNotFoundError):
    """The local Mosquitto broker (or openssl, which makes its certificates) is not installed."""
