"""A private Mosquitto broker on loopback that stands in for the platform's EMQX.

The demo, the notebooks, users without a platform token and every test use it. It speaks the
platform's dialect: MQTT over WebSocket Secure at `/mqtt`, a `tesa_mqtt_...` token that is both
username and password, and an ACL that lets the token only read `device/+/telemetry/#`.

The broker does not outlive the process that started it, even one killed with SIGKILL (a
notebook kernel killed for memory): on Linux the kernel sends Mosquitto SIGTERM when its parent
dies (`PR_SET_PDEATHSIG`); elsewhere a tiny watchdog process does, when the pipe from the parent
closes.

The certificates come from `trustme` (built on `cryptography`), in this process: the CA's
private key lives only in memory, signs the server certificate once and is gone. On disk are
the CA certificate (`ca_file`), the server certificate and the server key (mode 0600).

This module holds `LocalBroker` (its ports, folder and lifecycle) and `PublisherConfig`;
`mosquitto_config` finds Mosquitto and writes its config, `credentials` the accounts, ACL and
certificates, `tied_process` starts a process that ends with this one, and `leftovers` removes
the folders of brokers whose process was killed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tesaiot_data.demo.credentials import (
    DEMO_TOKEN_PREFIX,
    PUBLISHER_USERNAME,
    TELEMETRY_FILTER,
    make_certificates,
    new_token,
    write_accounts,
    write_private,
)
from tesaiot_data.demo.leftovers import FOLDER_PREFIX, claim, remove_abandoned
from tesaiot_data.demo.mosquitto_config import config_text, find_dynsec, find_mosquitto
from tesaiot_data.demo.tied_process import spawn_tied, stop_tied
from tesaiot_data.errors import BrokerNotFoundError, ConfigError, TesaiotError, TokenError
from tesaiot_data.settings import Settings, mask_token

# The token prefix and the token's filter live in `credentials`; named here as before.
__all__ = ["DEMO_TOKEN_PREFIX", "TELEMETRY_FILTER", "LocalBroker", "PublisherConfig", "free_port"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 15

# MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keepalive 5 s, empty client id.
_ANONYMOUS_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x05\x00\x00"
_CONNACK = b"\x20"


@dataclass(frozen=True)
class PublisherConfig:
    """How the simulated devices reach the local broker: plain MQTT over TCP.

    Args:
        host: The broker's address.
        port: Its plain MQTT (TCP) port.
        username: The account that may write `device/#`.
        password: Its password (masked in the repr).
    """

    host: str
    port: int
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("PublisherConfig.host is empty", hint=f"use {HOST!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"PublisherConfig.port={self.port!r} is not a TCP port")
        if not self.username:
            raise ConfigError("PublisherConfig.username is empty", hint="use 'publisher'")

    def __repr__(self) -> str:
        return (
            f"PublisherConfig(host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, password={mask_token(self.password)!r})"
        )


def free_port(*, host: str = HOST) -> int:
    """Return a TCP port that nothing listens on, at the time of asking.

    Another program may take it before you bind it; the broker checks again when it starts.

    Args:
        host: The address to bind; `"0.0.0.0"` for a port free on every interface.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int, host: str) -> bool:
    # SO_REUSEADDR, as Mosquitto sets it, so our own connections in TIME_WAIT do not count.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _answers_mqtt(port: int, host: str = HOST) -> bool:
    # A CONNECT without credentials: Mosquitto answers with a CONNACK (not authorised), which
    # tells it apart from another program that happens to listen on the port.
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(_ANONYMOUS_CONNECT)
            return sock.recv(4)[:1] == _CONNACK
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _Runtime:
    """What the finalizer needs, kept apart from the broker so the broker can be collected."""

    def __init__(self, workdir: Path, *, owned: bool) -> None:
        self.workdir = workdir
        self.owned = owned
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None

    def end(self, sig: int) -> subprocess.Popen[bytes] | None:
        """Stop the broker (and disarm its watchdog first); return the process it was."""
        watchdog, self.watchdog = self.watchdog, None
        process, self.process = self.process, None
        stop_tied(process, watchdog, sig)
        return process


