"""The stream API on the wire: topics, the request/response envelope and the records it carries.

Owns every JSON shape the stream API sends, declared once: the streams plugin encodes with it,
:class:`~headwater.clients.streams.StreamClient` decodes with it (and the other way round for
requests), the CLI prints the same objects with ``--json`` and the status topic carries the
describe object. docs/stream-api.md is the same contract with examples.

Topics (``<prefix>`` is the config's ``topic_prefix``, default ``headwater``)::

    <prefix>/streams/_list                  the list request          (list_topic)
    <prefix>/streams/<stream>/<op>          a request on one stream   (request_topic)
    <prefix>/streams/<stream>/status        retained describe object  (status_topic)
    <prefix>/replies/<user>/<client id>     a client's reply topic    (reply_topic)

Envelope: a request is a JSON object with ``reply_to``, an optional ``request_id`` and the
operation's keys; the response is ``{"request_id", "ok": true, "result"}`` or ``{"request_id",
"ok": false, "error": {"type", "message"}}`` with ``type`` one of :data:`ERROR_TYPES`.

Stdlib only, no I/O. The shapes are frozen dataclasses, each with its ``to_json_dict`` /
``from_json_dict`` pair, rather than msgspec or pydantic models: the client distribution
(``headwater-client``) depends on paho-mqtt alone, and a device should not need a second
compiled dependency to talk to its gateway. Decoding raises :class:`WireFormatError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from headwater.wire._fields import (
    WireFormatError,
    describe_value,
    optional_int,
    optional_str,
    require,
    require_object,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_COUNT",
    "ERROR_TYPES",
    "LIST_OPERATION",
    "MAX_MAX_BYTES",
    "MAX_MAX_COUNT",
    "MAX_TIMEOUT",
    "OPERATIONS",
    "STREAM_NAME",
    "STREAM_NAME_RULE",
    "ErrorType",
    "ExportInfo",
    "RequestEnvelope",
    "RequestId",
    "Response",
    "StorageInfo",
    "StreamDescription",
    "StreamRecord",
    "WireFormatError",
    "decode_request_envelope",
    "decode_response",
    "encode_error",
    "encode_request",
    "encode_result",
    "list_topic",
    "reply_topic",
    "request_topic",
    "status_topic",
    "stream_name_problem",
    "streams_root",
]

#: The pseudo stream level of the list request: ``<prefix>/streams/_list``.
LIST_OPERATION: Final = "_list"
#: The operations on one stream: ``<prefix>/streams/<stream>/<op>``.
OPERATIONS: Final = ("read", "describe", "append", "create", "update", "delete", "export")

#: Read limits the server applies (and the defaults when a request leaves them out).
DEFAULT_MAX_COUNT: Final = 100
MAX_MAX_COUNT: Final = 10_000
DEFAULT_MAX_BYTES: Final = 1024 * 1024
MAX_MAX_BYTES: Final = 4 * 1024 * 1024
MAX_TIMEOUT: Final = 60.0

#: A stream name: it is one topic level, and never starts with ``_`` (``_list`` is no stream).
STREAM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
STREAM_NAME_RULE: Final = "1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"

ErrorType: TypeAlias = Literal[
    "not_found", "exists", "rejected", "invalid", "forbidden", "failed", "internal"
]
#: Every ``error.type`` of a response, in the order docs/stream-api.md lists them.
ERROR_TYPES: Final[tuple[ErrorType, ...]] = (
    "not_found",
    "exists",
    "rejected",
    "invalid",
    "forbidden",
    "failed",
    "internal",
)
RequestId: TypeAlias = str | int | None

# request_id is echoed: keep what is echoed small.
_MAX_REQUEST_ID_CHARS: Final = 256
# Characters that would change the shape of a reply topic.
_TOPIC_UNSAFE: Final = re.compile(r"[/+#\x00]")


def stream_name_problem(name: str) -> str | None:
    """Why ``name`` is no valid stream name, or None."""
    if STREAM_NAME.fullmatch(name):
        return None
    return f"invalid stream name {name!r} (expected {STREAM_NAME_RULE})"


# --- topics ------------------------------------------------------------------------------------


def streams_root(prefix: str) -> str:
    """``<prefix>/streams/``: every request and status topic starts with it."""
    return f"{prefix}/streams/"


def list_topic(prefix: str) -> str:
    """``<prefix>/streams/_list``."""
    return f"{prefix}/streams/{LIST_OPERATION}"


def request_topic(prefix: str, stream: str | None, operation: str) -> str:
    """The topic a request is published to (``stream=None`` for the list request)."""
    if stream is None:
        return list_topic(prefix)
    return f"{prefix}/streams/{stream}/{operation}"


def status_topic(prefix: str, stream: str) -> str:
    """``<prefix>/streams/<stream>/status`` (``+`` for the filter of every stream's status)."""
    return f"{prefix}/streams/{stream}/status"


def reply_topic(prefix: str, username: str | None, client_id: str) -> str:
    """``<prefix>/replies/<username or anonymous>/<client_id>``: a client's default reply topic.

    ``/``, ``+``, ``#`` and NUL in the username or client id become ``_`` (they would change the
    topic's shape; ACL ``%u`` rules never match such usernames anyway).
    """
    user = _TOPIC_UNSAFE.sub("_", username) if username else "anonymous"
    return f"{prefix}/replies/{user}/{_TOPIC_UNSAFE.sub('_', client_id) or '_'}"


# --- the envelope ------------------------------------------------------------------------------


def _compact(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def encode_request(body: Mapping[str, object], *, reply_to: str, request_id: RequestId) -> bytes:
    """A request: the operation's keys plus ``reply_to`` and ``request_id``."""
    return _compact({**body, "reply_to": reply_to, "request_id": request_id})


@dataclass(frozen=True, slots=True)
class RequestEnvelope:
    """What every request carries: where to answer, what to echo, and its other keys."""

    reply_to: str
    request_id: RequestId
    body: Mapping[str, object]
    # Set when request_id itself was unusable: the request is answered with this error.
    request_id_error: str | None = None


def decode_request_envelope(payload: bytes) -> RequestEnvelope:
    """Split a request into its envelope and its body.

    Raises :class:`WireFormatError` when the payload is not a JSON object or has no string
    ``reply_to`` (such a request can't be answered). An unusable ``request_id`` does not raise:
    it is reported in ``request_id_error``, to be answered as an ``invalid`` request.
    """
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"the payload is not JSON ({exc})"
        raise WireFormatError(msg) from exc
    if not isinstance(data, dict):
        msg = f"the payload must be a JSON object, got {_json_shown(data)}"
        raise WireFormatError(msg)
    reply_to = data.pop("reply_to", None)
    if not isinstance(reply_to, str):
        msg = "no reply_to (a string naming the topic to answer on)"
        raise WireFormatError(msg)
    request_id = data.pop("request_id", None)
    request_id_error = None
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, str | int)
        or (isinstance(request_id, str) and len(request_id) > _MAX_REQUEST_ID_CHARS)
    ):
        request_id_error = (
            f"request_id: expected a string of at most {_MAX_REQUEST_ID_CHARS} characters or an "
            f"integer, got {_json_shown(request_id)}"
        )
        request_id = None
    return RequestEnvelope(
        reply_to=reply_to, request_id=request_id, body=data, request_id_error=request_id_error
    )


