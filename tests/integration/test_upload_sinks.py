"""Conformance suite of the export types: every sink against the AWS emulator over real HTTP.

Each test runs for every type it applies to, through the fault proxy (``aws_fault_proxy``) in
front of moto; what AWS stored is read back with plain boto3 clients against moto itself (for
IoT Core, from moto's in-process record of published messages: moto's server runs in this
process). No boto3 stubbing: faults are injected at the HTTP boundary.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import boto3
import pytest
from botocore.exceptions import ClientError

from headwater.core.config import ExportConfig, parse_config
from headwater.plugins.upload import iot_core, s3
from headwater.plugins.upload.factory import build_sink
from headwater.plugins.upload.sink import (
    AwsSession,
    ExportBlockedError,
    ExportOfflineError,
    ExportRetryableError,
    ExportSink,
    ExportThrottledError,
    SendOutcome,
)
from headwater.wire.streams import StreamRecord
from tests.fixtures import aws_targets
from tests.fixtures.aws import AWS_REGION, AwsClients
from tests.fixtures.aws_faults import AwsFaultProxy

if TYPE_CHECKING:
    from collections.abc import Sequence

ALL_TYPES: Final = ("kinesis", "firehose", "s3", "iot_core")
BATCH_TYPES: Final = ("kinesis", "firehose")  # per-record answers (partial failures)
STREAM = "telemetry"
KiB = 1024
MiB = 1024 * KiB

PAYLOADS: Final = (
    b"reading 0",
    "température 21.5 °C".encode(),
    b"\xff\xfe\x00\x01binary",
    b"",
    b'{"json": true, "n": 4}',
    bytes(range(1, 10)),
    b"x" * 3000,
)


def records(payloads: Sequence[bytes] = PAYLOADS, *, start: int = 0) -> list[StreamRecord]:
    return [
        StreamRecord(
            sequence=start + index,
            timestamp_ms=1_717_200_000_000 + index,
            topic=f"sensors/{index % 3}/telemetry",
            qos=1,
            client_id=f"device-{index % 2}",
            payload=payload,
        )
        for index, payload in enumerate(payloads)
    ]


def export_config(kind: str, **keys: object) -> ExportConfig:
    data = {"streams": {STREAM: {"topics": ["sensors/#"], "exports": [{"id": "x", "type": kind, **keys}]}}}
    return parse_config(data, source="test.yaml").streams[STREAM].exports[0]


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- what each type looks like in AWS ----------------------------------------------------------


class Target(aws_targets.Target):
    """One export type's AWS side (tests/fixtures/aws_targets.py) plus this suite's needs."""

    operation: str  # the fault proxy's name of the call that delivers records

    def export(self, **keys: object) -> ExportConfig:
        return export_config(self.kind, **{**self.export_keys(), **keys})

    def oversized(self) -> tuple[ExportConfig, StreamRecord, str]:
        """An export, a record it can never send, and the limit the problem must name."""
        raise NotImplementedError


class KinesisTarget(Target, aws_targets.KinesisTarget):
    operation = "PutRecords"

    def partition_keys(self) -> list[str]:
        kinesis = self.clients.kinesis()
        [shard] = kinesis.list_shards(StreamName=self.name)["Shards"]
        iterator = kinesis.get_shard_iterator(
            StreamName=self.name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        return [r["PartitionKey"] for r in kinesis.get_records(ShardIterator=iterator)["Records"]]

    def oversized(self) -> tuple[ExportConfig, StreamRecord, str]:
        [record] = records([b"x" * (MiB - 5)])  # + "sensors/0/telemetry" as the key
        return self.export(), record, "1048576"


class FirehoseTarget(Target, aws_targets.FirehoseTarget):
    operation = "PutRecordBatch"

    def oversized(self) -> tuple[ExportConfig, StreamRecord, str]:
        [record] = records([b"x" * 1000 * KiB])  # + "\n"
        return self.export(), record, "1024000"


class S3Target(Target, aws_targets.S3Target):
    operation = "PutObject"

    def oversized(self) -> tuple[ExportConfig, StreamRecord, str]:
        [record] = records([b"x" * 2000])
        return self.export(max_object_size="1KiB"), record, "1024"


class IotCoreTarget(Target, aws_targets.IotCoreTarget):
    operation = "Publish"

    def oversized(self) -> tuple[ExportConfig, StreamRecord, str]:
        [record] = records([b"x" * (128 * KiB + 1)])
        return self.export(), record, "131072"


TARGETS: Final[dict[str, type[Target]]] = {
    "kinesis": KinesisTarget,
    "firehose": FirehoseTarget,
    "s3": S3Target,
    "iot_core": IotCoreTarget,
}


@pytest.fixture
def make_target(aws_clients: AwsClients) -> Callable[[str], Target]:
    """``make_target(kind)``: the type's AWS resource, created in a freshly reset emulator."""

    def make(kind: str) -> Target:
        target = TARGETS[kind](aws_clients)
        target.create()
        return target

    return make


