"""Settings, broker URLs, tokens and the environment: pure functions, no broker."""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import tesaiot_data
from tesaiot_data import BrokerURL, ConfigError, Settings, TokenError, mask_token

TOKEN = "tesa_mqtt_acme_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://mqtt.tesaiot.com:8085/mqtt", ("wss", "mqtt.tesaiot.com", 8085, "/mqtt")),
        ("wss://mqtt.tesaiot.com/mqtt", ("wss", "mqtt.tesaiot.com", 8085, "/mqtt")),
        ("wss://mqtt.tesaiot.com", ("wss", "mqtt.tesaiot.com", 8085, "/mqtt")),
        ("ws://localhost", ("ws", "localhost", 80, "/mqtt")),
        ("ws://localhost:9001/custom/path", ("ws", "localhost", 9001, "/custom/path")),
        ("WSS://Host.Example:443/mqtt", ("wss", "host.example", 443, "/mqtt")),
        ("mqtts://broker.local", ("mqtts", "broker.local", 8883, "")),
        ("mqtt://127.0.0.1", ("mqtt", "127.0.0.1", 1883, "")),
        ("mqtt://[::1]:1884", ("mqtt", "::1", 1884, "")),
        ("wss://[2001:db8::1]/mqtt", ("wss", "2001:db8::1", 8085, "/mqtt")),
        ("  wss://h:1/mqtt  ", ("wss", "h", 1, "/mqtt")),
    ],
)
def test_broker_url_parses(url: str, expected: tuple[str, str, int, str]) -> None:
    parsed = BrokerURL.parse(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.path) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://mqtt.tesaiot.com:8085/mqtt", "scheme 'http'"),
        ("mqtt.tesaiot.com:8085", "scheme"),
        ("wss://:8085/mqtt", "no host"),
        ("wss://host:99999/mqtt", "not a valid URL"),
        ("wss://host:abc/mqtt", "not a valid URL"),
        ("wss://host:0/mqtt", "port 0"),
        ("wss://[::zz]/mqtt", "not a valid URL"),
        ("", "scheme"),
    ],
)
def test_broker_url_rejects_bad_values_naming_the_variable(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        BrokerURL.parse(url)
    message = str(info.value)
    assert fragment in message
    assert "MQTT_BROKER_URL" in message
    assert "wss://" in message  # the example of a good value


def test_transport_and_tls_follow_the_scheme() -> None:
    assert BrokerURL.parse("wss://h/mqtt").transport == "websockets"
    assert BrokerURL.parse("wss://h/mqtt").tls
    assert not BrokerURL.parse("ws://h/mqtt").tls
    assert BrokerURL.parse("mqtts://h").transport == "tcp"
    assert str(BrokerURL.parse("mqtt://[::1]")) == "mqtt://[::1]:1883"


@pytest.mark.parametrize(
    "raw", [TOKEN, f"  {TOKEN}\n", f'"{TOKEN}"', f"'{TOKEN}'", f' " {TOKEN} " ']
)
def test_token_is_stripped_of_whitespace_and_quotes(raw: str) -> None:
    assert Settings(token=raw).token == TOKEN


@pytest.mark.parametrize("raw", ["", "   ", '""', None])
def test_missing_token_says_which_variable_and_where_tokens_come_from(raw: str | None) -> None:
    with pytest.raises(TokenError) as info:
        Settings(token=raw)  # type: ignore[arg-type]
    assert "MQTT_API_TOKEN" in str(info.value)
    assert "Organization Settings" in str(info.value)


def test_token_with_wrong_prefix_is_refused_without_showing_it() -> None:
    secret = "mqtt_acme_" + "z" * 32
    with pytest.raises(TokenError) as info:
        Settings(token=secret)
    assert secret not in str(info.value)
    assert "tesa_mqtt_" in str(info.value)


def test_token_of_unusual_shape_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    odd = "tesa_mqtt_acme_short"
    with caplog.at_level(logging.WARNING):
        settings = Settings(token=odd)
    assert settings.token == odd
    assert "documented shape" in caplog.text
    assert odd not in caplog.text


def test_documented_token_shape_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        Settings(token=TOKEN)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("token", "masked"),
    [
        (TOKEN, "tesa_mqtt_acme_…o5P6"),
        ("tesa_mqtt_my_org_" + "x" * 28 + "wxyz", "tesa_mqtt_my_org_…wxyz"),
        ("secretvalue123", "…23"),
        ("short", "…"),
        ("", "<none>"),
    ],
)
def test_mask_token(token: str, masked: str) -> None:
    assert mask_token(token) == masked