def _json_shown(value: object) -> str:
    """``value`` as error messages show it: JSON for scalars, its kind for containers."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = json.dumps(value)
        return shown if len(shown) <= 60 else shown[:56] + '..."'  # noqa: PLR2004 - message width
    return describe_value(value)


def encode_result(request_id: RequestId, result: object) -> bytes:
    """A success response."""
    return _compact({"request_id": request_id, "ok": True, "result": result})


def encode_error(request_id: RequestId, error_type: ErrorType, message: str) -> bytes:
    """An error response."""
    error = {"type": error_type, "message": message}
    return _compact({"request_id": request_id, "ok": False, "error": error})


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response: ``result`` when ``ok``, else ``error_type`` and ``message``.

    ``error_type`` is kept as sent (a newer Headwater may add types).
    """

    request_id: object
    ok: bool
    result: object = None
    error_type: str = ""
    message: str = ""


def decode_response(payload: bytes) -> Response:
    """Decode a response; raises :class:`WireFormatError` when it is not a response object."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"the response is not JSON ({exc})"
        raise WireFormatError(msg) from exc
    response = require_object(data, "response")
    if response.get("ok") is True:
        return Response(request_id=response.get("request_id"), ok=True, result=response.get("result"))
    error = require_object(response.get("error"), "error")
    return Response(
        request_id=response.get("request_id"),
        ok=False,
        error_type=str(error.get("type", "unknown")),
        message=str(error.get("message", "(no message)")),
    )


# --- what responses carry ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One stored record: what a device published, with its place in the stream."""

    sequence: int
    timestamp_ms: int
    topic: str
    qos: int
    client_id: str
    payload: bytes

    def to_json_dict(self) -> dict[str, object]:
        """A record of a read result (and of ``streams read --json``): text payloads stay text."""
        entry: dict[str, object] = {
            "sequence": self.sequence,
            "timestamp": self.timestamp_ms,
            "topic": self.topic,
            "qos": self.qos,
            "client_id": self.client_id,
        }
        try:
            entry["payload"] = self.payload.decode()
        except UnicodeDecodeError:
            entry["payload_b64"] = base64.b64encode(self.payload).decode()
        return entry

    @classmethod
    def from_json_dict(cls, value: object) -> StreamRecord:
        """The inverse of :meth:`to_json_dict`; raises :class:`WireFormatError`."""
        data = require_object(value, "record")
        if isinstance(data.get("payload"), str):
            payload = data["payload"].encode()
        else:
            try:
                payload = base64.b64decode(require(data, "payload_b64", str), validate=True)
            except (binascii.Error, ValueError) as exc:
                if isinstance(exc, WireFormatError):
                    raise
                msg = f"record payload_b64: {exc}"
                raise WireFormatError(msg) from exc
        return cls(
            sequence=require(data, "sequence", int),
            timestamp_ms=require(data, "timestamp", int),
            topic=require(data, "topic", str),
            qos=require(data, "qos", int),
            client_id=require(data, "client_id", str),
            payload=payload,
        )


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """What a stream holds right now; sizes are exact (what is stored is what is counted)."""

    oldest_sequence: int | None
    newest_sequence: int | None
    total_bytes: int
    record_count: int
    dropped_oldest: int = 0  # overwrite_oldest removed them to make room
    rejected_new: int = 0  # reject_new refused them
    expired: int = 0  # older than ttl

    def to_json_dict(self) -> dict[str, object]:
        """The ``storage`` object of the describe object."""
        return {
            "oldest_sequence": self.oldest_sequence,
            "newest_sequence": self.newest_sequence,
            "total_bytes": self.total_bytes,
            "record_count": self.record_count,
            "dropped_oldest": self.dropped_oldest,
            "rejected_new": self.rejected_new,
            "expired": self.expired,
        }

    @classmethod
    def from_json_dict(cls, value: object) -> StorageInfo:
        """The inverse of :meth:`to_json_dict`; raises :class:`WireFormatError`."""
        data = require_object(value, "storage")
        return cls(
            oldest_sequence=optional_int(data, "oldest_sequence"),
            newest_sequence=optional_int(data, "newest_sequence"),
            total_bytes=require(data, "total_bytes", int),
            record_count=require(data, "record_count", int),
            dropped_oldest=optional_int(data, "dropped_oldest") or 0,
            rejected_new=optional_int(data, "rejected_new") or 0,
            expired=optional_int(data, "expired") or 0,
        )


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """One export's progress, as the describe object shows it.

    ``lag_records`` counts the stored records after ``last_exported_sequence``; ``lag_bytes`` is
    estimated from the stream's average stored record size (exact would need a scan).
    ``lost_records``: records retention removed before this export delivered them.
    """

    id: str
    type: str
    last_exported_sequence: int | None
    last_export_time: int | None  # ms since epoch
    exported_records: int
    state: str
    last_error: str | None
    priority: int = 5
    exported_bytes: int = 0
    lag_records: int = 0
    lag_bytes: int = 0
    dead_lettered: int = 0
    lost_records: int = 0

    def to_json_dict(self) -> dict[str, object]:
        """The export object of the describe object (and the result of ``export``)."""
        return {
            "id": self.id,
            "type": self.type,
            "priority": self.priority,
            "state": self.state,
            "last_exported_sequence": self.last_exported_sequence,
            "last_export_time": self.last_export_time,
            "exported_records": self.exported_records,
            "exported_bytes": self.exported_bytes,
            "lag_records": self.lag_records,
            "lag_bytes": self.lag_bytes,
            "dead_lettered": self.dead_lettered,
            "lost_records": self.lost_records,
            "last_error": self.last_error,
        }

    @classmethod
    def from_json_dict(cls, value: object) -> ExportInfo:
        """The inverse of :meth:`to_json_dict`; raises :class:`WireFormatError`."""
        data = require_object(value, "export")
        return cls(
            id=require(data, "id", str),
            type=require(data, "type", str),
            last_exported_sequence=optional_int(data, "last_exported_sequence"),
            last_export_time=optional_int(data, "last_export_time"),
            exported_records=require(data, "exported_records", int),
            state=require(data, "state", str),
            last_error=optional_str(data.get("last_error")),
            priority=optional_int(data, "priority") or 5,
            exported_bytes=optional_int(data, "exported_bytes") or 0,
            lag_records=optional_int(data, "lag_records") or 0,
            lag_bytes=optional_int(data, "lag_bytes") or 0,
            dead_lettered=optional_int(data, "dead_lettered") or 0,
            lost_records=optional_int(data, "lost_records") or 0,
        )


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """The describe object: the stream's name, storage and exports."""

    name: str
    persistence: str
    storage: StorageInfo
    exports: tuple[ExportInfo, ...] = ()
    state: str = "ok"  # "ok" | "failing" (the last write failed: disk full, I/O error)
    last_error: str | None = None

    def to_json_dict(self) -> dict[str, object]:
        """The object ``streams describe --json`` prints and the status topic carries."""
        return {
            "name": self.name,
            "persistence": self.persistence,
            "state": self.state,
            "last_error": self.last_error,
            "storage": self.storage.to_json_dict(),
            "exports": [export.to_json_dict() for export in self.exports],
        }

    @classmethod
    def from_json_dict(cls, value: object) -> StreamDescription:
        """The inverse of :meth:`to_json_dict`; raises :class:`WireFormatError`."""
        data: Mapping[str, Any] = require_object(value, "stream description")
        exports = require(data, "exports", list)
        return cls(
            name=require(data, "name", str),
            persistence=require(data, "persistence", str),
            state=str(data.get("state", "ok")),
            last_error=optional_str(data.get("last_error")),
            storage=StorageInfo.from_json_dict(data.get("storage")),
            exports=tuple(ExportInfo.from_json_dict(export) for export in exports),
        )
