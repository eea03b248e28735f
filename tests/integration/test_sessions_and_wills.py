"""Wills and sessions at the trust boundary: what a CONNECT may do, and what it may not undo.

Each test is an attack that worked against amqtt's own CONNECT handling, tried with real
clients (mosquitto_pub/sub, paho, raw sockets) against a real Headwater.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from headwater.broker.passwords import set_password
from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub
from tests.fixtures.raw_mqtt import RawClient

NOT_AUTHORISED = 5
QUIET = 1.5  # seconds we listen to make sure nothing arrives


def _users(tmp_path: Path, *users: str) -> Path:
    path = tmp_path / "passwd"
    for user in users:
        set_password(path, user, f"{user}-secret")
    return path


def _creds(user: str) -> dict[str, str]:
    return {"username": user, "password": f"{user}-secret"}


def _secured_config(tmp_path: Path, data_dir: Path | None = None) -> str:
    passwords = _users(tmp_path, "dev", "bob", "ops")
    return f"""
        data_dir: {data_dir or tmp_path / "data"}
        broker:
          allow_anonymous: false
          password_file: {passwords}
          acl:
            dev: {{publish: ["sensors/dev/#"], subscribe: ["sensors/#"]}}
            bob: {{publish: ["sensors/bob/#"], subscribe: ["sensors/#"]}}
            ops: {{publish: ["#"], subscribe: ["#"]}}
        """


@pytest.fixture
def secured(headwater_factory: BrokerFactory, tmp_path: Path) -> InProcessBroker:
    return headwater_factory(_secured_config(tmp_path))


def _unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


# --- wills ------------------------------------------------------------------------------------


def test_a_will_on_a_topic_the_user_may_not_publish_refuses_the_connect(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = headwater_factory(_secured_config(tmp_path))
    compose = b"services: {pwn: {image: busybox, privileged: true}}"
    with RawClient(broker.port) as attacker:
        code = attacker.connect(
            "dev-1", username="dev", password="dev-secret", will=("headwater/deploy/pwn", compose, 1, True)
        )
        assert code == NOT_AUTHORISED
        assert attacker.closed_within(5)
    # The same with mosquitto_pub: "not authorised", as mosquitto says it.
    refused = mosquitto_pub(
        broker.port,
        "sensors/dev/t",
        "x",
        **_creds("dev"),
        extra_args=["--will-topic", "headwater/deploy/pwn", "--will-payload", "x", "--will-retain"],
        check=False,
    )
    assert refused.returncode != 0
    assert b"not authorised" in refused.stderr.lower()
    assert "headwater/deploy/pwn" not in broker.app.broker.retained_messages
    assert broker.app.gate.statistics().refused_by_acl >= 1


def test_a_will_cannot_forge_a_reserved_status_topic(secured: InProcessBroker) -> None:
    with RawClient(secured.port) as attacker:
        # ops may publish to '#', but Headwater's own status topics are reserved for it.
        code = attacker.connect(
            "ops-1",
            username="ops",
            password="ops-secret",
            will=("headwater/deploy/app/status", b"{}", 0, True),
        )
    assert code == NOT_AUTHORISED


def test_an_allowed_will_fires_when_the_connection_drops(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    broker = headwater_factory(_secured_config(tmp_path, data_dir))
    topic = "sensors/dev/last-will"
    with MosquittoSub(broker.port, topic, qos=1, **_creds("ops")) as watcher:
        device = RawClient(broker.port)
        assert (
            device.connect("dev-2", username="dev", password="dev-secret", will=(topic, b"gone", 1, True))
            == 0
        )
        device.close()  # no DISCONNECT: the will fires
        assert watcher.wait_for(1)[0].text == "gone"
    # A retained will is stored like a retained publish: it survives a restart.
    broker.stop()
    restarted = headwater_factory(_secured_config(tmp_path, data_dir))
    with MosquittoSub(restarted.port, topic, qos=1, **_creds("ops")) as late:
        assert late.wait_for(1)[0].text == "gone"


def test_a_will_after_disconnect_is_not_published(secured: InProcessBroker) -> None:
    topic = "sensors/dev/clean-exit"
    with MosquittoSub(secured.port, topic, **_creds("ops")) as watcher:
        with RawClient(secured.port) as device:
            assert (
                device.connect("dev-3", username="dev", password="dev-secret", will=(topic, b"x", 0, False))
                == 0
            )
            device.send(bytes([0xE0, 0]))  # DISCONNECT
            assert device.closed_within(5)
        time.sleep(QUIET)
        assert watcher.messages == []


# --- sessions ---------------------------------------------------------------------------------


def test_a_refused_connect_does_not_end_the_victims_session(secured: InProcessBroker) -> None:
    topic = _unique("sensors/dev")
    with MosquittoSub(secured.port, topic, client_id="victim", **_creds("ops")) as victim:
        wrong = mosquitto_pub(
            secured.port, "sensors/x", "x", client_id="victim", username="dev", password="WRONG", check=False
        )
        assert wrong.returncode != 0
        assert b"not authorised" in wrong.stderr.lower()
        mosquitto_pub(secured.port, topic, "still here", qos=1, **_creds("dev"))
        assert victim.wait_for(1)[0].text == "still here"


def test_another_user_cannot_take_over_a_client_id(secured: InProcessBroker) -> None:
    topic = _unique("sensors/dev")
    with MosquittoSub(secured.port, topic, client_id="dev-sensor", **_creds("dev")) as owner:
        takeover = mosquitto_pub(
            secured.port, "sensors/bob/x", "x", client_id="dev-sensor", **_creds("bob"), check=False
        )
        assert takeover.returncode != 0
        assert b"not authorised" in takeover.stderr.lower()
        mosquitto_pub(secured.port, topic, "mine", qos=1, **_creds("ops"))
        assert owner.wait_for(1)[0].text == "mine"


def test_the_same_user_may_take_over_its_own_client_id(secured: InProcessBroker) -> None:
    with RawClient(secured.port) as first:
        assert first.connect("dev-4", username="dev", password="dev-secret") == 0
        with RawClient(secured.port) as second:
            assert second.connect("dev-4", username="dev", password="dev-secret") == 0
            assert first.closed_within(5)  # MQTT-3.1.4-2: the older connection is closed


def test_another_user_cannot_resume_a_persistent_session(secured: InProcessBroker) -> None:
    topic = _unique("sensors/dev")
    received: list[bytes] = []

    def client(user: str) -> mqtt.Client:
        paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="keeper", clean_session=False)
        paho.username_pw_set(user, f"{user}-secret")
        paho.on_message = lambda _c, _u, message: received.append(message.payload)
        return paho

    owner = client("dev")
    owner.connect("127.0.0.1", secured.port)
    owner.loop_start()
    result, _ = owner.subscribe(topic, qos=1)
    assert result == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.5)
    owner.disconnect()
    owner.loop_stop()
    mosquitto_pub(secured.port, topic, "queued for dev", qos=1, **_creds("ops"))
    # bob tries to resume dev's session and collect its queued message.
    with RawClient(secured.port) as thief:
        assert thief.connect("keeper", clean=False, username="bob", password="bob-secret") == NOT_AUTHORISED
    # The session and its queue are intact for their owner.
    owner = client("dev")
    owner.connect("127.0.0.1", secured.port)
    owner.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [b"queued for dev"]
    finally:
        owner.disconnect()
        owner.loop_stop()


def test_queued_messages_are_bounded_and_sent_without_retain(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    passwords = _users(tmp_path, "dev", "ops")
    broker = headwater_factory(
        f"""
        broker:
          allow_anonymous: false
          password_file: {passwords}
          limits: {{max_queued_messages: 3}}
        """
    )
    topic = _unique("sensors/dev")
    messages: list[mqtt.MQTTMessage] = []

    def sleepy() -> mqtt.Client:
        paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sleepy", clean_session=False)
        paho.username_pw_set("dev", "dev-secret")
        paho.on_message = lambda _c, _u, message: messages.append(message)
        paho.connect("127.0.0.1", broker.port)
        paho.loop_start()
        return paho

    paho = sleepy()
    paho.subscribe(topic, qos=1)
    time.sleep(0.5)
    paho.disconnect()
    paho.loop_stop()
    mosquitto_pub(broker.port, topic, lines=[f"m{index}" for index in range(10)], qos=1, **_creds("ops"))
    paho = sleepy()
    try:
        deadline = time.monotonic() + 10
        while len(messages) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(QUIET)
        assert [message.payload for message in messages] == [b"m0", b"m1", b"m2"]
        # MQTT-3.3.1-9: a message matching an established subscription has RETAIN = 0.
        assert not any(message.retain for message in messages)
    finally:
        paho.disconnect()
        paho.loop_stop()
    assert broker.app.limits.statistics().queued_dropped == 7


def test_a_failed_login_leaves_a_clean_session_untouched_even_with_clean_flag(
    secured: InProcessBroker,
) -> None:
    """The exact attack: mosquitto_pub -i victim -u dev -P WRONG, with amqtt's clean session."""
    topic = _unique("sensors/dev")
    with MosquittoSub(secured.port, topic, client_id="victim2", qos=1, **_creds("dev")) as victim:
        for _ in range(3):
            subprocess.run(
                [
                    *("mosquitto_pub", "-p", str(secured.port), "-i", "victim2"),
                    *("-u", "dev", "-P", "WRONG", "-t", "a", "-m", "x"),
                ],
                capture_output=True,
                check=False,
                timeout=10,
            )
        mosquitto_pub(secured.port, topic, "after the attack", qos=1, **_creds("ops"))
        assert victim.wait_for(1)[0].text == "after the attack"