@pytest.fixture
def make_sink(aws_fault_proxy: AwsFaultProxy) -> Iterator[Callable[..., ExportSink]]:
    """``make_sink(export, endpoint=proxy)``: a sink, closed after the test."""
    sinks: list[ExportSink] = []

    def make(export: ExportConfig, endpoint: str | None = None) -> ExportSink:
        aws = AwsSession(region=AWS_REGION, endpoint_url_default=endpoint or aws_fault_proxy.endpoint_url)
        sink = build_sink(export, stream=STREAM, aws=aws)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        asyncio.run(sink.aclose())


def send(sink: ExportSink, batch: Sequence[StreamRecord]) -> SendOutcome:
    return asyncio.run(sink.send(batch))


# --- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_records_land_in_aws_with_payloads_and_order(
    kind: str, make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    target = make_target(kind)
    sink = make_sink(target.export())
    batch = records()
    assert all(sink.problem(r) is None for r in batch)
    assert send(sink, batch) == SendOutcome()
    assert target.delivered() == list(PAYLOADS)
    # A second batch follows the first.
    more = records([b"after 1", b"after 2"], start=len(batch))
    assert send(sink, more) == SendOutcome()
    delivered = target.delivered()
    if kind == "firehose":  # objects of the same second have no order in moto
        assert sorted(delivered) == sorted([*PAYLOADS, b"after 1", b"after 2"])
    else:
        assert delivered == [*PAYLOADS, b"after 1", b"after 2"]


