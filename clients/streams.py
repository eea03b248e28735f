"""``StreamClient``: Headwater's durable streams from Python, over MQTT 3.1.1 (paho-mqtt 2.x).

Owns the client side of the stream API (the topics, the envelope and the JSON shapes are
declared in :mod:`headwater.wire.streams`, which Headwater encodes with too; docs/stream-api.md
is the contract with examples): one MQTT connection, one reply topic, request/response
correlation by ``request_id``, timeouts, and turning responses into typed results
(:class:`~headwater.wire.streams.StreamRecord`, :class:`~headwater.wire.streams.StreamDescription`)
or typed exceptions. It must
never print: the CLI decides what people see.

Usage::

    with StreamClient.connect("mqtt://alice:secret@gateway:1883") as streams:
        sequence = streams.append("telemetry", b'{"t": 21.5}')
        for record in streams.iter_records("telemetry", from_sequence=sequence, follow=True):
            ...

The client is blocking and thread-safe: paho's network thread receives responses, the calling
thread waits for its own. Each client subscribes once to its reply topic, by default
``<prefix>/replies/<username>/<client_id>`` (``anonymous`` for a client without username), so
that one ACL rule per user covers every client of that user::

    acl:
      alice:
        publish: ["headwater/streams/#", "headwater/replies/%u/#"]
        subscribe: ["headwater/streams/#", "headwater/replies/%u/#"]

Headwater answers only on a topic the requester may both publish to and subscribe to.

Exception tree::

    StreamClientError
    ├── ConnectionFailedError       can't connect, refused at CONNACK, or the connection dropped
    ├── RequestTimeoutError         no response in time (API not running, or the ACL drops it)
    ├── MalformedResponseError      a response that does not follow the protocol
    └── StreamApiError              Headwater answered with an error (``error_type``)
        ├── StreamNotFoundError     not_found
        ├── StreamExistsError       exists
        ├── StreamRejectedError     rejected
        ├── InvalidStreamRequestError   invalid
        └── ForbiddenError          forbidden (also: the reply topic can't be subscribed)
"""

from __future__ import annotations

import base64
import itertools
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from headwater.clients._paho import new_client, open_connection
from headwater.clients.connection import ConnectionSettings, resolve_url
from headwater.wire.streams import (
    ExportInfo,
    Response,
    StreamDescription,
    StreamRecord,
    WireFormatError,
    decode_response,
    encode_request,
    request_topic,
)
from headwater.wire.streams import reply_topic as default_reply_topic

if TYPE_CHECKING:
    from types import TracebackType

    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

T = TypeVar("T")

__all__ = [
    "ConnectionFailedError",
    "ForbiddenError",
    "InvalidStreamRequestError",
    "MalformedResponseError",
    "RequestTimeoutError",
    "StreamApiError",
    "StreamClient",
    "StreamClientError",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamRejectedError",
]

DEFAULT_PREFIX: Final = "headwater"
DEFAULT_TIMEOUT: Final = 10.0
#: How long one long-poll read of ``iter_records(follow=True)`` waits on the server.
FOLLOW_POLL: Final = 30.0
# Records per request when iterating (the server caps max at 10,000 and max_bytes at 4MiB).
_PAGE: Final = 1000
# paho's reason code when a connection ends without a DISCONNECT (MQTT 5's 0x80).
_UNSPECIFIED: Final = 128


class StreamClientError(Exception):
    """Base of the client's errors; ``str()`` is a message for a person."""


class ConnectionFailedError(StreamClientError):
    """Could not connect to the broker, it refused us, or the connection was lost."""


class RequestTimeoutError(StreamClientError):
    """No response in time: the stream API is not running or the ACL dropped the request."""


class MalformedResponseError(StreamClientError):
    """A response that does not follow the stream API's protocol."""


