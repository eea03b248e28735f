"""The stream API over MQTT 3.1.1: request/response under ``<prefix>/streams/...``.

Owns the server side of the stream API: parsing and validating requests, who may do what
through it, and the small async shell that sees requests, calls a
:class:`~headwater.core.streams.StreamService` and publishes the responses. It must
never touch RocksDB (that is the service's business), and never delay the PUBACK of a request:
requests are answered on their own topic, not by holding the acknowledgement. The topics, the
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
    sending the request. See *Access control* for which topics are accepted.
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
below), ``failed`` (the stream could not do it, e.g. a storage error) and ``internal`` (a bug;
details are in Headwater's log).

Access control
--------------

The API never lets a user read data it could not read, send data where it could not, or destroy
data it does not administer. Per stream it checks three rights that the ACL entry lists under
``streams: {read, append, admin}`` as stream name patterns, or that are derived from topic rules
when the entry does not list them (:mod:`headwater.core.stream_rights` has the rules; without
an ACL everything is allowed):

* Every request needs the right to *publish* to its request topic (the broker checks that
  before the API sees the request). E.g. ``publish: ["headwater/streams/+/read"]``.
* ``read`` and ``describe`` of stream S need the ``read`` right on S (derived: the right to
  *subscribe* to ``<prefix>/streams/S/records`` for read, to ``<prefix>/streams/S/status`` for
  describe); ``_list`` shows only the streams the requester may describe.
* ``append`` to S needs the ``append`` right on S (derived: the right to publish the request),
  and, with an explicit ``topic``, the right to publish to that topic.
* ``create`` and ``update`` of S need the ``admin`` right on S, the right to subscribe to each
  of the stream's ``topics`` (a stream is a recording of those topics) and, when the config has
  ``exports``, the ``read`` right on S (an export sends the stream's records out).
* ``delete`` of S and ``export`` (pause/resume) of S's exports need the ``admin`` right on S.
* ``admin`` is never derived: only a pattern under ``streams.admin`` grants it.
* ``dead-letter`` (the upload plugin's stream of refused records, holding records of every
  stream) is granted only by a pattern that is exactly ``dead-letter``: not by ``*``, not by
  ``%u``, not by a derived right.
* ``reply_to`` must be a topic the requester may both *publish* to and *receive* (subscribe
  to), outside ``<prefix>/streams/``, not starting with ``$``: Headwater publishes there on the
  requester's behalf and must not become a way to inject messages into someone else's topic.
  A request whose ``reply_to`` fails this can't be answered: it is dropped, counted
  (:attr:`StreamsApiStatistics.unanswerable`) and logged.

The other refusals come back as ``forbidden`` errors naming the right or the topic. A request
without a usable ``reply_to`` (payload not a JSON object, ``reply_to`` missing or refused) is
unanswerable: it is not executed.

Concurrency and ordering
------------------------

Each request is handled in its own task owned by :class:`StreamsApi` (at most
:attr:`StreamsApiLimits.max_pending` at once; beyond that a request is dropped and counted in
:attr:`StreamsApiStatistics.dropped_busy`). Building and publishing responses is bounded by a
semaphore (:attr:`StreamsApiLimits.max_responding`), which bounds the memory held by read
results; long-poll waiting happens outside it. Appends of one client are handed to the service
in the order they were published (the handler does not await before calling it), but responses
may overtake each other: match them by ``request_id``.

Exceptions::

    RequestError            a request that is answered with an error (``type``, ``message``)
    UnanswerableRequestError   a request that cannot be answered (no usable reply_to)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from headwater.core.access import AccessPolicy
from headwater.core.config import ConfigError, StreamConfig, parse_stream_config
from headwater.core.store import StorageError
from headwater.core.stream_rights import StreamAction, StreamRights
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
    encode_error,
    encode_result,
    streams_root,
)

if TYPE_CHECKING:
    from headwater.core.plugin_host import PluginHost
    from headwater.core.publish import IncomingPublish, PublishGateView
    from headwater.core.streams import StreamService
    from headwater.wire.streams import StreamDescription

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
    "RequestPermissions",
    "StreamsApi",
    "StreamsApiLimits",
    "StreamsApiStatistics",
    "UnanswerableRequestError",
    "UpdateRequest",
    "parse_envelope",
    "parse_request",
    "parse_target",
]

logger = logging.getLogger(__name__)

# One line per minute at most about requests nobody can be told about.
_WARNING_INTERVAL: Final = 60.0

# --------------------------------------------------------------------------------------------
# Protocol: pure parsing and encoding
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Access control: pure decisions over the broker's ACL
# --------------------------------------------------------------------------------------------


class RequestPermissions:
    """The API's access rules (module docstring, *Access control*) for one topic prefix.

    ``access`` answers subscribe/receive and, through
    :class:`~headwater.core.stream_rights.StreamRights`, the stream rights; ``gate`` answers
    publish (the broker's own publish decision, which also refuses Headwater's reserved status
    topics).
    """

    def __init__(self, *, prefix: str, access: AccessPolicy, gate: PublishGateView) -> None:
        self._prefix = prefix
        self._access = access
        self._gate = gate
        self._rights = StreamRights(access, topic_prefix=prefix)

    def check_reply_to(self, username: str | None, reply_to: str) -> None:
        """Raise :class:`UnanswerableRequestError` unless the requester may be answered there."""
        try:
            validate_topic_name(reply_to)
        except InvalidTopicError as exc:
            msg = f"reply_to: {exc}"
            raise UnanswerableRequestError(msg) from exc
        if reply_to.startswith("$"):
            msg = f"reply_to: must not start with '$', got {reply_to!r}"
            raise UnanswerableRequestError(msg)
        if reply_to.startswith(f"{self._prefix}/streams/"):
            msg = f"reply_to: must not be under {self._prefix}/streams/, got {reply_to!r}"
            raise UnanswerableRequestError(msg)
        if not (self._gate.may_publish(username, reply_to) and self._access.may_receive(username, reply_to)):
            msg = f"reply_to: the requester may not both publish to and receive {reply_to!r}"
            raise UnanswerableRequestError(msg)

    def may_describe(self, username: str | None, stream: str) -> bool:
        """The ``read`` right on ``stream`` as describe (and ``_list``) use it."""
        return self._rights.may(username, "describe", stream)

    def may_read(self, username: str | None, stream: str) -> bool:
        """The ``read`` right on ``stream``."""
        return self._rights.may(username, "read", stream)

    def check(self, username: str | None, request: Request) -> None:
        """Raise :class:`RequestError` (``forbidden``) when ``username`` may not do ``request``."""
        who = "anonymous clients" if username is None else f"user {username!r}"
        for action, stream in _stream_actions(request):
            reason = self._rights.refusal(username, action, stream)
            if reason is not None:
                raise RequestError("forbidden", f"{who} {reason}")
        if (
            isinstance(request, AppendRequest)
            and request.topic is not None
            and not self._gate.may_publish(username, request.topic)
        ):
            raise RequestError("forbidden", f"{who} may not publish to {request.topic}")
        if isinstance(request, CreateRequest | UpdateRequest):
            for filter_ in request.config.topics:
                if not self._access.may_subscribe(username, filter_):
                    raise RequestError("forbidden", f"{who} may not subscribe to {filter_}")


def _stream_actions(request: Request) -> tuple[tuple[StreamAction, str], ...]:
    """The stream rights ``request`` needs, in the order they are checked."""
    actions: tuple[tuple[StreamAction, str], ...] = ()
    match request:
        case DescribeRequest():
            actions = (("describe", request.stream),)
        case ReadRequest():
            actions = (("read", request.stream),)
        case AppendRequest():
            actions = (("append", request.stream),)
        case CreateRequest() | UpdateRequest():
            name = request.config.name
            actions = (("admin", name),)
            # Exports send the stream's records out of the gateway (the stored ones too, from
            # `start: oldest`): only someone who may read them may set exports.
            if request.config.exports:
                actions = (*actions, ("read", name))
        case DeleteRequest() | ExportSwitchRequest():
            actions = (("admin", request.stream),)
        case ListRequest():
            pass  # each stream's describe right filters the list
    return actions


# --------------------------------------------------------------------------------------------
# The async shell
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamsApiLimits:
    """How much work the API takes on at once."""

    max_pending: int = 256  # requests being handled (long polls included); more are dropped
    max_responding: int = 8  # responses being built and published at once (bounds read memory)


@dataclass(frozen=True, slots=True)
class StreamsApiStatistics:
    """Counters of :class:`StreamsApi`."""

    requests: int  # seen under <prefix>/streams/
    answered_ok: int
    answered_error: int
    unanswerable: int  # no usable reply_to: not executed, not answered
    dropped_busy: int  # more than max_pending at once
    publish_failures: int  # a response could not be published
    pending: int  # being handled now


_ERROR_TYPES: Final[tuple[tuple[type[StreamError], ErrorType], ...]] = (
    (StreamNotFoundError, "not_found"),
    (StreamExistsError, "exists"),
    (StreamRejectedError, "rejected"),
    (InvalidStreamRequestError, "invalid"),
)


def _error_type(exc: StreamError) -> ErrorType:
    for kind, error_type in _ERROR_TYPES:
        if isinstance(exc, kind):
            return error_type
    return "failed"


class StreamsApi:
    """Answers stream API requests: a ``HeadwaterPlugin`` and a ``PublishInterceptor``.

    Give it the :class:`~headwater.core.streams.StreamService` to call (the streams
    plugin) and list it right after that plugin: the host starts plugins in order and stops them
    in reverse, so the API stops taking requests before the service stops::

        streams = StreamsPlugin()
        plugins = [streams, StreamsApi(streams), ...]

    ``start`` registers it on ``host.gate``; ``stop`` unregisters it, then cancels and awaits
    every request task (long polls included). ``access`` defaults to a policy built from
    ``host.config.broker.acl``, i.e. the broker's own decisions.
    """

    name = "streams-api"

    def __init__(
        self,
        service: StreamService,
        *,
        limits: StreamsApiLimits | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self._service = service
        self._limits = limits or StreamsApiLimits()
        self._access = access
        self._host: PluginHost | None = None
        self._permissions: RequestPermissions | None = None
        self._prefix = ""
        self._root = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._responding = asyncio.Semaphore(self._limits.max_responding)
        self._requests = 0
        self._answered_ok = 0
        self._answered_error = 0
        self._unanswerable = 0
        self._dropped_busy = 0
        self._publish_failures = 0
        self._last_warning = -math.inf

    def reserved_topics(self, prefix: str) -> tuple[str, ...]:  # noqa: ARG002 - the plugin interface
        """The API publishes only on requesters' reply topics: it reserves none."""
        return ()

    async def start(self, host: PluginHost) -> None:
        """Start answering requests published from now on."""
        self._host = host
        self._prefix = host.config.topic_prefix
        self._root = streams_root(self._prefix)
        access = self._access or AccessPolicy(host.config.broker.acl)
        self._permissions = RequestPermissions(prefix=self._prefix, access=access, gate=host.gate)
        host.gate.add_interceptor(self)

    async def stop(self) -> None:
        """Stop taking requests; cancel and await the ones in flight (long polls included)."""
        host, self._host = self._host, None
        if host is not None:
            host.gate.remove_interceptor(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def statistics(self) -> StreamsApiStatistics:
        """A snapshot of the counters."""
        return StreamsApiStatistics(
            requests=self._requests,
            answered_ok=self._answered_ok,
            answered_error=self._answered_error,
            unanswerable=self._unanswerable,
            dropped_busy=self._dropped_busy,
            publish_failures=self._publish_failures,
            pending=len(self._tasks),
        )

    def intercept(self, message: IncomingPublish) -> None:
        """See a client publish; requests are handled in a task. Never delays the PUBACK."""
        if self._host is None or not message.topic.startswith(self._root):
            return
        self._requests += 1
        if len(self._tasks) >= self._limits.max_pending:
            self._dropped_busy += 1
            self._warn(
                "stream API busy (%d requests in flight): dropped a request from client %s on %s",
                len(self._tasks),
                message.client_id,
                message.topic,
            )
            return
        task = asyncio.get_running_loop().create_task(
            self._handle(message), name=f"streams-api {message.topic} from {message.client_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warn(self, text: str, *args: object) -> None:
        """Log ``text % args`` as a warning, at most once a minute (clients control the rate)."""
        now = time.monotonic()
        if now - self._last_warning >= _WARNING_INTERVAL:
            self._last_warning = now
            logger.warning(text, *args)

    async def _handle(self, message: IncomingPublish) -> None:
        permissions = self._permissions
        assert permissions is not None  # noqa: S101 - set in start(), before the interceptor
        try:
            envelope = parse_envelope(message.payload)
            permissions.check_reply_to(message.username, envelope.reply_to)
        except UnanswerableRequestError as exc:
            self._unanswerable += 1
            self._warn(
                "unanswerable stream API request from client %s on %s: %s",
                message.client_id,
                message.topic,
                exc,
            )
            return
        try:
            request = self._parse(message.topic, envelope)
            permissions.check(message.username, request)
            if isinstance(request, ReadRequest | ListRequest):
                if isinstance(request, ReadRequest) and request.timeout > 0:
                    await self._wait_readable(request)
                async with self._responding:  # the large results: bound how many are in memory
                    result = await self._execute(request, message)
                    await self._respond(envelope, encode_result(envelope.request_id, result), ok=True)
            else:
                # No await before _execute: appends of one client reach the service in order.
                result = await self._execute(request, message)
                await self._respond(envelope, encode_result(envelope.request_id, result), ok=True)
        except RequestError as exc:
            await self._respond(envelope, encode_error(envelope.request_id, exc.type, exc.message), ok=False)
        except StreamError as exc:
            error = encode_error(envelope.request_id, _error_type(exc), str(exc))
            await self._respond(envelope, error, ok=False)
        except StorageError as exc:
            error = encode_error(envelope.request_id, "failed", f"storage error: {exc}")
            await self._respond(envelope, error, ok=False)
        except Exception:
            # A bug: the requester still gets an answer, the traceback goes to the log.
            logger.exception(
                "stream API request on %s from client %s failed", message.topic, message.client_id
            )
            error = encode_error(envelope.request_id, "internal", "internal error; see Headwater's log")
            await self._respond(envelope, error, ok=False)

    def _parse(self, topic: str, envelope: RequestEnvelope) -> Request:
        if envelope.request_id_error is not None:
            raise RequestError("invalid", envelope.request_id_error)
        target = parse_target(self._prefix, topic)
        assert target is not None  # noqa: S101 - intercept() only takes topics under the root
        stream, operation = target
        return parse_request(stream, operation, envelope.body)

    async def _respond(self, envelope: RequestEnvelope, payload: bytes, *, ok: bool) -> None:
        host = self._host
        if host is None:
            return  # stopping: the requester times out, as it would if we had crashed
        try:
            await host.publish(envelope.reply_to, payload, qos=1)
        except Exception as exc:  # noqa: BLE001 - amqtt raises many kinds when shutting down
            self._publish_failures += 1
            self._warn("could not publish a stream API response to %s: %r", envelope.reply_to, exc)
            return
        if ok:
            self._answered_ok += 1
        else:
            self._answered_error += 1

    async def _wait_readable(self, request: ReadRequest) -> None:
        """Long poll: return once ``min`` records (or ``max_bytes`` worth) exist, or at the timeout."""
        service = self._service
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        while True:
            batch = service.read(
                request.stream,
                from_sequence=request.from_sequence,
                max_count=request.min_count,
                max_bytes=request.max_bytes,
            )
            if len(batch) >= request.min_count:
                return
            after = batch[-1].sequence + 1 if batch else request.from_sequence
            # Fewer than min, but more exist: max_bytes cut the batch, the read is full.
            if batch and service.read(request.stream, from_sequence=after, max_count=1, max_bytes=None):
                return
            del batch  # hold no records while waiting
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await service.wait_for_records(request.stream, from_sequence=after, timeout=remaining)

    async def _execute(self, request: Request, message: IncomingPublish) -> object:
        service = self._service
        result: object
        match request:
            case AppendRequest():
                # The first await of the request's task: appends of one client stay in order.
                sequence = await service.append(
                    request.stream,
                    request.payload,
                    topic=request.topic if request.topic is not None else message.topic,
                    client_id=message.client_id,
                )
                result = {"sequence": sequence}
            case ListRequest():
                result = {"streams": self._list(service, message.username)}
            case DescribeRequest():
                result = service.describe(request.stream).to_json_dict()
            case ReadRequest():
                records = service.read(
                    request.stream,
                    from_sequence=request.from_sequence,
                    max_count=request.max_count,
                    max_bytes=request.max_bytes,
                )
                next_sequence = records[-1].sequence + 1 if records else request.from_sequence
                result = {
                    "records": [record.to_json_dict() for record in records],
                    "next_sequence": next_sequence,
                }
            case CreateRequest():
                await service.create(request.config)
                result = service.describe(request.config.name).to_json_dict()
            case UpdateRequest():
                await service.update(request.config)
                result = service.describe(request.config.name).to_json_dict()
            case DeleteRequest():
                await service.delete(request.stream)
                result = {"name": request.stream}
            case ExportSwitchRequest():
                info = service.set_export_enabled(request.stream, request.export_id, enabled=request.enabled)
                result = info.to_json_dict()
        return result

    def _list(self, service: StreamService, username: str | None) -> list[dict[str, object]]:
        permissions = self._permissions
        assert permissions is not None  # noqa: S101 - set in start()
        descriptions: list[StreamDescription] = []
        for name in service.names():
            if not permissions.may_describe(username, name):
                continue
            try:
                descriptions.append(service.describe(name))
            except StreamNotFoundError:
                continue  # deleted since names() was called
        return [description.to_json_dict() for description in descriptions]
