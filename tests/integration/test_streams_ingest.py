"""Topics into streams: real broker, mosquitto clients, real RocksDB, the streams plugin in-process.

Every test starts Headwater with its own :class:`StreamsPlugin` (short status and sweep intervals
so that nothing waits a full second) and inspects it through the ``StreamService`` methods, run
on the broker's event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from headwater.broker.plugins import builtin_plugins
from headwater.core.config import StreamConfig
from headwater.core.publish import IncomingPublish
from headwater.core.streams import (
    InvalidStreamRequestError,
    StreamExistsError,
    StreamNotFoundError,
    StreamRejectedError,
)
from headwater.plugins.streams.memory import RECORD_OVERHEAD
from headwater.plugins.streams.plugin import StreamsPlugin
from headwater.wire.streams import StreamDescription, StreamRecord
from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.disk import small_disk_free
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub, mosquitto_sub_once

T = TypeVar("T")


@dataclass
class Streams:
    """A running Headwater and its streams plugin, driven from the test thread."""

    broker: InProcessBroker
    plugin: StreamsPlugin

    @property
    def port(self) -> int:
        return self.broker.port

    def run(self, function: Callable[[], T]) -> T:
        """Call ``function`` on the broker's event loop (the plugin is not thread-safe)."""

        async def call() -> T:
            return function()

        return self.broker.call(call())

    def describe(self, name: str) -> StreamDescription:
        return self.run(lambda: self.plugin.describe(name))

    def read(self, name: str, from_sequence: int = 0, max_count: int = 100_000) -> list[StreamRecord]:
        return self.run(
            lambda: self.plugin.read(name, from_sequence=from_sequence, max_count=max_count, max_bytes=None)
        )

    def payloads(self, name: str) -> list[str]:
        return [record.payload.decode() for record in self.read(name)]

    def wait_count(self, name: str, count: int, timeout: float = 10) -> StreamDescription:
        deadline = time.monotonic() + timeout
        while (description := self.describe(name)).storage.record_count < count:
            assert time.monotonic() < deadline, description
            time.sleep(0.02)
        return description


@pytest.fixture
def start_streams(headwater_factory: BrokerFactory) -> Callable[..., Streams]:
    def start(body: str | dict[str, Any] = "") -> Streams:
        plugin = StreamsPlugin(sweep_interval=0.05, status_interval=0.05)
        return Streams(headwater_factory(body, plugins=[plugin]), plugin)

    return start


def unique_topic() -> str:
    return f"sensors/{uuid.uuid4().hex[:8]}/telemetry"


TELEMETRY = """
streams:
  telemetry:
    topics: ["sensors/+/telemetry"]
"""


def test_builtin_plugins_always_include_streams_and_their_api(tmp_path: Path) -> None:
    from headwater.core.config import load_config  # noqa: PLC0415 - only this test needs it
    from tests.fixtures.broker import write_config  # noqa: PLC0415

    config = load_config(write_config(tmp_path, {"streams": {}}))
    names = [plugin.name for plugin in builtin_plugins(config)]
    assert names[:3] == ["streams", "streams-api", "upload"]


def test_acknowledged_publishes_are_stored_in_order_with_their_metadata(
    start_streams: Callable[..., Streams],
) -> None:
    streams = start_streams(TELEMETRY)
    topic = unique_topic()
    before = time.time_ns() // 1_000_000
    lines = [f"reading-{index}" for index in range(200)]
    # mosquitto_pub -q 1 exits once every PUBACK is in: each record must be readable now.
    mosquitto_pub(streams.port, topic, lines=lines, qos=1, client_id="dev-1")
    mosquitto_pub(streams.port, "other/topic", "not stored", qos=1)
    after = time.time_ns() // 1_000_000

    records = streams.read("telemetry")
    assert [record.payload.decode() for record in records] == lines
    assert [record.sequence for record in records] == list(range(200))
    assert {(record.topic, record.qos, record.client_id) for record in records} == {(topic, 1, "dev-1")}
    assert all(before <= record.timestamp_ms <= after for record in records)
    storage = streams.describe("telemetry").storage
    assert (storage.oldest_sequence, storage.newest_sequence, storage.record_count) == (0, 199, 200)
    statistics = streams.plugin.statistics()
    assert statistics.records_appended == 200
    assert statistics.largest_batch > 1  # group commit: records arriving together, one write
    assert statistics.batches_written < 200
    assert statistics.wal_syncs == 0  # flush_on_write is off
    unmatched = IncomingPublish("c", None, "other/topic", b"x", 1, retain=False, received_at_ms=0)
    assert streams.run(lambda: streams.plugin.intercept(unmatched)) is None  # nothing to wait for


