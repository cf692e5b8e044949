"""What users type on the command line, made into values: argument types and `Settings`.

The argparse `type=` functions raise `argparse.ArgumentTypeError`, which argparse prints as
a usage error (exit status 2); `settings_from_args` layers the connection flags over `.env`
and the environment.
"""

from __future__ import annotations

import argparse
from typing import Any

from tesaiot_data.arguments import duration_seconds
from tesaiot_data.settings import Settings

__all__ = ["duration", "names_list", "positive_int", "settings_from_args"]


def duration(text: str) -> float:
    """An argparse type: a positive duration (`30s`, `5min`, `2.5`) in seconds.

    Raises:
        argparse.ArgumentTypeError: `text` is not a positive duration.
    """
    try:
        return duration_seconds(text, name="duration")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration (e.g. 30s, 5min)"
        ) from exc


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1.

    Raises:
        argparse.ArgumentTypeError: `text` is not a positive whole number.
    """
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return number


def names_list(text: str | None) -> list[str] | None:
    """A comma-separated list of names (`"d1, d2"` -> `["d1", "d2"]`); None stays None."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """`Settings.from_env(args.env_file)` with the connection flags that were given.

    Args:
        args: The parsed command line (flags of `connection_options`).
        **extra: Other `Settings` fields, applied before the flags.

    Returns:
        The settings.

    Raises:
        TokenError: No usable token in the flags, the environment or the dotenv file.
        ConfigError: A flag's value is not a valid setting.
    """
    overrides: dict[str, Any] = dict(extra)
    for flag, field in (
        ("broker_url", "broker_url"),
        ("topic", "topic"),
        ("ca_certs", "ca_certs"),
        ("client_id", "client_id"),
    ):
        if getattr(args, flag, None):
            overrides[field] = getattr(args, flag)
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    if getattr(args, "share_group", None) is not None:  # "" too: Settings says why not
        overrides["share_group"] = args.share_group
    # Checked by Settings (a ConfigError: `error: ...`, exit 1); "0" too, over the environment.
    for flag in ("session_expiry", "protocol"):
        if getattr(args, flag, None) is not None:
            overrides[flag] = getattr(args, flag)
    return Settings.from_env(args.env_file, **overrides)
