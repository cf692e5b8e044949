"""Which Mosquitto the local broker runs, and the `mosquitto.conf` it runs with.

The executable comes from `$TESAIOT_MOSQUITTO`, PATH or the usual install places; the
dynamic-security plugin from `$TESAIOT_MOSQUITTO_DYNSEC` or beside the executable. The config
has three listeners, each bound to one IPv4 address (loopback by default): WSS (the
platform's), optionally plain WebSocket, and plain MQTT over TCP for the simulated devices,
opened last so that once it answers the others are open.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tesaiot_data.demo.credentials import (
    ACL_FILE,
    DYNSEC_FILE,
    PASSWORD_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
)
from tesaiot_data.errors import BrokerNotFoundError

__all__ = ["DYNSEC_PLUGIN_NAME", "config_text", "find_dynsec", "find_mosquitto"]

#: The file name of Mosquitto's dynamic-security plugin.
DYNSEC_PLUGIN_NAME = "mosquitto_dynamic_security.so"

_INSTALL_HINT = (
    "install Mosquitto: apt-get install mosquitto (Debian/Ubuntu), "
    "conda install -c conda-forge mosquitto, or brew install mosquitto (macOS); "
    "or point TESAIOT_MOSQUITTO at the mosquitto executable"
)
_MOSQUITTO_PLACES = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)


def find_mosquitto(given: str | None) -> str:
    """The mosquitto executable: `given` (a path or a name on PATH), else the usual places.

    Raises:
        BrokerNotFoundError: It was not found; the hint says how to install it.
    """
    if given:
        path = shutil.which(given)
        if path is None:
            raise BrokerNotFoundError(
                f"mosquitto executable {given!r} was not found", hint=_INSTALL_HINT
            )
        return path
    for candidate in (shutil.which("mosquitto"), *_MOSQUITTO_PLACES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerNotFoundError(
        f"mosquitto was not found on PATH nor in {', '.join(_MOSQUITTO_PLACES)}",
        hint=_INSTALL_HINT,
    )


def find_dynsec(mosquitto: str) -> str | None:
    """The dynamic-security plugin: `$TESAIOT_MOSQUITTO_DYNSEC`, else beside `mosquitto`.

    Returns:
        The plugin's path, or None where it is not installed.
    """
    given = os.environ.get("TESAIOT_MOSQUITTO_DYNSEC")
    if given:
        return given if Path(given).is_file() else None
    prefixes = dict.fromkeys(
        [Path(mosquitto).parent.parent, Path(os.path.realpath(mosquitto)).parent.parent]
    )
    for prefix in prefixes:
        for pattern in ("lib", "lib/*", "lib64", "lib/mosquitto", "lib/*/mosquitto"):
            found = sorted(prefix.glob(f"{pattern}/{DYNSEC_PLUGIN_NAME}"))
            if found:
                return str(found[0])
    return None


def config_text(
    *,
    workdir: Path,
    host: str,
    wss_port: int,
    tcp_port: int,
    ws_port: int | None,
    ca_file: Path,
    log_file: Path,
    dynsec_plugin: str | None,
) -> str:
    """The text of `mosquitto.conf` for a local broker.

    Args:
        workdir: The broker's folder, with its accounts, certificates and `data/`.
        host: The IPv4 address every listener binds, and only that one.
        wss_port: The WebSocket Secure listener's port.
        tcp_port: The plain MQTT listener's port.
        ws_port: The plain WebSocket listener's port, or None for none.
        ca_file: The CA certificate.
        log_file: Where Mosquitto logs.
        dynsec_plugin: The dynamic-security plugin, or None for a password and an ACL file.

    Returns:
        The config, one directive a line.
    """
    if dynsec_plugin is not None:
        security = [
            f"plugin {dynsec_plugin}",
            f"plugin_opt_config_file {workdir / DYNSEC_FILE}",
        ]
    else:
        security = [f"password_file {workdir / PASSWORD_FILE}", f"acl_file {workdir / ACL_FILE}"]
    lines = [
        "# Written by tesaiot_data.demo.broker; remade for every LocalBroker.",
        "per_listener_settings false",
        "allow_anonymous false",
        *security,
        "persistence true",
        f"persistence_location {workdir / 'data'}/",
        # The default of 1000 silently drops even QoS 0 messages to a busy subscriber.
        "max_queued_messages 0",
        "set_tcp_nodelay true",
        f"log_dest file {log_file}",
        # A client's connect and disconnect lines name its username, which is the token.
        "connection_messages false",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root, Mosquitto drops to user `mosquitto`, who cannot read our files;
        # changing user would also clear the parent-death signal.
        lines.append("user root")
    # Mosquitto 2.0.11's websockets listeners (libwebsockets) bind the address only when
    # IPv6 is off for them (`socket_domain ipv4`); otherwise they listen on every interface,
    # IPv4 and IPv6. They serve MQTT on any path; /mqtt is what clients use.
    lines += [
        "",
        f"listener {wss_port} {host}",
        "socket_domain ipv4",
        "protocol websockets",
        f"cafile {ca_file}",
        f"certfile {workdir / SERVER_CERT_FILE}",
        f"keyfile {workdir / SERVER_KEY_FILE}",
    ]
    if ws_port is not None:
        lines += ["", f"listener {ws_port} {host}", "socket_domain ipv4", "protocol websockets"]
    # Last, so that once it answers every listener before it is open.
    lines += ["", f"listener {tcp_port} {host}", "socket_domain ipv4", "protocol mqtt", ""]
    return "\n".join(lines)
