"""The stream API's protocol: request topics and bodies into typed requests, errors into types.

Owns the pure half of the server side of the stream API: :func:`parse_target` (which request a
topic names), :func:`parse_envelope` (where to answer), :func:`parse_request` (the operation's
keys, validated into one of the :data:`Request` dataclasses) and :func:`error_type` (which
``error.type`` a :class:`~headwater.core.streams.StreamError` is answered with). No I/O, no
event loop: :mod:`~headwater.plugins.streams.api` is the shell that uses it. The topics, the
envelope and every JSON shape of the responses are declared once, in
:mod:`headwater.wire.streams`, which the clients use too.

Everything below works with nothing but ``mosquitto_pub`` / ``mosquitto_sub``; docs/stream-api.md
is the same contract with examples.

Requests
--------

A request is a PUBLISH (any QoS, not retained) of a JSON object to a request topic::

    <prefix>/streams/_list              list the streams
    <prefix>/streams/<stream>/<op>      op: read, describe, append, create, update, delete, export

``<prefix>`` is ``topic_prefix`` (default ``headwater``). ``_list`` cannot be a stream name
(stream names start with a letter or digit). ``<prefix>/streams/<stream>/status`` is the
retained status topic that Headwater publishes; clients cannot publish to it.

Every request object carries:

``reply_to`` (string, required)
    The topic the response is published to (QoS 1, not retained). Subscribe to it before
    sending the request. :mod:`~headwater.plugins.streams.permissions` says which topics are
    accepted.
``request_id`` (string or integer, optional)
    Echoed in the response, to match responses to requests.

and, per operation (any other key is refused as ``invalid``):

============  ==============================================================================
op            keys
============  ==============================================================================
``_list``     none
describe      none
read          ``from`` (sequence, default 0 = the oldest record still stored), ``max`` (1..10000,
              default 100), ``max_bytes`` (payload bytes, 1..4MiB, default 1MiB; one record is
              returned even if it alone is larger), ``min`` (0..``max``, default 1) and
              ``timeout`` (seconds, 0..60, default 0): wait up to ``timeout`` until at least
              ``min`` records are there (long poll); answer earlier when ``max_bytes`` is
              reached
append        ``payload`` (text, stored as UTF-8) or ``payload_b64`` (base64 bytes), exactly
              one; ``topic`` (default: the request topic), stored as the record's topic
create        ``config``: the stream's settings, the keys of a ``streams.<name>`` section of the
              YAML config (``topics``, ``persistence``, ``max_size``, ``strategy_on_full``,
              ``ttl``, ``flush_on_write``, ``drop_exported``, ``exports``), validated by the same
              rules; absent keys take their defaults
update        ``config`` as for create. It *replaces* the stream's settings: absent keys take
              their defaults, they do not keep their current values
delete        none
export        ``export`` (an export id of the stream, required) and ``enabled`` (boolean,
              required): pause (``false``, state ``disabled``) or resume an export; persisted
============  ==============================================================================

Responses
---------

One JSON object on ``reply_to``::

    {"request_id": <as sent, or null>, "ok": true,  "result": <per op>}
    {"request_id": <as sent, or null>, "ok": false, "error": {"type": <type>, "message": <text>}}

Results: ``_list`` → ``{"streams": [<describe object>, ...]}`` (only the streams the requester
may describe, sorted by name); describe, create and update → the describe object (the same as
``headwater streams describe --json`` and the status topic); read → ``{"records": [<record>, ...],
"next_sequence": <n>}`` where a record is ``{"sequence", "timestamp" (ms), "topic", "qos",
"client_id", "payload" | "payload_b64"}`` and ``next_sequence`` is the ``from`` of the next read;
append → ``{"sequence": <n>}``; delete → ``{"name": <stream>}``; export → the export object of
the describe object.

Error types: ``not_found`` (no such stream), ``exists`` (create of an existing name),
``rejected`` (the stream refused the record: full with ``reject_new``, too large), ``invalid``
(malformed request, unknown op, bad config; the message names the key), ``forbidden`` (the ACL,
:mod:`~headwater.plugins.streams.permissions`), ``failed`` (the stream could not do it, e.g. a
storage error) and ``internal`` (a bug; details are in Headwater's log).

Exceptions::

    RequestError            a request that is answered with an error (``type``, ``message``)
    UnanswerableRequestError   a request that cannot be answered (no usable reply_to)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from headwater.core.config import ConfigError, StreamConfig, parse_stream_config
from headwater.core.streams import (
    InvalidStreamRequestError,
    StreamError,
    StreamExistsError,
    StreamNotFoundError,
    StreamRejectedError,
)
from headwater.core.topics import InvalidTopicError, validate_topic_name
from headwater.wire.streams import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    LIST_OPERATION,
    MAX_MAX_BYTES,
    MAX_MAX_COUNT,
    MAX_TIMEOUT,
    OPERATIONS,
    ErrorType,
    RequestEnvelope,
    WireFormatError,
    decode_request_envelope,
    streams_root,
)

__all__ = [
    "AppendRequest",
    "CreateRequest",
    "DeleteRequest",
    "DescribeRequest",
    "ExportSwitchRequest",
    "ListRequest",
    "ReadRequest",
    "Request",
    "RequestError",
    "UnanswerableRequestError",
    "UpdateRequest",
    "error_type",
    "parse_envelope",
    "parse_request",
    "parse_target",
]


class RequestError(Exception):
    """A request answered with an error; ``type`` is the response's ``error.type``."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.type: ErrorType = error_type
        self.message = message


