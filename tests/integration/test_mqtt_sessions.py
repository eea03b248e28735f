"""MQTT 3.1.1 session semantics, checked byte by byte against a real Headwater.

What a persistent session (clean session 0) must keep across connections: deliveries the
client had not acknowledged (sent again with DUP=1, or PUBREL for QoS 2 after PUBREC), the
exactly-once state of the client's own QoS 2 publishes, the session-present bit; and what a
subscription gets: retained messages with RETAIN=1 on every SUBSCRIBE, RETAIN=0 otherwise.
Raw sockets play the client whose misbehaviour (no acknowledgement, a dropped connection) is
the point; mosquitto clients play everybody else.
"""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headwater.broker.passwords import set_password
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub
from tests.fixtures.raw_mqtt import DISCONNECT, RawClient, connect, packet, publish, pubrel, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.broker import BrokerFactory, InProcessBroker
    from tests.fixtures.raw_mqtt import Packet

CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK = 2, 3, 4, 5, 6, 7, 9
QUIET = 1.5  # seconds we listen to make sure nothing (more) arrives


def _unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Delivery:
    """A PUBLISH the broker sent, decoded."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    dup: bool
    retain: bool


def _delivery(received: Packet | None) -> Delivery:
    assert received is not None, "connection closed instead of PUBLISH"
    assert received.type == PUBLISH, received
    (length,) = struct.unpack("!H", received.body[:2])
    topic = received.body[2 : 2 + length].decode()
    qos = (received.flags >> 1) & 3
    rest = received.body[2 + length :]
    packet_id = struct.unpack("!H", rest[:2])[0] if qos else None
    return Delivery(
        topic=topic,
        payload=rest[2:] if qos else rest,
        qos=qos,
        packet_id=packet_id,
        dup=bool(received.flags & 0x08),
        retain=bool(received.flags & 0x01),
    )


def _ack(kind: int, packet_id: int | None) -> bytes:
    assert packet_id is not None
    return packet(kind << 4, struct.pack("!H", packet_id))


def _session_present(client: RawClient, client_id: str, *, clean: bool) -> bool:
    """CONNECT and return CONNACK's session-present bit (the CONNECT must be accepted)."""
    client.send(connect(client_id, clean=clean))
    reply = client.read_packet()
    assert reply is not None
    assert reply.type == CONNACK, reply
    assert reply.body[1] == 0, f"CONNACK return code {reply.body[1]}"
    return bool(reply.body[0] & 0x01)


def _subscribed(client: RawClient, topic_filter: str, *, qos: int, packet_id: int = 1) -> int:
    client.send(subscribe(topic_filter, qos=qos, packet_id=packet_id))
    reply = client.read_packet()
    assert reply is not None
    assert reply.type == SUBACK, reply
    return reply.body[-1]


def _nothing_arrives(client: RawClient) -> None:
    client.sock.settimeout(QUIET)
    try:
        received = client.read_packet()
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing, got {received}")


