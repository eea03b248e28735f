"""Unit tests for ``broker.limits`` and the listeners nobody can log in to."""

from __future__ import annotations

from typing import Any

import pytest

from headwater.core.config import BrokerLimits, ConfigError, parse_config


def broker(**section: Any) -> dict[str, Any]:
    section.setdefault("listeners", {"default": {"bind": "127.0.0.1:1883"}})
    return {"broker": section}


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test.yaml")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_limits_have_safe_defaults() -> None:
    limits = parse_config(broker(), source="t").broker.limits
    assert limits == BrokerLimits()
    assert limits.connect_timeout == 10
    assert limits.max_packet_size == 8 * 1024 * 1024
    assert limits.max_connections == 10_000
    assert limits.max_queued_messages == 1000
    assert limits.max_pending_deliveries == 10_000
    assert limits.max_inflight_messages == 20


def test_limits_are_parsed_with_units() -> None:
    limits = parse_config(
        broker(
            limits={
                "connect_timeout": "2s",
                "max_packet_size": "1MiB",
                "max_connections": 50,
                "max_queued_messages": 0,
                "max_inflight_messages": 1,
            }
        ),
        source="t",
    ).broker.limits
    assert limits == BrokerLimits(
        connect_timeout=2,
        max_packet_size=1024 * 1024,
        max_connections=50,
        max_queued_messages=0,
        max_inflight_messages=1,
    )


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"connect_timeout": "0s"}, "broker.limits.connect_timeout: must be greater than zero"),
        ({"max_packet_size": "100B"}, "broker.limits.max_packet_size: must be at least 1KiB"),
        ({"max_packet_size": "1GiB"}, "broker.limits.max_packet_size: must be at most"),
        ({"max_connections": 0}, "broker.limits.max_connections: must be between 1 and 1000000, got 0"),
        (
            {"max_inflight_messages": 70000},
            "broker.limits.max_inflight_messages: must be between 1 and 65535, got 70000",
        ),
        ({"max_queued": 5}, "broker.limits.max_queued: unknown key"),
    ],
)
def test_limits_errors_name_the_key(limits: dict[str, object], message: str) -> None:
    assert error_of(broker(limits=limits)).startswith(message)


def test_a_listener_nobody_can_log_in_to_is_refused() -> None:
    message = error_of(broker(listeners={"net": {"bind": "0.0.0.0:1883"}}))
    assert message.startswith("broker.listeners.net: nobody can log in to listener 'net'")
    # It names both ways out.
    assert "broker.password_file" in message
    assert "allow_anonymous: true" in message


def test_a_listener_whose_own_rule_shuts_everyone_out_is_refused() -> None:
    listeners = {"a": {"bind": "127.0.0.1:1883"}, "b": {"bind": "127.0.0.1:1884", "allow_anonymous": False}}
    assert error_of(broker(listeners=listeners)).startswith("broker.listeners.b: nobody can log in")


def test_a_password_file_or_anonymous_access_is_a_way_in() -> None:
    network = {"net": {"bind": "0.0.0.0:1883"}}
    assert parse_config(broker(listeners=network, password_file="pw"), source="t")
    assert parse_config(broker(listeners=network, allow_anonymous=True), source="t")


def test_a_compose_file_must_fit_in_a_packet() -> None:
    data = {**broker(limits={"max_packet_size": "64KiB"}), "deploy": {"max_compose_size": "128KiB"}}
    assert error_of(data).startswith("deploy.max_compose_size: 128KiB does not fit in one MQTT packet")
    data["deploy"]["enabled"] = False
    assert parse_config(data, source="t")
