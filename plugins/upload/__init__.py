"""Uploaders: drain streams to AWS (Kinesis, Firehose, S3, IoT Core) by priority, at least once.

:mod:`~headwater.plugins.upload.sink` is the contract every export type implements;
the type modules (``kinesis``, ``firehose``, ``s3``, ``iot_core``) hold each type's request
builder and service.
"""

__all__: list[str] = []
