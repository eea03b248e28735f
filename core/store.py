"""The one module that owns Headwater's RocksDB database.

Nothing else imports rocksdict or builds keys. Everything Headwater keeps on disk lives in one
RocksDB database at ``<data_dir>/db``, one column family per concern. Retention *policy*
(what to drop) is decided by the pure functions of :mod:`headwater.core.retention`;
this module executes those decisions, atomically, in the same write batch as the records.

Key layout
----------

=======================  ==================================  ======================================
column family            key                                 value
=======================  ==================================  ======================================
``meta``                 ``b"format"``                       ``b"1"``: the on-disk format version
``retained``             topic name, UTF-8                   retained-message record (below)
``stream_definitions``   stream name, UTF-8                  a run-time stream definition: opaque
                                                             bytes (the plugin writes JSON)
``s/<stream name>``      sequence, 8 bytes big-endian        stream record (below)
``s/<stream name>``      ``FF*8 + b"m"``                     stream metadata (below)
``s/<stream name>``      ``FF*8 + b"c/" + export id``        checkpoint: the last sequence the export
                                                             delivered, 8 bytes big-endian
``s/<stream name>``      ``FF*8 + b"l/" + export id``        records removed by retention before that
                                                             export delivered them, 8 bytes BE
``s/<stream name>``      ``FF*8 + b"p/" + export id``        export progress (below), written in the
                                                             same batch as the checkpoint
=======================  ==================================  ======================================

Sequences are below 2**63, so their keys start with a byte below ``0x80`` and sort before the
``FF*8`` keys: a stream's records are the first keys of its column family, in sequence order, and
everything a stream owns (records, metadata, checkpoints, counters) is in its column family —
dropping the column family deletes a stream atomically. Format 1 of the database includes the
stream column families (they were added before any release); a database without them is a
format-1 database with no streams.

Retained-message record, version 1::

    byte 0      format version (1)
    byte 1      QoS the message was published with (0, 1, 2)
    bytes 2..5  CRC-32 (big-endian) of the payload
    bytes 6..   payload, as published

Stream record, version 1 (big-endian; 18 bytes of header)::

    byte 0        record format version (1)
    bytes 1..4    CRC-32 of bytes 5.. (everything after the checksum)
    byte 5        QoS the message was published with (0, 1, 2)
    bytes 6..13   timestamp, ms since the epoch (signed)
    bytes 14..15  length T of the topic
    bytes 16..17  length C of the publisher's client id
    then          topic (T bytes, UTF-8), client id (C bytes, UTF-8), payload (the rest)

Stream metadata, version 1 (big-endian)::

    byte 0        metadata format version (1)
    bytes 1..4    CRC-32 of bytes 5..
    then six unsigned 64-bit integers: next sequence, oldest sequence, total bytes,
    dropped oldest, rejected new, expired

Export progress, version 1 (big-endian)::

    byte 0        format version (1)
    bytes 1..4    CRC-32 of bytes 5..
    then          exported records, exported bytes, dead-lettered records (unsigned 64-bit),
                  last export time in ms (signed 64-bit, -1 = never), flags (1 byte: bit 0 =
                  disabled)

Invariants
----------

* A retained message or a stream record is written to the WAL before its publisher's PUBACK is
  sent (the caller awaits :meth:`Database.request_wal_sync`'s future when it owes a
  power-cut-proof write). A write without an fsync survives a killed process; only a synced WAL
  survives a power cut.
* An empty retained payload deletes the key (MQTT-3.3.1-10), durably, like a write.
* A stream holds exactly the records ``[oldest sequence, next sequence)``: contiguous, since
  records are only ever removed from the oldest end. Its record count is
  ``next - oldest``. Sequences start at 0 and increase by one per accepted record; the next
  sequence is kept in the metadata, never derived from the remaining records, so it survives
  a stream that was emptied.
* ``total bytes`` is the sum of the encoded sizes (the RocksDB values above, header included,
  key not) of the stored records: what ``describe`` reports is what is stored, and
  ``max_size`` limits exactly that sum.
* The metadata, the per-export lost counters and the records they describe change in one
  ``WriteBatch``: after a crash they agree. Counters are therefore exact across restarts.
* Opening a stream reads its metadata and its few checkpoint keys, never its records: start-up
  time does not grow with the backlog.
* A record whose version is unknown, whose checksum does not match or that is truncated is
  never returned: it is counted in :class:`StoreStatistics` and logged (each time a read meets
  it), and the records around it stay readable.
* Stream metadata that fails its checks is rebuilt from the records (a scan; the drop counters
  restart at 0) and counted like a corrupt record.

When data may be deleted
------------------------

A retained message is deleted only when a client (or Headwater itself) publishes an empty
retained message to its topic.

A stream record is deleted only

* by size retention, in the batch that appends the records it makes room for
  (``overwrite_oldest``, counted as *dropped oldest* and, per export, as *unexported* when its
  sequence is greater than that export's checkpoint),
* by the TTL sweep, :meth:`StreamStore.expire` (counted as *expired*; a record too corrupt to
  tell its age counts as expired too: it can never be delivered and would stall the sweep),
* by :meth:`StreamStore.free_through`, which the plugin calls for ``drop_exported`` streams with
  the lowest checkpoint of the stream's exports: only an export's checkpoint frees a record,
* by :meth:`Database.delete_stream`, which deletes the whole stream.

Under ``reject_new`` a record that does not fit is never written (counted as *rejected new*).
A single record larger than ``max_size`` is rejected under both strategies and counted as
rejected new: dropping every other record would not make it fit. Deletes are range deletes;
:meth:`Database.compact_stream` makes the disk space come back.

Performance
-----------

Per record the work is one ``struct`` pack, one CRC-32 and one ``WriteBatch.put``; metadata is
one more ``put`` per batch, so a batch costs little more than its records. At the size limit
under ``overwrite_oldest`` each batch also reads the sizes of the records it drops and
range-deletes them, which stays steady however long the stream has been full.
``PYTHONPATH=<headwater install> python -m tests.integration.test_stream_store`` prints the
rates; docs/benchmarks.md has the measured ones.

Exception tree
--------------

::

    StorageError
    ├── StorageOpenError     the directory can't be opened (locked by another process, corrupt)
    ├── StorageReadError     RocksDB failed a read (I/O error)
    └── StorageWriteError    a write or fsync failed (disk full, I/O error)

A :class:`StreamStore` used after its database was closed or its stream deleted raises
:class:`StorageError`. Arguments that break the contract (a negative sequence, a QoS of 3, a
checkpoint beyond the newest record) raise :class:`ValueError`: they are bugs, not storage errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import shutil
import struct
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar, cast

from rocksdict import Options, Rdict, WriteBatch

from headwater.core.retention import (
    RetentionLimits,
    StreamState,
    plan_append,
    plan_expire,
    plan_free_through,
    unexported_by_export,
)
from headwater.core.streams import ExportProgress
from headwater.wire.streams import StorageInfo, StreamRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence

    from rocksdict import ColumnFamily

__all__ = [
    "AppendOutcome",
    "Database",
    "NewRecord",
    "RetainedMessage",
    "RetainedStore",
    "RetentionLimits",
    "StorageError",
    "StorageOpenError",
    "StorageReadError",
    "StorageWriteError",
    "StoreStatistics",
    "StreamStore",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_FORMAT_VERSION: Final = b"1"
_RETAINED_RECORD_V1: Final = 1
_RETAINED_HEADER: Final = struct.Struct(">BBI")
_CF_META: Final = "meta"
_CF_RETAINED: Final = "retained"
_CF_STREAM_DEFINITIONS: Final = "stream_definitions"
_REQUIRED_COLUMN_FAMILIES: Final = (_CF_META, _CF_RETAINED, _CF_STREAM_DEFINITIONS)
_STREAM_FAMILY_PREFIX: Final = "s/"

_SEQUENCE: Final = struct.Struct(">Q")
_MAX_SEQUENCE: Final = 2**63 - 1
_COUNTER: Final = _SEQUENCE
_STREAM_KEYS_PREFIX: Final = b"\xff" * 8
_STREAM_META_KEY: Final = _STREAM_KEYS_PREFIX + b"m"
_CHECKPOINT_PREFIX: Final = _STREAM_KEYS_PREFIX + b"c/"
_LOST_PREFIX: Final = _STREAM_KEYS_PREFIX + b"l/"
_PROGRESS_PREFIX: Final = _STREAM_KEYS_PREFIX + b"p/"
_PROGRESS_V1: Final = 1
_PROGRESS_PREFIX_STRUCT: Final = struct.Struct(">BI")
_PROGRESS_BODY: Final = struct.Struct(">QQQqB")
_PROGRESS_DISABLED: Final = 1

_STREAM_RECORD_V1: Final = 1
# version, CRC-32 of the rest, QoS, timestamp ms, topic length, client id length
_RECORD_HEADER: Final = struct.Struct(">BIBqHH")
_RECORD_CHECKED_FROM: Final = 5  # the CRC covers the record from this byte on
_RECORD_BODY_HEAD: Final = struct.Struct(">BqHH")
_RECORD_PREFIX: Final = struct.Struct(">BI")
_MAX_QOS: Final = 2

# Free space a reopen needs besides the WAL it replays into a table (manifest, new WAL, slack).
_REOPEN_MARGIN: Final = 1024 * 1024

_STREAM_META_V1: Final = 1
_STREAM_META_PREFIX: Final = struct.Struct(">BI")
_STREAM_META_BODY: Final = struct.Struct(">QQQQQQ")


class StorageError(Exception):
    """Base of every error raised by the store."""


class StorageOpenError(StorageError):
    """The database directory could not be opened."""


class StorageReadError(StorageError):
    """RocksDB failed a read."""


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


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to append: what a device published, and when (ms since the epoch)."""

    timestamp_ms: int
    topic: str
    qos: int
    client_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What :meth:`StreamStore.append_batch` did.

    ``sequences[i]`` is the sequence of input record ``i``, ``None`` if it was rejected
    (``reject_new`` and full, or larger than ``max_size``). Under ``overwrite_oldest`` a record
    may be accepted and, later in the same batch, dropped again to make room: it keeps its
    sequence (it was accepted, in stream order) and counts in ``dropped_oldest``.
    ``dropped_unexported`` maps each export id (of those passed in) that lost records to how many
    of the removed records it had not delivered; exports that lost nothing are left out.
    """

    sequences: tuple[int | None, ...]
    dropped_oldest: int
    dropped_unexported: Mapping[str, int]

    @property
    def rejected_new(self) -> int:
        """How many input records were rejected."""
        return self.sequences.count(None)


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)  # noqa: FBT003 - rocksdict's setter API
    options.create_missing_column_families(True)  # noqa: FBT003
    # The WAL is shared by every column family; a rarely written one (meta, retained) would
    # otherwise keep old WAL files — and the records in them — on disk indefinitely.
    options.set_max_total_wal_size(64 * 1024 * 1024)
    return options


def _stream_family(name: str) -> str:
    if not name:
        msg = "a stream name must not be empty"
        raise ValueError(msg)
    return _STREAM_FAMILY_PREFIX + name


def _releasing_handles(method: Callable[P, R]) -> Callable[P, R]:
    """On a storage error, drop the locals of the failed write's frames (they hold handles).

    A failed write's traceback keeps its frames, and their column-family handles and write
    batches, alive as long as someone keeps the exception (a log record, a future); RocksDB
    can't be reopened by :meth:`Database.recover` while any handle lives.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except StorageError as exc:
            _forget_frames(exc)
            raise

    return wrapper


