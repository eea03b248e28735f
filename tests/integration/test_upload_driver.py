"""The export driver and the upload plugin, with a real broker, real clients and real RocksDB.

AWS is replaced at its boundary by :class:`RecordingSink`, a typed implementation of our own
:class:`~headwater.plugins.upload.sink.ExportSink` interface that records what it was given and
fails on command. (The same flows against the AWS emulator are in test_upload_aws.py.)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from headwater.clients import InvalidStreamRequestError, StreamClient
from headwater.core.config import ExportConfig
from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from headwater.plugins.upload.plugin import DEAD_LETTER_STREAM, UploadPlugin
from headwater.plugins.upload.sink import (
    AwsSession,
    BatchLimits,
    ExportBlockedError,
    ExportError,
    ExportOfflineError,
    SendOutcome,
)
from headwater.wire.streams import StreamDescription, StreamRecord
from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub


@dataclass
class RecordingSink:
    """An ExportSink that keeps what it is sent; tests script its failures."""

    max_records: int = 500
    max_bytes: int = 5 * 1024 * 1024
    max_wait: float = 0.0
    max_record: int = 1024 * 1024
    delivered: list[StreamRecord] = field(default_factory=list)
    calls: list[list[int]] = field(default_factory=list)
    fail_once: set[int] = field(default_factory=set)  # these fail on their first attempt
    reject: dict[int, str] = field(default_factory=dict)  # AWS refuses these for good
    errors: list[ExportError] = field(default_factory=list)  # raised by the next calls
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(max_records=self.max_records, max_bytes=self.max_bytes, max_wait=self.max_wait)

    def record_size(self, record: StreamRecord) -> int:
        return len(record.payload)

    def problem(self, record: StreamRecord) -> str | None:
        size = len(record.payload)
        return f"record of {size} bytes exceeds {self.max_record}" if size > self.max_record else None

    async def send(self, records: Sequence[StreamRecord]) -> SendOutcome:
        await asyncio.sleep(0)
        with self.lock:
            self.calls.append([record.sequence for record in records])
            if self.errors:
                raise self.errors.pop(0)
            failed = {
                r.sequence: "ProvisionedThroughputExceededException: slow down"
                for r in records
                if r.sequence in self.fail_once
            }
            self.fail_once -= failed.keys()
            rejected = {r.sequence: self.reject[r.sequence] for r in records if r.sequence in self.reject}
            self.delivered += [r for r in records if r.sequence not in failed and r.sequence not in rejected]
        return SendOutcome(failed=failed, rejected=rejected)

    async def aclose(self) -> None:
        self.closed = True

    def sequences(self) -> list[int]:
        with self.lock:
            return [record.sequence for record in self.delivered]


@dataclass
class Sinks:
    """The sink factory handed to the upload plugin: one RecordingSink per export."""

    template: Callable[[], RecordingSink] = RecordingSink
    made: dict[tuple[str, str], RecordingSink] = field(default_factory=dict)

    def __call__(self, export: ExportConfig, *, stream: str, aws: AwsSession) -> RecordingSink:
        del aws
        sink = self.made.get((stream, export.id))
        if sink is None or sink.closed:
            sink = self.made[(stream, export.id)] = self.template()
        return sink

    def get(self, stream: str, export_id: str, timeout: float = 10) -> RecordingSink:
        deadline = time.monotonic() + timeout
        while (stream, export_id) not in self.made:
            assert time.monotonic() < deadline, f"no sink for {stream}/{export_id}"
            time.sleep(0.02)
        return self.made[(stream, export_id)]


@dataclass
class UploadBroker:
    broker: InProcessBroker
    streams: StreamsPlugin
    upload: UploadPlugin
    sinks: Sinks

    @property
    def port(self) -> int:
        return self.broker.port

    def describe(self, name: str) -> StreamDescription:
        async def describe() -> StreamDescription:
            return self.streams.describe(name)

        return self.broker.call(describe())

    def client(self) -> StreamClient:
        return StreamClient.connect(f"mqtt://127.0.0.1:{self.port}", timeout=10)


def _start(
    factory: BrokerFactory, body: str, sinks: Sinks | None = None
) -> UploadBroker:
    sinks = sinks or Sinks()
    streams = StreamsPlugin(status_interval=0.05, sweep_interval=0.1)
    upload = UploadPlugin(streams, sink_factory=sinks)
    broker = factory(body, plugins=[streams, StreamsApi(streams), upload])
    return UploadBroker(broker, streams, upload, sinks)


CONFIG = """
uploads: {max_backoff: 1s}
streams:
  telemetry:
    topics: ["sensors/+/telemetry"]
    exports:
      - {id: fake, type: kinesis, stream_name: raw, batch_interval: 0s}
