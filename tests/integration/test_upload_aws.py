"""Uploads end to end: mosquitto_pub → Headwater → the AWS emulator (moto server over HTTP).

Headwater runs in-process or as a real ``headwater run`` process (kill -9); faults are injected
by the HTTP proxy of tests/fixtures/aws_faults.py, in front of the emulator. The AWS side of
each export type (create, read back) is tests/fixtures/aws_targets.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from headwater.clients import StreamClient
from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from headwater.plugins.upload.plugin import DEAD_LETTER_STREAM, UploadPlugin
from headwater.wire.streams import StreamDescription
from tests.fixtures.aws import AwsClients
from tests.fixtures.aws_faults import AwsFaultProxy
from tests.fixtures.aws_targets import KinesisTarget, make_aws_target
from tests.fixtures.broker import BrokerFactory, HeadwaterProcess, InProcessBroker
from tests.fixtures.mosquitto import mosquitto_pub

ALL_TYPES = ("kinesis", "firehose", "s3", "iot_core")


@dataclass
class Hub:
    broker: InProcessBroker
    streams: StreamsPlugin
    upload: UploadPlugin

    @property
    def port(self) -> int:
        return self.broker.port

    def describe(self, name: str) -> StreamDescription:
        async def describe() -> StreamDescription:
            return self.streams.describe(name)

        return self.broker.call(describe())


def _hub(factory: BrokerFactory, body: dict[str, Any]) -> Hub:
    streams = StreamsPlugin(status_interval=0.05)
    upload = UploadPlugin(streams)
    broker = factory(body, plugins=[streams, StreamsApi(streams), upload])
    return Hub(broker, streams, upload)


def _config(endpoint: str, exports: dict[str, list[dict[str, Any]]], **uploads: Any) -> dict[str, Any]:
    return {
        "aws": {"region": "us-east-1", "endpoint_url": endpoint},
        "uploads": {"max_backoff": "2s", **uploads},
        "streams": {name: {"topics": [f"{name}/#"], "exports": each} for name, each in exports.items()},
    }


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_each_type_delivers_what_devices_published(
    kind: str, aws_clients: AwsClients, aws_endpoint_url: str, headwater_factory: BrokerFactory
) -> None:
    target = make_aws_target(kind, aws_clients)
    export = {**target.export_keys(), "id": "out", "type": kind, "batch_interval": "0s"}
    if kind == "firehose":
        # The emulator names Firehose's objects by the second plus a random id: one batch,
        # one object, an exact order.
        export["batch_interval"] = "3s"
    if kind == "s3":
        export["max_object_age"] = "1s"
    hub = _hub(headwater_factory, _config(aws_endpoint_url, {"telemetry": [export]}))
    lines = [json.dumps({"device": f"d{n % 3}", "n": n}) for n in range(300)]
    mosquitto_pub(hub.port, "telemetry/d1", lines=lines, qos=1)
    binary = bytes(byte for byte in range(256) if byte != ord("\n"))  # Firehose's delimiter
    mosquitto_pub(hub.port, "telemetry/d2", binary, qos=1)
    expected = [line.encode() for line in lines] + [binary]
    _wait(lambda: len(target.delivered()) >= len(expected), f"{len(expected)} records in {kind}")
    assert target.delivered() == expected
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 300, "the checkpoint")
    info = hub.describe("telemetry").exports[0]
    assert (info.state, info.exported_records, info.lag_records, info.last_error) == ("idle", 301, 0, None)


def test_an_outage_with_kill_9_in_between_loses_nothing(
    aws_clients: AwsClients,
    aws_fault_proxy: AwsFaultProxy,
    headwater_process: Callable[..., HeadwaterProcess],
) -> None:
    target = make_aws_target("kinesis", aws_clients)
    aws_fault_proxy.go_offline()
    export = {**target.export_keys(), "id": "k", "type": "kinesis", "batch_interval": "0s", "batch_size": 500}
    hub = headwater_process(_config(aws_fault_proxy.endpoint_url, {"telemetry": [export]}))
    total = 5000
    lines = [f"record-{n:05d}" for n in range(total)]
    mosquitto_pub(hub.port, "telemetry/d1", lines=lines[:3000], qos=1)

    def state() -> str:
        with StreamClient.connect(f"mqtt://127.0.0.1:{hub.port}", timeout=10) as client:
            return client.describe("telemetry").exports[0].state

    _wait(lambda: state() == "offline", "the export to notice the outage")
    hub.restart()  # kill -9 while AWS is unreachable: nothing was delivered yet
    assert target.delivered() == []
    aws_fault_proxy.pass_through()
    _wait(lambda: len(target.delivered()) >= 1000, "the first deliveries after the outage")
    hub.restart()  # kill -9 again, in the middle of draining the backlog
    mosquitto_pub(hub.port, "telemetry/d1", lines=lines[3000:], qos=1)
    _wait(lambda: len(set(target.delivered())) >= total, "every record", timeout=120)
    delivered = [payload.decode() for payload in target.delivered()]
    assert set(delivered) == set(lines), "nothing lost"
    first_seen = list(dict.fromkeys(delivered))
    assert first_seen == lines, "in stream order"
    assert len(delivered) - total <= 500, "duplicates bounded by one batch"
    assert "(offline, retrying in" in hub.log_text(), "the outage is in the log"


def test_throttling_and_partial_failures_are_retried_without_loss(
    aws_clients: AwsClients, aws_fault_proxy: AwsFaultProxy, headwater_factory: BrokerFactory
) -> None:
    target = make_aws_target("kinesis", aws_clients)
    aws_fault_proxy.throttle(2, operations={"PutRecords"})
    aws_fault_proxy.fail_records(every=7, calls=3)
    export = {**target.export_keys(), "id": "k", "type": "kinesis", "batch_interval": "0s", "batch_size": 100}
    hub = _hub(headwater_factory, _config(aws_fault_proxy.endpoint_url, {"telemetry": [export]}))
    lines = [f"r{n:04d}" for n in range(1000)]
    mosquitto_pub(hub.port, "telemetry/d1", lines=lines, qos=1)
    _wait(lambda: len(target.delivered()) >= 1000, "every record")
    delivered = [payload.decode() for payload in target.delivered()]
    assert sorted(delivered) == lines, "each record exactly once"
    # Only records that failed are sent again; Kinesis puts them after the ones that went through
    # (as with any PutRecords client). So only failed records (every 7th of 3 calls) may arrive
    # behind a later one; everything else keeps stream order.
    highest = -1
    moved = 0
    for line in delivered:
        n = int(line[1:])
        if n < highest:
            moved += 1
        highest = max(highest, n)
    assert moved <= 3 * (100 // 7)
    assert aws_fault_proxy.count("PutRecords") > 10 + 2, "throttled calls and failed records were retried"
    _wait(lambda: hub.describe("telemetry").exports[0].last_exported_sequence == 999, "the checkpoint")


def test_with_a_bandwidth_cap_the_priority_1_backlog_goes_first(
    aws_clients: AwsClients, aws_fault_proxy: AwsFaultProxy, headwater_factory: BrokerFactory
) -> None:
    urgent = KinesisTarget(aws_clients, name="hw-urgent")
    bulk = KinesisTarget(aws_clients, name="hw-bulk")
    urgent.create()
    bulk.create()
    aws_fault_proxy.go_offline()  # both backlogs build up during an "outage"
    common = {"type": "kinesis", "batch_interval": "0s", "batch_size": 50}
    config = _config(
        aws_fault_proxy.endpoint_url,
        {
            "aggregates": [{**urgent.export_keys(), **common, "id": "urgent", "priority": 1}],
            "telemetry": [{**bulk.export_keys(), **common, "id": "bulk", "priority": 9}],
        },
        max_bandwidth="100KiB/s",
        priority_aging="250ms",  # priority 9 gets a turn after 2 s of waiting
    )
    hub = _hub(headwater_factory, config)
    payload = "x" * 1000
    mosquitto_pub(hub.port, "telemetry/raw", lines=[f"{n:04d}{payload}" for n in range(500)], qos=1)
    mosquitto_pub(hub.port, "aggregates/minute", lines=[f"{n:04d}{payload}" for n in range(500)], qos=1)
    aws_fault_proxy.pass_through()

    def exported(name: str) -> int:
        return hub.describe(name).exports[0].exported_records

    # ~500 KB per backlog at 100 KiB/s: the urgent one needs about 5 s.
    _wait(lambda: exported("aggregates") == 500, "the priority-1 backlog")
    bulk_when_urgent_done = exported("telemetry")
    assert bulk_when_urgent_done < 500, "priority 1 finished first"
    assert bulk_when_urgent_done > 0, "priority 9 was not starved meanwhile"
    _wait(lambda: exported("telemetry") == 500, "the priority-9 backlog")
    assert len(urgent.delivered()) == 500
    assert len(bulk.delivered()) == 500


def test_an_oversized_record_goes_to_the_dead_letter_stream(
    aws_clients: AwsClients, aws_endpoint_url: str, headwater_factory: BrokerFactory
) -> None:
    target = make_aws_target("kinesis", aws_clients)
    export = {**target.export_keys(), "id": "k", "type": "kinesis", "batch_interval": "0s"}
    hub = _hub(headwater_factory, _config(aws_endpoint_url, {"telemetry": [export]}))
    mosquitto_pub(hub.port, "telemetry/d1", "before", qos=1)
    mosquitto_pub(hub.port, "telemetry/d1", b"x" * (1024 * 1024 + 1), qos=1)
    mosquitto_pub(hub.port, "telemetry/d1", "after", qos=1)
    _wait(lambda: len(target.delivered()) >= 2, "the records around the big one")
    assert target.delivered() == [b"before", b"after"]
    _wait(lambda: DEAD_LETTER_STREAM in hub.streams.names(), "the dead-letter stream")

    async def letters() -> list[dict[str, Any]]:
        records = hub.streams.read(DEAD_LETTER_STREAM, from_sequence=0, max_count=10, max_bytes=None)
        return [json.loads(record.payload) for record in records]

    [letter] = hub.broker.call(letters())
    assert (letter["stream"], letter["export"], letter["sequence"]) == ("telemetry", "k", 1)
    assert "1048576" in letter["reason"]
    assert len(letter["payload"]) == 1024 * 1024 + 1
    assert hub.describe("telemetry").exports[0].dead_lettered == 1


def test_missing_target_is_blocked_with_aws_message_on_the_status(
    aws_clients: AwsClients, aws_endpoint_url: str, headwater_factory: BrokerFactory
) -> None:
    export = {"id": "k", "type": "kinesis", "stream_name": "does-not-exist", "batch_interval": "0s"}
    hub = _hub(headwater_factory, _config(aws_endpoint_url, {"telemetry": [export]}))
    mosquitto_pub(hub.port, "telemetry/d1", "x", qos=1)
    _wait(lambda: hub.describe("telemetry").exports[0].state == "blocked", "state blocked")
    info = hub.describe("telemetry").exports[0]
    assert info.last_error is not None
    assert "ResourceNotFoundException" in info.last_error
    assert info.lag_records == 1
    # Creating the stream unblocks it (retried every max_backoff).
    KinesisTarget(aws_clients, name="does-not-exist").create()
    _wait(lambda: hub.describe("telemetry").exports[0].state == "idle", "recovery", timeout=30)