def _wait_offline(broker: InProcessBroker, client_id: str) -> None:
    """Wait until the broker noticed that the client's connection is gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entry = broker.app.broker.sessions.get(client_id)
        if entry is None or not entry[0].transitions.is_connected():
            return
        time.sleep(0.05)
    raise AssertionError(f"{client_id} still connected")


# --- 1. deliveries in flight survive the connection ------------------------------------------


def test_an_unacknowledged_qos1_delivery_is_sent_again_with_dup_before_new_messages(
    headwater: InProcessBroker,
) -> None:
    topic = _unique("redeliver")
    with RawClient(headwater.port) as first:
        assert not _session_present(first, "redeliver-1", clean=False)
        assert _subscribed(first, topic, qos=1) == 1
        mosquitto_pub(headwater.port, topic, "first", qos=1)
        sent = _delivery(first.read_packet())
        assert (sent.payload, sent.qos, sent.dup) == (b"first", 1, False)
        # No PUBACK: the connection drops.
    _wait_offline(headwater, "redeliver-1")
    mosquitto_pub(headwater.port, topic, "while away", qos=1)
    with RawClient(headwater.port) as second:
        assert _session_present(second, "redeliver-1", clean=False)
        again = _delivery(second.read_packet())
        assert again == Delivery(topic, b"first", 1, sent.packet_id, dup=True, retain=False)
        queued = _delivery(second.read_packet())
        assert (queued.payload, queued.dup) == (b"while away", False)
        second.send(_ack(PUBACK, again.packet_id) + _ack(PUBACK, queued.packet_id) + DISCONNECT)
        assert second.closed_within(5)
    # Acknowledged now: the next connection gets nothing again.
    with RawClient(headwater.port) as third:
        assert _session_present(third, "redeliver-1", clean=False)
        _nothing_arrives(third)


def test_a_delivery_unacknowledged_for_longer_than_amqtts_timeout_is_not_dropped(
    headwater: InProcessBroker,
) -> None:
    """The ack timeout of amqtt (5 s) dropped the message; a persistent session keeps it."""
    topic = _unique("patient")
    with RawClient(headwater.port) as first:
        _session_present(first, "patient-1", clean=False)
        _subscribed(first, topic, qos=1)
        mosquitto_pub(headwater.port, topic, "slow", qos=1)
        sent = _delivery(first.read_packet())
        time.sleep(6.5)
    _wait_offline(headwater, "patient-1")
    with RawClient(headwater.port) as second:
        assert _session_present(second, "patient-1", clean=False)
        again = _delivery(second.read_packet())
        assert (again.packet_id, again.payload, again.dup) == (sent.packet_id, b"slow", True)


def test_an_outgoing_qos2_delivery_resumes_where_it_stopped(headwater: InProcessBroker) -> None:
    """PUBLISH again (DUP) before the PUBREC; after it, PUBREL and never the PUBLISH again."""
    topic = _unique("twice")
    with RawClient(headwater.port) as first:
        _session_present(first, "qos2-out", clean=False)
        assert _subscribed(first, topic, qos=2) == 2
        mosquitto_pub(headwater.port, topic, "exactly", qos=2)
        sent = _delivery(first.read_packet())
        assert (sent.qos, sent.dup) == (2, False)
    _wait_offline(headwater, "qos2-out")
    with RawClient(headwater.port) as second:
        _session_present(second, "qos2-out", clean=False)
        again = _delivery(second.read_packet())
        assert (again.packet_id, again.payload, again.qos, again.dup) == (sent.packet_id, b"exactly", 2, True)
        second.send(_ack(PUBREC, again.packet_id))
        released = second.read_packet()
        assert released is not None
        assert (released.type, released.body) == (PUBREL, struct.pack("!H", sent.packet_id))
        # No PUBCOMP: the connection drops after the PUBREL.
    _wait_offline(headwater, "qos2-out")
    with RawClient(headwater.port) as third:
        _session_present(third, "qos2-out", clean=False)
        resumed = third.read_packet()
        assert resumed is not None
        assert (resumed.type, resumed.body) == (PUBREL, struct.pack("!H", sent.packet_id))
        third.send(_ack(PUBCOMP, sent.packet_id) + DISCONNECT)
        assert third.closed_within(5)
    with RawClient(headwater.port) as fourth:
        _session_present(fourth, "qos2-out", clean=False)
        _nothing_arrives(fourth)


def test_a_client_slow_to_acknowledge_is_not_held_up(headwater: InProcessBroker) -> None:
    """Unacknowledged deliveries wait without holding up the client's own SUBSCRIBEs.

    Its retained messages are sent from the client's message loop: waiting there for their
    acknowledgement (now unbounded) would hold every later SUBSCRIBE and publish of the client.
    """
    topic = _unique("slow-acker")
    mosquitto_pub(headwater.port, topic, "retained", qos=1, retain=True)
    with RawClient(headwater.port) as client:
        _session_present(client, "slow-acker", clean=True)
        _subscribed(client, topic, qos=1)
        assert _delivery(client.read_packet()).payload == b"retained"  # not acknowledged
        assert _subscribed(client, _unique("other"), qos=1, packet_id=2) == 1


# --- 2. the client's QoS 2 publishes across reconnections ------------------------------------


def test_a_qos2_publish_released_on_the_next_connection_is_delivered_exactly_once(
    headwater: InProcessBroker,
) -> None:
    topic = _unique("released-later")
    with MosquittoSub(headwater.port, topic, qos=2) as watcher:
        with RawClient(headwater.port) as first:
            _session_present(first, "qos2-in", clean=False)
            first.send(publish(topic, b"once", qos=2, packet_id=9))
            received = first.read_packet()
            assert received is not None
            assert (received.type, received.body) == (PUBREC, struct.pack("!H", 9))
            # No PUBREL: the connection drops.
        _wait_offline(headwater, "qos2-in")
        with RawClient(headwater.port) as second:
            assert _session_present(second, "qos2-in", clean=False)
            second.send(pubrel(9))
            completed = second.read_packet()
            assert completed is not None
            assert (completed.type, completed.body) == (PUBCOMP, struct.pack("!H", 9))
        assert [message.payload for message in watcher.wait_for(1)] == [b"once"]
        # The PUBCOMP was "lost": the client releases the message once more.
        _wait_offline(headwater, "qos2-in")
        with RawClient(headwater.port) as third:
            _session_present(third, "qos2-in", clean=False)
            third.send(pubrel(9))
            completed = third.read_packet()
            assert completed is not None
            assert (completed.type, completed.body) == (PUBCOMP, struct.pack("!H", 9))
        time.sleep(QUIET)
        assert [message.payload for message in watcher.messages] == [b"once"]


# --- 3. the session-present bit --------------------------------------------------------------


def test_connack_says_session_present_exactly_when_a_session_is_resumed(headwater: InProcessBroker) -> None:
    topic = _unique("present")
    with RawClient(headwater.port) as client:
        assert not _session_present(client, "present-1", clean=False)
        _subscribed(client, topic, qos=1)
        client.send(DISCONNECT)
        assert client.closed_within(5)
    with RawClient(headwater.port) as client:
        assert _session_present(client, "present-1", clean=False)
        client.send(DISCONNECT)
        assert client.closed_within(5)
    with RawClient(headwater.port) as client:
        # MQTT-3.2.2-1: clean session 1 always answers 0, and ends the stored session.
        assert not _session_present(client, "present-1", clean=True)
        client.send(DISCONNECT)
        assert client.closed_within(5)
    _wait_offline(headwater, "present-1")
    mosquitto_pub(headwater.port, topic, "for the old session", qos=1)
    with RawClient(headwater.port) as client:
        assert not _session_present(client, "present-1", clean=False)
        _nothing_arrives(client)  # its subscription went with it


# --- 4. deny rules in the ACL ----------------------------------------------------------------


def test_a_deny_rule_takes_a_topic_out_of_a_wildcard_allow(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwd"
    for user in ("dev", "ops"):
        set_password(passwords, user, f"{user}-secret")
    broker = headwater_factory(
        f"""
        broker:
          allow_anonymous: false
          password_file: {passwords}
          acl:
            dev:
              publish: ["+/+"]
              subscribe: ["+/+"]
              deny: {{publish: ["test/nopublish"], subscribe: ["test/nosubscribe"]}}
            ops: {{publish: ["#"], subscribe: ["#"]}}
        """
    )
    dev = {"username": "dev", "password": "dev-secret"}
    ops = {"username": "ops", "password": "ops-secret"}
    mosquitto_pub(broker.port, "test/nosubscribe", "retained secret", retain=True, qos=1, **ops)
    with RawClient(broker.port) as client:
        assert client.connect("dev-raw", **dev) == 0
        assert _subscribed(client, "test/nosubscribe", qos=1) == 0x80
        assert _subscribed(client, "test/other", qos=1, packet_id=2) == 1
        # Overlapping a deny is not covered by it: granted, the denied topic filtered out.
        assert _subscribed(client, "+/+", qos=1, packet_id=3) == 1
        _nothing_arrives(client)  # the retained message on the denied topic is not replayed
    # mosquitto_sub: the denied filter refused, the other one still works.
    with (
        MosquittoSub(broker.port, "test/nosubscribe", "test/other", qos=1, **dev) as sub,
        MosquittoSub(broker.port, "test/#", qos=1, **ops) as watcher,
    ):
        mosquitto_pub(broker.port, "test/nosubscribe", "secret", qos=1, **ops)
        mosquitto_pub(broker.port, "test/other", "public", qos=1, **ops)
        # dev's publish to its denied topic is dropped (after its PUBACK, as any refused publish).
        mosquitto_pub(broker.port, "test/nopublish", "forbidden", qos=1, **dev)
        mosquitto_pub(broker.port, "test/mine", "allowed", qos=1, **dev)
        assert [message.text for message in sub.wait_for(1)] == ["public"]
        watcher.wait_for(predicate=lambda messages: any(m.text == "allowed" for m in messages))
        time.sleep(QUIET)
        assert [message.text for message in sub.messages] == ["public"]
        assert "forbidden" not in [message.text for message in watcher.messages]


# --- 5. retained messages and subscriptions --------------------------------------------------


def test_every_subscribe_gets_the_retained_message_again_at_its_qos(headwater: InProcessBroker) -> None:
    topic = _unique("retained")
    mosquitto_pub(headwater.port, topic, "kept", qos=1, retain=True)
    with RawClient(headwater.port) as client:
        _session_present(client, "resubscriber", clean=True)
        assert _subscribed(client, topic, qos=1) == 1
        first = _delivery(client.read_packet())
        # MQTT-3.3.1-8: sent because of a new subscription, RETAIN=1.
        assert (first.payload, first.retain, first.qos) == (b"kept", True, 1)
        client.send(_ack(PUBACK, first.packet_id))
        # MQTT 3.8.4: the same filter again replaces the subscription (now QoS 0) and the
        # retained messages are sent again.
        assert _subscribed(client, topic, qos=0, packet_id=2) == 0
        again = _delivery(client.read_packet())
        assert (again.payload, again.retain, again.qos) == (b"kept", True, 0)
        # MQTT-3.3.1-9: a message published to an established subscription has RETAIN=0,
        # even when it is published retained; it comes at the subscription's QoS.
        mosquitto_pub(headwater.port, topic, "live", qos=1, retain=True)
        live = _delivery(client.read_packet())
        assert (live.payload, live.retain, live.qos) == (b"live", False, 0)