class StreamApiError(StreamClientError):
    """Headwater answered with an error; ``error_type`` is the protocol's ``error.type``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class StreamNotFoundError(StreamApiError):
    """No stream has that name."""


class StreamExistsError(StreamApiError):
    """A stream with that name exists already."""


class StreamRejectedError(StreamApiError):
    """The stream refused the record (full with reject_new, or too large)."""


class InvalidStreamRequestError(StreamApiError):
    """Headwater found the request malformed (bad arguments, bad config)."""


class ForbiddenError(StreamApiError):
    """The ACL does not allow it."""


_API_ERRORS: Final[Mapping[str, type[StreamApiError]]] = {
    "not_found": StreamNotFoundError,
    "exists": StreamExistsError,
    "rejected": StreamRejectedError,
    "invalid": InvalidStreamRequestError,
    "forbidden": ForbiddenError,
}


# --- decoding responses (pure) ------------------------------------------------------------------


def _result_of(response: Response) -> Any:
    """The ``result`` of a response, or the typed exception for its ``error``."""
    if response.ok:
        return response.result
    error_type = response.error_type
    raise _API_ERRORS.get(error_type, StreamApiError)(error_type, response.message)


def _decoded(decode: Callable[[object], T], value: object) -> T:
    """``decode(value)``, a malformed shape raised as :class:`MalformedResponseError`."""
    try:
        return decode(value)
    except WireFormatError as exc:
        raise MalformedResponseError(str(exc)) from exc


def _list_field(result: object, key: str) -> list[Any]:
    """The list ``result[key]`` of a result object."""
    if not isinstance(result, dict) or not isinstance(result.get(key), list):
        msg = f"result field {key!r}: expected a list in {type(result).__name__}"
        raise MalformedResponseError(msg)
    items: list[Any] = result[key]
    return items


# --- the client ---------------------------------------------------------------------------------


@dataclass
class _Pending:
    """One request waiting for its response (filled by paho's thread)."""

    done: threading.Event = field(default_factory=threading.Event)
    # The response, decoded once by paho's thread (which must read its request_id anyway).
    response: Response | None = None
    failure: StreamClientError | None = None


class StreamClient:
    """A blocking client of Headwater's stream API; build it with :meth:`connect`.

    Use as a context manager, or call :meth:`close`. Methods raise the exceptions of the
    module docstring. ``timeout`` bounds every request (a long-poll read adds its wait).
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        client_id: str,
        topic_prefix: str,
        reply_topic: str,
        timeout: float,
    ) -> None:
        """Prefer :meth:`connect`, which also connects and subscribes."""
        self.settings = settings
        self.client_id = client_id
        self.topic_prefix = topic_prefix
        self.reply_topic = reply_topic
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        # Unique across clients that share a reply topic (same client id sanitized alike).
        self._request_prefix = secrets.token_hex(4)
        self._request_ids = itertools.count(1)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        # Connected and subscribed to the reply topic: requests can be answered.
        self._ready = threading.Event()
        self._subscribe_mid: int | None = None
        self._connect_failure: str | None = None
        self._subscribe_refused = False
        self._closed = False
        self._mqtt = new_client(
            client_id,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_subscribe=self._on_subscribe,
            on_message=self._on_message,
        )

    # --- connecting -----------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        client_id: str | None = None,
        topic_prefix: str = DEFAULT_PREFIX,
        reply_topic: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> StreamClient:
        """Connect to ``url`` (else ``$HEADWATER_URL``, else ``mqtt://127.0.0.1:1883``).

        ``mqtts://`` uses ``ssl_context``, by default one that verifies the server against the
        system's CAs (``SSL_CERT_FILE`` is honoured). Raises :class:`ConnectionFailedError`,
        :class:`ForbiddenError` when the reply topic can't be subscribed, and
        :class:`~headwater.clients.connection.InvalidURLError` for a bad URL.
        """
        settings = resolve_url(url)
        client_id = client_id or f"headwater-{secrets.token_hex(6)}"
        client = cls(
            settings,
            client_id=client_id,
            topic_prefix=topic_prefix,
            reply_topic=reply_topic or default_reply_topic(topic_prefix, settings.username, client_id),
            timeout=timeout,
        )
        try:
            client._open(ssl_context)
        except BaseException:
            client.close()
            raise
        return client

    def _open(self, ssl_context: ssl.SSLContext | None) -> None:
        settings = self.settings
        open_connection(
            self._mqtt,
            settings,
            timeout=self.timeout,
            ssl_context=ssl_context,
            connected=self._connected,
            connect_failure=lambda: self._connect_failure,
            error=ConnectionFailedError,
        )
        if not self._subscribed.wait(self.timeout):
            msg = f"cannot subscribe to {self.reply_topic} on {settings.display_url}: no SUBACK"
            raise ConnectionFailedError(msg)
        if self._subscribe_refused:
            who = f"user {settings.username!r}" if settings.username else "anonymous clients"
            msg = f"{who} may not subscribe to the reply topic {self.reply_topic}"
            raise ForbiddenError("forbidden", msg)

    def close(self) -> None:
        """Disconnect and stop the network thread; pending requests fail (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        self._fail_pending(ConnectionFailedError("the client was closed"))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- paho callbacks (network thread) ----------------------------------------------------------

    # paho calls these positionally with its VERSION2 signatures.

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_failure = str(reason_code)
            self._connected.set()
            client.disconnect()  # do not let paho retry with credentials that were refused
            return
        result, mid = client.subscribe(self.reply_topic, qos=1)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._subscribe_mid = mid
        self._connected.set()

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if mid == self._subscribe_mid:
            self._subscribe_refused = any(code.is_failure for code in reason_codes)
            self._subscribed.set()
            if not self._subscribe_refused:
                self._ready.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        # paho reconnects on its own (and _on_connect subscribes again); requests in flight
        # lost their response with the session.
        self._ready.clear()
        reason = "" if reason_code.value in {0, _UNSPECIFIED} else f" ({reason_code})"
        self._fail_pending(ConnectionFailedError(f"connection to {self.settings.display_url} lost{reason}"))

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            response = decode_response(bytes(message.payload))
        except WireFormatError:
            return  # not ours: someone else published on our reply topic
        request_id = response.request_id
        with self._lock:
            pending = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if pending is not None:
            pending.response = response
            pending.done.set()

    def _fail_pending(self, failure: StreamClientError) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for slot in pending:
            slot.failure = failure
            slot.done.set()

    # --- requests -------------------------------------------------------------------------------

    def request(
        self, stream: str | None, operation: str, body: Mapping[str, object], *, wait: float = 0
    ) -> Any:
        """Send one request and return its ``result``; the building block of the methods below.

        ``stream=None`` is the list request. ``wait`` extends the timeout (long-poll reads).
        """
        if self._closed:
            msg = "the client is closed"
            raise ConnectionFailedError(msg)
        if not self._ready.wait(self.timeout):
            url = self.settings.display_url
            if self._connect_failure is not None:
                msg = f"cannot connect to {url}: {self._connect_failure}"
            else:
                msg = f"not connected to {url} (still reconnecting after {self.timeout:g}s)"
            raise ConnectionFailedError(msg)
        topic = request_topic(self.topic_prefix, stream, operation)
        request_id = f"{self._request_prefix}-{next(self._request_ids)}"
        payload = encode_request(body, reply_to=self.reply_topic, request_id=request_id)
        slot = _Pending()
        with self._lock:
            self._pending[request_id] = slot
        try:
            info = self._mqtt.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                msg = f"cannot send to {self.settings.display_url}: {mqtt.error_string(info.rc)}"
                raise ConnectionFailedError(msg)
            timeout = self.timeout + wait
            if not slot.done.wait(timeout):
                who = f"user {self.settings.username!r}" if self.settings.username else "anonymous clients"
                msg = (
                    f"no response to {topic} within {timeout:g}s (is Headwater's stream API running, "
                    f"and may {who} publish to {topic} and to {self.reply_topic}?)"
                )
                raise RequestTimeoutError(msg)
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if slot.failure is not None:
            raise slot.failure
        assert slot.response is not None  # noqa: S101 - set before done
        return _result_of(slot.response)

    def describe(self, name: str) -> StreamDescription:
        """Storage and exports of stream ``name``."""
        return _decoded(StreamDescription.from_json_dict, self.request(name, "describe", {}))

    def read(
        self,
        name: str,
        *,
        from_sequence: int | None = None,
        max_count: int | None = None,
        max_bytes: int | None = None,
        wait: float = 0.0,
    ) -> list[StreamRecord]:
        """One batch of records with sequence >= ``from_sequence`` (default: the oldest).

        At most ``max_count`` records (server default 100) and ``max_bytes`` of payload (server
        default 1MiB, always at least one record). With ``wait`` > 0 (at most 60 s) the server
        holds the request until at least one record is there or ``wait`` has passed.
        """
        body: dict[str, object] = {}
        if from_sequence is not None:
            body["from"] = from_sequence
        if max_count is not None:
            body["max"] = max_count
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        if wait > 0:
            body["timeout"] = wait
        result = self.request(name, "read", body, wait=wait)
        return [_decoded(StreamRecord.from_json_dict, item) for item in _list_field(result, "records")]

    def iter_records(
        self, name: str, *, from_sequence: int | None = None, follow: bool = False, page_size: int = _PAGE
    ) -> Iterator[StreamRecord]:
        """Every record from ``from_sequence`` (default: the oldest) on, in order.

        Without ``follow`` the iterator ends when it has caught up with the stream; with it,
        it long-polls for new records forever (stop by breaking out of the loop), and rides out
        a lost connection: it waits for the reconnect and goes on from the next record. Records
        come ``page_size`` per request (at most 10,000).
        """
        next_sequence = from_sequence or 0
        while True:
            try:
                batch = self.read(
                    name,
                    from_sequence=next_sequence,
                    max_count=page_size,
                    wait=FOLLOW_POLL if follow else 0.0,
                )
            except ConnectionFailedError:
                if not follow or self._closed or self._connect_failure is not None:
                    raise
                continue  # the next read waits for the reconnect (request() raises meanwhile)
            if not batch and not follow:
                return
            for record in batch:
                yield record
                next_sequence = record.sequence + 1

    def append(self, name: str, payload: bytes | str, *, topic: str | None = None) -> int:
        """Append one record to stream ``name``; return its sequence number once it is stored."""
        data = payload.encode() if isinstance(payload, str) else payload
        body: dict[str, object]
        try:
            body = {"payload": data.decode()}
        except UnicodeDecodeError:
            body = {"payload_b64": base64.b64encode(data).decode()}
        if topic is not None:
            body["topic"] = topic
        result = self.request(name, "append", body)
        sequence = result.get("sequence") if isinstance(result, dict) else None
        if isinstance(sequence, bool) or not isinstance(sequence, int):
            msg = f"append result: expected a sequence number, got {result!r}"
            raise MalformedResponseError(msg)
        return sequence

    def create(self, name: str, config: Mapping[str, object]) -> StreamDescription:
        """Create stream ``name`` with ``config`` (the keys of a YAML ``streams.<name>`` section)."""
        result = self.request(name, "create", {"config": dict(config)})
        return _decoded(StreamDescription.from_json_dict, result)

    def update(self, name: str, config: Mapping[str, object]) -> StreamDescription:
        """Replace stream ``name``'s settings with ``config`` (absent keys take their defaults)."""
        result = self.request(name, "update", {"config": dict(config)})
        return _decoded(StreamDescription.from_json_dict, result)

    def delete(self, name: str) -> None:
        """Delete stream ``name`` and its records."""
        self.request(name, "delete", {})

    def pause_export(self, name: str, export_id: str) -> ExportInfo:
        """Pause export ``export_id`` of stream ``name`` (state ``disabled``, persisted)."""
        result = self.request(name, "export", {"export": export_id, "enabled": False})
        return _decoded(ExportInfo.from_json_dict, result)

    def resume_export(self, name: str, export_id: str) -> ExportInfo:
        """Resume a paused export."""
        result = self.request(name, "export", {"export": export_id, "enabled": True})
        return _decoded(ExportInfo.from_json_dict, result)

    def list(self) -> list[StreamDescription]:
        """Every stream this user may describe, sorted by name."""
        result = self.request(None, "_list", {})
        return [_decoded(StreamDescription.from_json_dict, item) for item in _list_field(result, "streams")]
