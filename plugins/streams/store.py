"""The one module that owns Headwater's RocksDB database.

Nothing else imports rocksdict or builds keys. Everything Headwater keeps on disk lives in one
RocksDB database at ``<data_dir>/db``, one column family per concern.

Key layout
----------

=================  ==========================  ============================================
column family      key                         value
=================  ==========================  ============================================
``meta``           ``b"format"``               ``b"1"``: the on-disk format version
``retained``       topic name, UTF-8           retained-message record (below)
=================  ==========================  ============================================

Streams (sequence-numbered records, checkpoints) will add their own column families here;
their layout is documented in this docstring when they land.

Retained-message record, version 1::

    byte 0      format version (1)
    byte 1      QoS the message was published with (0, 1, 2)
    bytes 2..5  CRC-32 (big-endian) of the payload
    bytes 6..   payload, as published

Invariants
----------

* A retained message is written to the WAL before its publisher's PUBACK is sent (the caller
  awaits :meth:`Database.request_wal_sync`'s future when it owes a power-cut-proof write).
  A write without an fsync survives a killed process; only a synced WAL survives a power cut.
* An empty retained payload deletes the key (MQTT-3.3.1-10), durably, like a write.
* A record whose version is unknown or whose checksum does not match is never returned: it is
  counted in :class:`StoreStatistics` and logged once, and the rest of the data stays readable.

When data may be deleted
------------------------

A retained message is deleted only when a client (or Headwater itself) publishes an empty
retained message to its topic.

Exception tree
--------------

::

    StorageError
    ├── StorageOpenError     the directory can't be opened (locked by another process, corrupt)
    └── StorageWriteError    a write or fsync failed (disk full, I/O error)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rocksdict import Options, Rdict, WriteBatch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rocksdict import ColumnFamily

__all__ = [
    "Database",
    "RetainedMessage",
    "RetainedStore",
    "StorageError",
    "StorageOpenError",
    "StorageWriteError",
    "StoreStatistics",
]

logger = logging.getLogger(__name__)

_FORMAT_VERSION: Final = b"1"
_RETAINED_RECORD_V1: Final = 1
_RETAINED_HEADER: Final = struct.Struct(">BBI")
_CF_META: Final = "meta"
_CF_RETAINED: Final = "retained"
_REQUIRED_COLUMN_FAMILIES: Final = (_CF_META, _CF_RETAINED)


class StorageError(Exception):
    """Base of every error raised by the store."""


class StorageOpenError(StorageError):
    """The database directory could not be opened."""


class StorageWriteError(StorageError):
    """A write or an fsync did not reach the disk."""


@dataclass(frozen=True, slots=True)
class RetainedMessage:
    """A retained message as stored: topic, payload, QoS."""

    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters of :class:`Database`."""

    wal_syncs: int
    corrupt_records_skipped: int


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)  # noqa: FBT003 - rocksdict's setter API
    options.create_missing_column_families(True)  # noqa: FBT003
    return options


