"""The retention sweep: TTL expiry, ``drop_exported`` and compaction of the served streams.

Owns :class:`RetentionSweep`, the ``headwater-streams-retention`` task's work. Every pass first
reopens the database if a write failed (RocksDB refuses every write after a failure, e.g. a full
disk, until reopened: once space is free again, writes resume without a restart), then, per
stream, expires at most ``expire_per_tick`` records older than ``ttl`` and frees what every
export delivered (``drop_exported``: the lowest checkpoint of its exports); it compacts a
stream's column family after ``compact_after`` records left it (TTL, overwrite_oldest,
drop_exported). Only a checkpoint (or retention) frees a record. It must never decide what a
plan removes (that is :mod:`headwater.core.retention`, applied by the store).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from headwater.core.store import StorageError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from headwater.core.store import Database
    from headwater.plugins.streams.served import ServedStream

__all__ = ["RetentionSweep"]


class RetentionSweep:
    """Applies ``ttl`` and ``drop_exported`` to ``streams`` (the live mapping of served streams).

    ``maintenance`` is the lock that keeps compaction and deletion of a stream's column family
    apart. ``on_changed`` is called with the name of a stream whose contents changed,
    ``on_failed`` with a stream whose storage refused the work and the error.
    """

    def __init__(
        self,
        *,
        streams: Mapping[str, ServedStream],
        expire_per_tick: int,
        compact_after: int,
        maintenance: asyncio.Lock,
        on_changed: Callable[[str], None],
        on_failed: Callable[[ServedStream, BaseException], None],
    ) -> None:
        self._streams = streams
        self._expire_per_tick = expire_per_tick
        self._compact_after = compact_after
        self._maintenance = maintenance
        self._on_changed = on_changed
        self._on_failed = on_failed
        self.expired = 0  # records removed by the TTL sweep
        self.freed_exported = 0  # records removed by drop_exported
        self.compactions = 0

    async def run(self, database: Database, *, interval: float) -> None:
        """The retention task: one :meth:`sweep` every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            await self.sweep(database)

    async def sweep(self, database: Database) -> None:
        """One retention pass over every stream; first tries to make ``database`` writable again."""
        if database.write_error is not None and database.recover():
            for name in self._streams:
                self._on_changed(name)
        now_ms = time.time_ns() // 1_000_000
        for stream in list(self._streams.values()):
            if self._streams.get(stream.name) is not stream:
                continue  # deleted while an earlier stream was being compacted
            if stream.config.ttl is not None:
                cutoff = now_ms - round(stream.config.ttl * 1000)
                try:
                    expired = stream.storage.expire(
                        older_than_ms=cutoff, max_records=self._expire_per_tick, export_ids=stream.export_ids
                    )
                except StorageError as exc:
                    self._on_failed(stream, exc)
                    continue
                if expired:
                    self.expired += expired
                    stream.removed_since_compaction += expired
                    self._on_changed(stream.name)
            try:
                self.release_exported(stream)
            except StorageError as exc:
                self._on_failed(stream, exc)
            if not stream.in_memory and stream.removed_since_compaction >= self._compact_after:
                await self._compact(database, stream)

    def release_exported(self, stream: ServedStream) -> int:
        """Free the records of ``stream`` that every export delivered, if it has ``drop_exported``.

        Returns how many records were removed. With no export, or an export that delivered
        nothing yet, nothing is freed.
        """
        if not stream.config.drop_exported or not stream.config.exports:
            return 0
        checkpoints = [stream.storage.checkpoint(export_id) for export_id in stream.export_ids]
        delivered = [checkpoint for checkpoint in checkpoints if checkpoint is not None]
        if len(delivered) < len(checkpoints):
            return 0
        removed = stream.storage.free_through(min(delivered))
        if removed:
            self.freed_exported += removed
            stream.removed_since_compaction += removed
            self._on_changed(stream.name)
        return removed

    async def _compact(self, database: Database, stream: ServedStream) -> None:
        async with self._maintenance:
            if self._streams.get(stream.name) is not stream:
                return
            stream.removed_since_compaction = 0
            try:
                await database.compact_stream(stream.name)
            except StorageError as exc:
                self._on_failed(stream, exc)
                return
        self.compactions += 1
        self._on_changed(stream.name)
