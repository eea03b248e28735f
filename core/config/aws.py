"""The ``aws`` section: the region and the endpoint overrides every AWS client of the hub uses.

Owns: the region name rule and which services may have their own endpoint. It must never
create a client or talk to AWS: the upload and deploy plugins do, with what this builds.
"""

from __future__ import annotations

from typing import Final

from headwater.core.config.reader import _matching, _Section, _url
from headwater.core.config.schema import AwsConfig

_AWS_SERVICES: Final = ("kinesis", "firehose", "s3", "iot-data", "ecr", "secretsmanager")


def _aws(top: _Section) -> AwsConfig:
    aws = top.section("aws", ("region", "endpoint_url", "endpoints"))
    endpoints = aws.section("endpoints", _AWS_SERVICES)
    return AwsConfig(
        region=aws.get(
            "region",
            _matching(r"[a-z0-9]+(?:-[a-z0-9]+)*", "AWS region", "a name such as us-east-1"),
            "us-east-1",
        ),
        endpoint_url=aws.optional("endpoint_url", _url),
        endpoints={
            service: endpoints.require(service, _url) for service in _AWS_SERVICES if service in endpoints
        },
    )