class Database:
    """An open RocksDB database under ``data_dir``; create it with :meth:`open`.

    Writes go to RocksDB's WAL without an fsync (a killed process loses nothing written);
    :meth:`request_wal_sync` groups the fsyncs of every writer waiting at the same time into one
    ``flush_wal(sync=True)`` run off the event loop (group commit).
    """

    def __init__(self, db: Rdict, path: Path) -> None:
        self._db: Rdict | None = db
        self.path = path
        self._column_families: dict[str, ColumnFamily] = {
            name: db.get_column_family_handle(name) for name in _REQUIRED_COLUMN_FAMILIES
        }
        self._pending_sync: asyncio.Future[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._wal_syncs = 0
        self._corrupt_records_skipped = 0
        self.retained = RetainedStore(self)

    @classmethod
    def open(cls, data_dir: Path) -> Database:
        """Open (creating if needed) the database at ``data_dir/db``."""
        path = data_dir / "db"
        try:
            path.mkdir(parents=True, exist_ok=True)
            existing = set(Rdict.list_cf(str(path), _options())) if (path / "CURRENT").exists() else set()
            families = {name: _options() for name in existing | set(_REQUIRED_COLUMN_FAMILIES)}
            families.pop("default", None)
            db = Rdict(str(path), options=_options(), column_families=families)
        except OSError as exc:
            msg = f"cannot create {path}: {exc.strerror or exc}"
            raise StorageOpenError(msg) from exc
        except Exception as exc:  # rocksdict raises plain Exception subclasses
            msg = f"cannot open {path}: {exc}"
            raise StorageOpenError(msg) from exc
        database = cls(db, path)
        database._check_format()
        return database

    def _check_format(self) -> None:
        meta = self._column_families[_CF_META]
        found = self._rdict.get_column_family(_CF_META).get(b"format")
        if found is None:
            batch = WriteBatch(raw_mode=True)
            batch.put(b"format", _FORMAT_VERSION, meta)
            self.write(batch)
        elif found != _FORMAT_VERSION:
            msg = f"{self.path}: unsupported on-disk format {found!r} (expected {_FORMAT_VERSION!r})"
            raise StorageOpenError(msg)

    @property
    def _rdict(self) -> Rdict:
        if self._db is None:
            msg = f"{self.path} is closed"
            raise StorageError(msg)
        return self._db

    def column_family(self, name: str) -> ColumnFamily:
        """The handle of column family ``name`` (for batches built by this module)."""
        return self._column_families[name]

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically (to the WAL, no fsync). Consumes the batch."""
        try:
            self._rdict.write(batch)
        except StorageError:
            raise
        except Exception as exc:
            msg = f"write to {self.path} failed: {exc}"
            raise StorageWriteError(msg) from exc

    def request_wal_sync(self) -> asyncio.Future[None]:
        """Return a future that resolves once every write made before this call is fsynced.

        Callers arriving while an fsync is already running share the *next* one, so N waiting
        writers cost at most two fsyncs. The fsync runs in a worker thread (it releases the GIL).
        """
        waiter = self._pending_sync
        if waiter is None:
            waiter = self._pending_sync = asyncio.get_running_loop().create_future()
            if self._sync_task is None or self._sync_task.done():
                self._sync_task = asyncio.create_task(self._run_wal_syncs(), name="headwater-wal-sync")
        return waiter

    async def _run_wal_syncs(self) -> None:
        while (waiter := self._pending_sync) is not None:
            self._pending_sync = None
            try:
                await asyncio.to_thread(self._rdict.flush_wal, True)  # noqa: FBT003 - rocksdict's positional API
            except Exception as exc:  # noqa: BLE001 - translated and handed to every waiter
                waiter.set_exception(StorageWriteError(f"fsync of {self.path} failed: {exc}"))
            else:
                self._wal_syncs += 1
                waiter.set_result(None)

    def note_corrupt_record(self, where: str, reason: str) -> None:
        """Count and log a record that failed its checks; it is skipped, never returned."""
        self._corrupt_records_skipped += 1
        logger.error("skipping corrupt record in %s: %s", where, reason)

    def statistics(self) -> StoreStatistics:
        """A snapshot of the counters."""
        return StoreStatistics(
            wal_syncs=self._wal_syncs, corrupt_records_skipped=self._corrupt_records_skipped
        )

    def iter_items(self, family: str) -> Iterator[tuple[bytes, bytes]]:
        """Iterate a column family in key order. The iterator is released when exhausted."""
        view = self._rdict.get_column_family(family)
        try:
            # raw_mode: keys and values are always bytes
            yield from view.items()
        finally:
            del view

    async def aclose(self) -> None:
        """Finish pending fsyncs, then close. Safe to call twice."""
        if self._sync_task is not None:
            with contextlib.suppress(StorageError):
                await self._sync_task
        self.close()

    def close(self) -> None:
        """Flush the WAL and close; idempotent."""
        if self._db is None:
            return
        db, self._db = self._db, None
        # rocksdict only really closes once no column-family object is alive (NOTES.md).
        self._column_families.clear()
        try:
            db.flush_wal(True)  # noqa: FBT003
        finally:
            db.close()


class RetainedStore:
    """Durable retained messages: one key per topic in column family ``retained``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        """Store ``payload`` as the retained message of ``topic``; empty payload deletes it."""
        family = self._database.column_family(_CF_RETAINED)
        batch = WriteBatch(raw_mode=True)
        key = topic.encode()
        if payload:
            header = _RETAINED_HEADER.pack(_RETAINED_RECORD_V1, qos, zlib.crc32(payload))
            batch.put(key, header + payload, family)
        else:
            batch.delete(key, family)
        self._database.write(batch)

    def load_all(self) -> list[RetainedMessage]:
        """Every valid retained message; corrupt ones are skipped and counted."""
        messages: list[RetainedMessage] = []
        for key, value in self._database.iter_items(_CF_RETAINED):
            message = self._decode(key, value)
            if message is not None:
                messages.append(message)
        return messages

    def _decode(self, key: bytes, value: bytes) -> RetainedMessage | None:
        where = f"retained message {key[:80]!r}"
        if len(value) < _RETAINED_HEADER.size:
            self._database.note_corrupt_record(where, "record shorter than its header")
            return None
        version, qos, checksum = _RETAINED_HEADER.unpack_from(value)
        payload = value[_RETAINED_HEADER.size :]
        if version != _RETAINED_RECORD_V1:
            self._database.note_corrupt_record(where, f"unknown record version {version}")
            return None
        if zlib.crc32(payload) != checksum or qos > 2:  # noqa: PLR2004 - MQTT's highest QoS
            self._database.note_corrupt_record(where, "checksum mismatch")
            return None
        try:
            topic = key.decode()
        except UnicodeDecodeError:
            self._database.note_corrupt_record(where, "topic is not UTF-8")
            return None
        return RetainedMessage(topic=topic, payload=payload, qos=qos)
