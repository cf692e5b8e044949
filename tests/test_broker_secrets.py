"""The demo token (the username of every collector) stays out of the local broker's log.

Only the files that must hold it do: the accounts (`dynsec.json`, or `passwd` and `acl`) and
Mosquitto's persistence file (a persistent session's username), each readable by its owner
only; all of them go with the broker's folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import DEMO_TOKEN_PREFIX, LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tests.helpers import Subscriber, wait_for

pytestmark = pytest.mark.broker

# The files that hold the token by design, per account store.
SECRET_FILES = {
    True: {"dynsec.json", "data/mosquitto.db"},
    False: {"passwd", "acl", "data/mosquitto.db"},
}


@pytest.fixture(params=[True, False], ids=["dynsec", "acl-file"])
def own_broker(request: pytest.FixtureRequest) -> Iterator[LocalBroker]:
    dynsec: bool = request.param
    with LocalBroker(ws_plain=True, dynsec=None if dynsec else False) as running:
        if dynsec and not running.refuses_subscriptions:
            pytest.fail("Mosquitto's dynamic-security plugin is needed")
        yield running


def _holding(workdir: Path, secret: bytes) -> dict[str, int]:
    """The files under `workdir` that contain `secret`, with their permission bits."""
    return {
        str(path.relative_to(workdir)): path.stat().st_mode & 0o777
        for path in workdir.rglob("*")
        if path.is_file() and secret in path.read_bytes()
    }


def test_the_broker_log_never_holds_the_token(
    own_broker: LocalBroker,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    broker = own_broker
    # The random part: the token must not be there whole, nor without its prefix.
    secret = broker.token.removeprefix(DEMO_TOKEN_PREFIX).encode()
    assert len(secret) >= 32

    # What users do: a collector over WSS, a persistent session, the plain WebSocket, a
    # wrong password, a subscription outside the ACL, a publish the token may not make.
    collector = collectors(broker.settings()).start()
    fleet = fleet_factory(broker, devices=2, qos=1)
    fleet.publish(5)
    wait_for(lambda: collector.stats.messages >= 5, message="the collector got nothing")
    persistent = Subscriber.as_token(broker, client_id="secrets-persistent", clean_session=False)
    persistent.start().stop()
    Subscriber(
        host=broker.host,
        port=broker.ws_port or 0,
        username=broker.token,
        password=broker.token,
        topic=["#", "device/+/telemetry/#"],
        websockets=True,
    ).start().stop()
    reader = Subscriber.as_token(broker).start()
    reader.client.publish("device/d1/telemetry/x", b"from the token", qos=1).wait_for_publish(5)
    reader.stop()
    refused = Subscriber.as_token(broker, topic=None)
    refused.client.username_pw_set(broker.token, DEMO_TOKEN_PREFIX + "w" * 32)
    refused.start()
    refused.stop()
    assert refused.connects[0] != 0  # start() waited for the CONNACK
    collector.stop()
    # A restart saves the sessions; a revoked token is refused at connect.
    broker.restart()
    broker.revoke_token()
    again = Subscriber.as_token(broker, topic=None).start()
    again.stop()
    assert again.connects[0] != 0

    log = broker.log_file.read_bytes()
    assert b"running" in log, "the broker logged nothing: the check would be empty"
    assert secret not in log
    holding = _holding(broker.workdir, secret)
    allowed = SECRET_FILES[broker.refuses_subscriptions]
    assert set(holding) <= allowed, f"the token is in {sorted(set(holding) - allowed)}"
    assert all(mode == 0o600 for mode in holding.values()), holding
    assert "data/mosquitto.db" in holding  # the persistent session's username
