"""Shared fixtures: a real Mosquitto broker, client settings for it, simulated devices.

A missing Mosquitto makes the broker fixtures fail (BrokerNotFoundError), never skip, so CI
cannot pass without running the broker tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.errors import RecordingError
from tesaiot_data.settings import Settings
from tests.helpers import Subscriber, wait_for

if TYPE_CHECKING:
    from tesaiot_data.dashboard import Dashboard  # ipywidgets: only where a test makes one


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One running broker for the whole session (with a plain ws:// listener too).

    Tests must leave it running; a test that stops, kills or restarts a broker uses
    `fresh_broker`.
    """
    with LocalBroker(ws_plain=True) as running:
        yield running


@pytest.fixture
def fresh_broker() -> Iterator[LocalBroker]:
    """A running broker of this test's own, removed afterwards."""
    with LocalBroker(ws_plain=True) as running:
        yield running


@pytest.fixture
def settings(broker: LocalBroker) -> Settings:
    """Client settings for the session broker, with a client id of this test's own."""
    return broker.settings(client_id=f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def fleet_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., DeviceFleet]]:
    """Make `DeviceFleet`s (not started) against a broker; all are stopped at teardown.

    Call it as `fleet_factory(broker, devices=3, qos=1)`; without a broker it uses the
    session broker.
    """
    fleets: list[DeviceFleet] = []

    def make(target: LocalBroker | None = None, /, **options: Any) -> DeviceFleet:
        if target is None:
            target = request.getfixturevalue("broker")
        fleet = DeviceFleet(target.publisher(), **options)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def subscriber_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Subscriber]]:
    """Make started `Subscriber`s (plain paho) to check what the broker delivers.

    All are disconnected at teardown. `subscriber_factory(broker)` logs in as the publisher
    over TCP and subscribes to `device/#`; `subscriber_factory(broker, as_token=True)` uses
    the token over WSS and `device/+/telemetry/#`. Other keywords go to `Subscriber`.
    """
    collectors: list[Subscriber] = []

    def make(
        target: LocalBroker | None = None, /, *, as_token: bool = False, **options: Any
    ) -> Subscriber:
        if target is None:
            target = request.getfixturevalue("broker")
        if as_token:
            collector = Subscriber.as_token(target, **options)
        else:
            collector = Subscriber.as_publisher(target.publisher(), **options)
        collectors.append(collector)
        return collector.start()

    yield make
    for collector in collectors:
        collector.stop()


@pytest.fixture
def collectors() -> Iterator[Callable[..., Collector]]:
    """Make collectors that are stopped after the test (a failed recording is the test's)."""
    made: list[Collector] = []

    def make(settings: Settings, **options: Any) -> Collector:
        made.append(Collector(settings, **options))
        return made[-1]

    yield make
    for collector in made:
        with contextlib.suppress(RecordingError):  # the tests that break one assert on it
            collector.stop()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `tesaiot-data record ...` subprocesses; any still running is killed afterwards.

    Call it as `services(broker, "--dataset", ...)`; it returns once the service subscribed.
    The process's output is in `process.out`.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(broker: LocalBroker, *args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "MQTT_API_TOKEN": broker.token,
            "MQTT_BROKER_URL": broker.wss_url,
            "CA_CERT_PATH": str(broker.ca_file),
        }
        out = tmp_path / f"service-{len(started)}.out"
        with out.open("wb") as stdout:
            process = subprocess.Popen(
                [sys.executable, "-m", "tesaiot_data.cli", "record", *args],
                env=env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        process.out = out  # type: ignore[attr-defined]
        started.append(process)
        wait_for(
            lambda: "recording device/" in out.read_text() or process.poll() is not None,
            timeout=60,
            message="the service did not subscribe",
        )
        assert process.poll() is None, out.read_text()
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Dashboard]]:
    """Make dashboards of a collector; all are closed at teardown."""
    made: list[Dashboard] = []

    def make(collector: Collector, **options: object) -> Dashboard:
        dashboard = collector.dashboard(**options)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        dashboard.close()