def test_repr_and_str_never_show_the_token() -> None:
    settings = Settings(token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert "…o5P6" in repr(settings)


def test_defaults() -> None:
    settings = Settings(token=TOKEN)
    assert settings.broker_url == "wss://mqtt.tesaiot.com:8085/mqtt"
    assert settings.topic == "device/+/telemetry/#"
    assert settings.qos == 1
    assert settings.clean_session is True
    assert settings.insecure is False
    assert settings.keepalive == 60
    assert settings.connect_timeout == 10.0
    assert settings.client_id.startswith("tesaiot-data-")
    assert Settings(token=TOKEN).client_id != settings.client_id


def test_settings_are_frozen_and_keyword_only() -> None:
    settings = Settings(token=TOKEN)
    with pytest.raises(AttributeError):
        settings.qos = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(TOKEN)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"qos": 3}, "qos"),
        ({"topic": " "}, "topic"),
        ({"ca_certs": "/no/such/ca.pem"}, "CA_CERT_PATH"),
        ({"broker_url": "ftp://x"}, "scheme"),
        ({"keepalive": 1}, "keepalive"),
    ],
)
def test_bad_values_fail_where_they_are_made(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings(token=TOKEN, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "device/+/telemetry/#",
        "device/abc/telemetry/#",
        "device/+/telemetry",
        "#",
        "+",
        "+/+",
        "/",
        "device//telemetry/#",
        "device/dev 1/telemetry/#",
        "device/ä/telemetry/#",
        "x" * 65_535,
        "ä" * 32_767,  # 65,534 bytes in UTF-8
        "$share/collectors/device/+/telemetry/#",
        "$share/g/#",
        "$SYS/#",
    ],
)
def test_valid_subscription_filters_are_accepted(topic: str) -> None:
    assert Settings(token=TOKEN, topic=topic).topic == topic


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("device/#/telemetry", "'#' must be a whole level and the last one"),
        ("a/b#", "'#' must be a whole level"),
        ("#/", "'#'"),
        ("device/##", "'#'"),
        ("device/a+/telemetry", "'+' must be a whole level"),
        ("device/+a/telemetry/#", "'+'"),
        ("device/++/telemetry/#", "'+'"),
        ("device/\x00/telemetry/#", "NUL"),
        ("x" * 65_536, "65536 bytes"),
        ("ä" * 32_768, "65536 bytes"),
        ("device/\udcff/telemetry/#", "lone surrogate"),
        ("$share/g", "$share/<group>/<filter>"),
        ("$share/g/", "$share/<group>/<filter>"),
        ("$share//device/#", "group"),
        ("$share/a+b/device/#", "group"),
        ("$share/#/device/#", "group"),
        ("$share/g/device/a#", "'#'"),
    ],
)
def test_invalid_subscription_filters_fail_naming_the_variable_and_a_good_value(
    topic: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(token=TOKEN, topic=topic)
    message = str(info.value)
    assert fragment in message
    assert "MQTT_SUBSCRIBE_TOPIC" in message
    assert "device/+/telemetry/#" in message  # a good value
    assert len(message) < 500  # a huge topic is shortened, not repeated
    message.encode("utf-8")  # printable, even for a topic with a lone surrogate


def test_an_invalid_filter_in_the_environment_fails_in_from_env() -> None:
    environ = {"MQTT_API_TOKEN": TOKEN, "MQTT_SUBSCRIBE_TOPIC": "device/a+/telemetry"}
    with pytest.raises(ConfigError, match="MQTT_SUBSCRIBE_TOPIC='device/a\\+/telemetry'"):
        Settings.from_env(None, environ=environ)


def test_from_env_reads_the_platform_variables(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    environ = {
        "MQTT_API_TOKEN": TOKEN,
        "MQTT_BROKER_URL": "wss://broker.example:9443/mqtt",
        "MQTT_SUBSCRIBE_TOPIC": "device/abc/telemetry/#",
        "MQTT_CLIENT_ID": "notebook-1",
        "CA_CERT_PATH": str(ca),
        "MQTT_INSECURE": "true",
        "MQTT_QOS": "0",
    }
    settings = Settings.from_env(None, environ=environ)
    assert settings.token == TOKEN
    assert settings.url == BrokerURL("wss", "broker.example", 9443, "/mqtt")
    assert settings.topic == "device/abc/telemetry/#"
    assert settings.client_id == "notebook-1"
    assert Path(settings.ca_certs or "") == ca
    assert settings.insecure is True
    assert settings.qos == 0


def test_mqtt_topic_is_an_alias_and_subscribe_topic_wins() -> None:
    base = {"MQTT_API_TOKEN": TOKEN}
    alias = Settings.from_env(None, environ={**base, "MQTT_TOPIC": "device/x/telemetry/#"})
    assert alias.topic == "device/x/telemetry/#"
    both = Settings.from_env(
        None,
        environ={
            **base,
            "MQTT_TOPIC": "device/x/telemetry/#",
            "MQTT_SUBSCRIBE_TOPIC": "device/y/telemetry/#",
        },
    )
    assert both.topic == "device/y/telemetry/#"


def test_environment_wins_over_the_file_and_overrides_win_over_both(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f'MQTT_API_TOKEN="{TOKEN}"\nMQTT_BROKER_URL=wss://from-file:1/mqtt\nMQTT_QOS=2\n'
    )
    from_file = Settings.from_env(env_file, environ={})
    assert from_file.token == TOKEN
    assert from_file.url.host == "from-file"
    assert from_file.qos == 2
    env_wins = Settings.from_env(env_file, environ={"MQTT_BROKER_URL": "wss://from-env:2/mqtt"})
    assert env_wins.url.host == "from-env"
    assert env_wins.qos == 2
    override = Settings.from_env(env_file, environ={}, broker_url="mqtt://override")
    assert override.url.host == "override"


def test_from_env_reads_nothing_when_the_file_is_absent(tmp_path: Path) -> None:
    with pytest.raises(TokenError):
        Settings.from_env(tmp_path / "missing.env", environ={})


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"MQTT_BROKER_URL": "http://x"}, "MQTT_BROKER_URL"),
        ({"MQTT_QOS": "high"}, "MQTT_QOS"),
        ({"MQTT_INSECURE": "maybe"}, "MQTT_INSECURE"),
    ],
)
def test_from_env_names_the_bad_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(None, environ={"MQTT_API_TOKEN": TOKEN, **environ})


