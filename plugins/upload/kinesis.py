"""Kinesis Data Streams export (``type: kinesis``): one Kinesis record per stream record.

Request builder (:class:`KinesisRequestBuilder`, pure) and service (:class:`KinesisSink`, the
only code here calling boto3), behind :class:`~headwater.plugins.upload.sink.ExportSink`.

What lands in Kinesis: ``Data`` = the payload bytes as published; ``PartitionKey`` = the
export's ``partition_key`` template (``{topic}``, ``{client_id}``, ``{stream}``, ``{sequence}``)
expanded for the record. Kinesis wants 1..256 characters, so:

* an **empty** expansion (``{client_id}`` of a client without an id) falls back to the
  Headwater stream's name (never empty): those records share one shard, in order;
* a **longer** expansion is cut to its first 256 characters (counted in UTF-16 code units, the
  stricter count, so AWS's count agrees). Records whose keys share those characters share a
  shard; per-key order still holds.

Limits (AWS PutRecords): ≤ 500 records and ≤ 5 MiB a call, ≤ 1 MiB a record, where a record's
size is its data plus its partition key (UTF-8), as AWS counts it. :meth:`KinesisSink.record_size`
is that size (the wire carries the data base64-encoded, ~4/3 of it); ``problem()`` refuses a
record above 1 MiB. Batches: ``batch_size`` (≤ 500, the config enforces it), 5 MiB,
``batch_interval``.

Partial failures: AWS answers per record, with ``ErrorCode`` ``ProvisionedThroughputExceededException``
or ``InternalFailure`` only (AWS's PutRecords reference); both may succeed later, so they are
``SendOutcome.failed`` (``"<ErrorCode>: <ErrorMessage>"``), never ``rejected``. A call that
fails as a whole raises an :class:`~headwater.plugins.upload.sink.ExportError`; when a batch
needed several calls and a later one fails as a whole, the records of that call and after are
``failed`` and the earlier calls stay delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from headwater.plugins.upload._batching import MiB, send_in_order, split_within
from headwater.plugins.upload._client import AwsClient, BuilderSink, client_config, new_session
from headwater.plugins.upload._errors import record_failures
from headwater.plugins.upload._options import str_option
from headwater.plugins.upload.sink import (
    AwsSession,
    BatchLimits,
    SendOutcome,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mypy_boto3_kinesis.client import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsInputTypeDef, PutRecordsOutputTypeDef

    from headwater.core.config import ExportConfig
    from headwater.wire.streams import StreamRecord

__all__ = [
    "MAX_PARTITION_KEY_LENGTH",
    "MAX_RECORDS_PER_CALL",
    "MAX_RECORD_BYTES",
    "MAX_REQUEST_BYTES",
    "KinesisRequestBuilder",
    "KinesisSink",
    "PutRecordsRequest",
    "expand_partition_key",
]

MAX_RECORDS_PER_CALL: Final = 500
MAX_REQUEST_BYTES: Final = 5 * MiB
MAX_RECORD_BYTES: Final = 1 * MiB  # data + partition key
MAX_PARTITION_KEY_LENGTH: Final = 256  # characters
_BMP_LAST: Final = 0xFFFF


def expand_partition_key(template: str, record: StreamRecord, *, stream: str) -> str:
    """The partition key of ``record``: the template expanded, never empty, ≤ 256 characters."""
    key = template.format(
        topic=record.topic, client_id=record.client_id, stream=stream, sequence=record.sequence
    )
    return _truncate_utf16(key or stream, MAX_PARTITION_KEY_LENGTH)


def _truncate_utf16(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units, never inside a surrogate pair."""
    if len(text) * 2 <= limit or len(text.encode("utf-16-le")) <= 2 * limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > _BMP_LAST else 1  # beyond the BMP: a surrogate pair
        if units > limit:
            return text[:index]
    return text


