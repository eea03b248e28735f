"""What the streams plugin offers to the rest of Headwater: typed records, descriptions, errors.

Owns the shapes that cross module boundaries — the stream API over MQTT, the CLI's ``--json``
output and the status topic all serialize these same objects — and the :class:`StreamService`
protocol that the streams plugin implements. No I/O here.

Exception tree::

    StreamError
    ├── StreamNotFoundError     no stream by that name
    ├── StreamExistsError       create of a name that exists
    ├── StreamRejectedError     the stream refused the record (reject_new and full, too large)
    └── InvalidStreamRequestError   a malformed request (bad sequence, bad config)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from headwater.broker.config import StreamConfig

__all__ = [
    "ExportInfo",
    "ExportProgress",
    "InvalidStreamRequestError",
    "StorageInfo",
    "StreamDescription",
    "StreamError",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamRecord",
    "StreamRejectedError",
    "StreamService",
]


class StreamError(Exception):
    """Base of the streams plugin's errors; ``str()`` is a message for a person."""


class StreamNotFoundError(StreamError):
    """No stream has that name."""


class StreamExistsError(StreamError):
    """A stream with that name exists already."""


class StreamRejectedError(StreamError):
    """The stream refused a record (full with reject_new, or too large)."""


class InvalidStreamRequestError(StreamError):
    """A request that can't be served as asked (bad arguments, bad config)."""


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
        """The object ``streams read --json`` prints (PRODUCT.md): text payloads stay text."""
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
        """The ``storage`` object of ``streams describe --json``."""
        return {
            "oldest_sequence": self.oldest_sequence,
            "newest_sequence": self.newest_sequence,
            "total_bytes": self.total_bytes,
            "record_count": self.record_count,
            "dropped_oldest": self.dropped_oldest,
            "rejected_new": self.rejected_new,
            "expired": self.expired,
        }


@dataclass(frozen=True, slots=True)
class ExportProgress:
    """An export's persisted counters, kept by the store with its checkpoint (they survive restarts).

    ``exported_*`` count records AWS accepted (a record re-sent after a crash counts again: at
    least once); ``dead_lettered`` counts records AWS refused for good, moved to the dead-letter
    stream; ``disabled`` is the pause switch of the stream API.
    """

    exported_records: int = 0
    exported_bytes: int = 0
    dead_lettered: int = 0
    last_export_time_ms: int | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """One export's progress, as ``streams describe --json`` shows it.

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
        """The export object of ``streams describe --json``."""
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


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """``streams describe``: the stream's name, storage and exports."""

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


class StreamService(Protocol):
    """The stream operations the MQTT stream API and in-process users call."""

    def names(self) -> list[str]:
        """Every stream's name, sorted."""
        ...

    def describe(self, name: str) -> StreamDescription:
        """Storage and exports of ``name``; raises :class:`StreamNotFoundError`."""
        ...

    def read(
        self, name: str, *, from_sequence: int, max_count: int, max_bytes: int | None
    ) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first.

        At most ``max_count`` records and ``max_bytes`` of payload, but at least one record if any.
        """
        ...

    async def wait_for_records(
        self,
        name: str,
        *,
        from_sequence: int,
        timeout: float,  # noqa: ASYNC109 - a long-poll bound carried by the request
    ) -> None:
        """Return once a record with sequence >= ``from_sequence`` exists, or after ``timeout``."""
        ...

    async def append(self, name: str, payload: bytes, *, topic: str, client_id: str) -> int:
        """Append durably (as a QoS 1 publish would be) and return the record's sequence."""
        ...

    async def create(self, config: StreamConfig) -> None:
        """Create a stream at run time (persisted across restarts)."""
        ...

    async def update(self, config: StreamConfig) -> None:
        """Change a stream's settings at run time (persisted)."""
        ...

    async def delete(self, name: str) -> None:
        """Delete a stream and its records."""
        ...

    def set_export_enabled(self, name: str, export_id: str, *, enabled: bool) -> ExportInfo:
        """Pause (``enabled=False``) or resume an export of ``name``; persisted."""
        ...
