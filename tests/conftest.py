"""Shared fixtures: a real Mosquitto broker, client settings for it, simulated devices.

A missing Mosquitto makes the broker fixtures fail (BrokerNotFoundError), never skip, so CI
cannot pass without running the broker tests.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.errors import RecordingError
from tesaiot_data.settings import Settings
from tests.helpers import Subscriber


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
