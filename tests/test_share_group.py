"""Scale-out: collectors in one MQTT shared subscription, writing one dataset between them.

Settings and part names first; then collectors in one share group on the real broker: in
this process, as three real `tesaiot-data record --dataset` processes, and as processes on
"separate hosts" (network namespaces joined by a bridge, the broker in one of them).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tesaiot_data import load_recording
from tesaiot_data.cli import main
from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker, PublisherConfig
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.errors import ConfigError
from tesaiot_data.settings import Settings
from tesaiot_data.sinks.dataset import DatasetWriter
from tests.frames import assert_same_rows, make_frame
from tests.helpers import wait_for

TOKEN = "tesa_mqtt_demo_" + "S" * 32
CLI = [sys.executable, "-m", "tesaiot_data.cli"]
# part-<UTC stamp>-<host>-<pid>-<8 hex>.parquet
PART_NAME = re.compile(
    r"part-(?P<stamp>\d{8}T\d{12})-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-[0-9a-f]{8}\.parquet"
)
MESSAGES = 30_000  # per slow test, QoS 1
RECORDED = re.compile(r"^recorded ([\d,]+) rows from", re.MULTILINE)

# --- Settings ------------------------------------------------------------------------------


def test_a_share_group_subscribes_to_the_shared_filter() -> None:
    settings = Settings(token=TOKEN, share_group="analytics")
    assert settings.subscription == "$share/analytics/device/+/telemetry/#"
    assert settings.topic == "device/+/telemetry/#"
    assert "share_group='analytics'" in repr(settings)
    assert Settings(token=TOKEN).subscription == "device/+/telemetry/#"
    narrow = Settings(token=TOKEN, topic="device/abc/telemetry/#", share_group="g-1_x")
    assert narrow.subscription == "$share/g-1_x/device/abc/telemetry/#"


@pytest.mark.parametrize(
    ("group", "says"),
    [
        ("", "it is empty"),
        ("  ", "it is empty"),
        ("a/b", "'/'"),
        ("team+", "'+'"),
        ("#", "'#'"),
        ("a/+/#", "'#' '+' '/'"),
    ],
)
def test_a_bad_share_group_is_a_config_error_with_a_hint(group: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as error:
        Settings(token=TOKEN, share_group=group)
    assert "MQTT_SHARE_GROUP" in str(error.value)
    assert error.value.hint is not None
    assert "analytics" in error.value.hint


def test_a_share_group_with_a_shared_topic_is_refused() -> None:
    with pytest.raises(ConfigError, match="already a shared subscription") as error:
        Settings(token=TOKEN, topic="$share/other/device/#", share_group="g")
    assert error.value.hint is not None
    assert "not both" in error.value.hint
    # Either alone is fine, and replace() checks the pair again.
    shared = Settings(token=TOKEN, topic="$share/other/device/#")
    assert shared.subscription == "$share/other/device/#"
    with pytest.raises(ConfigError, match="already a shared subscription"):
        shared.replace(share_group="g")


def test_the_share_group_comes_from_the_environment() -> None:
    env = {"MQTT_API_TOKEN": TOKEN, "MQTT_SHARE_GROUP": " analytics "}
    assert Settings.from_env(None, environ=env).share_group == "analytics"
    # An empty variable (a container default) is no group; an override wins.
    assert Settings.from_env(None, environ={**env, "MQTT_SHARE_GROUP": ""}).share_group is None
    assert Settings.from_env(None, environ=env, share_group="b").share_group == "b"
    with pytest.raises(ConfigError, match="MQTT_SHARE_GROUP='a/b'"):
        Settings.from_env(None, environ={**env, "MQTT_SHARE_GROUP": "a/b"})


def test_the_share_group_flag_reaches_the_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MQTT_API_TOKEN", TOKEN)
    monkeypatch.delenv("MQTT_SHARE_GROUP", raising=False)
    # Refused before connecting: one error line, exit 1.
    args = ["--env-file", str(tmp_path / "none.env"), "--share-group", "a+b"]
    assert main(["stream", *args], out=io.StringIO()) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("error: MQTT_SHARE_GROUP='a+b' is not a shared-subscription group")


# --- part names: several writers, one dataset ---------------------------------------------------


def test_part_names_carry_a_safe_host_name_and_the_pid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    frame = make_frame(10, start=pd.Timestamp("2025-12-09T12:00", tz="UTC"))
    for host, shown in [
        ("collector-7.eu-west.example.com", "collector-7"),
        ("we!rd host", "we_rd_host"),
        ("", "host"),
        ("-" * 3, "host"),
        ("x" * 100, "x" * 32),
    ]:
        monkeypatch.setattr(socket, "gethostname", lambda name=host: name)
        writer = DatasetWriter(tmp_path / "ds")
        writer.add(frame)
        (path,) = writer.flush()
        match = PART_NAME.fullmatch(path.name)
        assert match is not None, path.name
        assert match["host"] == shown
        assert int(match["pid"]) == os.getpid()


def test_a_dataset_of_several_writers_reads_back_in_flush_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    # Host names of different lengths: the files must sort by time, not by name length.
    hosts = ["a-much-longer-host-name", "b", "mid-host"]
    writers = []
    for host in hosts:
        monkeypatch.setattr(socket, "gethostname", lambda name=host: name)
        writers.append(DatasetWriter(root))
    start = pd.Timestamp("2025-12-09T12:00", tz="UTC")
    flushed: list[pd.DataFrame] = []
    names: list[str] = []
    for turn in range(6):  # interleaved flushes, as independent processes would do
        writer = writers[turn % len(writers)]
        frame = make_frame(50, start=start + pd.Timedelta(turn, "s"), prefix=f"w{turn}", seed=turn)
        writer.add(frame)
        (path,) = writer.flush()
        flushed.append(frame)
        names.append(path.name)
    assert names == sorted(names)  # by time first
    assert len(set(names)) == len(names)
    assert_same_rows(load_recording(root), pd.concat(flushed, ignore_index=True))
    assert len(load_recording(root, dedupe=True)) == 300


# --- on the broker --------------------------------------------------------------------------


def unique_clock(start_s: int) -> Callable[[], float]:
    """A fleet clock one millisecond later at every call: each message its own timestamp."""
    ticks = itertools.count()
    return lambda: start_s + next(ticks) / 1000


def published_identities(fleet: DeviceFleet, start_s: int, count: int) -> set[tuple[str, int]]:
    """(device id, epoch ms) of each message a fleet on `unique_clock(start_s)` published."""
    devices = fleet.device_ids
    return {(devices[i % len(devices)], start_s * 1000 + i) for i in range(count)}


def identities(frame: pd.DataFrame) -> pd.Series:
    """The message identity of each row: (device id, device timestamp in epoch ms)."""
    millis = frame["timestamp"].astype("int64") // 1_000_000
    return pd.Series(list(zip(frame["device_id"].astype(str), millis, strict=True)))


@pytest.fixture(params=["dynsec", "acl-file"])
def any_broker(request: pytest.FixtureRequest) -> Iterator[LocalBroker]:
    """The session broker (dynamic security), and one with a password and an ACL file."""
    if request.param == "dynsec":
        yield request.getfixturevalue("broker")
        return
    with LocalBroker(dynsec=False) as running:
        yield running


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_collectors_in_one_share_group_split_the_stream(
    any_broker: LocalBroker,
    fleet_factory: Callable[..., DeviceFleet],
    collectors: Callable[..., Collector],
    protocol: str,
) -> None:
    broker = any_broker
    group = f"g{uuid.uuid4().hex[:8]}"
    members = [
        collectors(
            broker.settings(
                client_id=f"test-{uuid.uuid4().hex[:12]}", share_group=group, protocol=protocol
            )
        )
        for _ in range(2)
    ]
    assert all(member.settings.url.scheme == "wss" for member in members)
    for member in members:
        member.start()
    start_s = int(time.time())
    fleet = fleet_factory(broker, devices=3, qos=1, mixed_shapes=False, clock=unique_clock(start_s))
    fleet.publish(400)
    wait_for(
        lambda: sum(m.stats.messages for m in members) >= 400,
        timeout=20,
        message="the group did not receive every message",
    )
    frames = [member.frame() for member in members]
    assert all(len(frame) > 0 for frame in frames), [len(f) for f in frames]
    both = pd.concat(frames, ignore_index=True)
    assert len(both) == 400  # each message to one member only
    assert set(identities(both)) == published_identities(fleet, start_s, 400)
    # Delivered on their own topic, not $share/...: parsed as any other message.
    assert all(member.stats.rejected == 0 for member in members)
    assert set(both["sensor_type"].astype(str)) == set(both["metric"].astype(str))
    assert set(both["sensor_type"].astype(str)) <= {
        "temperature",
        "humidity",
        "pressure",
        "motion",
        "battery",
    }


def test_a_local_broker_host_must_be_an_ipv4_address() -> None:
    with pytest.raises(ConfigError, match="not an IPv4 address"):
        LocalBroker(host="localhost")


# --- real processes --------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = (
    ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
)


def _die_with_the_test() -> None:
    """`preexec_fn`: SIGTERM (a clean stop for a recorder) when the test process dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@dataclass
