"""Build an export's sink from its config: the one place that maps ``type`` to a module.

Each export type lives in its own module (request builder + service); see
:mod:`headwater.plugins.upload.sink` for the contract they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

from headwater.plugins.upload.firehose import FirehoseSink
from headwater.plugins.upload.iot_core import IotCoreSink
from headwater.plugins.upload.kinesis import KinesisSink
from headwater.plugins.upload.s3 import S3Sink

if TYPE_CHECKING:
    from headwater.core.config import ExportConfig
    from headwater.plugins.upload.sink import AwsSession, ExportSink

__all__ = ["build_sink"]


def build_sink(export: ExportConfig, *, stream: str, aws: AwsSession) -> ExportSink:
    """The sink of ``export`` (of the Headwater stream ``stream``), reaching AWS through ``aws``.

    Cheap and without I/O: the boto3 client is created on the first :meth:`ExportSink.send`.
    """
    match export.type:
        case "kinesis":
            return KinesisSink(export, stream=stream, aws=aws)
        case "firehose":
            return FirehoseSink(export, aws=aws)
        case "s3":
            return S3Sink(export, stream=stream, aws=aws)
        case "iot_core":
            return IotCoreSink(export, stream=stream, aws=aws)
        case unknown:
            assert_never(unknown)