def test_importing_the_package_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_API_TOKEN", raising=False)
    importlib.reload(tesaiot_data)  # would raise TokenError if it read settings at import


def test_env_example_documents_every_variable() -> None:
    text = (Path(__file__).parents[1] / ".env.example").read_text()
    for name in (
        "MQTT_API_TOKEN",
        "MQTT_BROKER_URL",
        "MQTT_SUBSCRIBE_TOPIC",
        "MQTT_TOPIC",
        "MQTT_CLIENT_ID",
        "CA_CERT_PATH",
        "MQTT_INSECURE",
        "MQTT_QOS",
        "MQTT_SESSION_EXPIRY",
        "MQTT_PROTOCOL",
    ):
        assert name in text


def test_an_empty_environment_variable_does_not_hide_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"MQTT_API_TOKEN={TOKEN}\nMQTT_BROKER_URL=wss://from-file/mqtt\n")
    settings = Settings.from_env(env_file, environ={"MQTT_API_TOKEN": "", "MQTT_BROKER_URL": " "})
    assert settings.token == TOKEN
    assert settings.url.host == "from-file"


def test_resolve_reads_the_environment_only_when_given_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given = Settings(token=TOKEN)
    assert Settings.resolve(given) is given
    changed = Settings.resolve(given, topic="device/abc/telemetry/#")
    assert changed.topic == "device/abc/telemetry/#"
    assert changed.token == TOKEN
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("MQTT_API_TOKEN", TOKEN)
    from_env = Settings.resolve(None, broker_url="mqtt://127.0.0.1:1883")
    assert from_env.token == TOKEN
    assert from_env.broker_url == "mqtt://127.0.0.1:1883"
    monkeypatch.delenv("MQTT_API_TOKEN")
    with pytest.raises(TokenError):
        Settings.resolve(None)


