"""Amazon S3 export (``type: s3``): one object of JSON lines per batch.

Request builder (:class:`S3ObjectBuilder`, pure) and service (:class:`S3Sink`, the only code here
calling boto3), behind :class:`~headwater.plugins.upload.sink.ExportSink`.

What lands in S3: one object per :meth:`S3Sink.send` call, holding one line per record, in
order: the record's :meth:`~headwater.wire.streams.StreamRecord.to_json_dict` (the
objects ``headwater streams read --json`` prints) as compact UTF-8 JSON followed by a newline.
With ``compression: gzip`` (the default) the body is gzip'd (``Content-Encoding: gzip``, no
timestamp in the gzip header); ``Content-Type`` is ``application/x-ndjson`` either way.

The key is the export's ``key`` template with ``{stream}``, ``{first_sequence}`` and
``{last_sequence}`` of the batch and ``{yyyy}`` ``{mm}`` ``{dd}`` ``{HH}`` of the **first record's
timestamp** (UTC), never of the clock: the same batch always gets the same key and the same
bytes, so a retry overwrites the object instead of adding a duplicate.

Batching (:attr:`S3Sink.limits`): objects roll over by size and age (the ``s3`` keys in docs/uploads.md):
``max_bytes`` = ``max_object_size``, counted in uncompressed JSON-line bytes (what
:meth:`S3Sink.record_size` returns: the compressed size is not known before compressing);
``max_wait`` = ``max_object_age``; ``max_records`` = :data:`MAX_RECORDS_PER_OBJECT` (100,000),
which only bounds how many records one object holds in memory. ``batch_size`` and
``batch_interval`` do not apply to S3. A record whose JSON line alone exceeds
``max_object_size`` has a ``problem()``: it could only be sent as an object larger than the
export allows, and every record without a problem fits in ``limits.max_bytes``.

Upload: a body below :data:`MULTIPART_THRESHOLD` (8 MiB) is one PutObject; a larger one is a
multipart upload of 8 MiB parts (the last one smaller; S3 wants ≥ 5 MiB for all but the last),
uploaded in order in one worker thread, and aborted when any step fails (a bucket lifecycle rule
``AbortIncompleteMultipartUpload`` still helps: an abort can fail too, e.g. offline).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Final, Literal

from headwater.plugins.upload._batching import MiB
from headwater.plugins.upload._client import AwsClient, BuilderSink, client_config, new_session
from headwater.plugins.upload._errors import AWS_ERRORS
from headwater.plugins.upload._options import float_option, int_option, str_option
from headwater.plugins.upload.sink import AwsSession, BatchLimits, SendOutcome

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CreateMultipartUploadRequestTypeDef,
        PutObjectRequestTypeDef,
    )

    from headwater.core.config import ExportConfig
    from headwater.wire.streams import StreamRecord

__all__ = [
    "CONTENT_TYPE",
    "MAX_RECORDS_PER_OBJECT",
    "MULTIPART_PART_SIZE",
    "MULTIPART_THRESHOLD",
    "S3Object",
    "S3ObjectBuilder",
    "S3Sink",
    "json_line",
    "object_key",
    "part_ranges",
]

_log = logging.getLogger(__name__)

MAX_RECORDS_PER_OBJECT: Final = 100_000
MULTIPART_THRESHOLD: Final = 8 * MiB
MULTIPART_PART_SIZE: Final = 8 * MiB
CONTENT_TYPE: Final = "application/x-ndjson"
_GZIP_LEVEL: Final = 6  # zlib's default: most of level 9's ratio at a fraction of its CPU


def json_line(record: StreamRecord) -> bytes:
    """``record`` as one line of the object: compact UTF-8 JSON and a newline."""
    text = json.dumps(record.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
    return text.encode() + b"\n"


def object_key(template: str, *, stream: str, first: StreamRecord, last_sequence: int) -> str:
    """The key of the object holding ``first`` … ``last_sequence`` (time from ``first``, UTC)."""
    when = datetime.fromtimestamp(first.timestamp_ms / 1000, tz=UTC)
    return template.format(
        stream=stream,
        yyyy=f"{when.year:04d}",
        mm=f"{when.month:02d}",
        dd=f"{when.day:02d}",
        HH=f"{when.hour:02d}",
        first_sequence=first.sequence,
        last_sequence=last_sequence,
    )


def part_ranges(size: int, part_size: int = MULTIPART_PART_SIZE) -> list[range]:
    """Byte ranges of the parts of a ``size``-byte body: ``part_size`` each, the last smaller."""
    return [range(start, min(start + part_size, size)) for start in range(0, size, part_size)]


@dataclass(frozen=True, slots=True)
class S3Object:
    """One object to upload: where, what, and how it is encoded."""

    bucket: str
    key: str
    body: bytes
    content_encoding: str | None  # "gzip" or None

    @property
    def multipart(self) -> bool:
        """Whether the body goes up as a multipart upload (≥ :data:`MULTIPART_THRESHOLD`)."""
        return len(self.body) >= MULTIPART_THRESHOLD


@dataclass(frozen=True, slots=True)
class S3ObjectBuilder:
    """Turns a batch of stream records into one S3 object. Pure."""

    bucket: str
    key: str  # the template
    compression: Literal["gzip", "none"]
    max_object_size: int  # uncompressed bytes
    stream: str

    @classmethod
    def from_config(cls, export: ExportConfig, *, stream: str) -> S3ObjectBuilder:
        """The builder for an ``s3`` export of ``stream``."""
        return cls(
            bucket=str_option(export, "bucket"),
            key=str_option(export, "key"),
            compression="gzip" if str_option(export, "compression") == "gzip" else "none",
            max_object_size=int_option(export, "max_object_size"),
            stream=stream,
        )

    def record_size(self, record: StreamRecord) -> int:
        """Bytes of ``record``'s JSON line (uncompressed)."""
        return len(json_line(record))

    def problem(self, record: StreamRecord) -> str | None:
        """A record whose JSON line alone is larger than ``max_object_size``."""
        return self.size_problem(self.record_size(record))

    def size_problem(self, size: int) -> str | None:
        """The problem of a record whose JSON line has ``size`` bytes, if any."""
        if size > self.max_object_size:
            return (
                f"record of {size} bytes as a JSON line exceeds the export's max_object_size "
                f"of {self.max_object_size} bytes"
            )
        return None

    def build(self, records: Sequence[StreamRecord], lines: Sequence[bytes] | None = None) -> S3Object:
        """The object for ``records`` (at least one, in stream order).

        ``lines``, when given, are the records' JSON lines already encoded (:func:`json_line`).
        """
        if not records:
            msg = "an S3 object needs at least one record"
            raise ValueError(msg)
        body = b"".join(lines if lines is not None else (json_line(record) for record in records))
        if self.compression == "gzip":
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
        return S3Object(
            bucket=self.bucket,
            key=object_key(
                self.key, stream=self.stream, first=records[0], last_sequence=records[-1].sequence
            ),
            body=body,
            content_encoding="gzip" if self.compression == "gzip" else None,
        )


