"""The exceptions a user can act on; every one carries a hint."""

from __future__ import annotations

import os

__all__ = [
    "DISK_HINT",
    "AuthError",
    "BrokerNotFoundError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "MissingExtraError",
    "NotARecordingError",
    "QueryError",
    "RecordingError",
    "StorageError",
    "StreamError",
    "SubscribeError",
    "TLSError",
    "TesaiotError",
    "TokenError",
    "disk_error",
]

#: What to try first when a file could not be written.
DISK_HINT = "free disk space, or check that the folder exists and is writable"


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


class StreamError(TesaiotError, RuntimeError):
    """The client stopped on an unexpected error in its own network thread (a bug to report)."""


class BrokerNotFoundError(TesaiotError, FileNotFoundError):
    """The local Mosquitto broker (or its dynamic-security plugin, if required) is not installed."""


class NotARecordingError(TesaiotError, ValueError):
    """A file or folder is not a telemetry recording (a rejects sidecar, a CSV, a broken file)."""


class MissingExtraError(TesaiotError, ImportError):
    """A feature needs an optional dependency that is not installed, such as DuckDB for SQL.

    Args:
        message: What went wrong.
        hint: The command that installs it.
        extra: The name of the optional extra that brings the dependency (`sql`).
    """

    def __init__(self, message: str, *, hint: str | None = None, extra: str = "") -> None:
        super().__init__(message, hint=hint)
        self.extra = extra


class QueryError(TesaiotError, ValueError):
    """DuckDB could not run a SQL query: bad syntax, an unknown column, out of memory.

    Args:
        message: What went wrong, with DuckDB's own message.
        hint: What to try.
        kind: DuckDB's name of the error, such as `ParserException`, `BinderException` or
            `OutOfMemoryException`.
    """

    def __init__(self, message: str, *, hint: str | None = None, kind: str = "") -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


class RecordingError(TesaiotError, OSError):
    """A recording or dataset could not be written (disk full, folder removed, no permission).

    Args:
        message: What went wrong.
        hint: What the user can do about it.
        path: The recording's file or the dataset's folder.
        rows_on_disk: Rows that reached disk safely before the failure (parts included).
        rows_lost: Rows that never reached disk.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        path: str | None = None,
        rows_on_disk: int = 0,
        rows_lost: int = 0,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.rows_on_disk = rows_on_disk
        self.rows_lost = rows_lost


class StorageError(TesaiotError, OSError):
    """An object store (S3, MinIO, GCS...) refused or could not be reached.

    A missing bucket, credentials the store refuses, an endpoint that does not answer. The
    message names the URL (never a secret) and the hint says what to check.

    Args:
        message: What went wrong.
        hint: What the user can do about it.
        url: The URL that failed, without its query or credentials.
    """

    def __init__(self, message: str, *, hint: str | None = None, url: str = "") -> None:
        super().__init__(message, hint=hint)
        self.url = url


def disk_error(
    message: str,
    *,
    path: str | os.PathLike[str] | object,
    then: str | None = None,
    rows_on_disk: int = 0,
    rows_lost: int = 0,
    cause: BaseException | None = None,
) -> RecordingError:
    """Return the `RecordingError` of a file that could not be written, with `DISK_HINT`.

    The one wording of "could not finish, free disk space" for recordings, datasets, alert
    files and the collector's flushes.

    Args:
        message: What could not be written, and why (the cause's text).
        path: The file or folder that could not be written.
        then: What else the user can do, appended to the hint (where the rows on disk are).
        rows_on_disk: Rows that reached disk safely before the failure.
        rows_lost: Rows that never reached disk.
        cause: The failure; an object store's (`StorageError`) gives its own hint instead
            of the disk's.

    Returns:
        The error, to be raised (or returned) by the caller.
    """
    first = cause.hint if isinstance(cause, StorageError) and cause.hint else DISK_HINT
    return RecordingError(
        message,
        hint=first if then is None else f"{first}; {then}",
        path=os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path),
        rows_on_disk=rows_on_disk,
        rows_lost=rows_lost,
    )