# --- persistent sessions and the MQTT version ------------------------------------------------

NEVER = 0xFFFF_FFFF  # MQTT 5's largest Session Expiry Interval: the session never expires


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("1h", 3600),
        ("7d", 7 * 86_400),
        (" 30 min ", 1800),
        ("1h30min", 5400),
        ("2 weeks", 14 * 86_400),
        ("90", 90),
        (90, 90),
        (1.2, 2),  # whole seconds on the wire: rounded up, never down to 0
        (timedelta(minutes=5), 300),
        (pd.Timedelta("2h"), 7200),
        ("never", NEVER),
        (10**12, NEVER),
        (None, None),
        (0, None),
        ("0s", None),
    ],
)
def test_session_expiry_takes_a_duration_in_whole_seconds(
    given: object, seconds: int | None
) -> None:
    settings = Settings(token=TOKEN, client_id="recorder-1", session_expiry=given)  # type: ignore[arg-type]
    assert settings.session_expiry == seconds
    assert settings.persistent_session is (seconds is not None)
    assert settings.session_expiry_interval == (seconds or 0)
    assert settings.clean_session is True  # the field as given; the session follows the expiry


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("soon", "is not a duration"),
        ("1h30", "is not a duration"),
        ("", "is not a duration"),
        ("1 fortnight", "is not a duration"),
        (True, "is not a duration"),
        ([3600], "is not a duration"),
        (float("nan"), "is not a duration"),
        (-1, "is negative"),
        ("-5min", "is negative"),
        (timedelta(seconds=-1), "is negative"),
    ],
)
def test_a_session_expiry_that_is_not_a_duration_is_a_config_error_with_a_hint(
    given: object, says: str
) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        Settings(token=TOKEN, client_id="recorder-1", session_expiry=given)  # type: ignore[arg-type]
    assert "MQTT_SESSION_EXPIRY" in str(info.value)
    assert "1h" in (info.value.hint or "")
    assert "--session-expiry" in (info.value.hint or "")


@pytest.mark.parametrize(
    "persistent",
    [{"session_expiry": "1h"}, {"clean_session": False}],
    ids=["session_expiry", "clean_session=False"],
)
@pytest.mark.parametrize(
    "client_id",
    [None, "tesaiot-data-0badcafe"],  # not set, or set to the generated form
    ids=["not-set", "generated-form"],
)
def test_a_persistent_session_without_a_fixed_client_id_is_a_config_error(
    persistent: dict[str, object], client_id: str | None
) -> None:
    given = {} if client_id is None else {"client_id": client_id}
    with pytest.raises(ConfigError, match="fixed client id") as info:
        Settings(token=TOKEN, **given, **persistent)  # type: ignore[arg-type]
    assert "MQTT_CLIENT_ID" in (info.value.hint or "")
    assert "--client-id" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="fixed client id"):
        Settings.from_env(None, environ={"MQTT_API_TOKEN": TOKEN, "MQTT_SESSION_EXPIRY": "7d"})


def test_clean_session_false_keeps_a_session_that_never_expires_and_expiry_wins() -> None:
    # 0.1's way: a persistent session with no expiry of its own (MQTT 5 sends "never").
    old_way = Settings(token=TOKEN, client_id="recorder-1", clean_session=False)
    assert old_way.persistent_session
    assert old_way.session_expiry is None
    assert old_way.session_expiry_interval == NEVER
    both = old_way.replace(session_expiry="1h")
    assert (both.persistent_session, both.session_expiry_interval) == (True, 3600)
    # An expiry alone makes the session persistent; taking it away makes it clean again.
    expiring = Settings(token=TOKEN, client_id="recorder-1", session_expiry="1h")
    clean = expiring.replace(session_expiry=0)
    assert (clean.persistent_session, clean.session_expiry_interval) == (False, 0)
    assert not Settings(token=TOKEN).persistent_session