class Child:
    """A process started by a test, with its output in files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def log(self) -> str:
        return self.stderr.read_text()

    def says(self, text: str) -> Callable[[], bool]:
        """A `wait_for` predicate: `text` is on its stdout (or it exited, to fail fast)."""
        return lambda: text in self.output() or self.process.poll() is not None


@contextlib.contextmanager
def children() -> Iterator[Callable[..., Child]]:
    """Start processes that are stopped (SIGTERM, then SIGKILL) when the block ends."""
    started: list[Child] = []

    def start(argv: Sequence[str], *, env: dict[str, str], name: str, folder: Path) -> Child:
        stdout, stderr = folder / f"{name}.out", folder / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                list(argv),
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                preexec_fn=_die_with_the_test,  # noqa: PLW1509  (prctl only)
            )
        started.append(Child(process, stdout, stderr))
        return started[-1]

    try:
        yield start
    finally:
        for child in started:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in started:
            try:
                child.process.wait(15)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            if child.process.stdin is not None:
                child.process.stdin.close()


def recorder_argv(root: Path, group: str) -> list[str]:
    return [*CLI, "record", "--dataset", str(root), "--share-group", group, "--flush-every", "0.5s"]


def rows_on_disk(root: Path) -> int:
    return sum(pq.read_metadata(part).num_rows for part in root.rglob("part-*.parquet"))


def rows_by_writer(root: Path) -> Counter[int]:
    """Rows on disk per writing process, from the pid in each part's name."""
    rows: Counter[int] = Counter()
    for part in root.rglob("part-*.parquet"):
        match = PART_NAME.fullmatch(part.name)
        assert match is not None, part.name
        rows[int(match["pid"])] += pq.read_metadata(part).num_rows
    return rows