class UnanswerableRequestError(Exception):
    """A request that can't be answered (no usable ``reply_to``); ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class ListRequest:
    """``<prefix>/streams/_list``."""


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """``<prefix>/streams/<stream>/describe``."""

    stream: str


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """``<prefix>/streams/<stream>/read``; the limits are validated."""

    stream: str
    from_sequence: int = 0
    max_count: int = DEFAULT_MAX_COUNT
    max_bytes: int = DEFAULT_MAX_BYTES
    min_count: int = 1
    timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """``<prefix>/streams/<stream>/append``; ``topic`` None means the request topic."""

    stream: str
    payload: bytes
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """``<prefix>/streams/<stream>/create`` with a validated config."""

    config: StreamConfig


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """``<prefix>/streams/<stream>/update`` with a validated config (replaces the old one)."""

    config: StreamConfig


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """``<prefix>/streams/<stream>/delete``."""

    stream: str


@dataclass(frozen=True, slots=True)
class ExportSwitchRequest:
    """``<prefix>/streams/<stream>/export``: pause or resume one export."""

    stream: str
    export_id: str
    enabled: bool


Request: TypeAlias = (
    ListRequest
    | DescribeRequest
    | ReadRequest
    | AppendRequest
    | CreateRequest
    | UpdateRequest
    | DeleteRequest
    | ExportSwitchRequest
)


def _describe_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        shown = json.dumps(value)
        return shown if len(shown) <= 60 else shown[:56] + '..."'  # noqa: PLR2004 - message width
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def parse_envelope(payload: bytes) -> RequestEnvelope:
    """Parse a request payload far enough to know where to answer.

    Raises :class:`UnanswerableRequestError` when the payload is not a JSON object or has no
    string ``reply_to`` (:func:`~headwater.wire.streams.decode_request_envelope` says why).
    Whether the requester may use that ``reply_to`` is decided later (it needs the ACL): see
    :meth:`RequestPermissions.check_reply_to`.
    """
    try:
        return decode_request_envelope(payload)
    except WireFormatError as exc:
        raise UnanswerableRequestError(str(exc)) from exc


def parse_target(prefix: str, topic: str) -> tuple[str | None, str] | None:
    """Split a topic under ``<prefix>/streams/`` into ``(stream, op)``; None if not under it.

    The list request gives ``(None, "_list")``. Raises :class:`RequestError` (``invalid``) for a
    topic under ``<prefix>/streams/`` that is no request topic.
    """
    root = streams_root(prefix)
    if not topic.startswith(root):
        return None
    levels = topic[len(root) :].split("/")
    if levels == [LIST_OPERATION]:
        return None, LIST_OPERATION
    if len(levels) == 2 and levels[0] and not levels[0].startswith("_"):  # noqa: PLR2004 - stream/op
        stream, operation = levels
        if operation in OPERATIONS:
            return stream, operation
        expected = ", ".join(OPERATIONS)
        msg = f"unknown operation {operation!r} in {topic!r} (expected one of: {expected})"
        raise RequestError("invalid", msg)
    msg = f"{topic!r} is no request topic (expected {root}<stream>/<op> or {root}{LIST_OPERATION})"
    raise RequestError("invalid", msg)


class _Body:
    """The keys of one request body, read once each; unknown keys are refused."""

    def __init__(self, body: Mapping[str, object], allowed: tuple[str, ...]) -> None:
        for key in body:
            if key not in allowed:
                shown = ", ".join(("reply_to", "request_id", *allowed))
                msg = f"{key}: unknown key (expected one of: {shown})"
                raise RequestError("invalid", msg)
        self._body = body

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self._body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"{key}: expected an integer, got {_describe_value(value)}"
            raise RequestError("invalid", msg)
        if not minimum <= value <= maximum:
            msg = f"{key}: must be between {minimum} and {maximum}, got {value}"
            raise RequestError("invalid", msg)
        return value

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        value = self._body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            msg = f"{key}: expected a number of seconds, got {_describe_value(value)}"
            raise RequestError("invalid", msg)
        if not minimum <= value <= maximum:
            msg = f"{key}: must be between {minimum:g} and {maximum:g}, got {value:g}"
            raise RequestError("invalid", msg)
        return float(value)

    def text(self, key: str) -> str | None:
        value = self._body.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            msg = f"{key}: expected a string, got {_describe_value(value)}"
            raise RequestError("invalid", msg)
        return value

    def has(self, key: str) -> bool:
        return key in self._body

    def raw(self, key: str) -> object:
        return self._body.get(key)


def _parse_read(stream: str, body: _Body) -> ReadRequest:
    max_count = body.integer("max", DEFAULT_MAX_COUNT, 1, MAX_MAX_COUNT)
    return ReadRequest(
        stream=stream,
        from_sequence=body.integer("from", 0, 0, 2**63 - 1),
        max_count=max_count,
        max_bytes=body.integer("max_bytes", DEFAULT_MAX_BYTES, 1, MAX_MAX_BYTES),
        min_count=body.integer("min", min(1, max_count), 0, max_count),
        timeout=body.number("timeout", 0.0, 0.0, MAX_TIMEOUT),
    )


def _parse_append(stream: str, body: _Body) -> AppendRequest:
    text = body.text("payload")
    encoded = body.text("payload_b64")
    if (text is None) == (encoded is None):
        raise RequestError("invalid", "give exactly one of payload (text) and payload_b64")
    if text is not None:
        payload = text.encode()
    else:
        assert encoded is not None  # noqa: S101 - checked just above
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            msg = f"payload_b64: not valid base64 ({exc})"
            raise RequestError("invalid", msg) from exc
    topic = body.text("topic")
    if topic is not None:
        try:
            validate_topic_name(topic)
        except InvalidTopicError as exc:
            raise RequestError("invalid", f"topic: {exc}") from exc
        if topic.startswith("$"):
            raise RequestError("invalid", f"topic: must not start with '$', got {topic!r}")
    return AppendRequest(stream=stream, payload=payload, topic=topic)


def _parse_config(stream: str, body: _Body) -> StreamConfig:
    if not body.has("config"):
        raise RequestError("invalid", "config: required (the stream's settings, as in the YAML config)")
    try:
        return parse_stream_config(stream, body.raw("config"))
    except ConfigError as exc:
        raise RequestError("invalid", str(exc)) from exc


def _parse_export_switch(stream: str, body: _Body) -> ExportSwitchRequest:
    export_id = body.text("export")
    if export_id is None:
        raise RequestError("invalid", "export: required (the id of one of the stream's exports)")
    enabled = body.raw("enabled") if body.has("enabled") else None
    if not isinstance(enabled, bool):
        raise RequestError("invalid", f"enabled: expected true or false, got {_describe_value(enabled)}")
    return ExportSwitchRequest(stream=stream, export_id=export_id, enabled=enabled)


_READ_KEYS: Final = ("from", "max", "max_bytes", "min", "timeout")
_APPEND_KEYS: Final = ("payload", "payload_b64", "topic")


def parse_request(stream: str | None, operation: str, body: Mapping[str, object]) -> Request:
    """Validate the operation's keys (``body`` without ``reply_to``/``request_id``).

    Raises :class:`RequestError` (``invalid``) naming the key and the reason.
    """
    request: Request
    if stream is None:
        _Body(body, ())
        request = ListRequest()
    elif operation == "read":
        request = _parse_read(stream, _Body(body, _READ_KEYS))
    elif operation == "append":
        request = _parse_append(stream, _Body(body, _APPEND_KEYS))
    elif operation in {"create", "update"}:
        config = _parse_config(stream, _Body(body, ("config",)))
        request = CreateRequest(config) if operation == "create" else UpdateRequest(config)
    elif operation == "export":
        request = _parse_export_switch(stream, _Body(body, ("export", "enabled")))
    elif operation in {"describe", "delete"}:
        _Body(body, ())
        request = DescribeRequest(stream) if operation == "describe" else DeleteRequest(stream)
    else:
        msg = f"unknown operation {operation!r}"
        raise RequestError("invalid", msg)
    return request


_ERROR_TYPES: Final[tuple[tuple[type[StreamError], ErrorType], ...]] = (
    (StreamNotFoundError, "not_found"),
    (StreamExistsError, "exists"),
    (StreamRejectedError, "rejected"),
    (InvalidStreamRequestError, "invalid"),
)


def error_type(exc: StreamError) -> ErrorType:
    """The ``error.type`` a request that raised ``exc`` is answered with."""
    for kind, answered_as in _ERROR_TYPES:
        if isinstance(exc, kind):
            return answered_as
    return "failed"