@pytest.mark.parametrize(
    ("given", "protocol"),
    [("3.1.1", "3.1.1"), ("311", "3.1.1"), ("5", "5"), ("5.0", "5"), ("MQTTv5", "5"), (5, "5")],
)
def test_the_protocol_is_3_1_1_or_5(given: object, protocol: str) -> None:
    assert Settings(token=TOKEN).protocol == "3.1.1"
    assert Settings(token=TOKEN, protocol=given).protocol == protocol  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["6", "3.1", "mqtt", "", "v", True, None])
def test_an_unknown_protocol_is_a_config_error_with_a_hint(given: object) -> None:
    with pytest.raises(ConfigError, match="MQTT_PROTOCOL") as info:
        Settings(token=TOKEN, protocol=given)  # type: ignore[arg-type]
    assert "MQTT_PROTOCOL" in (info.value.hint or "")
    assert "3.1.1" in (info.value.hint or "")
    assert "5" in (info.value.hint or "")


def test_the_session_and_protocol_come_from_the_environment(tmp_path: Path) -> None:
    env = {"MQTT_API_TOKEN": TOKEN, "MQTT_CLIENT_ID": "line-7-recorder"}
    settings = Settings.from_env(
        None, environ={**env, "MQTT_SESSION_EXPIRY": "7d", "MQTT_PROTOCOL": "5"}
    )
    assert (settings.session_expiry, settings.protocol) == (7 * 86_400, "5")
    assert settings.persistent_session
    assert "session_expiry=604800" in repr(settings)
    assert "protocol='5'" in repr(settings)
    # An empty variable is not set; an override wins; 0 turns the session clean again.
    default = Settings.from_env(None, environ={**env, "MQTT_SESSION_EXPIRY": " "})
    assert (default.session_expiry, default.protocol) == (None, "3.1.1")
    env_file = tmp_path / ".env"
    env_file.write_text("MQTT_SESSION_EXPIRY=1h\nMQTT_PROTOCOL=5\n")
    overridden = Settings.from_env(env_file, environ=env, session_expiry=0, protocol="3.1.1")
    assert (overridden.persistent_session, overridden.protocol) == (False, "3.1.1")
    for variable, value in (("MQTT_SESSION_EXPIRY", "soon"), ("MQTT_PROTOCOL", "4.0")):
        with pytest.raises(ConfigError, match=f"{variable}={value!r}"):
            Settings.from_env(None, environ={**env, variable: value})


@pytest.mark.parametrize(
    "url",
    [
        f"wss://user:{TOKEN}@mqtt.example.com:8085/mqtt",
        f"mqtt://{TOKEN}@127.0.0.1:1883",
        f"wss://:{TOKEN}@[::1]:8085/mqtt",
        f"mqtts://user:{TOKEN}@host:99999",  # a bad port too: still no secret in the message
    ],
)
def test_credentials_in_the_broker_url_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(token=TOKEN, broker_url=url)
    shown = str(caught.value) + (caught.value.hint or "")
    assert TOKEN not in shown
    assert TOKEN[-8:] not in shown
    assert "***@" in shown
    if ":99999" not in url:
        assert "MQTT_API_TOKEN" in (caught.value.hint or "")


def test_an_at_sign_after_the_host_is_no_credential() -> None:
    settings = Settings(token=TOKEN, broker_url="wss://mqtt.example.com:8085/mqtt@x")
    assert settings.url.host == "mqtt.example.com"


@pytest.mark.parametrize(
    "content", [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n"]
)
def test_a_ca_file_that_is_not_pem_is_a_tls_error_naming_it(tmp_path: Path, content: bytes) -> None:
    from tesaiot_data.errors import TLSError  # noqa: PLC0415
    from tesaiot_data.mqtt.connection import ssl_context  # noqa: PLC0415

    ca = tmp_path / "garbage.pem"
    ca.write_bytes(content)
    url = BrokerURL.parse("wss://127.0.0.1:8085/mqtt")
    with pytest.raises(TLSError, match=r"garbage\.pem") as caught:
        ssl_context(url, ca_certs=ca)
    assert "CA_CERT_PATH" in (caught.value.hint or "")
