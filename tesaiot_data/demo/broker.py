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
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import functools
import hashlib
import ipaddress
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trustme

from tesaiot_data.errors import BrokerNotFoundError, ConfigError, TesaiotError, TokenError
from tesaiot_data.settings import Settings, mask_token

__all__ = ["LocalBroker", "PublisherConfig", "free_port"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_ANY = "0.0.0.0"  # noqa: S104  (only to test that a port is free everywhere)
DEMO_TOKEN_PREFIX = "tesa_mqtt_demo_"
PUBLISHER_USERNAME = "publisher"
TELEMETRY_FILTER = "device/+/telemetry/#"

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
_TOKEN_ALPHABET = string.ascii_letters + string.digits
# mosquitto_passwd 2.0's defaults, which the dynsec plugin shares: PBKDF2-SHA512,
# 101 iterations, a 12-byte salt.
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_DYNSEC_NAME = "mosquitto_dynamic_security.so"
_CERT_DAYS = 3  # the server certificate's validity; the CA's key is gone anyway
_CERT_ORGANIZATION = "tesaiot-data local broker"
_STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 15

# Linux ties the broker to its parent with prctl(PR_SET_PDEATHSIG); elsewhere a watchdog
# process does (tests switch this off to run the watchdog on Linux too).
_USE_PDEATHSIG = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
# SIGTERM: Mosquitto saves its persistence file and exits within milliseconds.
_PARENT_DEATH_SIGNAL = signal.SIGTERM
# Run as `python -I -S -c _WATCHDOG <broker pid>` with a pipe as stdin. A byte on the pipe
# means the owner stops the broker itself; end of file without one means the owner died.
_WATCHDOG = """\
import os, signal, sys, time
broker = int(sys.argv[1])
if sys.stdin.buffer.read(1):
    raise SystemExit(0)
for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    try:
        os.kill(broker, sig)
    except ProcessLookupError:
        raise SystemExit(0)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(broker, 0)
        except ProcessLookupError:
            raise SystemExit(0)
        time.sleep(0.05)
"""

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


def _find_mosquitto(given: str | None) -> str:
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


def _password_line(username: str, password: str) -> str:
    salt, digest = _pbkdf2(password)
    return f"{username}:$7${_PBKDF2_ITERATIONS}${salt}${digest}\n"


def _pbkdf2(password: str) -> tuple[str, str]:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    return base64.b64encode(salt).decode(), base64.b64encode(digest).decode()


def _dynsec_client(username: str, password: str, role: str) -> dict[str, Any]:
    salt, digest = _pbkdf2(password)
    return {
        "username": username,
        "password": digest,
        "salt": salt,
        "iterations": _PBKDF2_ITERATIONS,
        "roles": [{"rolename": role}],
    }


def _find_dynsec(mosquitto: str) -> str | None:
    given = os.environ.get("TESAIOT_MOSQUITTO_DYNSEC")
    if given:
        return given if Path(given).is_file() else None
    prefixes = dict.fromkeys(
        [Path(mosquitto).parent.parent, Path(os.path.realpath(mosquitto)).parent.parent]
    )
    for prefix in prefixes:
        for pattern in ("lib", "lib/*", "lib64", "lib/mosquitto", "lib/*/mosquitto"):
            found = sorted(prefix.glob(f"{pattern}/{_DYNSEC_NAME}"))
            if found:
                return str(found[0])
    return None


def _new_token() -> str:
    return DEMO_TOKEN_PREFIX + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(32))


def _write_private(path: Path, data: str | bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)  # a file that was there before keeps its mode through os.open


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


@functools.cache
def _prctl() -> Callable[..., int]:
    # Looked up before the fork: the child must do as little as possible before exec.
    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