@dataclass(frozen=True, slots=True)
class PutRecordsRequest:
    """One PutRecords call: ``entries`` are ``(data, partition_key)`` for ``sequences``, in order."""

    stream_name: str
    sequences: tuple[int, ...]
    entries: tuple[tuple[bytes, str], ...]

    def api_kwargs(self) -> PutRecordsInputTypeDef:
        """The keyword arguments of boto3's ``put_records``."""
        return {
            "StreamName": self.stream_name,
            "Records": [{"Data": data, "PartitionKey": key} for data, key in self.entries],
        }

    def failures(self, response: PutRecordsOutputTypeDef) -> dict[int, str]:
        """Sequence → ``"<ErrorCode>: <ErrorMessage>"`` for each record AWS did not take."""
        return record_failures("PutRecords", self.sequences, response.get("Records", []))


@dataclass(frozen=True, slots=True)
class KinesisRequestBuilder:
    """Turns stream records into PutRecords calls within AWS's limits. Pure."""

    stream_name: str  # the Kinesis stream
    partition_key: str  # the template
    stream: str  # the Headwater stream the records come from

    @classmethod
    def from_config(cls, export: ExportConfig, *, stream: str) -> KinesisRequestBuilder:
        """The builder for a ``kinesis`` export of ``stream``."""
        return cls(
            stream_name=str_option(export, "stream_name"),
            partition_key=str_option(export, "partition_key"),
            stream=stream,
        )

    def partition_key_for(self, record: StreamRecord) -> str:
        """``record``'s partition key (see the module docstring for the fallback rules)."""
        return expand_partition_key(self.partition_key, record, stream=self.stream)

    def record_size(self, record: StreamRecord) -> int:
        """What ``record`` counts toward AWS's limits: data + partition key (UTF-8) bytes."""
        return len(record.payload) + len(self.partition_key_for(record).encode())

    def problem(self, record: StreamRecord) -> str | None:
        """Why Kinesis will never take ``record`` (larger than 1 MiB with its key), or ``None``."""
        key_bytes = len(self.partition_key_for(record).encode())
        size = len(record.payload) + key_bytes
        if size > MAX_RECORD_BYTES:
            return (
                f"record of {size} bytes (payload {len(record.payload)} + partition key {key_bytes}) "
                f"exceeds Kinesis's limit of {MAX_RECORD_BYTES} bytes (1 MiB) per record"
            )
        return None

    def build(self, records: Sequence[StreamRecord]) -> list[PutRecordsRequest]:
        """PutRecords calls for ``records``, in order, each within 500 records and 5 MiB."""
        entries = [(record.payload, self.partition_key_for(record)) for record in records]
        sizes = [len(data) + len(key.encode()) for data, key in entries]
        return [
            PutRecordsRequest(
                stream_name=self.stream_name,
                sequences=tuple(records[i].sequence for i in chunk),
                entries=tuple(entries[i] for i in chunk),
            )
            for chunk in split_within(sizes, max_records=MAX_RECORDS_PER_CALL, max_bytes=MAX_REQUEST_BYTES)
        ]


def _create_client(aws: AwsSession) -> KinesisClient:
    return new_session().client(
        "kinesis",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url("kinesis"),
        config=client_config(),
    )


def _put_records(client: KinesisClient, request: PutRecordsRequest) -> PutRecordsOutputTypeDef:
    return client.put_records(**request.api_kwargs())


class KinesisSink(BuilderSink["KinesisClient"]):
    """The ``kinesis`` export type: :class:`ExportSink` over PutRecords."""

    def __init__(self, export: ExportConfig, *, stream: str, aws: AwsSession) -> None:
        self.builder = KinesisRequestBuilder.from_config(export, stream=stream)
        super().__init__(
            rules=self.builder,
            limits=BatchLimits(
                max_records=min(export.batch_size, MAX_RECORDS_PER_CALL),
                max_bytes=MAX_REQUEST_BYTES,
                max_wait=export.batch_interval,
            ),
            client=AwsClient(partial(_create_client, aws)),
        )

    async def send(self, records: Sequence[StreamRecord]) -> SendOutcome:
        """PutRecords for ``records``; per-record errors come back as ``failed``."""
        return await send_in_order(self.builder.build(records), self._send_request)

    async def _send_request(self, request: PutRecordsRequest) -> dict[int, str]:
        response = await self._client.call(partial(_put_records, request=request))
        return request.failures(response)