def test_client_ids_in_the_acl_bind_a_user_to_its_devices(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    passwords = _users(tmp_path, "pump", "ops")
    broker = headwater_factory(
        f"""
        broker:
          allow_anonymous: false
          password_file: {passwords}
          acl:
            pump: {{publish: ["sensors/%u/#"], subscribe: [], client_ids: ["%u-*"]}}
            ops: {{publish: ["#"], subscribe: ["#"]}}
        """
    )
    with RawClient(broker.port) as own:
        assert own.connect("pump-7", username="pump", password="pump-secret") == 0
    with RawClient(broker.port) as other:
        # pump's password does not open another device's client id.
        assert other.connect("valve-1", username="pump", password="pump-secret") == NOT_AUTHORISED
    refused = mosquitto_pub(
        broker.port, "sensors/pump/t", "x", client_id="ops-console", **_creds("pump"), check=False
    )
    assert b"not authorised" in refused.stderr.lower()
    # A user without client_ids keeps any client id.
    assert mosquitto_pub(broker.port, "a/b", "x", client_id="anything", **_creds("ops")).returncode == 0


def test_a_clean_session_ends_with_its_connection(secured: InProcessBroker) -> None:
    """Its client id is free again for anyone, and nothing of it stays in the broker."""
    with RawClient(secured.port) as first:
        assert first.connect("shared-id", username="dev", password="dev-secret") == 0
        first.send(bytes([0xE0, 0]))  # DISCONNECT
        assert first.closed_within(5)
    deadline = time.monotonic() + 5
    while "shared-id" in secured.app.broker.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "shared-id" not in secured.app.broker.sessions
    with RawClient(secured.port) as second:
        assert second.connect("shared-id", username="bob", password="bob-secret") == 0


def test_mosquitto_sub_with_a_persistent_session_gets_what_was_published_while_away(
    headwater: InProcessBroker,
) -> None:
    """mosquitto_sub -c: an anonymous persistent session keeps its QoS 1 messages (as mosquitto)."""
    topic = _unique("dev")
    args = ["mosquitto_sub", "-p", str(headwater.port), "-i", "sleeper", "-c", "-q", "1", "-t", topic, "-v"]
    first = subprocess.run([*args, "-W", "1"], capture_output=True, text=True, timeout=10, check=False)
    assert first.stdout == ""
    mosquitto_pub(headwater.port, topic, "hello", qos=1)
    again = subprocess.run(
        [*args, "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10, check=False
    )
    assert again.stdout.strip() == f"{topic} hello"