def _forget_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback (and its causes')."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


class Database:
    """An open RocksDB database under ``data_dir``; create it with :meth:`open`.

    Writes go to RocksDB's WAL without an fsync (a killed process loses nothing written);
    :meth:`request_wal_sync` groups the fsyncs of every writer waiting at the same time into one
    ``flush_wal(sync=True)`` run off the event loop (group commit).
    """

    def __init__(self, db: Rdict, path: Path, *, column_families: Iterable[str] = ()) -> None:
        self._db: Rdict | None = db
        self.path = path
        self._column_families: dict[str, ColumnFamily] = {
            name: db.get_column_family_handle(name) for name in _REQUIRED_COLUMN_FAMILIES
        }
        # Column-family views (Rdict objects) are cached; close() drops them.
        self._views: dict[str, Rdict] = {}
        self._stream_families: set[str] = {
            name for name in column_families if name.startswith(_STREAM_FAMILY_PREFIX)
        }
        self._streams: dict[str, StreamStore] = {}
        self._compactions: set[asyncio.Future[None]] = set()
        self._pending_sync: asyncio.Future[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._wal_syncs = 0
        self._corrupt_records_skipped = 0
        self._write_error: str | None = None  # RocksDB refuses writes until reopened
        self._closed = False
        self._recoveries = 0
        self.retained = RetainedStore(self)

    @classmethod
    def open(cls, data_dir: Path) -> Database:
        """Open (creating if needed) the database at ``data_dir/db``.

        Folders it creates are private to Headwater's user (``0700``): they hold every stored
        payload and the retained deployments.
        """
        path = data_dir / "db"
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create {path}: {exc.strerror or exc}"
            raise StorageOpenError(msg) from exc
        db, families = _open_rdict(path)
        database = cls(db, path, column_families=families)
        database._check_format()
        return database

    @property
    def write_error(self) -> str | None:
        """Why writes fail until :meth:`recover` succeeds (``None`` when they work)."""
        return self._write_error

    def recover(self) -> bool:
        """After a failed write (a full disk), reopen the database so that writes work again.

        RocksDB refuses every write after one failed: the error is sticky until the database is
        reopened. Reopening replays the WAL, so what was written stays; each open stream then
        reloads its metadata and checkpoints from disk (the disk is the truth). Returns whether
        writes work again; if the disk is still full the reopen fails the same way and nothing
        changes. Call it from one place at a time, outside any write (it swaps every handle).
        """
        if self._write_error is None:
            return True
        busy = self._compactions or (self._sync_task is not None and not self._sync_task.done())
        if self._closed or busy:
            return False  # worker threads use the handles: try again later
        if self._db is not None and not self._room_to_reopen():
            return False  # reopening would fail the same way; meanwhile reads keep working
        stream_stores = list(self._streams.values())
        self._views.clear()
        self._column_families.clear()
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(Exception):  # the close itself may hit the full disk
                db.close()
            del db
        # RocksDB's lock goes only with the last handle: tracebacks of the failed writes (in
        # reference cycles) still hold column-family handles in their frames.
        gc.collect()
        try:
            self._db, _ = _open_rdict(self.path)
        except StorageOpenError as exc:
            # Nothing is open now (reads fail too, as writes do): try again next time.
            logger.warning("%s is still not writable: %s", self.path, exc)
            return False
        self._column_families.update(
            {name: self._db.get_column_family_handle(name) for name in _REQUIRED_COLUMN_FAMILIES}
        )
        for store in stream_stores:
            store._reload()  # noqa: SLF001 - this module owns both classes
        self._write_error = None
        self._recoveries += 1
        logger.warning("%s reopened after a write error: writes work again", self.path)
        return True

    def _check_format(self) -> None:
        meta = self._column_families[_CF_META]
        found = self._view(_CF_META).get(b"format")
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
            msg = f"{self.path} is closed" if self._closed else f"{self._write_error} (reopening)"
            raise StorageError(msg)
        return self._db

    def column_family(self, name: str) -> ColumnFamily:
        """The handle of column family ``name`` (for batches built by this module)."""
        handle = self._column_families.get(name)
        if handle is None:
            handle = self._column_families[name] = self._rdict.get_column_family_handle(name)
        return handle

    def _view(self, family: str) -> Rdict:
        view = self._views.get(family)
        if view is None:
            view = self._views[family] = self._rdict.get_column_family(family)
        return view

    def _room_to_reopen(self) -> bool:
        """Whether the filesystem has room for what a reopen writes (the WAL flushed to a table)."""
        try:
            wal_bytes = sum(entry.stat().st_size for entry in self.path.glob("*.log"))
            free = shutil.disk_usage(self.path).free
        except OSError:
            return False
        return free > wal_bytes + _REOPEN_MARGIN

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically (to the WAL, no fsync). Consumes the batch."""
        try:
            self._rdict.write(batch)
        except StorageError:
            raise
        except Exception as exc:
            msg = f"write to {self.path} failed: {exc}"
            self._write_error = msg
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
                self._write_error = f"fsync of {self.path} failed: {exc}"
                waiter.set_exception(StorageWriteError(self._write_error))
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

    # -- streams -----------------------------------------------------------------------------

    def stream_names(self) -> list[str]:
        """The names of every stored stream, sorted."""
        prefix = len(_STREAM_FAMILY_PREFIX)
        return sorted(family[prefix:] for family in self._stream_families)

    def open_stream(self, name: str) -> StreamStore:
        """The store of stream ``name``, created (empty, next sequence 0) if it does not exist.

        Opening reads the stream's metadata and checkpoints, not its records. Calling it again
        for the same name returns the same object.
        """
        store = self._streams.get(name)
        if store is not None:
            return store
        family = _stream_family(name)
        rdict = self._rdict
        if family not in self._stream_families:
            try:
                rdict.create_column_family(family, _options())
            except Exception as exc:
                msg = f"cannot create stream {name!r} in {self.path}: {exc}"
                raise StorageWriteError(msg) from exc
            self._stream_families.add(family)
        store = StreamStore(self, name, family)
        self._streams[name] = store
        return store

    def delete_stream(self, name: str) -> None:
        """Delete stream ``name``: its records, metadata, checkpoints and counters (at once).

        A :class:`StreamStore` of that stream is unusable afterwards. Deleting a stream that does
        not exist does nothing. The stream's definition (if any) is left alone.
        """
        family = _stream_family(name)
        store = self._streams.pop(name, None)
        if store is not None:
            store._deleted = True  # noqa: SLF001 - this module owns both classes
        if family not in self._stream_families:
            return
        self._views.pop(family, None)
        self._column_families.pop(family, None)
        try:
            self._rdict.drop_column_family(family)
        except StorageError:
            raise
        except Exception as exc:
            msg = f"cannot delete stream {name!r} in {self.path}: {exc}"
            raise StorageWriteError(msg) from exc
        self._stream_families.discard(family)

    @_releasing_handles
    def put_stream_definition(self, name: str, definition: bytes) -> None:
        """Store the run-time definition of stream ``name`` (opaque bytes), replacing any."""
        batch = WriteBatch(raw_mode=True)
        batch.put(name.encode(), definition, self.column_family(_CF_STREAM_DEFINITIONS))
        self.write(batch)

    @_releasing_handles
    def delete_stream_definition(self, name: str) -> None:
        """Forget the run-time definition of stream ``name`` (no error if there is none)."""
        batch = WriteBatch(raw_mode=True)
        batch.delete(name.encode(), self.column_family(_CF_STREAM_DEFINITIONS))
        self.write(batch)

    def stream_definitions(self) -> dict[str, bytes]:
        """Every stored run-time stream definition, by stream name."""
        view = self._view(_CF_STREAM_DEFINITIONS)
        try:
            return {key.decode(): value for key, value in _items(view, None)}
        except Exception as exc:
            msg = f"cannot read stream definitions in {self.path}: {exc}"
            raise StorageReadError(msg) from exc

    async def compact_stream(self, name: str) -> None:
        """Compact stream ``name`` so that the space of deleted records is returned to the disk.

        Flushes every column family's memtable first — the WAL is shared, and a WAL file holding
        deleted records is removed only once no column family needs it — then compacts the
        stream's whole key range, in a worker thread (rocksdict releases the GIL there). Unknown
        streams are ignored.
        """
        family = _stream_family(name)
        if family not in self._stream_families:
            return
        families = [*_REQUIRED_COLUMN_FAMILIES, *sorted(self._stream_families)]
        views = [self._view(each) for each in families]
        target = self._view(family)
        future = asyncio.ensure_future(asyncio.to_thread(_compact, target, views))
        self._compactions.add(future)
        future.add_done_callback(self._compactions.discard)
        try:
            await future
        except Exception as exc:
            msg = f"compaction of stream {name!r} in {self.path} failed: {exc}"
            raise StorageWriteError(msg) from exc
        finally:
            del views, target

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Finish pending fsyncs and compactions, then close. Safe to call twice."""
        if self._sync_task is not None:
            with contextlib.suppress(StorageError):
                await self._sync_task
        if self._compactions:
            await asyncio.gather(*self._compactions, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Flush the WAL and close; idempotent."""
        self._closed = True
        if self._db is None:
            return
        db, self._db = self._db, None
        # rocksdict only really closes once no column-family object is alive.
        self._column_families.clear()
        self._views.clear()
        self._streams.clear()
        try:
            db.flush_wal(True)  # noqa: FBT003
        except Exception as exc:  # noqa: BLE001 - reported; closing must still happen
            # After a failed write (e.g. a full disk) RocksDB refuses further writes, the WAL
            # flush included, until reopened. What was acknowledged is already in the WAL.
            logger.warning("closing %s after a write error: %s", self.path, exc)
        try:
            db.close()
        except Exception as exc:  # noqa: BLE001 - same: the close itself may hit the full disk
            logger.warning("closing %s: %s", self.path, exc)


def _open_rdict(path: Path) -> tuple[Rdict, dict[str, Options]]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        existing = set(Rdict.list_cf(str(path), _options())) if (path / "CURRENT").exists() else set()
        families = {name: _options() for name in existing | set(_REQUIRED_COLUMN_FAMILIES)}
        families.pop("default", None)
        return Rdict(str(path), options=_options(), column_families=families), families
    except OSError as exc:
        msg = f"cannot create {path}: {exc.strerror or exc}"
        raise StorageOpenError(msg) from exc
    except Exception as exc:  # rocksdict raises plain Exception subclasses
        msg = f"cannot open {path}: {exc}"
        raise StorageOpenError(msg) from exc


def _items(view: Rdict, from_key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    """Iterate ``view`` from ``from_key``; raw mode: keys and values are bytes."""
    return cast("Iterator[tuple[bytes, bytes]]", view.items(from_key=from_key))


def _compact(target: Rdict, views: Iterable[Rdict]) -> None:
    for view in views:
        view.flush()
    target.compact_range(None, None)


def _encode_record(record: NewRecord) -> bytes:
    topic = record.topic.encode()
    client_id = record.client_id.encode()
    if not 0 <= record.qos <= _MAX_QOS:
        msg = f"QoS must be 0, 1 or 2, not {record.qos}"
        raise ValueError(msg)
    try:
        head = _RECORD_BODY_HEAD.pack(record.qos, record.timestamp_ms, len(topic), len(client_id))
    except struct.error as exc:
        msg = f"record does not fit the format (timestamp, topic or client id too large): {exc}"
        raise ValueError(msg) from exc
    body = b"".join((head, topic, client_id, record.payload))
    return _RECORD_PREFIX.pack(_STREAM_RECORD_V1, zlib.crc32(body)) + body


def _record_problem(value: bytes) -> str | None:
    """Why ``value`` is not a valid stream record, or ``None`` if it is."""
    if len(value) < _RECORD_HEADER.size:
        return "record shorter than its header"
    version, checksum, qos, _, topic_length, client_id_length = _RECORD_HEADER.unpack_from(value)
    if version != _STREAM_RECORD_V1:
        return f"unknown record version {version}"
    if zlib.crc32(memoryview(value)[_RECORD_CHECKED_FROM:]) != checksum:
        return "checksum mismatch"
    if qos > _MAX_QOS or _RECORD_HEADER.size + topic_length + client_id_length > len(value):
        return "inconsistent header"
    return None


class StreamStore:
    """One durable stream: its records, metadata, checkpoints and counters.

    Get it from :meth:`Database.open_stream`. Every method is synchronous and short (RocksDB
    calls that hold the GIL); the in-memory copy of the metadata changes only after its batch
    was written, so a failed write leaves the store as it was.
    """

    def __init__(self, database: Database, name: str, family: str) -> None:
        self._database = database
        self.name = name
        self._family = family
        self._deleted = False
        self._next = 0
        self._oldest = 0
        self._total_bytes = 0
        self._dropped_oldest = 0
        self._rejected_new = 0
        self._expired = 0
        self._checkpoints: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        self._progress: dict[str, ExportProgress] = {}
        self._load()

    # -- access ------------------------------------------------------------------------------

    def _view(self) -> Rdict:
        if self._deleted:
            msg = f"stream {self.name!r} was deleted"
            raise StorageError(msg)
        return self._database._view(self._family)  # noqa: SLF001 - this module owns both classes

    def _handle(self) -> ColumnFamily:
        if self._deleted:
            msg = f"stream {self.name!r} was deleted"
            raise StorageError(msg)
        return self._database.column_family(self._family)

    def _where(self, sequence: int) -> str:
        return f"stream {self.name!r} sequence {sequence}"

    def _reload(self) -> None:
        """Forget the in-memory metadata and read it again (after the database was reopened)."""
        self._next = self._oldest = self._total_bytes = 0
        self._dropped_oldest = self._rejected_new = self._expired = 0
        self._checkpoints.clear()
        self._lost.clear()
        self._progress.clear()
        self._load()

    def _load(self) -> None:
        view = self._view()
        try:
            for key, value in _items(view, _STREAM_KEYS_PREFIX):
                if key == _STREAM_META_KEY:
                    self._load_metadata(value)
                elif key.startswith(_CHECKPOINT_PREFIX) and len(value) == _COUNTER.size:
                    self._checkpoints[key[len(_CHECKPOINT_PREFIX) :].decode()] = _COUNTER.unpack(value)[0]
                elif key.startswith(_LOST_PREFIX) and len(value) == _COUNTER.size:
                    self._lost[key[len(_LOST_PREFIX) :].decode()] = _COUNTER.unpack(value)[0]
                elif key.startswith(_PROGRESS_PREFIX):
                    export_id = key[len(_PROGRESS_PREFIX) :].decode()
                    progress = _decode_progress(value)
                    if progress is None:
                        where = f"stream {self.name!r} export {export_id!r} progress"
                        reason = "bad checksum or size; counters restart at 0"
                        self._database.note_corrupt_record(where, reason)
                    else:
                        self._progress[export_id] = progress
                else:
                    self._database.note_corrupt_record(f"stream {self.name!r} metadata", f"bad key {key!r}")
        except StorageError:
            raise
        except Exception as exc:
            msg = f"cannot read stream {self.name!r} in {self._database.path}: {exc}"
            raise StorageOpenError(msg) from exc
        finally:
            del view

    def _load_metadata(self, value: bytes) -> None:
        size = _STREAM_META_PREFIX.size + _STREAM_META_BODY.size
        if len(value) == size:
            version, checksum = _STREAM_META_PREFIX.unpack_from(value)
            body = value[_STREAM_META_PREFIX.size :]
            if version == _STREAM_META_V1 and zlib.crc32(body) == checksum:
                (
                    self._next,
                    self._oldest,
                    self._total_bytes,
                    self._dropped_oldest,
                    self._rejected_new,
                    self._expired,
                ) = _STREAM_META_BODY.unpack(body)
                return
        self._database.note_corrupt_record(f"stream {self.name!r} metadata", "rebuilt from the records")
        self._rebuild_metadata()

    def _rebuild_metadata(self) -> None:
        """Recount from the records: only when the metadata itself is corrupt (counters restart)."""
        first: int | None = None
        last = -1
        total = 0
        view = self._view()
        try:
            for key, value in _items(view, None):
                if key >= _STREAM_KEYS_PREFIX:
                    break
                sequence = _SEQUENCE.unpack(key)[0]
                first = sequence if first is None else first
                last = sequence
                total += len(value)
        finally:
            del view
        self._next = last + 1
        self._oldest = self._next if first is None else first
        self._total_bytes = total

    def _metadata_value(
        self, after: StreamState, dropped_oldest: int, rejected_new: int, expired: int
    ) -> bytes:
        body = _STREAM_META_BODY.pack(
            after.next_sequence,
            after.oldest_sequence,
            after.total_bytes,
            dropped_oldest,
            rejected_new,
            expired,
        )
        return _STREAM_META_PREFIX.pack(_STREAM_META_V1, zlib.crc32(body)) + body

    def _state(self) -> StreamState:
        return StreamState(self._next, self._oldest, self._total_bytes)

    def _commit(self, after: StreamState, lost: Mapping[str, int]) -> None:
        self._next = after.next_sequence
        self._oldest = after.oldest_sequence
        self._total_bytes = after.total_bytes
        self._lost.update(lost)

    def _put_lost_counters(
        self,
        batch: WriteBatch,
        handle: ColumnFamily,
        removed_from: int,
        removed_to: int,
        export_ids: Sequence[str],
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Add the per-export lost counters of removing ``[removed_from, removed_to)`` to ``batch``.

        Returns (lost by this removal, the new totals to commit).
        """
        if not export_ids or removed_to <= removed_from:
            return {}, {}
        lost = unexported_by_export(
            removed_from,
            removed_to,
            {export_id: self._checkpoints.get(export_id) for export_id in export_ids},
        )
        totals = {export_id: self._lost.get(export_id, 0) + count for export_id, count in lost.items()}
        for export_id, count in totals.items():
            batch.put(_LOST_PREFIX + export_id.encode(), _COUNTER.pack(count), handle)
        return lost, totals

    def _stored_sizes(self, end: int) -> Generator[int, None, None]:
        """The encoded sizes of the stored records from the oldest up to ``end`` (excluded)."""
        expected = self._oldest
        if expected >= end:
            return
        end_key = _SEQUENCE.pack(end)
        view = self._view()
        items = _items(view, _SEQUENCE.pack(expected))
        try:
            for key, value in items:
                if key >= end_key:
                    break
                sequence = _SEQUENCE.unpack(key)[0]
                while expected < sequence:  # a hole breaks an invariant: it holds no bytes
                    expected += 1
                    yield 0
                expected += 1
                yield len(value)
        except Exception as exc:
            msg = f"cannot read stream {self.name!r} in {self._database.path}: {exc}"
            raise StorageReadError(msg) from exc
        finally:
            del items, view

    # -- the API -----------------------------------------------------------------------------

    @property
    def next_sequence(self) -> int:
        """The sequence the next accepted record gets."""
        return self._next

    def info(self) -> StorageInfo:
        """What the stream holds, exact, from the metadata (no scan)."""
        count = self._next - self._oldest
        return StorageInfo(
            oldest_sequence=self._oldest if count else None,
            newest_sequence=self._next - 1 if count else None,
            total_bytes=self._total_bytes,
            record_count=count,
            dropped_oldest=self._dropped_oldest,
            rejected_new=self._rejected_new,
            expired=self._expired,
        )

    def dropped_unexported(self) -> dict[str, int]:
        """Per export id: records removed by retention before that export delivered them."""
        return dict(self._lost)

    @_releasing_handles
    def append_batch(
        self, records: Sequence[NewRecord], *, limits: RetentionLimits, export_ids: Sequence[str] = ()
    ) -> AppendOutcome:
        """Append ``records`` in order, applying ``limits``, in one atomic write batch.

        ``export_ids`` are the stream's exports: for each, the outcome and the persisted counters
        tell how many records ``overwrite_oldest`` removed before that export delivered them.
        The batch is in the WAL when this returns (not fsynced: see
        :meth:`Database.request_wal_sync`). Raises :class:`StorageWriteError` if it is not.
        """
        if not records:
            return AppendOutcome((), 0, {})
        handle = self._handle()
        encoded = [_encode_record(record) for record in records]
        before = self._state()
        sizes = [len(value) for value in encoded]
        stored_sizes = self._stored_sizes(before.next_sequence)
        try:
            plan = plan_append(before, sizes, limits, stored_sizes)
        finally:
            stored_sizes.close()
        after = plan.after
        if after.next_sequence > _MAX_SEQUENCE:
            msg = f"stream {self.name!r} ran out of sequence numbers"
            raise StorageWriteError(msg)

        batch = WriteBatch(raw_mode=True)
        removed_to = min(after.oldest_sequence, before.next_sequence)
        if removed_to > before.oldest_sequence:
            batch.delete_range(_SEQUENCE.pack(before.oldest_sequence), _SEQUENCE.pack(removed_to), handle)
        put = batch.put
        pack = _SEQUENCE.pack
        if not plan.dropped_oldest and not plan.rejected_new:
            for sequence, value in zip(
                range(before.next_sequence, after.next_sequence), encoded, strict=True
            ):
                put(pack(sequence), value, handle)
        else:
            first_kept = after.oldest_sequence
            for maybe_sequence, value in zip(plan.sequences, encoded, strict=True):
                if maybe_sequence is not None and maybe_sequence >= first_kept:
                    put(pack(maybe_sequence), value, handle)
        lost, lost_totals = self._put_lost_counters(
            batch, handle, before.oldest_sequence, after.oldest_sequence, export_ids
        )
        dropped_oldest = self._dropped_oldest + plan.dropped_oldest
        rejected_new = self._rejected_new + plan.rejected_new
        put(
            _STREAM_META_KEY, self._metadata_value(after, dropped_oldest, rejected_new, self._expired), handle
        )
        self._database.write(batch)

        self._commit(after, lost_totals)
        self._dropped_oldest = dropped_oldest
        self._rejected_new = rejected_new
        return AppendOutcome(plan.sequences, plan.dropped_oldest, lost)

    def read(self, from_sequence: int, *, max_count: int, max_bytes: int | None = None) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first.

        At most ``max_count`` records and, if ``max_bytes`` is given, at most that many payload
        bytes — but always at least one record if there is any. Corrupt records are skipped
        (counted and logged), and reading continues after them.
        """
        if from_sequence < 0:
            msg = f"from_sequence must not be negative, not {from_sequence}"
            raise ValueError(msg)
        start = max(from_sequence, self._oldest)
        if max_count <= 0 or start >= self._next:
            return []
        end_key = _SEQUENCE.pack(self._next)
        records: list[StreamRecord] = []
        payload_bytes = 0
        view = self._view()
        items = _items(view, _SEQUENCE.pack(start))
        try:
            for key, value in items:
                if key >= end_key:
                    break
                record = self._decode(key, value)
                if record is None:
                    continue
                size = len(record.payload)
                if max_bytes is not None and records and payload_bytes + size > max_bytes:
                    break
                payload_bytes += size
                records.append(record)
                if len(records) >= max_count:
                    break
        except StorageError:
            raise
        except Exception as exc:
            msg = f"cannot read stream {self.name!r} in {self._database.path}: {exc}"
            raise StorageReadError(msg) from exc
        finally:
            del items, view
        return records

    def _decode(self, key: bytes, value: bytes) -> StreamRecord | None:
        """The record stored as ``value``, or ``None`` (counted, logged) if it is corrupt."""
        if len(value) >= _RECORD_HEADER.size:
            version, checksum, qos, timestamp_ms, topic_length, client_id_length = _RECORD_HEADER.unpack_from(
                value
            )
            topic_end = _RECORD_HEADER.size + topic_length
            client_id_end = topic_end + client_id_length
            if (
                version == _STREAM_RECORD_V1
                and zlib.crc32(memoryview(value)[_RECORD_CHECKED_FROM:]) == checksum
                and qos <= _MAX_QOS
                and client_id_end <= len(value)
            ):
                try:
                    topic = value[_RECORD_HEADER.size : topic_end].decode()
                    client_id = value[topic_end:client_id_end].decode()
                except UnicodeDecodeError:
                    self._skip_corrupt(key, value, "topic or client id is not UTF-8")
                    return None
                sequence = _SEQUENCE.unpack(key)[0]
                return StreamRecord(sequence, timestamp_ms, topic, qos, client_id, value[client_id_end:])
        self._skip_corrupt(key, value)
        return None

    def _skip_corrupt(self, key: bytes, value: bytes, reason: str | None = None) -> None:
        self._database.note_corrupt_record(
            self._where(_SEQUENCE.unpack(key)[0]), reason or _record_problem(value) or "invalid record"
        )

    def _oldest_ages(self, max_records: int) -> Generator[tuple[int | None, int], None, None]:
        """``(timestamp_ms or None if corrupt, encoded size)`` of up to ``max_records`` oldest records."""
        if max_records <= 0 or self._oldest >= self._next:
            return
        end_key = _SEQUENCE.pack(self._next)
        expected = self._oldest
        seen = 0
        view = self._view()
        items = _items(view, _SEQUENCE.pack(expected))
        try:
            for key, value in items:
                if key >= end_key or seen >= max_records:
                    break
                sequence = _SEQUENCE.unpack(key)[0]
                while expected < sequence and seen < max_records:  # a hole: nothing to keep
                    expected += 1
                    seen += 1
                    yield None, 0
                problem = _record_problem(value)
                if problem is not None:
                    self._database.note_corrupt_record(self._where(sequence), problem)
                    timestamp_ms = None
                else:
                    timestamp_ms = _RECORD_HEADER.unpack_from(value)[3]
                expected += 1
                seen += 1
                yield timestamp_ms, len(value)
        except Exception as exc:
            msg = f"cannot read stream {self.name!r} in {self._database.path}: {exc}"
            raise StorageReadError(msg) from exc
        finally:
            del items, view

    @_releasing_handles
    def expire(self, *, older_than_ms: int, max_records: int, export_ids: Sequence[str] = ()) -> int:
        """TTL sweep: remove up to ``max_records`` of the oldest records older than ``older_than_ms``.

        Stops at the first record that is not expired (timestamps are not assumed to be strictly
        ordered). Removed records count as *expired* and, per export in ``export_ids``, as
        unexported when that export had not delivered them. Returns how many were removed.
        """
        ages = self._oldest_ages(max_records)
        try:
            plan = plan_expire(ages, older_than_ms=older_than_ms, max_records=max_records)
        finally:
            ages.close()
        if not plan.count:
            return 0
        handle = self._handle()
        before = self._state()
        after = StreamState(
            before.next_sequence,
            before.oldest_sequence + plan.count,
            max(0, before.total_bytes - plan.freed_bytes),
        )
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(
            _SEQUENCE.pack(before.oldest_sequence), _SEQUENCE.pack(after.oldest_sequence), handle
        )
        _, lost_totals = self._put_lost_counters(
            batch, handle, before.oldest_sequence, after.oldest_sequence, export_ids
        )
        expired = self._expired + plan.count
        batch.put(
            _STREAM_META_KEY,
            self._metadata_value(after, self._dropped_oldest, self._rejected_new, expired),
            handle,
        )
        self._database.write(batch)
        self._commit(after, lost_totals)
        self._expired = expired
        return plan.count

    @_releasing_handles
    def free_through(self, sequence: int) -> int:
        """Delete every record with a sequence <= ``sequence``; return how many were deleted.

        For ``drop_exported``, once every export delivered them; not counted as a drop.
        """
        before = self._state()
        count = plan_free_through(before, sequence)
        if not count:
            return 0
        handle = self._handle()
        end = before.oldest_sequence + count
        sizes = self._stored_sizes(end)
        try:
            freed = sum(sizes)
        finally:
            sizes.close()
        after = StreamState(before.next_sequence, end, max(0, before.total_bytes - freed))
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(_SEQUENCE.pack(before.oldest_sequence), _SEQUENCE.pack(end), handle)
        batch.put(
            _STREAM_META_KEY,
            self._metadata_value(after, self._dropped_oldest, self._rejected_new, self._expired),
            handle,
        )
        self._database.write(batch)
        self._commit(after, {})
        return count

    def checkpoint(self, export_id: str) -> int | None:
        """The last sequence export ``export_id`` delivered, ``None`` if none yet."""
        return self._checkpoints.get(export_id)

    def checkpoints(self) -> dict[str, int]:
        """Every export's checkpoint, by export id."""
        return dict(self._checkpoints)

    def export_progress(self, export_id: str) -> ExportProgress:
        """Export ``export_id``'s persisted counters (zeros before its first delivery)."""
        return self._progress.get(export_id, ExportProgress())

    @_releasing_handles
    def set_checkpoint(self, export_id: str, sequence: int, progress: ExportProgress | None = None) -> None:
        """Record that export ``export_id`` delivered every record up to ``sequence``.

        ``progress`` (the export's counters after this delivery) is written in the same batch.
        Durable in the WAL on return. It may move backwards (an export restarted from an older
        start), but not beyond the newest sequence given.
        """
        if not 0 <= sequence < self._next:
            msg = f"checkpoint {sequence} of stream {self.name!r}: not a sequence it gave (next {self._next})"
            raise ValueError(msg)
        handle = self._handle()
        batch = WriteBatch(raw_mode=True)
        batch.put(_CHECKPOINT_PREFIX + export_id.encode(), _COUNTER.pack(sequence), handle)
        if progress is not None:
            batch.put(_PROGRESS_PREFIX + export_id.encode(), _encode_progress(progress), handle)
        self._database.write(batch)
        self._checkpoints[export_id] = sequence
        if progress is not None:
            self._progress[export_id] = progress

    @_releasing_handles
    def set_export_progress(self, export_id: str, progress: ExportProgress) -> None:
        """Persist export ``export_id``'s counters alone (e.g. its ``disabled`` switch)."""
        batch = WriteBatch(raw_mode=True)
        batch.put(_PROGRESS_PREFIX + export_id.encode(), _encode_progress(progress), self._handle())
        self._database.write(batch)
        self._progress[export_id] = progress

    @_releasing_handles
    def delete_checkpoint(self, export_id: str) -> None:
        """Forget export ``export_id``: its checkpoint, its lost counter and its progress."""
        handle = self._handle()
        batch = WriteBatch(raw_mode=True)
        batch.delete(_CHECKPOINT_PREFIX + export_id.encode(), handle)
        batch.delete(_LOST_PREFIX + export_id.encode(), handle)
        batch.delete(_PROGRESS_PREFIX + export_id.encode(), handle)
        self._database.write(batch)
        self._checkpoints.pop(export_id, None)
        self._lost.pop(export_id, None)
        self._progress.pop(export_id, None)


def _encode_progress(progress: ExportProgress) -> bytes:
    body = _PROGRESS_BODY.pack(
        progress.exported_records,
        progress.exported_bytes,
        progress.dead_lettered,
        -1 if progress.last_export_time_ms is None else progress.last_export_time_ms,
        _PROGRESS_DISABLED if progress.disabled else 0,
    )
    return _PROGRESS_PREFIX_STRUCT.pack(_PROGRESS_V1, zlib.crc32(body)) + body


def _decode_progress(value: bytes) -> ExportProgress | None:
    if len(value) != _PROGRESS_PREFIX_STRUCT.size + _PROGRESS_BODY.size:
        return None
    version, checksum = _PROGRESS_PREFIX_STRUCT.unpack_from(value)
    body = value[_PROGRESS_PREFIX_STRUCT.size :]
    if version != _PROGRESS_V1 or zlib.crc32(body) != checksum:
        return None
    records, size, dead, last, flags = _PROGRESS_BODY.unpack(body)
    return ExportProgress(
        exported_records=records,
        exported_bytes=size,
        dead_lettered=dead,
        last_export_time_ms=None if last < 0 else last,
        disabled=bool(flags & _PROGRESS_DISABLED),
    )


class RetainedStore:
    """Durable retained messages: one key per topic in column family ``retained``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @_releasing_handles
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