def _die_with_parent_preexec() -> Callable[[], None]:
    """A `preexec_fn` that makes the child get SIGTERM when the forking thread ends."""
    prctl = _prctl()
    parent = os.getpid()
    option, sig = _PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL)

    def die_with_parent() -> None:
        if prctl(option, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal
            os._exit(1)

    return die_with_parent


_Factory = Callable[[], "subprocess.Popen[bytes]"]


class _Spawner:
    """Forks every broker from one thread that lives as long as the process (Linux).

    The kernel sends the parent-death signal when the *thread* that forked the child ends,
    not the process: a broker that `start()` or `restart()` forked on a short-lived thread (a
    worker, a widget's callback) would be killed as soon as that thread returned.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[_Factory, Future[subprocess.Popen[bytes]]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, factory: _Factory) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="tesaiot-broker-spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((factory, future))
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C) while the spawner forks: leave no broker without an owner.
            with contextlib.suppress(BaseException):
                orphan = future.result(timeout=_STOP_TIMEOUT)
                orphan.kill()
                orphan.wait()
            raise

    def _serve(self) -> None:
        while True:
            factory, future = self._requests.get()
            try:
                process = factory()
            except BaseException as exc:  # handed to the caller, which raises it
                future.set_exception(exc)
            else:
                future.set_result(process)


_spawner = _Spawner()


def _spawn_tied(
    argv: list[str], *, stdout: IO[bytes], cwd: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    """Start a process that ends when this process ends, even by SIGKILL.

    Returns:
        The process, and its watchdog process where there is one (not on Linux).
    """

    def popen(preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            # Unsafe with threads only if the function takes a lock another thread held at
            # the fork; ours calls prctl and getppid, nothing else.
            preexec_fn=preexec_fn,  # noqa: PLW1509
            # A Ctrl-C in the terminal or notebook goes to the caller, which then stops the
            # broker in order, rather than killing it under its clients.
            start_new_session=True,
        )

    if _USE_PDEATHSIG:
        preexec = _die_with_parent_preexec()
        return _spawner.popen(lambda: popen(preexec)), None
    process = popen()
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(process.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Not in our process group: a Ctrl-C must not end the watchdog before the broker.
            start_new_session=True,
        )
    except BaseException:
        _terminate(process, signal.SIGKILL, _STOP_TIMEOUT)
        raise
    return process, watchdog


def _disarm(watchdog: subprocess.Popen[bytes]) -> None:
    # The byte tells the watchdog that we stop the broker; it exits without signalling.
    if watchdog.stdin is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.write(b"x")
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


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
        if watchdog is not None:
            _disarm(watchdog)
        process, self.process = self.process, None
        if process is not None:
            _terminate(process, sig, _STOP_TIMEOUT)
        return process


def _terminate(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("mosquitto (pid %d) ignored signal %d; killing it", process.pid, sig)
        process.kill()
        process.wait()


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
    key: the constructor deletes it as soon as it has signed the server certificate.

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
            removed by `close()`. A given directory is kept.
        dynsec: Keep accounts and ACL in Mosquitto's dynamic-security plugin, which refuses a
            subscription outside the ACL (SUBACK 0x80) as the platform does. None uses it
            when it is installed; False uses a password file and an ACL file instead, with
            which Mosquitto 2.0 grants every subscription and only filters what it delivers.
        host: The IPv4 address the plain MQTT listener binds and the URLs name (the server
            certificate names it too); loopback by default. Another address serves clients
            on other machines or network namespaces. The WebSocket listeners listen on
            every interface whatever it is (a Mosquitto 2.0.11 limitation).

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
        self._mosquitto = _find_mosquitto(mosquitto or os.environ.get("TESAIOT_MOSQUITTO"))
        self._dynsec_plugin = None if dynsec is False else _find_dynsec(self._mosquitto)
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
        self.token: str = Settings(token=token).token if token is not None else _new_token()
        if any(char.isspace() or char == ":" for char in self.token):
            # Neither fits in Mosquitto's password and ACL files.
            raise TokenError(
                f"the token {mask_token(self.token)} contains a space or a colon",
                hint="use a token of letters, digits, '_' and '-'",
            )
        self._publisher_password = secrets.token_urlsafe(18)
        # Mosquitto 2.0.11 opens websockets listeners on every interface (see _config), so
        # their ports must be free on every interface, not only on loopback.
        self.wss_port: int = free_port(host=_ANY)
        self.tcp_port: int = free_port(host=self.host)
        self.ws_port: int | None = free_port(host=_ANY) if ws_plain else None

        owned = workdir is None
        path = (
            Path(tempfile.mkdtemp(prefix="tesaiot-broker-")) if workdir is None else Path(workdir)
        )
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
                process, watchdog = _spawn_tied(
                    [self._mosquitto, "-c", str(self._config_file)], stdout=out, cwd=self.workdir
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TesaiotError(
                f"the local broker could not be started: {exc}",
                hint=f"check that {self._mosquitto} runs (try it with -h)",
            ) from exc
        self._runtime.process, self._runtime.watchdog = process, watchdog
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
        ports = [(self.wss_port, _ANY), (self.tcp_port, self.host)]
        if self.ws_port is not None:
            ports.append((self.ws_port, _ANY))
        return ports

    def _log_tail(self) -> str:
        out_offset, log_offset = self._log_offsets
        text = "\n".join(
            filter(None, (_tail(self._out_file, out_offset), _tail(self.log_file, log_offset)))
        )
        return text or "(mosquitto wrote nothing)"

    def _write_files(self) -> None:
        self._make_certificates()
        self._write_accounts()
        (self.workdir / "data").mkdir(exist_ok=True)
        _write_private(self._config_file, self._config())

    def _write_accounts(self) -> None:
        if self._dynsec_plugin is not None:
            _write_private(self.workdir / "dynsec.json", self._dynsec_json())
            return
        token_line = "" if self._token_revoked else _password_line(self.token, self.token)
        _write_private(
            self.workdir / "passwd",
            token_line + _password_line(PUBLISHER_USERNAME, self._publisher_password),
        )
        _write_private(
            self.workdir / "acl",
            f"user {self.token}\ntopic read {TELEMETRY_FILTER}\n\n"
            f"user {PUBLISHER_USERNAME}\ntopic readwrite device/#\n",
        )

    def _dynsec_json(self) -> str:
        def allow(acltype: str, topic: str) -> dict[str, Any]:
            return {"acltype": acltype, "topic": topic, "allow": True}

        document: dict[str, Any] = {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [
                _dynsec_client(PUBLISHER_USERNAME, self._publisher_password, "telemetry-writer"),
            ],
            "groups": [],
            "roles": [
                {
                    "rolename": "telemetry-reader",
                    "acls": [
                        allow("subscribePattern", TELEMETRY_FILTER),
                        # Mosquitto 2.0 checks a shared subscription's filter with its
                        # $share/<group>/ prefix; EMQX checks the filter without it.
                        allow("subscribePattern", f"$share/+/{TELEMETRY_FILTER}"),
                        allow("publishClientReceive", TELEMETRY_FILTER),
                    ],
                },
                {
                    "rolename": "telemetry-writer",
                    "acls": [
                        allow("subscribePattern", "device/#"),
                        allow("publishClientReceive", "device/#"),
                        allow("publishClientSend", "device/#"),
                    ],
                },
            ],
        }
        if not self._token_revoked:
            document["clients"].append(_dynsec_client(self.token, self.token, "telemetry-reader"))
        return json.dumps(document, indent=1)

    def _config(self) -> str:
        path = self.workdir
        if self._dynsec_plugin is not None:
            security = [
                f"plugin {self._dynsec_plugin}",
                f"plugin_opt_config_file {path / 'dynsec.json'}",
            ]
        else:
            security = [f"password_file {path / 'passwd'}", f"acl_file {path / 'acl'}"]
        lines = [
            "# Written by tesaiot_data.demo.broker; remade for every LocalBroker.",
            "per_listener_settings false",
            "allow_anonymous false",
            *security,
            "persistence true",
            f"persistence_location {path / 'data'}/",
            # The default of 1000 silently drops even QoS 0 messages to a busy subscriber.
            "max_queued_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
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
        # Mosquitto 2.0.11's websockets listeners (libwebsockets) ignore the bind address and
        # listen on every interface, and serve MQTT on any path; /mqtt is what clients use.
        lines += [
            "",
            f"listener {self.wss_port} {self.host}",
            "protocol websockets",
            f"cafile {self.ca_file}",
            f"certfile {path / 'server.pem'}",
            f"keyfile {path / 'server.key'}",
        ]
        if self.ws_port is not None:
            lines += ["", f"listener {self.ws_port} {self.host}", "protocol websockets"]
        # Last, so that once it answers every listener before it is open.
        lines += ["", f"listener {self.tcp_port} {self.host}", "protocol mqtt", ""]
        return "\n".join(lines)

    def _make_certificates(self) -> None:
        # The CA's key exists only inside `ca`: it signs the server certificate once and is
        # dropped with it, so neither a crash nor a kill -9 can leave it behind on disk.
        ca = trustme.CA(organization_name=_CERT_ORGANIZATION, organization_unit_name="local CA")
        names = dict.fromkeys(["localhost", HOST, "::1", self.host])
        server = ca.issue_cert(
            *names,
            common_name="localhost",
            organization_name=_CERT_ORGANIZATION,
            organization_unit_name="local broker",
            not_after=datetime.datetime.now(datetime.timezone.utc)
            + datetime.timedelta(days=_CERT_DAYS),
        )
        self.ca_file.write_bytes(ca.cert_pem.bytes())
        (self.workdir / "server.pem").write_bytes(server.cert_chain_pems[0].bytes())
        _write_private(self.workdir / "server.key", server.private_key_pem.bytes())
