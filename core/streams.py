"""The streams as the rest of Headwater sees them: errors, export counters, the service interfaces.

Owns the contracts between the streams plugin and its users inside the hub: the
:class:`StreamService` the MQTT stream API calls, the :class:`ExportableStreams` the upload
plugin drains (the streams plugin implements both; the broker hands it over, so the upload
plugin never imports the streams plugin), the :class:`ExportObserver` the upload plugin
implements in return, and :class:`ExportProgress`, the counters the store keeps with each
checkpoint. The records and descriptions themselves are wire shapes
(:mod:`headwater.wire.streams`). No I/O here.

Exception tree::

    StreamError
    ├── StreamNotFoundError     no stream by that name
    ├── StreamExistsError       create of a name that exists
    ├── StreamRejectedError     the stream refused the record (reject_new and full, too large)
    └── InvalidStreamRequestError   a malformed request (bad sequence, bad config)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from headwater.core.config import StreamConfig
    from headwater.wire.streams import ExportInfo, StorageInfo, StreamDescription, StreamRecord

__all__ = [
    "ExportObserver",
    "ExportProgress",
    "ExportableStreams",
    "ExportedStreams",
    "InvalidStreamRequestError",
    "StreamError",
    "StreamExistsError",
    "StreamNotFoundError",
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


class ExportObserver(Protocol):
    """The upload plugin, as the streams plugin sees it: export states and reactions to changes."""

    def export_infos(self, name: str) -> tuple[ExportInfo, ...]:
        """The exports of stream ``name`` as ``describe`` shows them."""
        ...

    async def stream_changed(self, name: str) -> None:
        """Stream ``name`` was created, updated or is about to be deleted: (re)start or stop drivers."""
        ...

    def set_export_enabled(self, name: str, export_id: str, *, enabled: bool) -> ExportInfo:
        """Pause or resume an export; raises ``InvalidStreamRequestError`` for an unknown one."""
        ...


class ExportedStreams(Protocol):
    """What one export's driver needs of the streams (records, checkpoints, counters)."""

    def read(
        self, name: str, *, from_sequence: int, max_count: int, max_bytes: int | None
    ) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first."""
        ...

    async def wait_for_records(
        self,
        name: str,
        *,
        from_sequence: int,
        timeout: float,  # noqa: ASYNC109 - the streams plugin's long-poll signature
    ) -> None:
        """Return once a record with sequence >= ``from_sequence`` exists, or after ``timeout``."""
        ...

    def storage_info(self, name: str) -> StorageInfo:
        """The stream's storage counters."""
        ...

    def export_checkpoint(self, name: str, export_id: str) -> int | None:
        """The export's checkpoint (last delivered sequence)."""
        ...

    def export_progress(self, name: str, export_id: str) -> ExportProgress:
        """The export's persisted counters."""
        ...

    def export_lost(self, name: str, export_id: str) -> int:
        """Records retention removed before the export delivered them."""
        ...

    def commit_export(self, name: str, export_id: str, sequence: int, progress: ExportProgress) -> None:
        """Write checkpoint and counters together; free what every export delivered."""
        ...

    def save_export_progress(self, name: str, export_id: str, progress: ExportProgress) -> None:
        """Write the counters alone (the disabled switch)."""
        ...

    def mark_status_changed(self, name: str) -> None:
        """Have the stream's status topic republished (rate-limited by the streams plugin)."""
        ...


class ExportableStreams(ExportedStreams, Protocol):
    """What the upload plugin needs of the streams: its drivers' part, configs, run-time streams.

    Implemented by the streams plugin, which owns the storage. Every method taking a ``name``
    raises :class:`StreamNotFoundError` for a stream that does not exist.
    """

    def names(self) -> list[str]:
        """Every stream's name, sorted."""
        ...

    def stream_config(self, name: str) -> StreamConfig:
        """The settings stream ``name`` runs with (its ``exports`` among them)."""
        ...

    def attach_exports(self, observer: ExportObserver | None) -> None:
        """Let ``observer`` describe exports and follow run-time stream changes (None: detach)."""
        ...

    async def create(self, config: StreamConfig) -> None:
        """Create a stream at run time (persisted across restarts)."""
        ...

    async def append(self, name: str, payload: bytes, *, topic: str, client_id: str) -> int:
        """Append durably and return the record's sequence."""
        ...

    def forget_export(self, name: str, export_id: str) -> None:
        """Delete the checkpoint and counters of an export the stream no longer has."""
        ...

    def mark_status_changed(self, name: str) -> None:
        """Have the stream's status topic republished (rate-limited by the streams plugin)."""
        ...
