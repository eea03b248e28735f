"""AWS IoT Core export (``type: iot_core``): one iot-data Publish per stream record.

Request builder (:class:`IotPublishBuilder`, pure) and service (:class:`IotCoreSink`, the only
code here calling boto3), behind :class:`~headwater.plugins.upload.sink.ExportSink`.

What lands in IoT Core: a publish of the payload bytes as published, to the export's ``topic``
template (``{topic}``, ``{stream}``, ``{client_id}``) expanded for the record, with the export's
``qos`` (0 or 1).

Limits (AWS IoT Core quotas, not adjustable): payload ≤ 128 KiB (131,072 bytes); topic ≤ 256
UTF-8 bytes with at most 7 ``/``. ``problem()`` refuses a record whose payload or expanded topic
breaks them, or whose expanded topic is empty or holds ``+`` / ``#`` (a ``{client_id}`` can).
:meth:`IotCoreSink.record_size` is payload + topic bytes. There is no per-call limit (one record
per call): ``limits`` is ``batch_size`` records, ``batch_interval``, and a byte limit that only a
batch of ``batch_size`` largest records reaches.

Publishes go out one at a time, in order (IoT Core keeps no order between concurrent
publishes). When publish *k* fails:

* with ``RequestEntityTooLargeException`` or ``InvalidRequestException`` (this record can never
  be published; ``problem()`` should have caught it) the record is ``SendOutcome.rejected`` and
  the next one is published;
* otherwise, when *k* is the first record, the :class:`~headwater.plugins.upload.sink.ExportError`
  propagates (nothing delivered); when records before *k* were published, they stay delivered and
  records *k*… are ``SendOutcome.failed`` (record *k* with AWS's error, the rest as "not sent"),
  so the driver checkpoints the delivered prefix and resends from *k*; that resend then raises
  the error with its proper class (throttled, offline, blocked).

Endpoint: IoT Core's data endpoint is account-specific. With no ``aws.endpoints.iot-data`` and
no ``aws.endpoint_url``, the sink asks IoT's ``DescribeEndpoint`` (``iot:Data-ATS``) once, when
it creates its client (needs ``iot:DescribeEndpoint``; a failure is an ExportError like any).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from headwater.plugins.upload._batching import KiB, not_sent
from headwater.plugins.upload._client import AwsClient, BuilderSink, client_config, new_session
from headwater.plugins.upload._errors import aws_error_code
from headwater.plugins.upload._options import int_option, str_option
from headwater.plugins.upload.sink import AwsSession, BatchLimits, ExportError, SendOutcome

if TYPE_CHECKING:
    from collections.abc import Sequence

    import boto3
    from mypy_boto3_iot_data.client import IoTDataPlaneClient

    from headwater.core.config import ExportConfig
    from headwater.wire.streams import StreamRecord

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_TOPIC_BYTES",
    "MAX_TOPIC_SLASHES",
    "IotCoreSink",
    "IotPublishBuilder",
    "describe_data_endpoint",
]

MAX_PAYLOAD_BYTES: Final = 128 * KiB
MAX_TOPIC_BYTES: Final = 256
MAX_TOPIC_SLASHES: Final = 7
# Publish errors about this one record: publishing it again can never succeed.
_RECORD_REJECTIONS: Final = frozenset({"RequestEntityTooLargeException", "InvalidRequestException"})


@dataclass(frozen=True, slots=True)
class IotPublishBuilder:
    """Turns a stream record into an iot-data Publish (topic, qos, payload). Pure."""

    topic: str  # the template
    qos: int
    stream: str

    @classmethod
    def from_config(cls, export: ExportConfig, *, stream: str) -> IotPublishBuilder:
        """The builder for an ``iot_core`` export of ``stream``."""
        return cls(topic=str_option(export, "topic"), qos=int_option(export, "qos"), stream=stream)

    def topic_for(self, record: StreamRecord) -> str:
        """The topic ``record`` is published to."""
        return self.topic.format(topic=record.topic, stream=self.stream, client_id=record.client_id)

    def record_size(self, record: StreamRecord) -> int:
        """Payload + topic (UTF-8) bytes."""
        return len(record.payload) + len(self.topic_for(record).encode())

    def problem(self, record: StreamRecord) -> str | None:
        """Why IoT Core will never take ``record`` (payload or topic), or ``None``."""
        if len(record.payload) > MAX_PAYLOAD_BYTES:
            return (
                f"payload of {len(record.payload)} bytes exceeds AWS IoT Core's limit of "
                f"{MAX_PAYLOAD_BYTES} bytes (128 KiB)"
            )
        topic = self.topic_for(record)
        if not topic:
            return f"topic template {self.topic!r} expands to an empty topic"
        if "+" in topic or "#" in topic:
            return f"topic {topic!r} holds a wildcard character (+ or #)"
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            return (
                f"topic of {len(topic.encode())} bytes exceeds AWS IoT Core's limit of "
                f"{MAX_TOPIC_BYTES} bytes"
            )
        if topic.count("/") > MAX_TOPIC_SLASHES:
            return (
                f"topic {topic!r} has {topic.count('/')} '/' (AWS IoT Core allows at most "
                f"{MAX_TOPIC_SLASHES})"
            )
        return None


def describe_data_endpoint(session: boto3.session.Session, aws: AwsSession) -> str:
    """The account's IoT Core data endpoint (``https://…-ats.iot.<region>.amazonaws.com``)."""
    iot = session.client(
        "iot", region_name=aws.region, endpoint_url=aws.endpoint_url("iot"), config=client_config()
    )
    try:
        address = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    finally:
        iot.close()
    return f"https://{address}"


def _create_client(aws: AwsSession) -> IoTDataPlaneClient:
    session = new_session()
    endpoint = aws.endpoint_url("iot-data") or describe_data_endpoint(session, aws)
    return session.client("iot-data", region_name=aws.region, endpoint_url=endpoint, config=client_config())


def _publish(client: IoTDataPlaneClient, *, topic: str, qos: int, payload: bytes) -> None:
    client.publish(topic=topic, qos=qos, payload=payload)


class IotCoreSink(BuilderSink["IoTDataPlaneClient"]):
    """The ``iot_core`` export type: :class:`ExportSink` publishing one record per call, in order."""

    def __init__(self, export: ExportConfig, *, stream: str, aws: AwsSession) -> None:
        self.builder = IotPublishBuilder.from_config(export, stream=stream)
        super().__init__(
            rules=self.builder,
            limits=BatchLimits(
                max_records=export.batch_size,
                max_bytes=export.batch_size * (MAX_PAYLOAD_BYTES + MAX_TOPIC_BYTES),
                max_wait=export.batch_interval,
            ),
            client=AwsClient(partial(_create_client, aws)),
        )

    async def send(self, records: Sequence[StreamRecord]) -> SendOutcome:
        """Publish ``records`` one after the other (see the module docstring on failures)."""
        rejected: dict[int, str] = {}
        for index, record in enumerate(records):
            publish = partial(
                _publish,
                topic=self.builder.topic_for(record),
                qos=self.builder.qos,
                payload=record.payload,
            )
            try:
                await self._client.call(publish)
            except ExportError as exc:
                if aws_error_code(exc.__cause__) in _RECORD_REJECTIONS:
                    rejected[record.sequence] = str(exc)
                    continue
                if index == 0:
                    raise
                failed = {record.sequence: str(exc)}
                failed.update(not_sent((r.sequence for r in records[index + 1 :]), str(exc)))
                return SendOutcome(failed=failed, rejected=rejected)
        return SendOutcome(rejected=rejected)