def test_a_message_matching_two_streams_lands_in_both(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(
        """
        streams:
          everything: {topics: ["plant/#"]}
          temperatures: {topics: ["plant/+/temperature", "plant/+/temp"]}
        """
    )
    mosquitto_pub(streams.port, "plant/boiler/temperature", "81.5", qos=1)
    mosquitto_pub(streams.port, "plant/boiler/pressure", "2.1", qos=1)
    mosquitto_pub(streams.port, "plant/pump/temp", "40", qos=2)
    assert streams.payloads("everything") == ["81.5", "2.1", "40"]
    assert streams.payloads("temperatures") == ["81.5", "40"]
    assert [record.qos for record in streams.read("temperatures")] == [1, 2]


def test_qos0_publishes_are_stored_too(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(TELEMETRY)
    lines = [f"q0-{index}" for index in range(100)]
    mosquitto_pub(streams.port, unique_topic(), lines=lines, qos=0)
    streams.wait_count("telemetry", 100)
    assert streams.payloads("telemetry") == lines
    assert {record.qos for record in streams.read("telemetry")} == {0}


def record_bytes(topic: str, client_id: str, payload: str) -> int:
    return RECORD_OVERHEAD + len(topic) + len(client_id) + len(payload)


@pytest.mark.parametrize("persistence", ["file", "memory"])
def test_reject_new_drops_and_counts_without_harming_the_publisher(
    start_streams: Callable[..., Streams], persistence: str
) -> None:
    streams = start_streams(
        f"""
        streams:
          limited:
            topics: ["limited/#"]
            persistence: {persistence}
            max_size: 1KiB
            strategy_on_full: reject_new
        """
    )
    topic, client_id = "limited/a", "limited-pub"
    lines = [f"{index:03d}" + "x" * 97 for index in range(20)]
    fits = 1024 // record_bytes(topic, client_id, lines[0])
    # One connection publishes all 20 at QoS 1: exit status 0 means every one was acknowledged
    # and the connection was never closed on it.
    mosquitto_pub(streams.port, topic, lines=lines, qos=1, client_id=client_id)
    storage = streams.describe("limited").storage
    assert storage.record_count == fits
    assert storage.rejected_new == 20 - fits
    assert storage.total_bytes == fits * record_bytes(topic, client_id, lines[0]) <= 1024
    assert streams.payloads("limited") == lines[:fits]  # the new ones were dropped
    assert streams.plugin.statistics().records_rejected == 20 - fits
    assert streams.broker.app.gate.statistics().durable_failures == 0
    mosquitto_pub(streams.port, topic, "still connected fine", qos=1, client_id=client_id)
    with pytest.raises(StreamRejectedError):
        streams.broker.call(streams.plugin.append("limited", b"y" * 200, topic="api", client_id="api"))


@pytest.mark.parametrize("persistence", ["file", "memory"])
def test_overwrite_oldest_drops_the_oldest(start_streams: Callable[..., Streams], persistence: str) -> None:
    streams = start_streams(
        f"""
        streams:
          ring:
            topics: ["ring/#"]
            persistence: {persistence}
            max_size: 1KiB
            strategy_on_full: overwrite_oldest
        """
    )
    topic, client_id = "ring/a", "ring-pub"
    lines = [f"{index:03d}" + "x" * 97 for index in range(20)]
    fits = 1024 // record_bytes(topic, client_id, lines[0])
    mosquitto_pub(streams.port, topic, lines=lines, qos=1, client_id=client_id)
    storage = streams.describe("ring").storage
    assert (storage.oldest_sequence, storage.newest_sequence) == (20 - fits, 19)
    assert storage.record_count == fits
    assert storage.dropped_oldest == 20 - fits
    assert storage.rejected_new == 0
    assert storage.total_bytes <= 1024
    assert streams.payloads("ring") == lines[-fits:]


def test_memory_stream_is_fast_and_lost_on_restart(start_streams: Callable[..., Streams]) -> None:
    body = """
        streams:
          scratch: {topics: ["scratch/#"], persistence: memory, max_size: 64KiB}
          kept: {topics: ["kept/#"]}
        """
    streams = start_streams(body)
    mosquitto_pub(streams.port, "scratch/a", lines=[f"m{index}" for index in range(50)], qos=1)
    mosquitto_pub(streams.port, "kept/a", "on disk", qos=1)
    description = streams.describe("scratch")
    assert description.storage.record_count == 50
    assert description.persistence == "memory"
    assert streams.payloads("scratch") == [f"m{index}" for index in range(50)]
    assert streams.broker.call(streams.plugin.append("scratch", b"api", topic="t", client_id="c")) == 50

    assert streams.broker.stop() == []
    restarted = start_streams(body)
    storage = restarted.describe("scratch").storage
    assert (storage.record_count, storage.newest_sequence) == (0, None)
    assert restarted.payloads("kept") == ["on disk"]
    mosquitto_pub(restarted.port, "scratch/a", "again", qos=1)
    assert [record.sequence for record in restarted.read("scratch")] == [0]


def test_status_topic_is_retained_and_equals_describe(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(TELEMETRY)
    status_topic = "headwater/streams/telemetry/status"
    initial = json.loads(mosquitto_sub_once(streams.port, status_topic, timeout=5)[0].payload)
    assert initial == streams.describe("telemetry").to_json_dict()
    assert initial["storage"]["record_count"] == 0
    assert initial["exports"] == []

    with MosquittoSub(streams.port, status_topic) as watcher:
        mosquitto_pub(streams.port, unique_topic(), lines=[f"v{index}" for index in range(30)], qos=1)
        watcher.wait_for(
            predicate=lambda messages: json.loads(messages[-1].payload)["storage"]["record_count"] == 30
        )
    retained = mosquitto_sub_once(streams.port, status_topic, timeout=5)[0]
    assert retained.retain
    assert json.loads(retained.payload) == streams.describe("telemetry").to_json_dict()


def test_status_is_published_at_most_once_per_interval(headwater_factory: BrokerFactory) -> None:
    plugin = StreamsPlugin(status_interval=1.0)
    broker = headwater_factory(TELEMETRY, plugins=[plugin])
    status_topic = "headwater/streams/telemetry/status"
    with MosquittoSub(broker.port, status_topic) as watcher:
        watcher.wait_for(1)  # the retained one
        started = time.monotonic()
        for index in range(10):
            mosquitto_pub(broker.port, unique_topic(), f"v{index}", qos=1)
        watcher.wait_for(
            predicate=lambda messages: json.loads(messages[-1].payload)["storage"]["record_count"] == 10,
            timeout=10,
        )
        elapsed = time.monotonic() - started
    changes = len(watcher.messages) - 1
    assert changes <= elapsed / 1.0 + 1, (changes, elapsed)


def test_flush_on_write_fsyncs_once_per_batch(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(
        """
        streams:
          critical: {topics: ["critical/#"], flush_on_write: true}
          bulk: {topics: ["bulk/#"]}
        """
    )
    lines = [f"c{index}" for index in range(300)]
    mosquitto_pub(streams.port, "critical/a", lines=lines, qos=1)
    mosquitto_pub(streams.port, "bulk/a", lines=lines, qos=1)
    assert streams.payloads("critical") == lines
    assert streams.payloads("bulk") == lines
    statistics = streams.plugin.statistics()
    assert 1 <= statistics.wal_syncs <= statistics.batches_written
    assert statistics.wal_syncs < 300  # grouped: mosquitto_pub keeps 20 messages in flight


def test_ttl_sweep_expires_old_records(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(
        """
        streams:
          short: {topics: ["short/#"], ttl: 300ms}
          memory: {topics: ["short/#"], ttl: 300ms, persistence: memory}
        """
    )
    mosquitto_pub(streams.port, "short/a", lines=[f"s{index}" for index in range(10)], qos=1)
    deadline = time.monotonic() + 10
    while streams.describe("short").storage.record_count or streams.describe("memory").storage.record_count:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for name in ("short", "memory"):
        storage = streams.describe(name).storage
        assert (storage.expired, storage.total_bytes, storage.oldest_sequence) == (10, 0, None)
    assert streams.plugin.statistics().records_expired == 20
    mosquitto_pub(streams.port, "short/a", "later", qos=1)
    assert [record.sequence for record in streams.read("short")] == [10]


def test_append_is_durable_and_wakes_long_polling_readers(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(TELEMETRY)
    plugin = streams.plugin

    async def scenario() -> tuple[list[int], float, float]:
        loop = asyncio.get_running_loop()
        waiter = asyncio.create_task(plugin.wait_for_records("telemetry", from_sequence=2, timeout=30))
        sequences = [await plugin.append("telemetry", b"one", topic="api", client_id="api")]
        sequences += await asyncio.gather(
            plugin.append("telemetry", b"two", topic="api", client_id="api"),
            plugin.append("telemetry", b"three", topic="api", client_id="api"),
        )
        started = loop.time()
        await asyncio.wait_for(waiter, 5)
        woke_after = loop.time() - started
        started = loop.time()
        await plugin.wait_for_records("telemetry", from_sequence=3, timeout=0.2)
        timed_out_after = loop.time() - started
        return sequences, woke_after, timed_out_after

    sequences, woke_after, timed_out_after = streams.broker.call(scenario())
    assert sequences == [0, 1, 2]
    assert woke_after < 1
    assert 0.15 < timed_out_after < 2
    assert [record.payload for record in streams.read("telemetry")] == [b"one", b"two", b"three"]
    with pytest.raises(StreamNotFoundError):
        streams.broker.call(plugin.append("nope", b"x", topic="api", client_id="api"))


def test_read_limits(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(TELEMETRY)
    mosquitto_pub(streams.port, unique_topic(), lines=["a" * 10] * 10, qos=1)

    def read(**kwargs: Any) -> list[int]:
        options = {"from_sequence": 0, "max_count": 100, "max_bytes": None} | kwargs
        return [
            record.sequence for record in streams.run(lambda: streams.plugin.read("telemetry", **options))
        ]

    assert read(from_sequence=7) == [7, 8, 9]
    assert read(max_count=2) == [0, 1]
    assert read(max_bytes=25) == [0, 1]
    assert read(max_bytes=1) == [0]  # always at least one record
    with pytest.raises(InvalidStreamRequestError):
        read(from_sequence=-1)


def stream_config(name: str, **changes: Any) -> StreamConfig:
    return StreamConfig(name=name, topics=(f"{name}/#",), **changes)


def test_run_time_streams_persist_and_config_streams_win(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams(TELEMETRY)
    plugin = streams.plugin
    streams.broker.call(plugin.create(stream_config("made", max_size=2048, strategy_on_full="reject_new")))
    streams.broker.call(plugin.create(stream_config("scratch", persistence="memory")))
    streams.broker.call(plugin.create(stream_config("gone")))
    with pytest.raises(StreamExistsError):
        streams.broker.call(plugin.create(stream_config("telemetry")))
    with pytest.raises(InvalidStreamRequestError, match="config file"):
        streams.broker.call(plugin.update(stream_config("telemetry", max_size=4096)))
    with pytest.raises(InvalidStreamRequestError, match="config file"):
        streams.broker.call(plugin.delete("telemetry"))
    with pytest.raises(InvalidStreamRequestError, match="max_size: must be at least 1KiB"):
        streams.broker.call(plugin.create(stream_config("tiny", max_size=10)))
    with pytest.raises(InvalidStreamRequestError, match="persistence"):
        streams.broker.call(plugin.update(stream_config("made", persistence="memory")))
    mosquitto_pub(streams.port, "made/x", "before update", qos=1)
    mosquitto_pub(streams.port, "gone/x", "doomed", qos=1)
    streams.broker.call(
        plugin.update(StreamConfig(name="made", topics=("made/new/#",), max_size=4096, ttl=3600.0))
    )
    mosquitto_pub(streams.port, "made/x", "old topic, not stored", qos=1)
    mosquitto_pub(streams.port, "made/new/x", "after update", qos=1)
    assert streams.payloads("made") == ["before update", "after update"]
    streams.broker.call(plugin.delete("gone"))
    assert plugin.names() == ["made", "scratch", "telemetry"]
    with pytest.raises(StreamNotFoundError):
        streams.describe("gone")
    assert streams.broker.stop() == []

    # Restart with a config that also defines "made": the config file wins.
    restarted = start_streams(
        TELEMETRY
        + """
  made: {topics: ["made/config/#"], max_size: 8KiB}
"""
    )
    assert restarted.plugin.names() == ["made", "scratch", "telemetry"]
    assert restarted.plugin.stream_config("made").max_size == 8192
    assert restarted.payloads("made") == ["before update", "after update"]  # its records stay
    assert restarted.plugin.stream_config("scratch").persistence == "memory"
    assert restarted.describe("scratch").storage.record_count == 0
    assert restarted.broker.stop() == []

    # ...and its run-time definition was deleted: without it in the config, "made" is not served.
    third = start_streams(TELEMETRY)
    assert third.plugin.names() == ["scratch", "telemetry"]
    statuses = mosquitto_sub_once(third.port, "headwater/streams/+/status", count=2, timeout=5)
    assert sorted(message.topic for message in statuses) == [
        "headwater/streams/scratch/status",
        "headwater/streams/telemetry/status",
    ]


def test_deleting_a_stream_clears_its_status(start_streams: Callable[..., Streams]) -> None:
    streams = start_streams()
    streams.broker.call(streams.plugin.create(stream_config("temporary")))
    status_topic = "headwater/streams/temporary/status"
    assert (
        json.loads(mosquitto_sub_once(streams.port, status_topic, timeout=5)[0].payload)["name"]
        == "temporary"
    )
    streams.broker.call(streams.plugin.delete("temporary"))
    deadline = time.monotonic() + 5
    while True:
        try:
            mosquitto_sub_once(streams.port, status_topic, timeout=1)
        except TimeoutError:
            break
        assert time.monotonic() < deadline


def yaml_streams(body: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(body)
    return data


def test_a_full_disk_refuses_records_and_says_so(
    small_disk: Path,  # first: unmounted only after Headwater stopped
    start_streams: Callable[..., Streams],
) -> None:
    streams = start_streams({"data_dir": str(small_disk / "data"), **yaml_streams(TELEMETRY)})
    topic = unique_topic()
    mosquitto_pub(streams.port, topic, "before the disk filled up", qos=1)
    (small_disk / "ballast").write_bytes(b"\0" * (small_disk_free(small_disk) - 64 * 1024))

    # paho, not mosquitto_pub: mosquitto_pub reconnects and resends forever.
    acked: list[int] = []
    disconnected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="filler", protocol=mqtt.MQTTv311)
    client.on_publish = lambda _c, _u, mid, _rc, _p: acked.append(mid)
    client.on_disconnect = lambda *_args: disconnected.set()
    client.connect(streams.broker.host, streams.port)
    client.loop_start()
    try:
        mids = [client.publish(topic, b"x" * 1000, qos=1).mid for _ in range(200)]  # > 64 KiB
        assert disconnected.wait(30)  # the broker closed the connection: the client must resend
    finally:
        client.disconnect()
        client.loop_stop()
    assert mids[-1] not in acked
    assert streams.broker.app.gate.statistics().durable_failures >= 1
    assert "No space left on device" in (streams.run(lambda: streams.plugin.last_error("telemetry")) or "")
    assert streams.plugin.statistics().records_failed >= 1
    stored = streams.read("telemetry")
    assert stored[0].payload == b"before the disk filled up"
    # Everything acknowledged is stored (at least once). The reverse need not hold: a record
    # stored just before the connection was closed may miss its PUBACK; the client resends it.
    assert len(stored) - 1 >= len(acked)

    # Space comes back: writes resume without a restart, nothing stored is lost.
    (small_disk / "ballast").unlink()
    database = streams.broker.app.host.storage  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    while streams.run(lambda: database.write_error) is not None:
        assert time.monotonic() < deadline, "the database was not reopened"
        time.sleep(0.1)
    mosquitto_pub(streams.port, topic, "after the disk was freed", qos=1)
    after = streams.read("telemetry")
    assert after[: len(stored)] == stored
    assert after[-1].payload == b"after the disk was freed"
    assert after[-1].sequence == stored[-1].sequence + 1
    assert streams.run(lambda: streams.plugin.last_error("telemetry")) is None


def test_wildcard_streams_do_not_record_headwater_control_topics(
    start_streams: Callable[..., Streams],
) -> None:
    streams = start_streams(
        """
        streams:
          everything: {topics: ["#"]}
          levels: {topics: ["+/deploy/#"]}
          deploys: {topics: ["headwater/deploy/#"]}
        """
    )
    mosquitto_pub(streams.port, "sensors/a/telemetry", "reading", qos=1)
    mosquitto_pub(streams.port, "headwater/streams/everything/read", '{"reply_to": "x"}', qos=1)
    mosquitto_pub(streams.port, "headwater/deploy/web", "services: {}", qos=1)
    mosquitto_pub(streams.port, "site/deploy/web", "not a control topic", qos=1)
    everything = [record.topic for record in streams.read("everything")]
    assert everything == ["sensors/a/telemetry", "site/deploy/web"]
    assert [record.topic for record in streams.read("levels")] == ["site/deploy/web"]
    assert [record.topic for record in streams.read("deploys")] == ["headwater/deploy/web"]


def test_reads_concurrent_with_writes_see_a_consistent_prefix(start_streams: Callable[..., Streams]) -> None:
    """Every read returns contiguous records from where it asked, each one complete and right."""
    streams = start_streams(TELEMETRY)
    total = 20_000
    topic = unique_topic()
    publisher = threading.Thread(
        target=mosquitto_pub,
        args=(streams.port, topic),
        kwargs={"lines": [f"{n:06d}" + "x" * (n % 200) for n in range(total)], "qos": 1, "timeout": 120},
    )
    publisher.start()
    reads = 0
    seen_newest = -1
    try:
        while publisher.is_alive() or seen_newest < total - 1:
            start = max(0, seen_newest - 300) if reads % 2 else seen_newest + 1
            batch = streams.read("telemetry", from_sequence=start, max_count=2000)
            reads += 1
            if not batch:
                if seen_newest == total - 1:
                    break
                assert publisher.is_alive(), f"the stream ends at {seen_newest}, expected {total - 1}"
                continue
            assert batch[0].sequence == start, "a read starts where it asked (nothing is ever dropped)"
            for offset, record in enumerate(batch):
                n = start + offset
                assert record.sequence == n
                assert record.payload == (f"{n:06d}" + "x" * (n % 200)).encode()
            seen_newest = max(seen_newest, batch[-1].sequence)
    finally:
        publisher.join(120)
    assert seen_newest == total - 1
    assert reads > 10, "the reads did overlap the writes"
