"""The no-account demo: a local broker that behaves like the platform, and simulated devices.

In a notebook::

    from tesaiot_data import Collector, demo
    settings = demo.start()           # local broker + device fleet; returns Settings
    collector = Collector(settings).start()
    # later, for the real platform: Collector(Settings.from_env()).start()

The package's modules: `broker` (`LocalBroker`, a private Mosquitto on loopback that speaks
the platform's dialect), made of `mosquitto_config` (which Mosquitto, and its config),
`credentials` (accounts, ACL and certificates), `tied_process` (a child process that ends
with this one; `popen_tied`, exported here, starts a notebook's own services so) and
`leftovers` (the folders of brokers whose process was killed); `fleet` (`DeviceFleet`,
simulated devices) and, for tests and benchmarks only, `flood` (raw PUBLISH
packets written to a bare socket).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tesaiot_data.demo.broker import LocalBroker, PublisherConfig, free_port
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.demo.tied_process import popen_tied
from tesaiot_data.replay import Replayer
from tesaiot_data.settings import Settings

__all__ = [
    "DemoEnvironment",
    "DeviceFleet",
    "LocalBroker",
    "PublisherConfig",
    "Replayer",
    "current",
    "free_port",
    "popen_tied",
    "start",
    "stop",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoEnvironment:
    """A running demo: the broker, what publishes to it, and settings to subscribe.

    Args:
        broker: The local broker.
        fleet: The simulated fleet; None when a recording is replayed instead.
        settings: Settings that subscribe to the broker.
        replayer: The replay of a recording, when `start(replay=...)` asked for one.
    """

    broker: LocalBroker
    fleet: DeviceFleet | None
    settings: Settings
    replayer: Replayer | None = None

    def stop(self) -> None:
        """Stop the fleet or the replay, then the broker, and remove the broker's files."""
        if self.fleet is not None:
            self.fleet.stop()
        if self.replayer is not None:
            self.replayer.stop()
        self.broker.close()


_current: DemoEnvironment | None = None
_lock = threading.Lock()


def start(
    *,
    devices: int = 5,
    rate: float = 20.0,
    seed: int = 0,
    malformed: float = 0.01,
    silent_after: Mapping[str | int, float] | None = None,
    qos: int = 0,
    replay: str | Path | None = None,
    speed: float = 1.0,
    loop: bool = True,
    shift_to_now: bool = True,
    **settings_overrides: object,
) -> Settings:
    """Start (once per process) the local broker and a simulated fleet publishing to it.

    With `replay`, a recording is published instead of the fleet, from a background thread
    (it ends with the process, or with `stop()`), so that a collector and its dashboard run
    on recorded data through the real path: broker, WSS, parser. By default the replay
    starts over after its last row and its timestamps are moved to the present, so it
    streams like live devices; a collector started after `start()` returns sees the
    recording from wherever the replay is, and all of it within one pass.

    Calling it again returns the same demo's settings (with new overrides applied). The broker
    ends with this process, even a notebook kernel that is killed (see `LocalBroker`).

    Args:
        devices: How many simulated devices.
        rate: Messages per second from the whole fleet.
        seed: Seed for reproducible device ids and values.
        malformed: Share of deliberately malformed messages (to see rejects at work).
        silent_after: Devices that go silent, to see `health()` and silent alerts at work:
            device index (0 for the first) or id -> seconds after the fleet's start from
            which it sends nothing more (see `DeviceFleet`).
        qos: The QoS the devices publish at. 0 (the default, as most sensors do) is never
            queued by a broker for a subscriber that is away; 1 is, so a persistent session
            (`session_expiry=`) gets what was published while it was down.
        replay: A recording (Parquet file, `.parts` folder or dataset folder) to replay
            instead of running the fleet; `devices`, `rate`, `seed`, `malformed` and
            `silent_after` then do nothing.
        speed: The replay's speed-up over the recorded pace.
        loop: Replay again from the start after the last row, until `stop()`.
        shift_to_now: Move the replayed timestamps so that each pass starts now.
        **settings_overrides: Settings fields, for example `client_id=...`.

    Returns:
        Settings that connect to the demo broker over WSS, verifying its generated CA.

    Raises:
        BrokerNotFoundError: Mosquitto is not installed.
        FileNotFoundError: Nothing is at `replay`.
        NotARecordingError: `replay` is not a recording.
        ConfigError: `speed` is not a positive number, or `silent_after` names a device
            the fleet does not have.
    """
    global _current  # noqa: PLW0603  (one demo per process, like a notebook kernel)
    with _lock:
        if _current is None:
            broker = LocalBroker().start()
            fleet: DeviceFleet | None = None
            replayer: Replayer | None = None
            try:
                if replay is None:
                    fleet = DeviceFleet(
                        broker.publisher(),
                        devices=devices,
                        rate=rate,
                        seed=seed,
                        malformed=malformed,
                        silent_after=silent_after,
                        qos=qos,
                    ).start()
                else:
                    replayer = _replayer(
                        broker, replay, speed=speed, loop=loop, shift_to_now=shift_to_now
                    ).start()
            except BaseException:
                broker.close()
                raise
            _current = DemoEnvironment(broker, fleet, broker.settings(), replayer)
            atexit.register(stop)
            if replayer is None:
                logger.info(
                    "demo broker at %s with %d devices at %g msg/s",
                    _current.settings.broker_url,
                    devices,
                    rate,
                )
            else:
                logger.info(
                    "demo broker at %s replaying %s at %gx",
                    _current.settings.broker_url,
                    replay,
                    speed,
                )
        return _current.broker.settings(**settings_overrides)


def _replayer(
    broker: LocalBroker, source: str | Path, *, speed: float, loop: bool, shift_to_now: bool
) -> Replayer:
    # The publisher account over plain MQTT, as the fleet publishes; the token only reads.
    publisher = broker.publisher()
    return Replayer(
        source,
        settings=broker.settings(broker_url=f"mqtt://{publisher.host}:{publisher.port}"),
        username=publisher.username,
        password=publisher.password,
        speed=speed,
        loop=loop,
        shift_to_now=shift_to_now,
        progress=False,
    )


def current() -> DemoEnvironment | None:
    """The running demo of this process, if any."""
    return _current


def stop() -> None:
    """Stop the demo started by `start()`, if any. Idempotent."""
    global _current  # noqa: PLW0603
    with _lock:
        if _current is not None:
            _current.stop()
            _current = None
