"""``StreamClient``: Headwater's durable streams from Python, over MQTT 3.1.1 (paho-mqtt 2.x).

Owns the client side of the stream API (the protocol is documented in
:mod:`headwater.plugins.streams.api` and docs/stream-api.md): one MQTT connection, one reply
topic, request/response correlation by ``request_id``, timeouts, and turning responses into
typed results (:class:`~headwater.plugins.streams.service.StreamRecord`,
:class:`~headwater.plugins.streams.service.StreamDescription`) or typed exceptions. It must
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
import json
import re
import secrets
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from headwater.clients._paho import new_client, open_connection
from headwater.clients.connection import ConnectionSettings, resolve_url
from headwater.plugins.streams.service import ExportInfo, StorageInfo, StreamDescription, StreamRecord

if TYPE_CHECKING:
    from types import TracebackType

    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

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
# Characters that would change the shape of the reply topic.
_TOPIC_UNSAFE: Final = re.compile(r"[/+#\x00]")


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


def _field(data: Mapping[str, Any], key: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        msg = f"response field {key!r}: unexpected {value!r}"
        raise MalformedResponseError(msg)
    return value


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"response field {key!r}: expected an integer or null, got {value!r}"
        raise MalformedResponseError(msg)
    return value


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        msg = f"{what}: expected a JSON object, got {value!r}"
        raise MalformedResponseError(msg)
    return value


def record_from_json(value: object) -> StreamRecord:
    """A record of a read response (``StreamRecord.to_json_dict()`` on the server)."""
    data = _object(value, "record")
    if isinstance(data.get("payload"), str):
        payload = data["payload"].encode()
    else:
        try:
            payload = base64.b64decode(_field(data, "payload_b64", str), validate=True)
        except ValueError as exc:
            msg = f"record payload_b64: {exc}"
            raise MalformedResponseError(msg) from exc
    return StreamRecord(
        sequence=_field(data, "sequence", int),
        timestamp_ms=_field(data, "timestamp", int),
        topic=_field(data, "topic", str),
        qos=_field(data, "qos", int),
        client_id=_field(data, "client_id", str),
        payload=payload,
    )


def description_from_json(value: object) -> StreamDescription:
    """A describe object (``StreamDescription.to_json_dict()`` on the server)."""
    data = _object(value, "stream description")
    storage = _object(data.get("storage"), "storage")
    exports = _field(data, "exports", list)
    last_error = data.get("last_error")
    return StreamDescription(
        name=_field(data, "name", str),
        persistence=_field(data, "persistence", str),
        state=str(data.get("state", "ok")),
        last_error=last_error if isinstance(last_error, str) else None,
        storage=StorageInfo(
            oldest_sequence=_optional_int(storage, "oldest_sequence"),
            newest_sequence=_optional_int(storage, "newest_sequence"),
            total_bytes=_field(storage, "total_bytes", int),
            record_count=_field(storage, "record_count", int),
            dropped_oldest=_optional_int(storage, "dropped_oldest") or 0,
            rejected_new=_optional_int(storage, "rejected_new") or 0,
            expired=_optional_int(storage, "expired") or 0,
        ),
        exports=tuple(_export_from_json(export) for export in exports),
    )


def _export_from_json(value: object) -> ExportInfo:
    data = _object(value, "export")
    last_error = data.get("last_error")
    return ExportInfo(
        id=_field(data, "id", str),
        type=_field(data, "type", str),
        last_exported_sequence=_optional_int(data, "last_exported_sequence"),
        last_export_time=_optional_int(data, "last_export_time"),
        exported_records=_field(data, "exported_records", int),
        state=_field(data, "state", str),
        last_error=last_error if isinstance(last_error, str) else None,
        priority=_optional_int(data, "priority") or 5,
        exported_bytes=_optional_int(data, "exported_bytes") or 0,
        lag_records=_optional_int(data, "lag_records") or 0,
        lag_bytes=_optional_int(data, "lag_bytes") or 0,
        dead_lettered=_optional_int(data, "dead_lettered") or 0,
        lost_records=_optional_int(data, "lost_records") or 0,
    )


def _result_of(response: Mapping[str, Any]) -> Any:
    """The ``result`` of a response, or the typed exception for its ``error``."""
    if response.get("ok") is True:
        return response.get("result")
    error = _object(response.get("error"), "error")
    error_type = str(error.get("type", "unknown"))
    message = str(error.get("message", "(no message)"))
    raise _API_ERRORS.get(error_type, StreamApiError)(error_type, message)


def default_reply_topic(prefix: str, username: str | None, client_id: str) -> str:
    """``<prefix>/replies/<username or anonymous>/<client_id>``.

    ``/``, ``+``, ``#`` and NUL in the username or client id become ``_`` (they would change the
    topic's shape; ACL ``%u`` rules never match such usernames anyway).
    """
    user = _TOPIC_UNSAFE.sub("_", username) if username else "anonymous"
    return f"{prefix}/replies/{user}/{_TOPIC_UNSAFE.sub('_', client_id) or '_'}"


# --- the client ---------------------------------------------------------------------------------


@dataclass
class _Pending:
    """One request waiting for its response (filled by paho's thread)."""

    done: threading.Event = field(default_factory=threading.Event)
    response: Mapping[str, Any] | None = None
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
            response = json.loads(message.payload)
        except ValueError:
            return  # not ours: someone else published on our reply topic
        if not isinstance(response, dict):
            return
        request_id = response.get("request_id")
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
        topic = (
            f"{self.topic_prefix}/streams/_list"
            if stream is None
            else f"{self.topic_prefix}/streams/{stream}/{operation}"
        )
        request_id = f"{self._request_prefix}-{next(self._request_ids)}"
        payload = json.dumps({**body, "reply_to": self.reply_topic, "request_id": request_id})
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
        return description_from_json(self.request(name, "describe", {}))

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
        result = _object(self.request(name, "read", body, wait=wait), "read result")
        return [record_from_json(item) for item in _field(result, "records", list)]

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
        result = _object(self.request(name, "append", body), "append result")
        sequence: int = _field(result, "sequence", int)
        return sequence

    def create(self, name: str, config: Mapping[str, object]) -> StreamDescription:
        """Create stream ``name`` with ``config`` (the keys of a YAML ``streams.<name>`` section)."""
        return description_from_json(self.request(name, "create", {"config": dict(config)}))

    def update(self, name: str, config: Mapping[str, object]) -> StreamDescription:
        """Replace stream ``name``'s settings with ``config`` (absent keys take their defaults)."""
        return description_from_json(self.request(name, "update", {"config": dict(config)}))

    def delete(self, name: str) -> None:
        """Delete stream ``name`` and its records."""
        self.request(name, "delete", {})

    def pause_export(self, name: str, export_id: str) -> ExportInfo:
        """Pause export ``export_id`` of stream ``name`` (state ``disabled``, persisted)."""
        return _export_from_json(self.request(name, "export", {"export": export_id, "enabled": False}))

    def resume_export(self, name: str, export_id: str) -> ExportInfo:
        """Resume a paused export."""
        return _export_from_json(self.request(name, "export", {"export": export_id, "enabled": True}))

    def list(self) -> list[StreamDescription]:
        """Every stream this user may describe, sorted by name."""
        result = _object(self.request(None, "_list", {}), "list result")
        return [description_from_json(item) for item in _field(result, "streams", list)]