"""


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _publish(port: int, count: int, *, start: int = 0, device: str = "d1") -> list[str]:
    lines = [f'{{"n": {n}}}' for n in range(start, start + count)]
    mosquitto_pub(port, f"sensors/{device}/telemetry", lines=lines, qos=1)
    return lines


def test_records_are_delivered_in_order_and_checkpointed(headwater_factory: BrokerFactory) -> None:
    hub = _start(headwater_factory, CONFIG)
    lines = _publish(hub.port, 1200)
    sink = hub.sinks.get("telemetry", "fake")
    _wait(lambda: len(sink.sequences()) >= 1200, "1200 deliveries")
    assert sink.sequences() == list(range(1200))
    assert [record.payload.decode() for record in sink.delivered] == lines
    assert all(len(call) <= 500 for call in sink.calls)
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 1199, "the checkpoint")
    export = hub.describe("telemetry").exports[0]
    assert (export.id, export.type, export.state) == ("fake", "kinesis", "idle")
    assert export.exported_records == 1200
    assert export.exported_bytes == sum(len(line) for line in lines)
    assert export.lag_records == 0
    assert export.last_export_time is not None
    assert export.last_error is None


def test_partial_failures_resend_only_the_failed_records(headwater_factory: BrokerFactory) -> None:
    sinks = Sinks(template=lambda: RecordingSink(fail_once={3, 7, 420}))
    hub = _start(headwater_factory, CONFIG, sinks)
    _publish(hub.port, 600)
    sink = sinks.get("telemetry", "fake")
    _wait(lambda: len(sink.sequences()) >= 600, "600 deliveries")
    assert sorted(sink.sequences()) == list(range(600)), "each record exactly once"
    # The retry carried only the failed records of its batch.
    retries = [call for call in sink.calls if set(call) <= {3, 7, 420}]
    assert retries, sink.calls
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 599, "the checkpoint")


def test_the_checkpoint_never_passes_a_record_that_is_not_delivered(headwater_factory: BrokerFactory) -> None:
    sink = RecordingSink(errors=[], fail_once=set())
    hub = _start(headwater_factory, CONFIG, Sinks(template=lambda: sink))
    # Record 5 keeps failing (re-armed before each retry): the checkpoint must stay at 4.
    sink.fail_once = {5}
    _publish(hub.port, 10)
    _wait(lambda: len(sink.sequences()) >= 9, "the other nine records")
    for _ in range(2):
        with sink.lock:
            sink.fail_once = {5}
        attempts = len(sink.calls)
        _wait(lambda attempts=attempts: len(sink.calls) > attempts, "a retry", timeout=10)
        assert hub.describe("telemetry").exports[0].last_exported_sequence == 4
    _wait(lambda: 5 in sink.sequences(), "record 5 at last", timeout=10)
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 9, "the checkpoint")


def test_whole_call_failures_show_their_state_and_recover(headwater_factory: BrokerFactory) -> None:
    sink = RecordingSink(
        errors=[
            ExportOfflineError("EndpointConnectionError: Could not connect to the endpoint URL"),
            ExportBlockedError("AccessDeniedException: User is not authorized to perform kinesis:PutRecords"),
        ]
    )
    hub = _start(headwater_factory, CONFIG, Sinks(template=lambda: sink))
    with MosquittoSub(hub.port, "headwater/streams/telemetry/status") as status:
        _publish(hub.port, 10)
        seen: list[tuple[str, str | None]] = []

        def states(messages: list[Any]) -> bool:
            for message in messages:
                if message.payload:
                    export = json.loads(message.payload)["exports"][0]
                    seen.append((export["state"], export["last_error"]))
            recovered = any(state == "idle" and error is None for state, error in seen)
            return recovered and len(sink.sequences()) == 10

        status.wait_for(predicate=states, timeout=30)
    assert ("offline", "EndpointConnectionError: Could not connect to the endpoint URL") in seen
    assert any(state == "blocked" and error and "AccessDenied" in error for state, error in seen)
    assert sink.sequences() == list(range(10))


def test_records_aws_refuses_go_to_the_dead_letter_stream(headwater_factory: BrokerFactory) -> None:
    reject = {4: "InvalidArgumentException: malformed"}
    sinks = Sinks(template=lambda: RecordingSink(max_record=100, reject=reject))
    hub = _start(headwater_factory, CONFIG, sinks)
    big = "x" * 150
    lines = [f"r{n}" if n != 2 else big for n in range(8)]
    mosquitto_pub(hub.port, "sensors/d1/telemetry", lines=lines, qos=1)
    sink = sinks.get("telemetry", "fake")
    _wait(lambda: len(sink.sequences()) >= 6, "the six good records")
    assert sink.sequences() == [0, 1, 3, 5, 6, 7]
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 7, "the checkpoint")
    assert hub.describe("telemetry").exports[0].dead_lettered == 2
    with hub.client() as client:
        letters = [json.loads(record.payload) for record in client.iter_records(DEAD_LETTER_STREAM)]
    assert [(letter["sequence"], letter["export"], letter["stream"]) for letter in letters] == [
        (2, "fake", "telemetry"),
        (4, "fake", "telemetry"),
    ]
    assert letters[0]["payload"] == big
    assert "150 bytes exceeds 100" in letters[0]["reason"]
    assert letters[1]["reason"] == "InvalidArgumentException: malformed"
    assert letters[0]["topic"] == "sensors/d1/telemetry"


def test_pause_and_resume_through_the_stream_api_survive_a_restart(headwater_factory: BrokerFactory) -> None:
    hub = _start(headwater_factory, CONFIG)
    _publish(hub.port, 5)
    sink = hub.sinks.get("telemetry", "fake")
    _wait(lambda: len(sink.sequences()) == 5, "five deliveries")
    with hub.client() as client:
        paused = client.pause_export("telemetry", "fake")
        assert paused.state == "disabled"
        with pytest.raises(InvalidStreamRequestError, match="no export 'nope'"):
            client.pause_export("telemetry", "nope")
    _publish(hub.port, 5, start=5)
    time.sleep(1.0)
    assert len(sink.sequences()) == 5, "a paused export sends nothing"
    assert hub.describe("telemetry").exports[0].lag_records == 5

    headwater_factory.stop_all()
    hub = _start(headwater_factory, CONFIG)
    assert hub.describe("telemetry").exports[0].state == "disabled", "the pause is persisted"
    with hub.client() as client:
        assert client.resume_export("telemetry", "fake").state != "disabled"
    sink = hub.sinks.get("telemetry", "fake")
    _wait(lambda: len(sink.sequences()) == 5, "the five records sent while paused")
    assert sink.sequences() == [5, 6, 7, 8, 9], "resumed from the checkpoint, nothing twice"


def test_a_restart_resumes_from_the_checkpoint(headwater_factory: BrokerFactory) -> None:
    hub = _start(headwater_factory, CONFIG)
    _publish(hub.port, 100)
    first = hub.sinks.get("telemetry", "fake")
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 99, "the checkpoint")
    exported = hub.describe("telemetry").exports[0].exported_records
    headwater_factory.stop_all()

    hub = _start(headwater_factory, CONFIG)
    _publish(hub.port, 50, start=100)
    second = hub.sinks.get("telemetry", "fake")
    assert second is not first
    _wait(lambda: len(second.sequences()) >= 50, "50 deliveries")
    assert second.sequences() == list(range(100, 150))
    _wait(lambda: hub.describe("telemetry").exports[0].exported_records == exported + 50, "the counters")


def test_drop_exported_frees_what_every_export_delivered(headwater_factory: BrokerFactory) -> None:
    hub = _start(
        headwater_factory,
        """
        streams:
          telemetry:
            topics: ["sensors/+/telemetry"]
            drop_exported: true
            exports:
              - {id: a, type: kinesis, stream_name: raw, batch_interval: 0s}
              - {id: b, type: kinesis, stream_name: raw, batch_interval: 0s}
        """,
    )
    b = hub.sinks.get("telemetry", "b")
    with b.lock:
        b.errors = [ExportOfflineError("offline")] * 2
    _publish(hub.port, 50)
    _wait(lambda: len(hub.sinks.get("telemetry", "a").sequences()) == 50, "export a")
    assert hub.describe("telemetry").storage.record_count == 50, "b has not delivered: nothing is freed"
    _wait(lambda: hub.describe("telemetry").storage.record_count == 0, "the records freed", timeout=30)
    assert hub.describe("telemetry").storage.total_bytes == 0


def test_start_newest_skips_the_backlog(headwater_factory: BrokerFactory) -> None:
    body = "streams: {telemetry: {topics: ['sensors/+/telemetry']}}"
    hub = _start(headwater_factory, body)
    _publish(hub.port, 20)
    headwater_factory.stop_all()
    hub = _start(
        headwater_factory,
        """
        streams:
          telemetry:
            topics: ["sensors/+/telemetry"]
            exports: [{id: late, type: kinesis, stream_name: raw, batch_interval: 0s, start: newest}]
        """,
    )
    _publish(hub.port, 3, start=20)
    sink = hub.sinks.get("telemetry", "late")
    _wait(lambda: len(sink.sequences()) == 3, "the new records")
    assert sink.sequences() == [20, 21, 22]


def test_exports_of_run_time_streams_follow_create_update_delete(headwater_factory: BrokerFactory) -> None:
    hub = _start(headwater_factory, "")
    export = {"id": "rt", "type": "kinesis", "stream_name": "raw", "batch_interval": "0s"}
    with hub.client() as client:
        created = client.create("runtime", {"topics": ["rt/#"], "exports": [export]})
        assert [e.id for e in created.exports] == ["rt"]
        mosquitto_pub(hub.port, "rt/a", lines=["1", "2", "3"], qos=1)
        sink = hub.sinks.get("runtime", "rt")
        _wait(lambda: len(sink.sequences()) == 3, "deliveries of the run-time export")
        client.update("runtime", {"topics": ["rt/#"], "exports": []})
        assert client.describe("runtime").exports == ()
        _wait(lambda: sink.closed, "the driver stopped")
        mosquitto_pub(hub.port, "rt/a", "4", qos=1)
        client.update("runtime", {"topics": ["rt/#"], "exports": [export]})
        # The export was removed, so its checkpoint was forgotten: it starts again at the oldest.
        again = hub.sinks.get("runtime", "rt")
        _wait(lambda: len(again.sequences()) == 4, "the re-added export")
        client.delete("runtime")
        _wait(lambda: again.closed, "the driver of the deleted stream stopped")
    assert hub.upload.statistics().exports == 0


def test_the_cli_describe_shows_the_exports(headwater_factory: BrokerFactory) -> None:
    import subprocess  # noqa: PLC0415

    from tests.fixtures.broker import headwater_executable  # noqa: PLC0415

    hub = _start(headwater_factory, CONFIG)
    _publish(hub.port, 3)
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 2, "the checkpoint")
    url = f"mqtt://127.0.0.1:{hub.port}"
    result = subprocess.run(
        [headwater_executable(), "streams", "describe", "telemetry", "--json", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    export = json.loads(result.stdout)["exports"][0]
    assert export["id"] == "fake"
    assert export["last_exported_sequence"] == 2
    assert export["exported_records"] == 3
    assert export["state"] == "idle"
    text = subprocess.run(
        [headwater_executable(), "streams", "describe", "telemetry", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "fake" in text
    assert "idle" in text

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [headwater_executable(), "streams", *args, "--url", url]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    paused = cli("pause", "telemetry", "fake")
    assert (paused.returncode, paused.stdout) == (0, "export fake of stream telemetry: disabled\n")
    assert json.loads(cli("resume", "telemetry", "fake", "--json").stdout)["state"] != "disabled"
    unknown = cli("pause", "telemetry", "nope")
    assert unknown.returncode == 3  # not found (the CLI's exit status table)
    assert "no export 'nope'" in unknown.stderr


def test_records_removed_by_retention_before_export_count_as_lost(headwater_factory: BrokerFactory) -> None:
    body = """
    streams:
      telemetry:
        topics: ["sensors/+/telemetry"]
        max_size: 4KiB
        exports:
          - {id: fake, type: kinesis, stream_name: raw, batch_interval: 0s}
    """
    hub = _start(headwater_factory, body)
    with hub.client() as client:
        client.pause_export("telemetry", "fake")
    _publish(hub.port, 200)  # ~60 B stored per record: most of them are overwritten
    export = hub.describe("telemetry").exports[0]
    storage = hub.describe("telemetry").storage
    assert storage.dropped_oldest > 0
    assert export.lost_records == storage.dropped_oldest
    assert export.lag_records == storage.record_count
    with hub.client() as client:
        client.resume_export("telemetry", "fake")
    sink = hub.sinks.get("telemetry", "fake")
    _wait(lambda: len(sink.sequences()) == storage.record_count, "what was left")
    assert sink.sequences() == list(range(storage.oldest_sequence or 0, 200))
