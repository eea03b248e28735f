"""The export types' request builders and error translation: pure, no boto3 call, no network."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from headwater.core.config import ExportConfig, parse_config
from headwater.plugins.upload import firehose, iot_core, kinesis, s3
from headwater.plugins.upload._batching import send_in_order, split_within
from headwater.plugins.upload._errors import export_error
from headwater.plugins.upload.factory import build_sink
from headwater.plugins.upload.sink import (
    AwsSession,
    BatchLimits,
    ExportBlockedError,
    ExportError,
    ExportOfflineError,
    ExportRetryableError,
    ExportThrottledError,
)
from headwater.wire.streams import StreamRecord

KiB = 1024
MiB = 1024 * KiB
T0 = int(datetime(2024, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC).timestamp() * 1000)


def export(kind: str, **keys: object) -> ExportConfig:
    """An export parsed by the real config loader (so options look as the driver will see them)."""
    data = {
        "streams": {"telemetry": {"topics": ["sensors/#"], "exports": [{"id": "x", "type": kind, **keys}]}}
    }
    return parse_config(data, source="test.yaml").streams["telemetry"].exports[0]


def record(
    sequence: int,
    payload: bytes = b"reading",
    *,
    topic: str = "sensors/1/telemetry",
    client_id: str = "dev-1",
    timestamp_ms: int = T0,
) -> StreamRecord:
    return StreamRecord(
        sequence=sequence,
        timestamp_ms=timestamp_ms,
        topic=topic,
        qos=1,
        client_id=client_id,
        payload=payload,
    )


# --- shared splitting -------------------------------------------------------------------------


def test_split_within_respects_count_and_bytes_in_order() -> None:
    assert split_within([], max_records=3, max_bytes=10) == []
    assert split_within([1] * 7, max_records=3, max_bytes=100) == [range(3), range(3, 6), range(6, 7)]
    assert split_within([4, 4, 4, 1], max_records=10, max_bytes=8) == [range(2), range(2, 4)]
    # An item above max_bytes still goes out, alone (the caller's problem() should refuse it).
    assert split_within([2, 20, 2], max_records=10, max_bytes=8) == [range(1), range(1, 2), range(2, 3)]
    # Exactly at the limit fits.
    assert split_within([4, 4], max_records=2, max_bytes=8) == [range(2)]


class _Request:
    def __init__(self, *sequences: int) -> None:
        self.sequences = sequences


def test_send_in_order_keeps_the_delivered_prefix_when_a_later_request_fails() -> None:
    requests = [_Request(0, 1), _Request(2, 3), _Request(4)]
    sent: list[tuple[int, ...]] = []

    async def send(request: _Request) -> Mapping[int, str]:
        sent.append(request.sequences)
        if request.sequences[0] == 2:
            raise ExportThrottledError("SlowDown: later")
        return {1: "InternalFailure: x"}

    outcome = asyncio.run(send_in_order(requests, send))
    assert sent == [(0, 1), (2, 3)]
    assert outcome.failed == {
        1: "InternalFailure: x",
        2: "not sent: SlowDown: later",
        3: "not sent: SlowDown: later",
        4: "not sent: SlowDown: later",
    }


def test_send_in_order_raises_when_the_first_request_fails() -> None:
    async def send(request: _Request) -> Mapping[int, str]:
        raise ExportOfflineError(f"down at {request.sequences}")

    with pytest.raises(ExportOfflineError, match="down at"):
        asyncio.run(send_in_order([_Request(0), _Request(1)], send))


# --- kinesis -------------------------------------------------------------------------------------


def kinesis_builder(template: str = "{topic}") -> kinesis.KinesisRequestBuilder:
    return kinesis.KinesisRequestBuilder(stream_name="raw", partition_key=template, stream="telemetry")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{topic}", "sensors/1/telemetry"),
        ("{client_id}", "dev-1"),
        ("{stream}", "telemetry"),
        ("{sequence}", "42"),
        ("{stream}:{client_id}:{sequence}", "telemetry:dev-1:42"),
        ("fixed", "fixed"),
    ],
)
def test_kinesis_partition_key_template(template: str, expected: str) -> None:
    assert kinesis_builder(template).partition_key_for(record(42)) == expected


def test_kinesis_empty_partition_key_falls_back_to_the_stream_name() -> None:
    assert kinesis_builder("{client_id}").partition_key_for(record(0, client_id="")) == "telemetry"


def test_kinesis_partition_key_is_cut_to_256_characters_never_inside_a_surrogate_pair() -> None:
    builder = kinesis_builder()
    assert builder.partition_key_for(record(0, topic="a" * 300)) == "a" * 256
    assert builder.partition_key_for(record(0, topic="a" * 256)) == "a" * 256
    # "😀" is two UTF-16 code units: 255 + 2 would be 257, so it is left out entirely.
    key = builder.partition_key_for(record(0, topic="a" * 255 + "😀" + "b"))
    assert key == "a" * 255
    assert builder.partition_key_for(record(0, topic="😀" * 200)) == "😀" * 128


def test_kinesis_record_size_counts_data_and_utf8_partition_key() -> None:
    builder = kinesis_builder()
    assert builder.record_size(record(0, b"12345", topic="é")) == 5 + 2


def test_kinesis_one_mib_limit_includes_the_partition_key() -> None:
    builder = kinesis_builder("{topic}")
    key = "k" * 10
    fits = record(0, b"x" * (MiB - 10), topic=key)
    too_big = record(1, b"x" * (MiB - 9), topic=key)
    assert builder.problem(fits) is None
    message = builder.problem(too_big)
    assert message is not None
    assert "1048577 bytes" in message
    assert "partition key 10" in message
    assert "1048576" in message


def test_kinesis_build_splits_at_500_records_and_5_mib() -> None:
    builder = kinesis_builder("{sequence}")
    requests = builder.build([record(n, b"") for n in range(1200)])
    assert [len(r.sequences) for r in requests] == [500, 500, 200]
    assert [r.sequences[0] for r in requests] == [0, 500, 1000]
    # Records of exactly 1 MiB with their one-character keys: five per call.
    big = [record(n, b"x" * (MiB - 1)) for n in range(7)]
    requests = builder.build(big)
    assert [r.sequences for r in requests] == [(0, 1, 2, 3, 4), (5, 6)]
    assert sum(len(d) + len(k) for d, k in requests[0].entries) == 5 * MiB


def test_kinesis_request_and_response_mapping() -> None:
    [request] = kinesis_builder().build([record(7, b"\x00a"), record(8, b"b", topic="t/2")])
    assert request.api_kwargs() == {
        "StreamName": "raw",
        "Records": [
            {"Data": b"\x00a", "PartitionKey": "sensors/1/telemetry"},
            {"Data": b"b", "PartitionKey": "t/2"},
        ],
    }
    response: Any = {
        "FailedRecordCount": 1,
        "Records": [
            {"SequenceNumber": "1", "ShardId": "shardId-000000000000"},
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"},
        ],
    }
    assert request.failures(response) == {8: "ProvisionedThroughputExceededException: Rate exceeded"}
    with pytest.raises(ExportRetryableError, match="1 results for 2 records"):
        request.failures({"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1"}]})  # type: ignore[typeddict-item]


def test_kinesis_limits_follow_the_config() -> None:
    sink = build_sink(
        export("kinesis", stream_name="raw", batch_size=100, batch_interval="250ms"),
        stream="telemetry",
        aws=AwsSession(region="us-east-1"),
    )
    assert sink.limits == BatchLimits(max_records=100, max_bytes=5 * MiB, max_wait=0.25)


# --- firehose ------------------------------------------------------------------------------------


def test_firehose_appends_the_delimiter_and_counts_it() -> None:
    builder = firehose.FirehoseRequestBuilder.from_config(export("firehose", delivery_stream="d"))
    assert builder.delimiter == b"\n"
    [request] = builder.build([record(0, b"a"), record(1, b"b")])
    assert request.api_kwargs() == {
        "DeliveryStreamName": "d",
        "Records": [{"Data": b"a\n"}, {"Data": b"b\n"}],
    }
    assert builder.record_size(record(0, b"abc")) == 4
    no_delimiter = firehose.FirehoseRequestBuilder.from_config(
        export("firehose", delivery_stream="d", delimiter="")
    )
    assert no_delimiter.record_size(record(0, b"abc")) == 3


def test_firehose_1000_kib_limit_includes_the_delimiter() -> None:
    builder = firehose.FirehoseRequestBuilder(delivery_stream="d", delimiter=b"\r\n")
    assert builder.problem(record(0, b"x" * (1000 * KiB - 2))) is None
    message = builder.problem(record(0, b"x" * (1000 * KiB - 1)))
    assert message is not None
    assert "1024001 bytes" in message
    assert "1024000" in message


def test_firehose_build_splits_at_500_records_and_4_mib() -> None:
    builder = firehose.FirehoseRequestBuilder(delivery_stream="d", delimiter=b"\n")
    assert [len(r.sequences) for r in builder.build([record(n) for n in range(501)])] == [500, 1]
    big = [record(n, b"x" * (1000 * KiB - 1)) for n in range(5)]  # 1000 KiB each with "\n"
    assert [r.sequences for r in builder.build(big)] == [(0, 1, 2, 3), (4,)]


def test_firehose_response_mapping() -> None:
    [request] = firehose.FirehoseRequestBuilder(delivery_stream="d", delimiter=b"").build(
        [record(3), record(4), record(5)]
    )
    response: Any = {
        "FailedPutCount": 2,
        "Encrypted": False,
        "RequestResponses": [
            {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."},
            {"RecordId": "r"},
            {"ErrorCode": "InternalFailure"},
        ],
    }
    assert request.failures(response) == {
        3: "ServiceUnavailableException: Slow down.",
        5: "InternalFailure",
    }


# --- s3 --------------------------------------------------------------------------------------------

DEFAULT_KEY = "{stream}/{yyyy}/{mm}/{dd}/{HH}/{first_sequence}-{last_sequence}.jsonl.gz"


def s3_builder(**keys: object) -> s3.S3ObjectBuilder:
    return s3.S3ObjectBuilder.from_config(export("s3", bucket="bucket", **keys), stream="telemetry")


def test_s3_key_uses_the_first_records_timestamp_in_utc_and_the_sequence_range() -> None:
    builder = s3_builder()
    assert builder.key == DEFAULT_KEY
    # The batch starts on 2024-12-31 23:59:59.5 UTC and ends in 2025: the first record decides.
    records = [record(10, timestamp_ms=T0), record(11, timestamp_ms=T0 + 1000)]
    obj = builder.build(records)
    assert obj.key == "telemetry/2024/12/31/23/10-11.jsonl.gz"
    assert obj.bucket == "bucket"
    assert builder.build(records) == obj  # a retry writes the same key and the same bytes


def test_s3_key_template_with_every_placeholder() -> None:
    first = record(5, timestamp_ms=0)
    key = s3.object_key(
        "{stream}-{yyyy}{mm}{dd}{HH}-{first_sequence}-{last_sequence}",
        stream="s",
        first=first,
        last_sequence=9,
    )
    assert key == "s-1970010100-5-9"
    assert s3_builder(compression="none").key == DEFAULT_KEY.removesuffix(".gz")


def test_s3_json_lines_gzip_round_trip() -> None:
    records = [record(0, b"text \xc3\xa9"), record(1, b"\xff\x00binary"), record(2, b"")]
    obj = s3_builder().build(records)
    assert obj.content_encoding == "gzip"
    lines = gzip.decompress(obj.body).split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == [r.to_json_dict() for r in records]
    assert json.loads(lines[0])["payload"] == "text é"
    assert "payload_b64" in json.loads(lines[1])
    assert b", " not in lines[0]  # compact
    assert "é".encode() in lines[0]  # UTF-8, not \\u escapes


def test_s3_uncompressed_body_is_the_json_lines() -> None:
    records = [record(0), record(1)]
    obj = s3_builder(compression="none").build(records)
    assert obj.content_encoding is None
    assert obj.body == b"".join(s3.json_line(r) for r in records)


def test_s3_record_size_and_problem_at_max_object_size() -> None:
    builder = s3_builder(max_object_size="1KiB")
    small = record(0, b"x")
    line = len(s3.json_line(small))
    assert builder.record_size(small) == line
    fits = record(0, b"x" * (1024 - line + 1))
    assert builder.record_size(fits) == 1024
    assert builder.problem(fits) is None
    too_big = record(0, b"x" * (1024 - line + 2))
    message = builder.problem(too_big)
    assert message is not None
    assert "1025 bytes" in message
    assert "1024" in message


def test_s3_limits_are_object_size_and_age() -> None:
    sink = build_sink(
        export("s3", bucket="bucket", max_object_size="2MiB", max_object_age="90s", batch_size=10),
        stream="telemetry",
        aws=AwsSession(region="us-east-1"),
    )
    assert sink.limits == BatchLimits(max_records=100_000, max_bytes=2 * MiB, max_wait=90.0)


@pytest.mark.parametrize(
    ("size", "parts"),
    [
        (0, []),
        (1, [1]),
        (8 * MiB, [8 * MiB]),
        (8 * MiB + 1, [8 * MiB, 1]),
        (20 * MiB, [8 * MiB, 8 * MiB, 4 * MiB]),
    ],
)
def test_s3_multipart_part_splitting(size: int, parts: list[int]) -> None:
    ranges = s3.part_ranges(size)
    assert [len(r) for r in ranges] == parts
    assert [r.start for r in ranges] == [sum(parts[:i]) for i in range(len(parts))]


def test_s3_multipart_threshold() -> None:
    below = s3.S3Object(bucket="b", key="k", body=b"x" * (8 * MiB - 1), content_encoding=None)
    at = s3.S3Object(bucket="b", key="k", body=b"x" * (8 * MiB), content_encoding=None)
    assert (below.multipart, at.multipart) == (False, True)


# --- iot core ---------------------------------------------------------------------------------------


def iot_builder(topic: str = "{topic}") -> iot_core.IotPublishBuilder:
    return iot_core.IotPublishBuilder.from_config(export("iot_core", topic=topic, qos=1), stream="telemetry")


def test_iot_topic_template() -> None:
    assert iot_builder().topic_for(record(0)) == "sensors/1/telemetry"
    builder = iot_builder("hw/{stream}/{client_id}/{topic}")
    assert builder.topic_for(record(0)) == "hw/telemetry/dev-1/sensors/1/telemetry"
    assert builder.qos == 1
    assert builder.record_size(record(0, b"abc", topic="t")) == 3 + len("hw/telemetry/dev-1/t")


def test_iot_payload_limit_is_128_kib() -> None:
    builder = iot_builder()
    assert builder.problem(record(0, b"x" * (128 * KiB))) is None
    message = builder.problem(record(0, b"x" * (128 * KiB + 1)))
    assert message is not None
    assert "131073 bytes" in message
    assert "131072" in message


@pytest.mark.parametrize(
    ("template", "rec", "reason"),
    [
        ("{client_id}", record(0, client_id=""), "empty topic"),
        ("d/{client_id}", record(0, client_id="a+b"), "wildcard"),
        ("{topic}", record(0, topic="t" * 257), "257 bytes"),
        ("{topic}", record(0, topic="/".join("abcdefghi")), "8 '/'"),
    ],
)
def test_iot_topics_aws_refuses_are_problems(template: str, rec: StreamRecord, reason: str) -> None:
    message = iot_builder(template).problem(rec)
    assert message is not None
    assert reason in message


def test_iot_topic_limits_at_the_boundary() -> None:
    builder = iot_builder()
    assert builder.problem(record(0, topic="t" * 256)) is None
    assert builder.problem(record(0, topic="/".join("abcdefgh"))) is None  # 7 slashes


def test_iot_limits_follow_the_config() -> None:
    sink = build_sink(
        export("iot_core", batch_size=20, batch_interval="2s"),
        stream="telemetry",
        aws=AwsSession(region="us-east-1"),
    )
    assert sink.limits.max_records == 20
    assert sink.limits.max_wait == 2.0
    assert sink.limits.max_bytes >= 20 * (128 * KiB)


def test_build_sink_dispatches_on_the_type() -> None:
    aws = AwsSession(region="us-east-1")
    assert isinstance(
        build_sink(export("kinesis", stream_name="s"), stream="t", aws=aws), kinesis.KinesisSink
    )
    assert isinstance(
        build_sink(export("firehose", delivery_stream="d"), stream="t", aws=aws), firehose.FirehoseSink
    )
    assert isinstance(build_sink(export("s3", bucket="bucket"), stream="t", aws=aws), s3.S3Sink)
    assert isinstance(build_sink(export("iot_core"), stream="t", aws=aws), iot_core.IotCoreSink)


# --- error translation --------------------------------------------------------------------------


def client_error(code: str, message: str = "AWS says no", status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutRecords")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ProvisionedThroughputExceededException", 400, ExportThrottledError),
        ("ThrottlingException", 400, ExportThrottledError),
        ("ThrottlingException", 429, ExportThrottledError),
        ("SlowDown", 503, ExportThrottledError),
        ("ServiceUnavailableException", 503, ExportThrottledError),
        ("LimitExceededException", 400, ExportThrottledError),
        ("RequestLimitExceeded", 400, ExportThrottledError),
        ("TooManyRequestsException", 429, ExportThrottledError),
        ("KMSThrottlingException", 400, ExportThrottledError),
        ("SomethingNew", 429, ExportThrottledError),
        ("ServiceUnavailable", 503, ExportThrottledError),
        ("AccessDenied", 403, ExportBlockedError),
        ("AccessDeniedException", 400, ExportBlockedError),
        ("UnrecognizedClientException", 400, ExportBlockedError),
        ("InvalidSignatureException", 400, ExportBlockedError),
        ("ExpiredTokenException", 400, ExportBlockedError),
        ("ExpiredToken", 400, ExportBlockedError),
        ("ResourceNotFoundException", 400, ExportBlockedError),
        ("NoSuchBucket", 404, ExportBlockedError),
        ("ForbiddenException", 403, ExportBlockedError),
        ("KMSDisabledException", 400, ExportBlockedError),
        ("InvalidArgumentException", 400, ExportBlockedError),
        ("InternalFailure", 500, ExportRetryableError),
        ("InternalError", 500, ExportRetryableError),
        ("SomethingNew", 502, ExportRetryableError),
    ],
)
def test_aws_error_codes_map_to_export_errors(code: str, status: int, kind: type[ExportError]) -> None:
    error = export_error(client_error(code, status=status))
    assert type(error) is kind
    assert str(error) == f"{code}: AWS says no"


def test_aws_error_without_message_is_its_code() -> None:
    assert str(export_error(client_error("NoSuchBucket", message=""))) == "NoSuchBucket"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ExportOfflineError),
        (ConnectTimeoutError(endpoint_url="http://10.255.255.1"), ExportOfflineError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), ExportOfflineError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), ExportOfflineError),
        (NoCredentialsError(), ExportBlockedError),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), ExportBlockedError),
        (ParamValidationError(report="Invalid length for parameter PartitionKey"), ExportBlockedError),
        (ResponseParserError("Unable to parse response"), ExportRetryableError),
    ],
)
def test_botocore_errors_map_to_export_errors(exc: Exception, kind: type[ExportError]) -> None:
    error = export_error(exc)
    assert type(error) is kind
    assert str(error).startswith(f"{type(exc).__name__}: ")
