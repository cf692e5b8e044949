"""The no-account demo: a local broker that behaves like the platform, and simulated devices.

In a notebook::

    from tesaiot_data import Collector, demo
    settings = demo.start()           # local broker + device fleet; returns Settings
    collector = Collector(settings).start()
    # later, for the real platform: Collector(Settings.from_env()).start()

The package's modules: `broker` (`LocalBroker`, a private Mosquitto on loopback that speaks
the platform's dialect), `fleet` (`DeviceFleet`, simulated devices) and, for tests and
benchmarks only, `flood` (raw PUBLISH packets written to a bare socket).
"""

from __future__ import annotations

import atexit
import logging
import threading
from dataclasses import dataclass

from tesaiot_data.demo.broker import LocalBroker, PublisherConfig, free_port
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.settings import Settings

__all__ = [
    "DemoEnvironment",
    "DeviceFleet",
    "LocalBroker",
    "PublisherConfig",
    "current",
    "free_port",
    "start",
    "stop",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoEnvironment:
    """A running demo: the broker, the fleet publishing to it, and settings to subscribe."""

    broker: LocalBroker
    fleet: DeviceFleet
    settings: Settings

    def stop(self) -> None:
        """Stop the fleet, then the broker, and remove the broker's files."""
        self.fleet.stop()
        self.broker.close()


_current: DemoEnvironment | None = None
_lock = threading.Lock()


def start(
    *,
    devices: int = 5,
    rate: float = 20.0,
    seed: int = 0,
    malformed: float = 0.01,
    **settings_overrides: object,
) -> Settings:
    """Start (once per process) the local broker and a simulated fleet publishing to it.

    Calling it again returns the same demo's settings (with new overrides applied). The broker
    ends with this process, even a notebook kernel that is killed (see `LocalBroker`).

    Args:
        devices: How many simulated devices.
        rate: Messages per second from the whole fleet.
        seed: Seed for reproducible device ids and values.
        malformed: Share of deliberately malformed messages (to see rejects at work).
        **settings_overrides: Settings fields, for example `client_id=...`.

    Returns:
        Settings that connect to the demo broker over WSS, verifying its generated CA.

    Raises:
        BrokerNotFoundError: Mosquitto is not installed.
    """
    global _current  # noqa: PLW0603  (one demo per process, like a notebook kernel)
    with _lock:
        if _current is None:
            broker = LocalBroker().start()
            try:
                fleet = DeviceFleet(
                    broker.publisher(), devices=devices, rate=rate, seed=seed, malformed=malformed
                ).start()
            except BaseException:
                broker.close()
                raise
            _current = DemoEnvironment(broker, fleet, broker.settings())
            atexit.register(stop)
            logger.info(
                "demo broker at %s with %d devices at %g msg/s",
                _current.settings.broker_url,
                devices,
                rate,
            )
        return _current.broker.settings(**settings_overrides)


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
