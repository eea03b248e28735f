"""The whole config document: its top-level keys, its sections in order, the checks across them.

Owns: :func:`parse_config` (the one entry point of validation), ``data_dir``, ``topic_prefix``,
the small ``uploads`` section, and the rules that involve two sections (a compose file must fit
in one MQTT packet). The sections are validated in a fixed order, so the first problem reported
stays the same; each section's own rules live in its module. It must never read a file: the
loader hands it the YAML-loaded document.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from headwater.core.config.aws import _aws
from headwater.core.config.broker import _broker
from headwater.core.config.deploy import _deploy
from headwater.core.config.errors import ConfigError, _describe
from headwater.core.config.reader import _bandwidth, _duration, _path, _Section, _str
from headwater.core.config.schema import HeadwaterConfig, UploadsConfig
from headwater.core.config.streams import _stream
from headwater.core.config.units import format_size
from headwater.core.topics import InvalidTopicError, validate_topic_name
from headwater.wire.streams import STREAM_NAME


def _topic_prefix(value: object, path: str) -> str:
    prefix = _str(value, path)
    try:
        validate_topic_name(prefix)
    except InvalidTopicError as exc:
        raise ConfigError(path, str(exc)) from exc
    if prefix.startswith("$"):
        raise ConfigError(path, f"must not start with '$', got {prefix!r}")
    if "" in prefix.split("/"):
        raise ConfigError(path, f"must not have empty levels, got {prefix!r}")
    return prefix


_TOP_KEYS: Final = ("data_dir", "topic_prefix", "broker", "aws", "streams", "uploads", "deploy")


def parse_config(data: object, *, source: str) -> HeadwaterConfig:
    """Validate a YAML-loaded document and return the frozen config.

    ``source`` names where ``data`` came from (a file path or ``<embedded default>``); it is
    stored in :attr:`HeadwaterConfig.source` and starts the message when the document as a whole
    is unusable. ``data_dir`` and the other relative paths are resolved against the current
    working directory, not the config file's directory. No file is read, except that TLS
    ``certfile``/``keyfile``/``cafile`` must exist. Raises :class:`ConfigError`.
    """
    if data is None:
        raise ConfigError(
            "",
            f"{source}: the config is empty (expected a mapping with keys such as broker, streams)",
        )
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: the config must be a mapping of sections, got {_describe(data)}")
    top = _Section(data, "", _TOP_KEYS)
    broker = _broker(top)
    streams = {
        name: _stream(name, value, path)
        for name, value, path in top.named("streams", what="stream", pattern=STREAM_NAME)
    }
    uploads = top.section("uploads", ("max_bandwidth", "max_backoff", "priority_aging"))
    deploy = _deploy(top)
    if deploy.enabled and deploy.max_compose_size > broker.limits.max_packet_size:
        raise ConfigError(
            "deploy.max_compose_size",
            f"{format_size(deploy.max_compose_size)} does not fit in one MQTT packet of "
            f"broker.limits.max_packet_size ({format_size(broker.limits.max_packet_size)}): "
            "lower one or raise the other",
        )
    return HeadwaterConfig(
        data_dir=top.get("data_dir", _path, Path("headwater-data").absolute()),
        topic_prefix=top.get("topic_prefix", _topic_prefix, "headwater"),
        broker=broker,
        aws=_aws(top),
        streams=streams,
        uploads=UploadsConfig(
            max_bandwidth=uploads.optional("max_bandwidth", _bandwidth),
            max_backoff=uploads.get("max_backoff", _duration(positive=True), 300.0),
            priority_aging=uploads.get("priority_aging", _duration(positive=True), 10.0),
        ),
        deploy=deploy,
        source=source,
    )