def stop_all(recorders: Sequence[Child]) -> None:
    """SIGTERM every recorder, then check each stopped cleanly (exit 0)."""
    for recorder in recorders:
        recorder.process.send_signal(signal.SIGTERM)
    for recorder in recorders:
        assert recorder.process.wait(30) == 0, recorder.log()


def check_split(
    root: Path,
    *,
    published: set[tuple[str, int]],
    recorders: Sequence[Child],
    record_property: Callable[[str, object], None],
) -> None:
    """Every message once in the union (after redelivery dedupe); every recorder had a share."""
    frame = load_recording(root)
    ids = identities(frame)
    duplicates = int(ids.duplicated().sum())
    record_property("duplicates", duplicates)
    print(f"{len(ids):,} rows for {len(published):,} messages: {duplicates} duplicates")
    assert set(ids) == published
    assert len(ids) - duplicates == len(published)
    # load_recording's own redelivery dedupe agrees (each message has its own timestamp).
    assert len(load_recording(root, dedupe=True)) == len(published)

    shares = rows_by_writer(root)
    record_property("rows_by_writer", dict(shares))
    assert set(shares) == {recorder.process.pid for recorder in recorders}, shares
    assert all(rows > 0 for rows in shares.values()), shares
    # Each process counted what it wrote: the same numbers, in its last line.
    for recorder in recorders:
        said = RECORDED.search(recorder.output())
        assert said is not None, recorder.output()
        assert int(said[1].replace(",", "")) == shares[recorder.process.pid]


