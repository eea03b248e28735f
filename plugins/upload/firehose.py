"""Amazon Data Firehose export (``type: firehose``): one Firehose record per stream record.

Request builder (:class:`FirehoseRequestBuilder`, pure) and service (:class:`FirehoseSink`, the
only code here calling boto3), behind :class:`~headwater.plugins.upload.sink.ExportSink`.

What lands in Firehose: ``Data`` = the payload bytes as published followed by the export's
``delimiter`` (UTF-8; default a newline, ``""`` for none). Firehose concatenates the records it
buffers, so the delimiter is what separates them at the destination.

Limits (AWS PutRecordBatch): ≤ 500 records and ≤ 4 MiB a call, ≤ 1000 KiB (1,024,000 bytes) a
record, payload and delimiter together, before base64. :meth:`FirehoseSink.record_size` is that
size; ``problem()`` refuses a record above 1000 KiB. Batches: ``batch_size`` (≤ 500, the config
enforces it), 4 MiB, ``batch_interval``.

Partial failures: ``RequestResponses`` holds one entry per record, in order; an entry with an
``ErrorCode`` (``ServiceUnavailableException``, ``InternalFailure``) is ``SendOutcome.failed``
(``"<ErrorCode>: <ErrorMessage>"``); Firehose reports no per-record error that could never
succeed, so nothing is ``rejected``. Whole-call failures and multi-call batches behave as in
:mod:`headwater.plugins.upload.kinesis`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from headwater.plugins.upload._batching import KiB, MiB, send_in_order, split_within
from headwater.plugins.upload._client import AwsClient, BuilderSink, client_config, new_session
from headwater.plugins.upload._errors import record_failures
from headwater.plugins.upload._options import str_option
from headwater.plugins.upload.sink import AwsSession, BatchLimits, SendOutcome

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mypy_boto3_firehose.client import FirehoseClient
    from mypy_boto3_firehose.type_defs import PutRecordBatchInputTypeDef, PutRecordBatchOutputTypeDef

    from headwater.core.config import ExportConfig
    from headwater.wire.streams import StreamRecord

__all__ = [
    "MAX_RECORDS_PER_CALL",
    "MAX_RECORD_BYTES",
    "MAX_REQUEST_BYTES",
    "FirehoseRequestBuilder",
    "FirehoseSink",
    "PutRecordBatchRequest",
]

MAX_RECORDS_PER_CALL: Final = 500
MAX_REQUEST_BYTES: Final = 4 * MiB
MAX_RECORD_BYTES: Final = 1000 * KiB  # payload + delimiter


@dataclass(frozen=True, slots=True)
class PutRecordBatchRequest:
    """One PutRecordBatch call: ``records`` (payload + delimiter) for ``sequences``, in order."""

    delivery_stream: str
    sequences: tuple[int, ...]
    records: tuple[bytes, ...]

    def api_kwargs(self) -> PutRecordBatchInputTypeDef:
        """The keyword arguments of boto3's ``put_record_batch``."""
        return {
            "DeliveryStreamName": self.delivery_stream,
            "Records": [{"Data": data} for data in self.records],
        }

    def failures(self, response: PutRecordBatchOutputTypeDef) -> dict[int, str]:
        """Sequence → ``"<ErrorCode>: <ErrorMessage>"`` for each record Firehose did not take."""
        return record_failures("PutRecordBatch", self.sequences, response.get("RequestResponses", []))


@dataclass(frozen=True, slots=True)
class FirehoseRequestBuilder:
    """Turns stream records into PutRecordBatch calls within AWS's limits. Pure."""

    delivery_stream: str
    delimiter: bytes

    @classmethod
    def from_config(cls, export: ExportConfig) -> FirehoseRequestBuilder:
        """The builder for a ``firehose`` export."""
        return cls(
            delivery_stream=str_option(export, "delivery_stream"),
            delimiter=str_option(export, "delimiter").encode(),
        )

    def record_size(self, record: StreamRecord) -> int:
        """Payload + delimiter bytes (what AWS counts toward 1000 KiB / 4 MiB)."""
        return len(record.payload) + len(self.delimiter)

    def problem(self, record: StreamRecord) -> str | None:
        """Why Firehose will never take ``record`` (above 1000 KiB with the delimiter), or ``None``."""
        size = self.record_size(record)
        if size > MAX_RECORD_BYTES:
            return (
                f"record of {size} bytes (payload {len(record.payload)} + delimiter "
                f"{len(self.delimiter)}) exceeds Firehose's limit of {MAX_RECORD_BYTES} bytes "
                "(1000 KiB) per record"
            )
        return None

    def build(self, records: Sequence[StreamRecord]) -> list[PutRecordBatchRequest]:
        """PutRecordBatch calls for ``records``, in order, each within 500 records and 4 MiB."""
        data = [record.payload + self.delimiter for record in records]
        return [
            PutRecordBatchRequest(
                delivery_stream=self.delivery_stream,
                sequences=tuple(records[i].sequence for i in chunk),
                records=tuple(data[i] for i in chunk),
            )
            for chunk in split_within(
                [len(d) for d in data], max_records=MAX_RECORDS_PER_CALL, max_bytes=MAX_REQUEST_BYTES
            )
        ]


def _create_client(aws: AwsSession) -> FirehoseClient:
    return new_session().client(
        "firehose",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url("firehose"),
        config=client_config(),
    )


def _put_record_batch(client: FirehoseClient, request: PutRecordBatchRequest) -> PutRecordBatchOutputTypeDef:
    return client.put_record_batch(**request.api_kwargs())


class FirehoseSink(BuilderSink["FirehoseClient"]):
    """The ``firehose`` export type: :class:`ExportSink` over PutRecordBatch."""

    def __init__(self, export: ExportConfig, *, aws: AwsSession) -> None:
        self.builder = FirehoseRequestBuilder.from_config(export)
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
        """PutRecordBatch for ``records``; per-record errors come back as ``failed``."""
        return await send_in_order(self.builder.build(records), self._send_request)

    async def _send_request(self, request: PutRecordBatchRequest) -> dict[int, str]:
        response = await self._client.call(partial(_put_record_batch, request=request))
        return request.failures(response)
