"""The ``streams`` section: each stream's topics, storage, retention and exports.

Owns: a stream's keys and defaults, the exports of each type (kinesis, firehose, s3, iot_core)
with their type-specific options and templates, and :func:`parse_stream_config`, which validates
one stream created at run time exactly as a file's would be. It must never touch a stream's
storage or an AWS service: the streams and upload plugins do, with what this builds.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from typing import Final, Literal

from headwater.core.config.errors import ConfigError
from headwater.core.config.reader import (
    _NAME,
    _NAME_RULE,
    Converter,
    _bandwidth,
    _bool,
    _duration,
    _expected,
    _int_between,
    _join,
    _list_of,
    _matching,
    _nonempty_str,
    _one_of,
    _Section,
    _size,
    _str,
    _topic_filter,
)
from headwater.core.config.schema import ExportConfig, StreamConfig
from headwater.core.config.units import _GiB, _KiB, _MiB
from headwater.wire.streams import stream_name_problem

# --- templates ----------------------------------------------------------------------------------


_KINESIS_PLACEHOLDERS: Final = ("topic", "client_id", "stream", "sequence")
_S3_PLACEHOLDERS: Final = ("stream", "yyyy", "mm", "dd", "HH", "first_sequence", "last_sequence")
_IOT_PLACEHOLDERS: Final = ("topic", "stream", "client_id")


def _template_literals(template: str, placeholders: Collection[str], path: str) -> str:
    """Check a ``{placeholder}`` template; return its literal text (placeholders removed)."""
    literals = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(path, f"invalid template {template!r}: {exc}") from exc
    for literal, name, spec, conversion in parsed:
        literals.append(literal)
        if name is None:
            continue
        if name not in placeholders:
            expected = ", ".join("{" + p + "}" for p in sorted(placeholders))
            raise ConfigError(path, f"unknown placeholder {{{name}}} (expected one of: {expected})")
        if spec or conversion:
            raise ConfigError(path, f"placeholder {{{name}}} takes no format spec or conversion")
    return "".join(literals)


def _template(placeholders: Collection[str]) -> Converter[str]:
    def convert(value: object, path: str) -> str:
        template = _nonempty_str(value, path)
        _template_literals(template, placeholders, path)
        return template

    return convert


def _s3_key(value: object, path: str) -> str:
    key = _template(_S3_PLACEHOLDERS)(value, path)
    if key.startswith("/"):
        raise ConfigError(path, f"must not start with '/', got {key!r}")
    return key


def _iot_topic(value: object, path: str) -> str:
    template = _nonempty_str(value, path)
    literals = _template_literals(template, _IOT_PLACEHOLDERS, path)
    if "+" in literals or "#" in literals or "\0" in literals:
        raise ConfigError(path, f"must be a topic name, not a filter (no +, #), got {template!r}")
    if template.startswith("$"):
        raise ConfigError(path, f"must not start with '$' (reserved by AWS IoT), got {template!r}")
    return template


# --- exports ------------------------------------------------------------------------------------


_EXPORT_TYPES: Final[tuple[Literal["kinesis", "firehose", "s3", "iot_core"], ...]] = (
    "kinesis",
    "firehose",
    "s3",
    "iot_core",
)
_EXPORT_KEYS: Final = (
    "id",
    "type",
    "priority",
    "batch_size",
    "batch_interval",
    "max_bandwidth",
    "start",
)
_EXPORT_TYPE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "kinesis": ("stream_name", "partition_key"),
    "firehose": ("delivery_stream", "delimiter"),
    "s3": ("bucket", "key", "compression", "max_object_size", "max_object_age"),
    "iot_core": ("topic", "qos"),
}
_AWS_NAME_RULE: Final = "1-{} characters of A-Z a-z 0-9 _ . -"
_BUCKET_RULE: Final = "3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit"
_COMPRESSIONS: Final = ("gzip", "none")
# PutRecords and PutRecordBatch take at most 500 records per call.
_MAX_AWS_BATCH: Final = 500
_S3_DEFAULT_KEY: Final = "{stream}/{yyyy}/{mm}/{dd}/{HH}/{first_sequence}-{last_sequence}.jsonl"
_S3_MAX_PUT: Final = 5 * _GiB


def _start(value: object, path: str) -> Literal["oldest", "newest"] | int:
    if value == "oldest":
        return "oldest"
    if value == "newest":
        return "newest"
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_between(0)(value, path)
    raise _expected(path, "oldest, newest or a sequence number", value)


def _export_options(kind: str, export: _Section) -> dict[str, object]:
    if kind == "kinesis":
        return {
            "stream_name": export.require(
                "stream_name",
                _matching(r"[A-Za-z0-9_.-]{1,128}", "Kinesis stream name", _AWS_NAME_RULE.format(128)),
            ),
            "partition_key": export.get("partition_key", _template(_KINESIS_PLACEHOLDERS), "{topic}"),
        }
    if kind == "firehose":
        return {
            "delivery_stream": export.require(
                "delivery_stream",
                _matching(
                    r"[A-Za-z0-9_.-]{1,64}", "Firehose delivery stream name", _AWS_NAME_RULE.format(64)
                ),
            ),
            "delimiter": export.get("delimiter", _str, "\n"),
        }
    if kind == "s3":
        compression = export.get("compression", _one_of(_COMPRESSIONS), "gzip")
        default_key = _S3_DEFAULT_KEY + (".gz" if compression == "gzip" else "")
        return {
            "bucket": export.require(
                "bucket", _matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "S3 bucket name", _BUCKET_RULE)
            ),
            "key": export.get("key", _s3_key, default_key),
            "compression": compression,
            "max_object_size": export.get(
                "max_object_size",
                _size(_KiB, _S3_MAX_PUT, why_maximum=" (S3's single PUT limit)"),
                64 * _MiB,
            ),
            "max_object_age": export.get("max_object_age", _duration(positive=True), 300.0),
        }
    return {  # iot_core
        "topic": export.get("topic", _iot_topic, "{topic}"),
        "qos": export.get("qos", _int_between(0, 1), 0),
    }


def _export(value: object, path: str) -> ExportConfig:
    export = _Section(value, path, keys=None)
    kind = export.require("type", _one_of(_EXPORT_TYPES))
    export.refuse_unknown(_EXPORT_KEYS + _EXPORT_TYPE_KEYS[kind])
    batch_limit = _MAX_AWS_BATCH if kind in {"kinesis", "firehose"} else None
    return ExportConfig(
        id=export.require("id", _matching(_NAME.pattern, "export id", _NAME_RULE)),
        type=kind,
        priority=export.get("priority", _int_between(1, 10), 5),
        batch_size=export.get("batch_size", _int_between(1, batch_limit), 500),
        batch_interval=export.get("batch_interval", _duration(positive=False), 1.0),
        max_bandwidth=export.optional("max_bandwidth", _bandwidth),
        start=export.get("start", _start, "oldest"),
        options=_export_options(kind, export),
    )


# --- streams ------------------------------------------------------------------------------------


_PERSISTENCES: Final[tuple[Literal["file", "memory"], ...]] = ("file", "memory")
_STRATEGIES: Final[tuple[Literal["overwrite_oldest", "reject_new"], ...]] = (
    "overwrite_oldest",
    "reject_new",
)
_STREAM_KEYS: Final = (
    "topics",
    "persistence",
    "max_size",
    "strategy_on_full",
    "ttl",
    "flush_on_write",
    "drop_exported",
    "exports",
)


def _stream(name: str, value: object, path: str) -> StreamConfig:
    stream = _Section(value, path, _STREAM_KEYS)
    persistence: Literal["file", "memory"] = stream.get("persistence", _one_of(_PERSISTENCES), "file")
    flush_on_write = stream.get("flush_on_write", _bool, default=False)
    if flush_on_write and persistence == "memory":
        raise ConfigError(
            stream.at("flush_on_write"),
            "needs persistence: file (a memory stream has nothing to fsync)",
        )
    exports: tuple[ExportConfig, ...] = stream.get("exports", _list_of(_export), ())
    seen: set[str] = set()
    for index, export in enumerate(exports):
        if export.id in seen:
            raise ConfigError(f"{stream.at('exports')}[{index}].id", f"duplicate export id {export.id!r}")
        seen.add(export.id)
    return StreamConfig(
        name=name,
        topics=stream.get("topics", _list_of(_topic_filter), ()),
        persistence=persistence,
        max_size=stream.get("max_size", _size(_KiB), 256 * _MiB),
        strategy_on_full=stream.get("strategy_on_full", _one_of(_STRATEGIES), "overwrite_oldest"),
        ttl=stream.optional("ttl", _duration(positive=True)),
        flush_on_write=flush_on_write,
        drop_exported=stream.get("drop_exported", _bool, default=False),
        exports=exports,
    )


def parse_stream_config(name: str, data: object) -> StreamConfig:
    """Validate one stream's settings outside a config file (run-time create/update).

    ``data`` holds the keys of a ``streams.<name>`` section (``None`` means all defaults).
    Raises :class:`ConfigError` naming ``streams.<name>.<key>``, exactly as :func:`parse_config`
    would for the same section in a file, and for a ``name`` that is no valid stream name.
    """
    problem = stream_name_problem(name)
    if problem is not None:
        raise ConfigError(_join("streams", name), problem)
    return _stream(name, data, _join("streams", name))