def broker_env(*, token: str, url: str, ca_file: str) -> dict[str, str]:
    return {
        **os.environ,
        "MQTT_API_TOKEN": token,
        "MQTT_BROKER_URL": url,
        "CA_CERT_PATH": ca_file,
        "MQTT_SHARE_GROUP": "",  # the flag says which group
    }


@pytest.mark.broker
@pytest.mark.slow
def test_three_recorders_in_one_share_group_keep_30000_messages_once(
    broker: LocalBroker,
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    count = MESSAGES
    root = tmp_path / "dataset"  # one folder for all three: the part names keep them apart
    group = f"g{uuid.uuid4().hex[:8]}"
    env = broker_env(token=broker.token, url=broker.wss_url, ca_file=str(broker.ca_file))
    with children() as start:
        recorders = [
            start(recorder_argv(root, group), env=env, name=f"recorder-{i}", folder=tmp_path)
            for i in range(3)
        ]
        for recorder in recorders:
            wait_for(recorder.says(f"recording $share/{group}/"), timeout=60, period=0.1)
            assert recorder.process.poll() is None, recorder.log()
        start_s = int(time.time())
        fleet = fleet_factory(devices=10, qos=1, mixed_shapes=False, clock=unique_clock(start_s))
        fleet.publish(count, timeout=60)
        wait_for(
            lambda: rows_on_disk(root) >= count,
            timeout=60,
            period=0.25,
            message="the group did not write every message",
        )
        stop_all(recorders)
    check_split(
        root,
        published=published_identities(fleet, start_s, count),
        recorders=recorders,
        record_property=record_property,
    )


# --- as separate hosts: network namespaces ----------------------------------------------------

_BROKER_CHILD = """\
import json, signal, sys
from tesaiot_data.demo.broker import LocalBroker

# SIGTERM (the test's cleanup, or its death): exit through close(), which removes the folder.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
broker = LocalBroker(host=sys.argv[1]).start()
publisher = broker.publisher()
print(json.dumps({
    "token": broker.token, "url": broker.wss_url, "ca_file": str(broker.ca_file),
    "host": publisher.host, "port": publisher.port,
    "username": publisher.username, "password": publisher.password,
}), flush=True)
try:
    sys.stdin.read()  # until the test closes the pipe (or dies: then SIGTERM, see PDEATHSIG)
finally:
    broker.close()
"""


@dataclass(frozen=True)
class Lan:
    """Network namespaces on one bridge: the broker's, two collector hosts, and this one."""

    broker_ns: str
    host_ns: tuple[str, str]
    broker_ip: str
    host_ips: tuple[str, str]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _netns_problem() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"tsd-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` failed here: {stderr.decode(errors='replace').strip() or exc}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A bridge in the broker's namespace, a veth to each collector host and to this one.

    10.200.<random>.1 is the broker, .2 and .3 the collector hosts, .254 this process (the
    publisher). Everything is removed afterwards, also when the test fails.
    """
    if (problem := _netns_problem()) is not None:
        pytest.skip(problem)
    tag = secrets.token_hex(3)
    net = f"10.200.{secrets.randbelow(250) + 1}"
    broker_ns, hosts = f"tsd-b-{tag}", (f"tsd-1-{tag}", f"tsd-2-{tag}")
    here, here_peer = f"tsdh{tag}", f"tsdvh{tag}"
    made: list[str] = []
    try:
        for ns in (broker_ns, *hosts):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", broker_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", broker_ns, "addr", "add", f"{net}.1/24", "dev", "br0")
        _ip("-n", broker_ns, "link", "set", "br0", "up")
        for index, ns in enumerate(hosts, start=1):
            port = f"tsdv{index}{tag}"
            pair = f"link add name {port} netns {broker_ns} type veth peer name eth0 netns {ns}"
            _ip(*pair.split())
            _ip("-n", broker_ns, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{net}.{index + 1}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        _ip(*f"link add name {here} type veth peer name {here_peer} netns {broker_ns}".split())
        _ip("addr", "add", f"{net}.254/24", "dev", here)
        _ip("link", "set", here, "up")
        _ip("-n", broker_ns, "link", "set", here_peer, "master", "br0", "up")
        yield Lan(broker_ns, hosts, f"{net}.1", (f"{net}.2", f"{net}.3"))
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("link", "del", here)
        for ns in made:
            with contextlib.suppress(subprocess.SubprocessError):
                _ip("netns", "del", ns)


def _in_namespace(ns: str, argv: Sequence[str], *, hostname: str | None = None) -> list[str]:
    """argv run in network namespace `ns` (same pid), under its own host name if possible."""
    if hostname is not None and shutil.which("unshare"):
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
    return ["ip", "netns", "exec", ns, *argv]


@pytest.mark.broker
@pytest.mark.slow
def test_recorders_on_separate_hosts_share_the_stream(
    lan: Lan, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    count = MESSAGES
    root = tmp_path / "dataset"  # a folder both hosts mount, as a network share would be
    group = f"g{uuid.uuid4().hex[:8]}"
    with children() as start:
        broker = start(
            _in_namespace(lan.broker_ns, [sys.executable, "-c", _BROKER_CHILD, lan.broker_ip]),
            env=dict(os.environ),
            name="broker",
            folder=tmp_path,
        )
        wait_for(broker.says("}"), timeout=30, period=0.05, message="no broker")
        assert broker.process.poll() is None, broker.log()
        info = json.loads(broker.output())
        assert info["url"] == f"wss://{lan.broker_ip}:{info['url'].rsplit(':', 1)[1]}"
        env = broker_env(token=info["token"], url=info["url"], ca_file=info["ca_file"])
        recorders = [
            start(
                _in_namespace(ns, recorder_argv(root, group), hostname=f"collector{i}"),
                env=env,
                name=f"recorder-{i}",
                folder=tmp_path,
            )
            for i, ns in enumerate(lan.host_ns, start=1)
        ]
        for recorder in recorders:
            wait_for(recorder.says(f"recording $share/{group}/"), timeout=60, period=0.1)
            assert recorder.process.poll() is None, recorder.log()
        start_s = int(time.time())
        publisher = PublisherConfig(
            host=info["host"],
            port=info["port"],
            username=info["username"],
            password=info["password"],
        )
        fleet = DeviceFleet(
            publisher, devices=10, qos=1, mixed_shapes=False, clock=unique_clock(start_s)
        )
        try:
            fleet.publish(count, timeout=60)
            wait_for(
                lambda: rows_on_disk(root) >= count,
                timeout=60,
                period=0.25,
                message="the group did not write every message",
            )
        finally:
            fleet.stop()
        stop_all(recorders)
        # The collectors reached the broker over the bridge, not over a shared loopback.
        for recorder in recorders:
            assert f"connected to wss://{lan.broker_ip}:" in recorder.log()
        assert broker.process.stdin is not None
        broker.process.stdin.close()  # the child closes its broker and removes its folder
        assert broker.process.wait(15) == 0, broker.log()
    check_split(
        root,
        published=published_identities(fleet, start_s, count),
        recorders=recorders,
        record_property=record_property,
    )
    if shutil.which("unshare"):
        hosts = {m["host"] for p in root.rglob("*.parquet") if (m := PART_NAME.fullmatch(p.name))}
        assert hosts == {"collector1", "collector2"}


def test_members_made_from_one_settings_get_client_ids_of_their_own() -> None:
    base = Settings(token=TOKEN)
    first, second = base.replace(share_group="g"), base.replace(share_group="g")
    assert len({base.client_id, first.client_id, second.client_id}) == 3
    fixed = Settings(token=TOKEN, client_id="line-7-recorder")
    assert fixed.replace(share_group="g").client_id == "line-7-recorder"
    assert base.replace(share_group="g", client_id="m1").client_id == "m1"
    assert base.replace(topic="device/a/telemetry/#").client_id == base.client_id