def _create_client(aws: AwsSession) -> S3Client:
    return new_session().client(
        "s3", region_name=aws.region, endpoint_url=aws.endpoint_url("s3"), config=client_config()
    )


def _upload(client: S3Client, obj: S3Object) -> None:
    """Upload ``obj`` (blocking; runs in a worker thread)."""
    if not obj.multipart:
        put: PutObjectRequestTypeDef = {
            "Bucket": obj.bucket,
            "Key": obj.key,
            "Body": obj.body,
            "ContentType": CONTENT_TYPE,
        }
        if obj.content_encoding:
            put["ContentEncoding"] = obj.content_encoding
        client.put_object(**put)
        return
    create: CreateMultipartUploadRequestTypeDef = {
        "Bucket": obj.bucket,
        "Key": obj.key,
        "ContentType": CONTENT_TYPE,
        "ChecksumAlgorithm": "CRC32",
    }
    if obj.content_encoding:
        create["ContentEncoding"] = obj.content_encoding
    upload_id = client.create_multipart_upload(**create)["UploadId"]
    try:
        parts: list[CompletedPartTypeDef] = []
        for number, span in enumerate(part_ranges(len(obj.body)), start=1):
            answer = client.upload_part(
                Bucket=obj.bucket,
                Key=obj.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=obj.body[span.start : span.stop],
                ChecksumAlgorithm="CRC32",
            )
            part: CompletedPartTypeDef = {"ETag": answer["ETag"], "PartNumber": number}
            if answer.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = answer["ChecksumCRC32"]
            parts.append(part)
        client.complete_multipart_upload(
            Bucket=obj.bucket, Key=obj.key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        _abort(client, obj, upload_id)
        raise


def _abort(client: S3Client, obj: S3Object, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=obj.bucket, Key=obj.key, UploadId=upload_id)
    except AWS_ERRORS as exc:
        # The upload's own error is what the driver must see; this one only leaves parts behind.
        _log.warning(
            "could not abort the multipart upload of s3://%s/%s (%s): %s",
            obj.bucket,
            obj.key,
            upload_id,
            exc,
        )


class S3Sink(BuilderSink["S3Client"]):
    """The ``s3`` export type: :class:`ExportSink` writing one object per batch."""

    def __init__(self, export: ExportConfig, *, stream: str, aws: AwsSession) -> None:
        self.builder = S3ObjectBuilder.from_config(export, stream=stream)
        super().__init__(
            rules=self.builder,
            limits=BatchLimits(
                max_records=MAX_RECORDS_PER_OBJECT,
                max_bytes=self.builder.max_object_size,
                max_wait=float_option(export, "max_object_age"),
            ),
            client=AwsClient(partial(_create_client, aws)),
        )
        # record -> its JSON line, from sizing until sent (keyed by the record itself, not its
        # sequence: a sink must not trust that it never sees two records with one sequence)
        self._lines: dict[StreamRecord, bytes] = {}

    def record_size(self, record: StreamRecord) -> int:
        """Bytes of the record's JSON line, uncompressed (encoded once, kept for :meth:`send`)."""
        return len(self._line(record))

    def problem(self, record: StreamRecord) -> str | None:
        """A record whose JSON line alone exceeds ``max_object_size`` (it is never sent)."""
        problem = self.builder.size_problem(len(self._line(record)))
        if problem is not None:
            self._lines.pop(record, None)
        return problem

    def _line(self, record: StreamRecord) -> bytes:
        # The driver sizes each record as it gathers a batch, then sends it: encoding every
        # JSON line once instead of three times is most of an S3 export's CPU (bench/upload.py).
        line = self._lines.get(record)
        if line is None:
            line = self._lines[record] = json_line(record)
        return line

    async def send(self, records: Sequence[StreamRecord]) -> SendOutcome:
        """Upload ``records`` as one object; all or nothing."""
        if not records:
            return SendOutcome()
        lines = [self._lines.pop(record, b"") or json_line(record) for record in records]
        # Joining and compressing up to max_object_size is CPU work: off the event loop.
        obj = await asyncio.to_thread(self.builder.build, records, lines)
        try:
            await self._client.call(partial(_upload, obj=obj))
        except BaseException:
            # A retry sends the same records again: keep their lines.
            self._lines.update(zip(records, lines, strict=True))
            raise
        return SendOutcome()
