"""The local broker: a real Mosquitto with WSS, token auth, the platform's ACL and persistence."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import tesaiot_data.demo.broker as broker_module
from tesaiot_data.demo.broker import LocalBroker, PublisherConfig
from tesaiot_data.errors import BrokerNotFoundError, TesaiotError, TokenError
from tesaiot_data.settings import BrokerURL
from tests.helpers import SUBACK_FAILURE, Subscriber, new_paho_client, wait_for

pytestmark = pytest.mark.broker


BROKER_CHILD = Path(__file__).with_name("broker_child.py")
LINUX = sys.platform.startswith("linux")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _mosquitto_runs(pid: int) -> bool:
    """Whether `pid` is a live Mosquitto: not gone, not a zombie, not a reused pid."""
    if not LINUX:
        return _process_exists(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "<pid> (<comm>) <state> ...": an orphan's zombie waits for init, which may be slow.
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    return comm == "mosquitto" and rest.split()[0] != "Z"


def _gone(path: Path) -> bool:
    return not path.exists()


def _private_keys(workdir: Path) -> list[str]:
    return sorted(
        str(path.relative_to(workdir))
        for path in workdir.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    )


def _wss_client(broker: LocalBroker, password: str, *, ca_certs: Path | None) -> Any:
    """A paho client as a user would make it for the platform."""
    client = new_paho_client("wss-test", transport="websockets")
    client.ws_set_options(path="/mqtt")
    client.tls_set(ca_certs=None if ca_certs is None else str(ca_certs))
    client.username_pw_set(broker.token, password)
    client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # loop_stop() waits out the delay
    return client


def _connack(client: Any, broker: LocalBroker) -> Any:
    answers: list[Any] = []
    client.on_connect = lambda _c, _u, _flags, reason, _props: answers.append(reason)
    client.connect(broker.host, broker.wss_port)
    client.loop_start()
    try:
        return wait_for(lambda: answers, message="no CONNACK")[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_token_connects_over_wss_verifying_the_ca(broker: LocalBroker) -> None:
    reason = _connack(_wss_client(broker, broker.token, ca_certs=broker.ca_file), broker)
    assert not reason.is_failure
    assert str(reason) == "Success"


# paho does not close the socket of a failed TLS handshake.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
def test_the_certificate_is_not_trusted_without_the_ca(broker: LocalBroker) -> None:
    client = _wss_client(broker, broker.token, ca_certs=None)  # the system store
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect(broker.host, broker.wss_port)


def test_wrong_password_is_not_authorized(broker: LocalBroker) -> None:
    reason = _connack(_wss_client(broker, "tesa_mqtt_demo_wrong", ca_certs=broker.ca_file), broker)
    assert reason.is_failure
    assert str(reason) == "Not authorized"


def test_plain_websocket_listener(broker: LocalBroker) -> None:
    assert broker.ws_port is not None
    assert broker.ws_url == f"ws://127.0.0.1:{broker.ws_port}/mqtt"
    collector = Subscriber(
        host=broker.host,
        port=broker.ws_port,
        username=broker.token,
        password=broker.token,
        topic="device/+/telemetry/#",
        websockets=True,
    ).start()
    collector.stop()
    assert collector.connects == [0]


def test_token_receives_the_publishers_telemetry(
    broker: LocalBroker, subscriber_factory: Any
) -> None:
    reader = subscriber_factory(broker, as_token=True, qos=1)
    assert reader.granted == [1]
    writer = subscriber_factory(broker, topic=None)
    writer.client.publish("device/d1/telemetry/temperature", b'{"value": 21.5}', qos=1)
    wait_for(lambda: reader.messages, message="the token got nothing")
    assert reader.messages == [("device/d1/telemetry/temperature", b'{"value": 21.5}')]


def test_subscription_outside_the_acl_is_refused(
    broker: LocalBroker, subscriber_factory: Any
) -> None:
    assert broker.refuses_subscriptions, "Mosquitto's dynamic-security plugin is needed"
    topics = ["#", "admin/x", "device/#", "device/d1/status", "device/d1/telemetry/battery"]
    reader = subscriber_factory(broker, as_token=True, topic=topics, qos=1)
    assert reader.granted == [SUBACK_FAILURE] * 4 + [1]


def test_token_may_not_publish(broker: LocalBroker, subscriber_factory: Any) -> None:
    watcher = subscriber_factory(broker)  # the publisher account sees all of device/#
    reader = subscriber_factory(broker, as_token=True)
    reader.client.publish("device/d1/telemetry/temperature", b"from the token", qos=1)
    # The broker acknowledges and drops it; a later message proves it is not just late.
    watcher.client.publish("device/d1/telemetry/temperature", b"marker", qos=1)
    wait_for(lambda: b"marker" in watcher.payloads, message="the marker did not arrive")
    assert b"from the token" not in watcher.payloads


def test_settings_point_at_the_broker(broker: LocalBroker) -> None:
    settings = broker.settings(qos=0)
    assert settings.token == broker.token
    assert settings.url == BrokerURL("wss", "127.0.0.1", broker.wss_port, "/mqtt")
    assert Path(settings.ca_certs or "") == broker.ca_file
    assert settings.qos == 0
    assert broker.settings().client_id != broker.settings().client_id


def test_repr_hides_secrets(broker: LocalBroker) -> None:
    publisher = broker.publisher()
    assert broker.token not in repr(broker)
    assert broker.token[-4:] in repr(broker)
    assert publisher.password not in repr(publisher)
    assert broker.token not in repr(broker.settings())


def test_publisher_config_validates() -> None:
    with pytest.raises(ValueError, match="port"):
        PublisherConfig(host="127.0.0.1", port=0, username="publisher", password="x")


def test_given_token_is_used_and_checked(tmp_path: Path) -> None:
    token = "tesa_mqtt_myorg_" + "a1B2" * 8
    with LocalBroker(token=token, workdir=tmp_path / "b") as broker:
        assert broker.token == token
        reader = Subscriber.as_token(broker).start()
        reader.stop()
        assert reader.connects == [0]
    assert (tmp_path / "b").is_dir(), "a given workdir is kept"
    with pytest.raises(TokenError):
        LocalBroker(token="not-a-token")


def test_stop_start_restart_keep_ports_and_accounts(fresh_broker: LocalBroker) -> None:
    ports = (fresh_broker.wss_port, fresh_broker.tcp_port, fresh_broker.ws_port)
    token, publisher = fresh_broker.token, fresh_broker.publisher()
    first_pid = fresh_broker.pid
    assert first_pid is not None
    assert fresh_broker.running

    fresh_broker.stop()
    assert not fresh_broker.running
    assert fresh_broker.pid is None
    assert not _process_exists(first_pid)
    fresh_broker.stop()  # idempotent

    fresh_broker.start()
    second_pid = fresh_broker.pid
    fresh_broker.restart()
    assert fresh_broker.pid not in (None, first_pid, second_pid)
    assert (fresh_broker.wss_port, fresh_broker.tcp_port, fresh_broker.ws_port) == ports
    assert (fresh_broker.token, fresh_broker.publisher()) == (token, publisher)
    Subscriber.as_token(fresh_broker).start().stop()
    Subscriber.as_publisher(publisher).start().stop()


def test_kill_then_start(fresh_broker: LocalBroker) -> None:
    pid = fresh_broker.pid
    assert pid is not None
    fresh_broker.kill()
    assert not fresh_broker.running
    assert not _process_exists(pid)
    fresh_broker.start()
    Subscriber.as_token(fresh_broker).start().stop()


def test_close_removes_the_temporary_directory() -> None:
    broker = LocalBroker().start()
    workdir, pid = broker.workdir, broker.pid
    assert pid is not None
    assert (workdir / "mosquitto.conf").is_file()
    broker.close()
    broker.close()  # idempotent
    assert not workdir.exists()
    assert not _process_exists(pid)
    with pytest.raises(TesaiotError, match="closed"):
        broker.start()


def test_persistent_session_survives_a_restart(fresh_broker: LocalBroker) -> None:
    client_id = "persistent-reader"
    reader = Subscriber.as_token(fresh_broker, client_id=client_id, clean_session=False, qos=1)
    reader.start()
    reader.stop()  # offline, but the broker keeps the session and queues QoS 1 messages

    writer = Subscriber.as_publisher(fresh_broker.publisher(), topic=None).start()
    writer.client.publish("device/d1/telemetry/motion", b"while away", qos=1).wait_for_publish(5)
    writer.stop()
    fresh_broker.restart()

    again = Subscriber.as_token(fresh_broker, client_id=client_id, clean_session=False, topic=None)
    again.start()
    try:
        wait_for(lambda: again.messages, message="the queued message was lost in the restart")
        assert again.messages == [("device/d1/telemetry/motion", b"while away")]
    finally:
        again.stop()


def test_start_reports_a_taken_port() -> None:
    broker = LocalBroker()
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", broker.tcp_port))
            squatter.listen()
            with pytest.raises(TesaiotError, match=f"{broker.tcp_port}.*used by another program"):
                broker.start()
    finally:
        broker.close()


def test_start_shows_the_log_when_mosquitto_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LocalBroker()
    # Let the taken port slip past the check, as in a race with another program.
    monkeypatch.setattr(broker_module, "_port_is_free", lambda _port, _host: True)
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", broker.tcp_port))
            squatter.listen()
            with pytest.raises(TesaiotError, match="exited") as caught:
                broker.start()
        assert "Address already in use" in str(caught.value)
        assert not broker.running
    finally:
        broker.close()


def test_missing_mosquitto_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESAIOT_MOSQUITTO", raising=False)
    with pytest.raises(BrokerNotFoundError, match="apt-get install mosquitto") as caught:
        LocalBroker(mosquitto="/nonexistent/mosquitto")
    assert "brew install mosquitto" in str(caught.value)
    assert "conda install -c conda-forge mosquitto" in str(caught.value)


def test_acl_file_mode_filters_what_it_delivers(subscriber_factory: Any) -> None:
    # Without the dynsec plugin: the password file (written in Python, $7$ format) and the
    # ACL file. Mosquitto 2.0 grants any subscription there but delivers only what the ACL
    # lets the token read.
    with LocalBroker(dynsec=False) as broker:
        assert not broker.refuses_subscriptions
        assert "$7$101$" in (broker.workdir / "passwd").read_text()
        reader = subscriber_factory(broker, as_token=True, topic="#", qos=1)
        assert reader.granted == [1]
        writer = subscriber_factory(broker, topic=None)
        writer.client.publish("device/d1/status", b"not telemetry", qos=1)
        writer.client.publish("device/d1/telemetry/battery", b"telemetry", qos=1)
        wait_for(lambda: reader.messages, message="the token got nothing")
        assert reader.payloads == [b"telemetry"]


def test_the_finalizer_stops_a_forgotten_broker() -> None:
    broker = LocalBroker().start()
    pid, workdir = broker.pid, broker.workdir
    assert pid is not None
    del broker  # the weakref finalizer runs when the object is collected
    wait_for(lambda: not _process_exists(pid), message="the forgotten broker still runs")
    wait_for(lambda: not workdir.exists(), message="its directory is still there")


@pytest.mark.parametrize(
    "guard",
    [
        pytest.param(
            "pdeathsig", marks=pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
        ),
        "watchdog",
    ],
)
def test_the_broker_dies_with_its_owner_killed_by_sigkill(guard: str) -> None:
    # A notebook kernel killed for memory: nothing may keep serving on the network after it.
    command = [sys.executable, str(BROKER_CHILD)] + (["--watchdog"] if guard == "watchdog" else [])
    pid: int | None = None
    workdir: Path | None = None
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as owner:
        assert owner.stdout is not None
        try:
            started = json.loads(owner.stdout.readline() or "null")
            assert started is not None, f"the owner exited with {owner.wait(10)}"
            pid, workdir = int(started["pid"]), Path(started["workdir"])
            assert _mosquitto_runs(pid)
            # Mosquitto reads the server's key; the CA's key signed once and is gone.
            assert _private_keys(workdir) == ["server.key"]

            owner.send_signal(signal.SIGKILL)
            assert owner.wait(10) == -signal.SIGKILL
            wait_for(
                lambda: not _mosquitto_runs(pid or 0),
                timeout=10,
                message=f"mosquitto (pid {pid}) outlived its owner",
            )
            assert _private_keys(workdir) == ["server.key"]
        finally:
            owner.kill()
            if pid is not None and _mosquitto_runs(pid):
                os.kill(pid, signal.SIGKILL)  # the old behaviour: leave it to no other test
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)  # its owner had no time to


@pytest.mark.skipif(not LINUX, reason="the parent-death signal is Linux's")
def test_a_broker_started_on_a_short_lived_thread_outlives_the_thread() -> None:
    # PR_SET_PDEATHSIG fires when the thread that forked the broker ends, not the process.
    broker = LocalBroker()
    try:
        for step in (broker.start, broker.restart):
            worker = threading.Thread(target=step)
            worker.start()
            worker.join()
            task = Path(f"/proc/self/task/{worker.native_id}")
            wait_for(partial(_gone, task), message="the thread is still there")
            pid = broker.pid
            assert pid is not None
            # Had the death signal been sent, Mosquitto would not answer this round trip.
            Subscriber.as_token(broker).start().stop()
            assert broker.pid == pid
            assert _mosquitto_runs(pid)
    finally:
        broker.close()


def test_no_ca_key_stays_on_disk_and_restart_does_not_need_it(tmp_path: Path) -> None:
    with LocalBroker(workdir=tmp_path / "b") as broker:
        assert _private_keys(broker.workdir) == ["server.key"]
        assert not (broker.workdir / "ca.key").exists()
        assert (broker.workdir / "server.key").stat().st_mode & 0o077 == 0
        broker.restart()
        broker.revoke_token()
        assert _private_keys(broker.workdir) == ["server.key"]
        Subscriber.as_publisher(broker.publisher()).start().stop()


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _listening_sockets(table: str) -> dict[int, tuple[_Address, int]]:
    """inode -> (address, port) of the sockets in state LISTEN in /proc/net/tcp or tcp6."""
    listening: dict[int, tuple[_Address, int]] = {}
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # TCP_LISTEN
            continue
        address, port = fields[1].split(":")
        raw = bytes.fromhex(address)
        # The kernel prints each 32-bit word of the address in host order (little-endian).
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        listening[int(fields[9])] = (ipaddress.ip_address(words), int(port, 16))
    return listening


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


@pytest.mark.skipif(not LINUX, reason="reads Linux's /proc/net/tcp")
def test_every_listener_is_on_loopback_only(fresh_broker: LocalBroker) -> None:
    # Mosquitto 2.0.11's websockets listeners bind every IPv4 and IPv6 interface unless
    # told `socket_domain ipv4`: a demo token would then be guessable from the network.
    pid = fresh_broker.pid
    assert pid is not None
    ports = {fresh_broker.wss_port, fresh_broker.tcp_port, fresh_broker.ws_port}
    listening = {**_listening_sockets("tcp"), **_listening_sockets("tcp6")}
    mosquittos = {listening[inode] for inode in _socket_inodes(pid) if inode in listening}
    assert {port for _, port in mosquittos} == ports, "a listener was not found, or one more"
    assert all(address == ipaddress.IPv4Address("127.0.0.1") for address, _ in mosquittos), (
        mosquittos
    )
    # Nothing else listens on the broker's ports on another address (the `::` of IPv6).
    assert {address for address, port in listening.values() if port in ports} == {
        ipaddress.IPv4Address("127.0.0.1")
    }
    # ... and clients still connect over each of them.
    Subscriber.as_token(fresh_broker).start().stop()
    assert fresh_broker.ws_port is not None
    Subscriber(
        host=fresh_broker.host,
        port=fresh_broker.ws_port,
        username=fresh_broker.token,
        password=fresh_broker.token,
        topic="device/+/telemetry/#",
        websockets=True,
    ).start().stop()
    Subscriber.as_publisher(fresh_broker.publisher()).start().stop()
