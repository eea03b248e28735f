"""Attacks on the broker's trust boundary that got through, or broke well-behaved clients.

Each test is one finding of a review of the rebuilt CONNECT handling, limits and packet reader,
tried with real sockets against a real Headwater. A test marked ``xfail(strict=True)`` is a
finding that is not fixed yet: it must keep failing until it is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from headwater.broker.passwords import set_password
from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub
from tests.fixtures.raw_mqtt import RawClient, connect, publish, remaining_length, subscribe

QUIET = 1.5  # seconds we listen to make sure nothing arrives


def _password_config(tmp_path: Path, *users: str, extra: str = "") -> str:
    path = tmp_path / "passwd"
    for user in users:
        set_password(path, user, f"{user}-secret")
    return f"broker: {{allow_anonymous: false, password_file: {path}{extra}}}"


def _creds(user: str) -> dict[str, str]:
    return {"username": user, "password": f"{user}-secret"}


def _unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


async def _session_states(broker: InProcessBroker) -> dict[str, str]:
    sessions = broker.app.broker._sessions  # noqa: SLF001 - the test looks at the broker's sessions
    return {client_id: session.transitions.state for client_id, (session, _) in sessions.items()}


def _wait_until_gone(broker: InProcessBroker, client_id: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client_id not in broker.call(_session_states(broker)):
            return True
        time.sleep(0.1)
    return False


# --- websockets ---------------------------------------------------------------------------------


def test_a_truncated_packet_over_websockets_does_not_freeze_the_broker(
    headwater_factory: BrokerFactory,
) -> None:
    """No account needed: announce a big CONNECT, send one byte of it, close the WebSocket.

    amqtt's WebSocketsReader, once the connection is closed, appended the last message it had
    received again and again, without ever yielding to the event loop, until the announced
    length was reached: with the default 8 MiB max_packet_size, one such connection froze the
    whole broker (every client, every listener, keepalives, storage) for about 25 s on the
    reviewer's machine. Repeating it kept the broker frozen.
    """
    broker = headwater_factory(
        """
        broker:
          listeners: {web: {bind: "127.0.0.1:0", type: ws}}
          limits: {max_packet_size: 32MiB}
        """
    )
    port = broker.app.bound[0].port
    with ws_connect(f"ws://127.0.0.1:{port}/", subprotocols=["mqtt"]) as attacker:  # type: ignore[list-item]
        attacker.send(bytes([0x10]) + remaining_length(32 * 1024 * 1024 - 10))
        attacker.send(b"\x00")
        time.sleep(0.2)  # both messages are in the broker's reader before the close
    time.sleep(0.1)
    # The event loop answers at once; the generous timeout is only there to fail, not hang.
    broker.call(asyncio.sleep(0), timeout=10)


def test_packets_split_across_websocket_messages_still_work(headwater_factory: BrokerFactory) -> None:
    """The replacement reader keeps what MQTT over WebSockets allows: any split of the bytes."""
    broker = headwater_factory('broker: {listeners: {web: {bind: "127.0.0.1:0", type: ws}}}')
    port = broker.app.bound[0].port
    topic = _unique("ws")
    with ws_connect(f"ws://127.0.0.1:{port}/", subprotocols=["mqtt"]) as client:  # type: ignore[list-item]
        data = connect("ws-split") + subscribe(topic, qos=0) + publish(topic, b"hello")
        for byte in data[:20]:
            client.send(bytes([byte]))  # one byte per message
        client.send(data[20:])  # the rest, several packets in one message
        received = b""
        deadline = time.monotonic() + 10
        while b"hello" not in received and time.monotonic() < deadline:
            message = client.recv(timeout=10)
            received += message if isinstance(message, bytes) else message.encode()
        assert b"hello" in received


# --- sessions left "connected" ----------------------------------------------------------------


def test_a_publish_to_a_dollar_topic_leaves_no_zombie_session(headwater_factory: BrokerFactory) -> None:
    """Any client (anonymous too): connect, publish to '$x', repeat with a new client id.

    amqtt ends the client loop on a publish to a '$' topic; Headwater's loop then returned
    without stopping the session: it stayed "connected" in the broker's session table forever
    (the session monitor only removes disconnected ones), one per attempt: an unbounded leak.
    """
    broker = headwater_factory("broker: {allow_anonymous: true}")
    for index in range(3):
        with RawClient(broker.port) as attacker:
            assert attacker.connect(f"zombie-{index}") == 0
            attacker.send(publish("$x/y", b"x"))
            assert attacker.closed_within(5)
    for index in range(3):
        assert _wait_until_gone(broker, f"zombie-{index}"), broker.call(_session_states(broker))


def test_a_persistent_session_closed_for_a_dollar_publish_still_queues_and_fires_its_will(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    """The same bug seen by a well-behaved persistent client that made one mistake.

    Its session stayed "connected" with a dead handler: QoS 1 messages sent to it meanwhile
    were neither delivered nor queued (lost), and its will never fired although the broker
    closed the connection (MQTT-3.1.2-8).
    """
    broker = headwater_factory(_password_config(tmp_path, "dev"))
    topic = _unique("persist")
    will_topic = _unique("wills")
    with MosquittoSub(broker.port, will_topic, qos=1, **_creds("dev")) as watcher:
        with RawClient(broker.port) as device:
            will = (will_topic, b"gone", 1, False)
            assert device.connect("keeper-1", clean=False, will=will, **_creds("dev")) == 0
            device.send(subscribe(topic, qos=1))
            suback = device.read_packet()
            assert suback is not None
            assert suback.type == 9
            device.send(publish("$SYS/oops", b"x"))
            assert device.closed_within(5)
        assert watcher.wait_for(1)[0].text == "gone"
    mosquitto_pub(broker.port, topic, "while away", qos=1, **_creds("dev"))
    with RawClient(broker.port) as device:
        assert device.connect("keeper-1", clean=False, **_creds("dev")) == 0
        device.sock.settimeout(10)
        delivered = device.read_packet()
        assert delivered is not None
        assert delivered.type == 3
        assert delivered.body.endswith(b"while away")


# --- takeover ---------------------------------------------------------------------------------


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
def test_two_takeovers_at_once_leave_one_connection(headwater_factory: BrokerFactory, clean: bool) -> None:
    """Two CONNECTs of one client id while a third connection has it (a reconnect storm).

    Both waited for the old connection to end, then both took the session: two live
    connections on one client id (MQTT-3.1.4-2), or on one persistent session, whose
    deliveries went through whichever handler was registered last, and which the first of
    them to leave marked offline under the other.
    """
    broker = headwater_factory("broker: {allow_anonymous: true}")
    with RawClient(broker.port) as first, RawClient(broker.port) as second, RawClient(broker.port) as third:
        assert first.connect("twice", clean=clean) == 0
        second.send(connect("twice", clean=clean))
        third.send(connect("twice", clean=clean))
        for client in (second, third):
            connack = client.read_packet()
            assert connack is not None
            assert connack.type == 2
            assert connack.body[1] == 0
        assert first.closed_within(5)
        closed = [second.closed_within(3), third.closed_within(3)]
        assert sorted(closed) == [False, True], closed


# --- not fixed ----------------------------------------------------------------------------------


def test_an_anonymous_persistent_session_keeps_its_messages(headwater_factory: BrokerFactory) -> None:
    broker = headwater_factory("broker: {allow_anonymous: true}")
    topic = _unique("anon")
    with RawClient(broker.port) as device:
        assert device.connect("anon-keeper", clean=False) == 0
        device.send(subscribe(topic, qos=1))
        suback = device.read_packet()
        assert suback is not None
        assert suback.type == 9
    time.sleep(QUIET)
    mosquitto_pub(broker.port, topic, "while away", qos=1)
    with RawClient(broker.port) as device:
        device.send(connect("anon-keeper", clean=False))
        connack = device.read_packet()
        assert connack is not None
        assert connack.body == b"\x01\x00"  # session present
        device.sock.settimeout(5)
        delivered = device.read_packet()
        assert delivered is not None
        assert delivered.body.endswith(b"while away")


async def _task_count() -> int:
    return len(asyncio.all_tasks())


def test_deliveries_waiting_for_a_client_that_never_acknowledges_are_bounded(
    headwater_factory: BrokerFactory,
) -> None:
    broker = headwater_factory(
        "broker: {allow_anonymous: true, limits: {max_inflight_messages: 5, max_pending_deliveries: 10}}"
    )
    topic = _unique("backlog")
    with RawClient(broker.port) as slow:
        assert slow.connect("never-acks-2") == 0
        slow.send(subscribe(topic, qos=1))
        suback = slow.read_packet()
        assert suback is not None
        before = broker.call(_task_count())
        mosquitto_pub(broker.port, topic, lines=[f"m{index}" for index in range(300)], qos=1)
        time.sleep(0.5)
        waiting = broker.call(_task_count()) - before
        # What waits for it is bounded: the window, then max_pending_deliveries; the rest is
        # dropped and counted.
        assert waiting <= 5 + 10 + 5, waiting  # + a few tasks finishing at that moment
    assert broker.app.limits.statistics().pending_dropped >= 300 - 5 - 10 - 5
