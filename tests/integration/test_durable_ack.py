"""The durable-acknowledgement hook point, driven by real paho clients against a real broker.

A plugin's interceptor holds each QoS 1 message's future until the test releases it, standing in
for a slow durable write. Nothing here measures time: the test decides when writes "finish".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from headwater.core.plugin_host import PluginHost
from headwater.core.publish import IncomingPublish
from tests.fixtures.broker import BrokerFactory, HeadwaterProcess, InProcessBroker

SETTLE = 0.5  # how long we give a wrongly-early PUBACK to show up


@dataclass
class HoldingPlugin:
    """Holds every QoS 1/2 publish of client ids starting with ``held-`` until released."""

    name: str = "holding"
    held: list[tuple[IncomingPublish, asyncio.Future[None]]] = field(default_factory=list)
    seen: list[IncomingPublish] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def reserved_topics(self, prefix: str) -> tuple[str, ...]:  # noqa: ARG002 - the plugin interface
        return ()

    async def start(self, host: PluginHost) -> None:
        self.loop = asyncio.get_running_loop()
        host.gate.add_interceptor(self)

    async def stop(self) -> None:
        for _, future in self.held:
            if not future.done():
                future.cancel()

    def intercept(self, message: IncomingPublish) -> asyncio.Future[None] | None:
        with self.arrived:
            self.seen.append(message)
            self.arrived.notify_all()
        if not message.client_id.startswith("held-"):
            return None
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        self.held.append((message, future))
        return future

    def wait_seen(self, count: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.seen) >= count, timeout=10), self.seen

    def release(self, index: int, error: Exception | None = None) -> None:
        _, future = self.held[index]
        assert self.loop is not None

        def finish() -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.loop.call_soon_threadsafe(finish)


@dataclass
class AckRecorder:
    client: mqtt.Client
    acked: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def wait_acked(self, count: int, timeout: float = 10) -> list[int]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.acked) >= count, timeout), self.acked
            return list(self.acked)


def connect(broker: InProcessBroker, client_id: str) -> AckRecorder:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    recorder = AckRecorder(client)

    def on_publish(_c: mqtt.Client, _u: object, mid: int, _rc: object, _p: object) -> None:
        with recorder.cond:
            recorder.acked.append(mid)
            recorder.cond.notify_all()

    def on_disconnect(*_args: object) -> None:
        recorder.disconnected.set()

    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.connect(broker.host, broker.port)
    client.loop_start()
    return recorder


@pytest.fixture
def holding(headwater_factory: BrokerFactory) -> tuple[InProcessBroker, HoldingPlugin]:
    plugin = HoldingPlugin()
    broker = headwater_factory(plugins=[plugin])
    return broker, plugin


def _disconnect(*recorders: AckRecorder) -> None:
    for recorder in recorders:
        recorder.client.disconnect()
        recorder.client.loop_stop()


def test_puback_waits_for_the_interceptor_and_keeps_arrival_order(
    holding: tuple[InProcessBroker, HoldingPlugin],
) -> None:
    broker, plugin = holding
    held = connect(broker, f"held-{uuid.uuid4().hex[:8]}")
    topic = f"t/{uuid.uuid4().hex}"
    mids = [held.client.publish(topic, f"m{i}".encode(), qos=1).mid for i in range(3)]
    plugin.wait_seen(3)
    assert [m.payload for m in plugin.seen] == [b"m0", b"m1", b"m2"]  # offered in arrival order

    plugin.release(2)  # the last write finishes first...
    threading.Event().wait(SETTLE)
    assert held.acked == []  # ...but its PUBACK must not overtake the earlier, unfinished ones

    plugin.release(0)
    assert held.wait_acked(1) == [mids[0]]
    threading.Event().wait(SETTLE)
    assert held.acked == [mids[0]]

    plugin.release(1)
    assert held.wait_acked(3) == mids
    _disconnect(held)


def test_qos0_and_other_connections_are_not_delayed(holding: tuple[InProcessBroker, HoldingPlugin]) -> None:
    broker, plugin = holding
    held = connect(broker, f"held-{uuid.uuid4().hex[:8]}")
    free = connect(broker, f"free-{uuid.uuid4().hex[:8]}")
    topic = f"t/{uuid.uuid4().hex}"

    received: list[bytes] = []
    got = threading.Event()
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        got.set()

    subscriber.on_message = on_message
    subscriber.connect(broker.host, broker.port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    assert subscribed.wait(10)

    held_mid = held.client.publish(topic, b"held-qos1", qos=1).mid
    plugin.wait_seen(1)
    held.client.publish(topic, b"held-qos0", qos=0)  # never delayed, even behind a held QoS 1
    assert got.wait(10)
    assert received == [b"held-qos0"]

    mid = free.client.publish(topic, b"free-qos1", qos=1).mid  # another connection: not delayed
    assert free.wait_acked(1) == [mid]
    assert held_mid not in held.acked  # (paho reports the QoS 0 publish as done once sent)

    plugin.release(0)
    assert held_mid in held.wait_acked(2)
    subscriber.disconnect()
    subscriber.loop_stop()
    _disconnect(held, free)


def test_failed_durable_write_is_not_acknowledged(holding: tuple[InProcessBroker, HoldingPlugin]) -> None:
    broker, plugin = holding
    held = connect(broker, f"held-{uuid.uuid4().hex[:8]}")
    held.client.publish(f"t/{uuid.uuid4().hex}", b"x", qos=1)
    plugin.wait_seen(1)
    plugin.release(0, OSError(28, "No space left on device"))
    assert held.disconnected.wait(10)  # the broker closes the connection: the client must resend
    assert held.acked == []
    assert broker.app.gate.statistics().durable_failures == 1
    _disconnect(held)


def test_publishes_refused_by_the_acl_are_never_offered(headwater_factory: BrokerFactory) -> None:
    plugin = HoldingPlugin()
    broker = headwater_factory(
        """
        broker:
          acl:
            anonymous: {publish: ["allowed/#"], subscribe: ["#"]}
        """,
        plugins=[plugin],
    )
    client = connect(broker, f"free-{uuid.uuid4().hex[:8]}")
    client.client.publish("denied/x", b"no", qos=1)
    client.client.publish("allowed/x", b"yes", qos=1)
    client.wait_acked(2)  # a denied publish is still PUBACKed (MQTT 3.1.1 has no way to refuse)
    assert [m.topic for m in plugin.seen] == ["allowed/x"]
    assert broker.app.gate.statistics().refused_by_acl == 1
    _disconnect(client)


def test_retained_message_is_on_disk_before_its_puback(
    holding: tuple[InProcessBroker, HoldingPlugin],
) -> None:
    broker, plugin = holding
    held = connect(broker, f"held-{uuid.uuid4().hex[:8]}")
    topic = f"retained/{uuid.uuid4().hex}"
    mid = held.client.publish(topic, b"keep-me", qos=1, retain=True).mid
    plugin.wait_seen(1)
    assert held.acked == []  # still held by the plugin...

    async def stored_topics() -> set[str]:
        assert broker.app.host is not None
        return {message.topic for message in broker.app.host.storage.retained.load_all()}

    assert topic in broker.call(stored_topics())  # ...yet already written to RocksDB
    plugin.release(0)
    assert held.wait_acked(1) == [mid]
    _disconnect(held)


def test_every_acknowledged_publish_reaches_subscribers_when_the_publisher_leaves_at_once(
    headwater_process: Callable[..., HeadwaterProcess],
) -> None:
    """A group commit releases PUBACKs in bursts; mosquitto_pub disconnects after the last one.

    amqtt alone handled that DISCONNECT before the client's still-queued publishes and dropped
    them: stored and acknowledged, yet never delivered to subscribers.
    """
    from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub  # noqa: PLC0415

    topic = f"burst/{uuid.uuid4().hex}"
    broker = headwater_process(f"streams: {{burst: {{topics: ['{topic}']}}}}")  # uvloop, as deployed
    lines = [f"{i:06d}" + "x" * 194 for i in range(3000)]
    with MosquittoSub(broker.port, topic, qos=1) as subscriber:
        mosquitto_pub(broker.port, topic, lines=lines, qos=1)
        with contextlib.suppress(TimeoutError):
            subscriber.wait_for(len(lines), timeout=10)
        received = [m.text for m in subscriber.messages]
    assert len(received) == len(lines)
    assert received == lines
