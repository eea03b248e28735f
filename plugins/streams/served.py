"""A stream as the streams plugin serves it: its settings, its storage and who waits for it.

Owns :class:`ServedStream` (one per stream the plugin serves, shared by the group commit, the
retention sweep and the service methods) and :class:`StreamStorage`, what the plugin needs of a
stream's storage, which the store's ``StreamStore`` and :class:`MemoryStream` both offer. It
must never write or decide anything itself: it is the state the other modules act on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from headwater.core.config import StreamConfig
from headwater.core.retention import RetentionLimits

if TYPE_CHECKING:
    from collections.abc import Sequence

    from headwater.core.store import AppendOutcome, NewRecord
    from headwater.core.streams import ExportProgress
    from headwater.wire.streams import StorageInfo, StreamRecord

__all__ = ["ServedStream", "StreamStorage"]


class StreamStorage(Protocol):
    """What the plugin needs of a stream's storage: the store's ``StreamStore`` or a ``MemoryStream``."""

    @property
    def next_sequence(self) -> int:
        """The sequence the next accepted record gets."""
        ...

    def append_batch(
        self, records: Sequence[NewRecord], *, limits: RetentionLimits, export_ids: Sequence[str] = ()
    ) -> AppendOutcome:
        """Append ``records`` atomically, applying ``limits``."""
        ...

    def read(self, from_sequence: int, *, max_count: int, max_bytes: int | None) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first."""
        ...

    def info(self) -> StorageInfo:
        """Exact counts and bounds."""
        ...

    def expire(self, *, older_than_ms: int, max_records: int, export_ids: Sequence[str] = ()) -> int:
        """Remove at most ``max_records`` records older than ``older_than_ms``."""
        ...

    def checkpoint(self, export_id: str) -> int | None:
        """The last sequence ``export_id`` delivered."""
        ...

    def free_through(self, sequence: int) -> int:
        """Remove the records with sequence <= ``sequence``."""
        ...

    def set_checkpoint(self, export_id: str, sequence: int, progress: ExportProgress | None = None) -> None:
        """Write ``export_id``'s checkpoint (and counters) durably."""
        ...

    def export_progress(self, export_id: str) -> ExportProgress:
        """``export_id``'s counters."""
        ...

    def set_export_progress(self, export_id: str, progress: ExportProgress) -> None:
        """Write ``export_id``'s counters alone."""
        ...

    def dropped_unexported(self) -> dict[str, int]:
        """Per export: records retention removed before it delivered them."""
        ...

    def delete_checkpoint(self, export_id: str) -> None:
        """Forget ``export_id``'s checkpoint and counters."""
        ...


@dataclass(eq=False)
class ServedStream:
    """A served stream. Identity-hashed: it is the value stored in the topic index."""

    config: StreamConfig
    origin: Literal["config", "runtime"]
    storage: StreamStorage
    last_error: str | None = None
    removed_since_compaction: int = 0
    waiting: int = 0  # long-polling readers
    grown: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        """The stream's name."""
        return self.config.name

    @property
    def in_memory(self) -> bool:
        """Whether it is a ``persistence: memory`` stream."""
        return self.config.persistence == "memory"

    @property
    def limits(self) -> RetentionLimits:
        """What retention applies to each append."""
        return RetentionLimits(max_size=self.config.max_size, strategy_on_full=self.config.strategy_on_full)

    @property
    def export_ids(self) -> tuple[str, ...]:
        """The ids of its exports, in config order."""
        return tuple(export.id for export in self.config.exports)

    def notify_grown(self) -> None:
        """Wake the long-polling readers: records were stored."""
        if self.waiting:
            event, self.grown = self.grown, asyncio.Event()
            event.set()