def test_kinesis_partition_keys_follow_the_template(
    make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    target = make_target("kinesis")
    assert isinstance(target, KinesisTarget)
    sink = make_sink(target.export(partition_key="{client_id}"))
    batch = records([b"a", b"b"])
    batch.append(StreamRecord(sequence=2, timestamp_ms=0, topic="t", qos=0, client_id="", payload=b"c"))
    send(sink, batch)
    assert target.partition_keys() == ["device-0", "device-1", STREAM]


def test_s3_objects_are_json_lines_like_streams_read(
    make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    target = make_target("s3")
    assert isinstance(target, S3Target)
    sink = make_sink(target.export())
    batch = records()
    send(sink, batch)
    [key] = target.keys()
    assert key == f"{STREAM}/2024/06/01/00/0-{len(batch) - 1}.jsonl.gz"
    assert target.lines(key) == [r.to_json_dict() for r in batch]
    head = target.clients.s3().head_object(Bucket=target.bucket, Key=key)
    assert (head["ContentType"], head.get("ContentEncoding")) == ("application/x-ndjson", "gzip")


def test_iot_core_publishes_to_the_topic_template(
    make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    target = make_target("iot_core")
    assert isinstance(target, IotCoreTarget)
    sink = make_sink(target.export(topic="gw/{client_id}/{topic}", qos=0))
    send(sink, records([b"a", b"b"]))
    assert target.published() == [
        ("gw/device-0/sensors/0/telemetry", b"a"),
        ("gw/device-1/sensors/1/telemetry", b"b"),
    ]


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_a_record_aws_never_accepts_is_a_problem(
    kind: str, make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    export, record, limit = make_target(kind).oversized()
    sink = make_sink(export)
    problem = sink.problem(record)
    assert problem is not None
    assert limit in problem
    assert str(sink.record_size(record)) in problem or "payload" in problem
    assert sink.problem(records()[0]) is None
    # What the driver batches by: every record without a problem fits in one batch.
    assert sink.record_size(records()[0]) <= sink.limits.max_bytes


# --- whole-call failures ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_unreachable_endpoint_is_offline(
    kind: str, make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    sink = make_sink(make_target(kind).export(), endpoint=closed_port_url())
    with pytest.raises(ExportOfflineError, match="EndpointConnectionError"):
        send(sink, records())


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_going_offline_breaks_open_connections_and_coming_back_delivers(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target(kind)
    sink = make_sink(target.export())
    first, second = records(PAYLOADS[:2]), records(PAYLOADS[2:4], start=2)
    send(sink, first)  # leaves a keep-alive connection open
    aws_fault_proxy.go_offline()
    with pytest.raises(ExportOfflineError):
        send(sink, second)
    aws_fault_proxy.pass_through()
    send(sink, second)
    assert sorted(target.delivered()) == sorted(PAYLOADS[:4])


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_missing_target_or_denied_is_blocked_with_aws_message(
    kind: str,
    aws_clients: AwsClients,
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = TARGETS[kind](aws_clients)  # not created
    sink = make_sink(target.export())
    if kind == "iot_core":  # publishing needs no resource: deny it instead
        aws_fault_proxy.deny(1)
    with pytest.raises(ExportBlockedError) as info:
        send(sink, records())
    expected = {
        "kinesis": "ResourceNotFoundException: ",
        "firehose": "ResourceNotFoundException: ",
        "s3": "NoSuchBucket: ",
        "iot_core": "ForbiddenException: ",
    }[kind]
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_no_credentials_is_blocked(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = make_sink(make_target(kind).export())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert "AWS_ACCESS_KEY_ID" not in os.environ
    with pytest.raises(ExportBlockedError, match="NoCredentialsError"):
        send(sink, records())


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_throttling_raises_throttled_after_one_attempt_and_a_resend_delivers(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target(kind)
    sink = make_sink(target.export())
    batch = records()
    aws_fault_proxy.throttle(1)
    with pytest.raises(ExportThrottledError):
        send(sink, batch)
    # botocore did not retry behind the driver's back: the driver owns backoff.
    assert aws_fault_proxy.count(target.operation) == 1
    assert target.delivered() == []
    assert send(sink, batch) == SendOutcome()
    assert target.delivered() == list(PAYLOADS)


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_server_error_is_retryable(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    sink = make_sink(make_target(kind).export())
    aws_fault_proxy.server_error(1)
    with pytest.raises(ExportRetryableError):
        send(sink, records())


# --- partial failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BATCH_TYPES)
def test_partial_failure_lists_exactly_the_failed_records(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target(kind)
    sink = make_sink(target.export())
    batch = records()
    aws_fault_proxy.fail_records(every=3, calls=1)
    outcome = send(sink, batch)
    assert set(outcome.failed) == {2, 5}
    assert outcome.rejected == {}
    code = "ProvisionedThroughputExceededException" if kind == "kinesis" else "ServiceUnavailableException"
    assert all(reason.startswith(f"{code}: ") for reason in outcome.failed.values())
    assert sorted(target.delivered()) == sorted(p for i, p in enumerate(PAYLOADS) if i not in {2, 5})
    # The driver resends only the failed records.
    assert send(sink, [r for r in batch if r.sequence in outcome.failed]) == SendOutcome()
    assert sorted(target.delivered()) == sorted(PAYLOADS)
    assert aws_fault_proxy.count(target.operation) == 2


def test_iot_core_failure_mid_batch_keeps_the_delivered_prefix(
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target("iot_core")
    sink = make_sink(target.export())
    batch = records()
    aws_fault_proxy.throttle(1, operations=["Publish"], after=3)
    outcome = send(sink, batch)
    assert target.delivered() == list(PAYLOADS[:3])
    assert set(outcome.failed) == set(range(3, len(batch)))
    assert outcome.failed[3].startswith("ThrottlingException: ")
    assert outcome.failed[4].startswith("not sent: ThrottlingException: ")
    # The resend of the failed suffix completes the stream, in order.
    assert send(sink, [r for r in batch if r.sequence in outcome.failed]) == SendOutcome()
    assert target.delivered() == list(PAYLOADS)


def test_iot_core_record_aws_refuses_is_rejected_and_the_rest_published(
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target("iot_core")
    sink = make_sink(target.export())
    batch = records()
    aws_fault_proxy.error("InvalidRequestException", status=400, message="Bad topic", after=1)
    outcome = send(sink, batch)
    assert outcome.rejected == {1: "InvalidRequestException: Bad topic"}
    assert outcome.failed == {}
    assert target.delivered() == [p for i, p in enumerate(PAYLOADS) if i != 1]


@pytest.mark.parametrize("kind", BATCH_TYPES)
def test_every_record_failing_is_answered_without_reaching_aws(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target(kind)
    sink = make_sink(target.export())
    aws_fault_proxy.fail_records(every=1)
    outcome = send(sink, records())
    assert set(outcome.failed) == set(range(len(PAYLOADS)))
    assert target.delivered() == []
    assert aws_fault_proxy.statistics().forwarded == 0


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_expired_credentials_are_blocked(
    kind: str,
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    sink = make_sink(make_target(kind).export())
    aws_fault_proxy.error("ExpiredTokenException", status=400, message="The security token expired")
    with pytest.raises(ExportBlockedError) as info:
        send(sink, records())
    assert str(info.value) == "ExpiredTokenException: The security token expired"


# --- s3 specifics -------------------------------------------------------------------------------


def test_s3_retry_of_a_batch_overwrites_the_same_object(
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target("s3")
    assert isinstance(target, S3Target)
    sink = make_sink(target.export())
    batch = records()
    send(sink, batch)
    first_body = target.clients.s3().get_object(Bucket=target.bucket, Key=target.keys()[0])["Body"].read()
    # The answer was lost (say): the driver sends the same batch again.
    send(sink, batch)
    [key] = target.keys()
    assert target.clients.s3().get_object(Bucket=target.bucket, Key=key)["Body"].read() == first_body
    assert target.delivered() == list(PAYLOADS)
    assert aws_fault_proxy.count("PutObject") == 2


def big_batch(size: int) -> list[StreamRecord]:
    """Records of random (incompressible) bytes, ``size`` payload bytes in all."""
    chunk = 512 * KiB
    return records([os.urandom(chunk) for _ in range(size // chunk)])


def test_s3_large_object_goes_up_in_parts(
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target("s3")
    assert isinstance(target, S3Target)
    sink = make_sink(target.export())
    batch = big_batch(8 * MiB)  # ~10.7 MiB of base64 in JSON, gzip cannot shrink it below 8 MiB
    send(sink, batch)
    assert aws_fault_proxy.count("CreateMultipartUpload") == 1
    assert aws_fault_proxy.count("UploadPart") == 2
    assert aws_fault_proxy.count("CompleteMultipartUpload") == 1
    assert aws_fault_proxy.count("PutObject") == 0
    assert target.delivered() == [r.payload for r in batch]
    head = target.clients.s3().head_object(Bucket=target.bucket, Key=target.keys()[0])
    assert (head["ContentType"], head.get("ContentEncoding")) == ("application/x-ndjson", "gzip")


def test_s3_failed_multipart_upload_is_aborted(
    make_target: Callable[[str], Target],
    make_sink: Callable[..., ExportSink],
    aws_fault_proxy: AwsFaultProxy,
) -> None:
    target = make_target("s3")
    assert isinstance(target, S3Target)
    sink = make_sink(target.export(compression="none"))
    batch = big_batch(9 * MiB)
    aws_fault_proxy.throttle(1, operations=["UploadPart"], after=1)
    with pytest.raises(ExportThrottledError, match="SlowDown"):
        send(sink, batch)
    assert aws_fault_proxy.count("AbortMultipartUpload") == 1
    assert target.keys() == []
    assert target.clients.s3().list_multipart_uploads(Bucket=target.bucket).get("Uploads", []) == []
    send(sink, batch)
    assert target.delivered() == [r.payload for r in batch]


def test_s3_sequence_range_and_hour_come_from_the_batch(
    make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    target = make_target("s3")
    assert isinstance(target, S3Target)
    sink = make_sink(target.export(key="{stream}/{yyyy}{mm}{dd}{HH}/{first_sequence}-{last_sequence}.jsonl"))
    send(sink, records([b"a", b"b"], start=40))
    assert target.keys() == [f"{STREAM}/2024060100/40-41.jsonl"]
    assert isinstance(sink, s3.S3Sink)


# --- iot core endpoint discovery ------------------------------------------------------------------


def test_iot_data_endpoint_is_discovered_when_not_configured(aws_endpoint_url: str) -> None:
    aws = AwsSession(region=AWS_REGION, endpoints={"iot": aws_endpoint_url})
    assert aws.endpoint_url("iot-data") is None
    endpoint = iot_core.describe_data_endpoint(boto3.session.Session(), aws)
    assert endpoint.startswith("https://")
    assert endpoint.endswith("-ats.iot.us-east-1.amazonaws.com")


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_aclose_is_idempotent(
    kind: str, make_target: Callable[[str], Target], make_sink: Callable[..., ExportSink]
) -> None:
    sink = make_sink(make_target(kind).export())
    send(sink, records()[:1])
    asyncio.run(sink.aclose())
    asyncio.run(sink.aclose())


# --- the fault proxy itself -----------------------------------------------------------------------


def test_fault_proxy_forwards_requests_unchanged_and_counts_them(
    aws_clients: AwsClients, aws_fault_proxy: AwsFaultProxy
) -> None:
    via_proxy = AwsClients(aws_fault_proxy.endpoint_url).s3()
    via_proxy.create_bucket(Bucket="proxied")
    body = os.urandom(3 * MiB)  # large enough for botocore's "Expect: 100-continue"
    via_proxy.put_object(Bucket="proxied", Key="k", Body=body)
    assert via_proxy.head_object(Bucket="proxied", Key="k")["ContentLength"] == len(body)
    assert via_proxy.get_object(Bucket="proxied", Key="k")["Body"].read() == body
    assert aws_clients.s3().get_object(Bucket="proxied", Key="k")["Body"].read() == body
    assert aws_fault_proxy.count("s3.PutObject") == 1
    assert aws_fault_proxy.count("HeadObject") == 1
    aws_fault_proxy.deny(1, operations=["s3.HeadObject"])
    with pytest.raises(ClientError) as info:
        via_proxy.head_object(Bucket="proxied", Key="k")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert via_proxy.head_object(Bucket="proxied", Key="k")["ContentLength"] == len(body)
    stats = aws_fault_proxy.statistics()
    assert stats.injected_errors == 1
    assert stats.requests["s3.HeadObject"] == 3
