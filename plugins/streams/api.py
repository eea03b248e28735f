"""The stream API over MQTT 3.1.1: request/response under ``<prefix>/streams/...``.

Owns the async shell of the stream API's server side: it sees requests, calls a
:class:`~headwater.core.streams.StreamService` and publishes the responses. Parsing and
validating requests is :mod:`~headwater.plugins.streams.requests` (the requests, the
responses and the error types are documented there), who may do what is
:mod:`~headwater.plugins.streams.permissions`; both are pure and re-exported here. It must
never touch RocksDB (that is the service's business), and never delay the PUBACK of a request:
requests are answered on their own topic, not by holding the acknowledgement. The topics, the
envelope and every JSON shape of the responses are declared once, in
:mod:`headwater.wire.streams`, which the clients use too.

Everything below works with nothing but ``mosquitto_pub`` / ``mosquitto_sub``; docs/stream-api.md
is the same contract with examples.

Concurrency and ordering
------------------------

Each request is handled in its own task owned by :class:`StreamsApi` (at most
:attr:`StreamsApiLimits.max_pending` at once; beyond that a request is dropped and counted in
:attr:`StreamsApiStatistics.dropped_busy`). Building and publishing responses is bounded by a
semaphore (:attr:`StreamsApiLimits.max_responding`), which bounds the memory held by read
results; long-poll waiting happens outside it. Appends of one client are handed to the service
in the order they were published (the handler does not await before calling it), but responses
may overtake each other: match them by ``request_id``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from headwater.core.access import AccessPolicy
from headwater.core.store import StorageError
from headwater.core.streams import StreamError, StreamNotFoundError
from headwater.plugins.streams.permissions import RequestPermissions
from headwater.plugins.streams.requests import (
    AppendRequest,
    CreateRequest,
    DeleteRequest,
    DescribeRequest,
    ExportSwitchRequest,
    ListRequest,
    ReadRequest,
    Request,
    RequestError,
    UnanswerableRequestError,
    UpdateRequest,
    error_type,
    parse_envelope,
    parse_request,
    parse_target,
)
from headwater.wire.streams import RequestEnvelope, encode_error, encode_result, streams_root

if TYPE_CHECKING:
    from headwater.core.plugin_host import PluginHost
    from headwater.core.publish import IncomingPublish
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
            error = encode_error(envelope.request_id, error_type(exc), str(exc))
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