def _finalize(runtime: _Runtime) -> None:
    # Runs from close(), from garbage collection or at interpreter exit (weakref.finalize).
    runtime.end(signal.SIGTERM)
    if runtime.owned:
        shutil.rmtree(runtime.workdir, ignore_errors=True)


class LocalBroker:
    """A private Mosquitto broker with WSS, token auth and the platform's ACL.

    Ports, accounts, certificates and the persistence directory are made when the object is
    made and kept across `stop()`/`start()`, so persistent sessions survive a restart.

    Mosquitto ends with the process that started it, however that process ends: on Linux the
    kernel sends it SIGTERM when its parent dies (every broker is forked from one long-lived
    thread, so `start()` may be called from any thread); elsewhere a small watchdog process
    does. Only the temporary directory stays behind after a SIGKILL, without the CA's private
    key (the constructor deletes it as soon as it has signed the server certificate), until
    the next `LocalBroker` of the same user is made: it removes every such folder whose owner
    process is gone (see `leftovers`).

    Example:
        >>> with LocalBroker() as broker:  # doctest: +SKIP
        ...     settings = broker.settings()

    Args:
        token: The token to accept (username and password); by default a new random
            `tesa_mqtt_demo_<32 letters or digits>`.
        ws_plain: Also open a plain (non-TLS) WebSocket listener, `ws_port`.
        mosquitto: Path or name of the mosquitto executable; by default `$TESAIOT_MOSQUITTO`,
            then `mosquitto` on PATH, then the usual install locations.
        workdir: A directory for the broker's files; by default a new temporary directory,
            `$TMPDIR/tesaiot-broker-*` (mode 0700), removed by `close()`. A given directory
            is kept.
        dynsec: Keep accounts and ACL in Mosquitto's dynamic-security plugin, which refuses a
            subscription outside the ACL (SUBACK 0x80) as the platform does. None uses it
            when it is installed; False uses a password file and an ACL file instead, with
            which Mosquitto 2.0 grants every subscription and only filters what it delivers.
        host: The IPv4 address every listener binds, and the only one (the WebSocket ones
            too, through `socket_domain ipv4`), which the URLs and the server certificate
            name; loopback by default. Another address serves clients on other machines or
            network namespaces.

    Raises:
        BrokerNotFoundError: mosquitto is not installed (or the dynamic-security plugin, when
            `dynsec=True`).
        TokenError: The given token is not a TESAIoT MQTT token.
        ConfigError: `host` is not an IPv4 address.

    Attributes:
        host: The address clients use.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        ws_plain: bool = False,
        mosquitto: str | None = None,
        workdir: Path | None = None,
        dynsec: bool | None = None,
        host: str = HOST,
    ) -> None:
        try:
            self.host: str = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ConfigError(
                f"LocalBroker(host={host!r}) is not an IPv4 address",
                hint=f"use {HOST!r} (the default) or an address of this machine",
            ) from None
        self._mosquitto = find_mosquitto(mosquitto or os.environ.get("TESAIOT_MOSQUITTO"))
        self._dynsec_plugin = None if dynsec is False else find_dynsec(self._mosquitto)
        if dynsec and self._dynsec_plugin is None:
            raise BrokerNotFoundError(
                f"Mosquitto's dynamic-security plugin was not found beside {self._mosquitto}",
                hint="set TESAIOT_MOSQUITTO_DYNSEC to mosquitto_dynamic_security.so, "
                "or pass dynsec=None to fall back to an ACL file",
            )
        if self._dynsec_plugin is None:
            logger.warning(
                "Mosquitto's dynamic-security plugin was not found; using an ACL file, with "
                "which subscriptions outside the ACL are granted but receive nothing"
            )
        self.token: str = Settings(token=token).token if token is not None else new_token()
        if any(char.isspace() or char == ":" for char in self.token):
            # Neither fits in Mosquitto's password and ACL files.
            raise TokenError(
                f"the token {mask_token(self.token)} contains a space or a colon",
                hint="use a token of letters, digits, '_' and '-'",
            )
        self._publisher_password = secrets.token_urlsafe(18)
        self.wss_port: int = free_port(host=self.host)
        self.tcp_port: int = free_port(host=self.host)
        self.ws_port: int | None = free_port(host=self.host) if ws_plain else None

        remove_abandoned()  # the folders of brokers whose process was killed with SIGKILL
        owned = workdir is None
        path = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX)) if workdir is None else Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        self.workdir: Path = path
        self.ca_file: Path = path / "ca.pem"
        self.log_file: Path = path / "mosquitto.log"
        self._out_file = path / "mosquitto.out"
        self._config_file = path / "mosquitto.conf"
        self._log_offsets = (0, 0)
        self._token_revoked = False
        self._runtime = _Runtime(path, owned=owned)
        self._finalizer = weakref.finalize(self, _finalize, self._runtime)
        try:
            if owned:
                claim(path)
            self._write_files()
        except BaseException:
            self._finalizer()
            raise

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"LocalBroker(token={mask_token(self.token)!r}, wss_port={self.wss_port}, "
            f"tcp_port={self.tcp_port}, ws_port={self.ws_port}, {state})"
        )

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the Mosquitto process is alive."""
        process = self._runtime.process
        return process is not None and process.poll() is None

    @property
    def refuses_subscriptions(self) -> bool:
        """Whether a subscription outside the ACL is refused (True with the dynsec plugin)."""
        return self._dynsec_plugin is not None

    @property
    def pid(self) -> int | None:
        """The Mosquitto process id while it runs, else None."""
        process = self._runtime.process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def wss_url(self) -> str:
        """The URL a client uses, `wss://127.0.0.1:<wss_port>/mqtt` (with `host`)."""
        return f"wss://{self.host}:{self.wss_port}/mqtt"

    @property
    def ws_url(self) -> str | None:
        """The plain WebSocket URL, `ws://127.0.0.1:<ws_port>/mqtt`, if `ws_plain` was set."""
        return None if self.ws_port is None else f"ws://{self.host}:{self.ws_port}/mqtt"

    def settings(self, **overrides: Any) -> Settings:
        """Return client settings for this broker: its token, WSS URL and CA file.

        Args:
            **overrides: Other `Settings` fields, for example `client_id=...` or `qos=0`.

        Returns:
            The settings.
        """
        values: dict[str, Any] = {
            "token": self.token,
            "broker_url": self.wss_url,
            "ca_certs": self.ca_file,
        }
        values.update(overrides)
        return Settings(**values)

    def publisher(self) -> PublisherConfig:
        """Return the account that may publish telemetry, over plain MQTT on `tcp_port`."""
        return PublisherConfig(
            host=self.host,
            port=self.tcp_port,
            username=PUBLISHER_USERNAME,
            password=self._publisher_password,
        )

    def start(self, *, timeout: float = 10.0) -> LocalBroker:
        """Start Mosquitto and wait until it answers MQTT. Does nothing if it runs.

        Args:
            timeout: Seconds to wait for the broker to answer on its TCP port.

        Returns:
            The broker itself, so `broker = LocalBroker().start()` works.

        Raises:
            TesaiotError: A port is taken, the broker exited, or it did not come up in time;
                the message ends with the tail of its log.
        """
        if not self._finalizer.alive:
            raise TesaiotError("this LocalBroker was closed", hint="make a new LocalBroker")
        if self.running:
            return self
        taken = [port for port, host in self._ports() if not _port_is_free(port, host)]
        if taken:
            raise TesaiotError(
                f"port(s) {', '.join(map(str, taken))} of the local broker are now used by "
                "another program",
                hint="close this LocalBroker and make a new one, which picks new free ports",
            )
        # Only what this run writes goes into an error message.
        self._log_offsets = (_size(self._out_file), _size(self.log_file))
        try:
            with self._out_file.open("ab") as out:
                process, watchdog = spawn_tied(
                    [self._mosquitto, "-c", str(self._config_file)], stdout=out, cwd=self.workdir
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TesaiotError(
                f"the local broker could not be started: {exc}",
                hint=f"check that {self._mosquitto} runs (try it with -h)",
            ) from exc
        self._runtime.process, self._runtime.watchdog = process, watchdog
        if self._runtime.owned:
            try:
                claim(self.workdir, broker_pid=process.pid)
            except OSError as exc:  # only the clean-up after a SIGKILL needs it
                logger.warning("could not record the broker's pid in %s: %s", self.workdir, exc)
        started = time.monotonic()
        deadline = started + timeout
        while not _answers_mqtt(self.tcp_port, self.host):
            if process.poll() is not None:
                self._runtime.end(signal.SIGKILL)
                raise TesaiotError(
                    f"mosquitto exited with status {process.returncode} while starting:\n"
                    f"{self._log_tail()}",
                    hint=f"see {self.log_file}",
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TesaiotError(
                    f"mosquitto did not answer on port {self.tcp_port} within {timeout:g} s:\n"
                    f"{self._log_tail()}",
                    hint=f"see {self.log_file}",
                )
            time.sleep(0.005)
        logger.info(
            "local broker (pid %d) up in %.3f s at %s, tcp %d",
            process.pid,
            time.monotonic() - started,
            self.wss_url,
            self.tcp_port,
        )
        return self

    def stop(self) -> None:
        """Stop Mosquitto cleanly (SIGTERM; SIGKILL if it hangs). Idempotent.

        Mosquitto saves its persistence file on the way out, so a later `start()` brings back
        persistent sessions and their queued QoS 1 messages.
        """
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill Mosquitto at once (SIGKILL), as a crash would.

        Whatever changed since the last save of the persistence file is lost.
        """
        self._signal(signal.SIGKILL)

    def restart(self, *, timeout: float = 10.0) -> None:
        """Stop and start again with the same ports, accounts and persisted sessions.

        The certificates are kept too (the CA's key, which never reached the disk, is not
        needed).

        Args:
            timeout: Seconds to wait for the broker to come back.
        """
        self.stop()
        self.start(timeout=timeout)

    def revoke_token(self, *, timeout: float = 10.0) -> None:
        """Remove the token's account, as an admin revoking it on the platform would.

        The broker restarts (same ports) so that connected clients are dropped; from then on
        every connect with the token is refused as not authorized.

        Args:
            timeout: Seconds to wait for the broker to come back.
        """
        self._token_revoked = True
        was_running = self.running
        self.stop()
        self._write_accounts()
        if was_running:
            self.start(timeout=timeout)

    def close(self) -> None:
        """Stop the broker and remove its temporary directory (if this object made it)."""
        self._finalizer()

    def _signal(self, sig: int) -> None:
        process = self._runtime.end(sig)
        if process is not None:
            logger.info("local broker (pid %d) stopped", process.pid)

    def _ports(self) -> list[tuple[int, str]]:
        ports = [(self.wss_port, self.host), (self.tcp_port, self.host)]
        if self.ws_port is not None:
            ports.append((self.ws_port, self.host))
        return ports

    def _log_tail(self) -> str:
        out_offset, log_offset = self._log_offsets
        text = "\n".join(
            filter(None, (_tail(self._out_file, out_offset), _tail(self.log_file, log_offset)))
        )
        return text or "(mosquitto wrote nothing)"

    def _write_files(self) -> None:
        make_certificates(self.workdir, self.ca_file, hosts=["localhost", HOST, "::1", self.host])
        self._write_accounts()
        (self.workdir / "data").mkdir(exist_ok=True)
        write_private(
            self._config_file,
            config_text(
                workdir=self.workdir,
                host=self.host,
                wss_port=self.wss_port,
                tcp_port=self.tcp_port,
                ws_port=self.ws_port,
                ca_file=self.ca_file,
                log_file=self.log_file,
                dynsec_plugin=self._dynsec_plugin,
            ),
        )

    def _write_accounts(self) -> None:
        write_accounts(
            self.workdir,
            token=self.token,
            publisher_password=self._publisher_password,
            token_revoked=self._token_revoked,
            dynsec=self._dynsec_plugin is not None,
        )
