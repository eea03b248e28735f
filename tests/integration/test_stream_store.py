"""Durable streams in a real RocksDB directory: headwater.core.store.

Round trips, restarts (close and reopen in the same process), a model-based property test of
retention, corruption injected into a copy of a database, compaction giving disk space back, and
a failing disk (a file-size limit) translated into StorageWriteError.

``python -m tests.integration.test_stream_store`` measures append_batch throughput.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from rocksdict import Options, Rdict

from headwater.core.store import (
    AppendOutcome,
    Database,
    NewRecord,
    RetentionLimits,
    StorageError,
    StreamStore,
)
from headwater.wire.streams import StorageInfo, StreamRecord

if TYPE_CHECKING:
    from collections.abc import Iterator

RECORD_HEADER_SIZE = 18  # the stream record v1 header (store.py's docstring)
UNLIMITED = RetentionLimits(max_size=1 << 40, strategy_on_full="reject_new")


def new_record(payload: bytes, *, timestamp_ms: int = 1_700_000_000_000, topic: str = "t/1") -> NewRecord:
    return NewRecord(timestamp_ms=timestamp_ms, topic=topic, qos=1, client_id="dev-1", payload=payload)


def encoded_size(record: NewRecord) -> int:
    return (
        RECORD_HEADER_SIZE + len(record.topic.encode()) + len(record.client_id.encode()) + len(record.payload)
    )


def as_new(record: StreamRecord) -> NewRecord:
    return NewRecord(record.timestamp_ms, record.topic, record.qos, record.client_id, record.payload)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(tmp_path)
    yield db
    db.close()


def directory_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


# --- round trips and restarts ---------------------------------------------------------------


def test_append_and_read_round_trip(database: Database) -> None:
    stream = database.open_stream("telemetry")
    records = [
        NewRecord(1, "sensors/a/telemetry", 0, "dev-a", b'{"t": 21.5}'),
        NewRecord(2, "sensors/ü/日本", 1, "", b""),
        NewRecord(3, "x" * 300, 2, "c" * 200, bytes(range(256)) * 4),
    ]
    outcome = stream.append_batch(records, limits=UNLIMITED)
    assert outcome == AppendOutcome(sequences=(0, 1, 2), dropped_oldest=0, dropped_unexported={})

    read = stream.read(0, max_count=10)
    assert [record.sequence for record in read] == [0, 1, 2]
    assert [as_new(record) for record in read] == records
    assert stream.info() == StorageInfo(
        oldest_sequence=0,
        newest_sequence=2,
        total_bytes=sum(map(encoded_size, records)),
        record_count=3,
    )
    assert stream.next_sequence == 3
    assert database.stream_names() == ["telemetry"]
    assert database.open_stream("telemetry") is stream


def test_read_limits(database: Database) -> None:
    stream = database.open_stream("s")
    stream.append_batch([new_record(b"x" * 10) for _ in range(10)], limits=UNLIMITED)
    assert [r.sequence for r in stream.read(3, max_count=4)] == [3, 4, 5, 6]
    assert [r.sequence for r in stream.read(8, max_count=100)] == [8, 9]
    assert stream.read(10, max_count=100) == []
    assert stream.read(0, max_count=0) == []
    # max_bytes counts payload bytes, and a read returns at least one record.
    assert [r.sequence for r in stream.read(0, max_count=100, max_bytes=35)] == [0, 1, 2]
    assert [r.sequence for r in stream.read(0, max_count=100, max_bytes=1)] == [0]
    stream.free_through(4)
    assert [r.sequence for r in stream.read(0, max_count=2)] == [5, 6]  # below the oldest: from it
    with pytest.raises(ValueError, match="negative"):
        stream.read(-1, max_count=1)


def test_sequences_and_metadata_survive_a_reopen(tmp_path: Path) -> None:
    limits = RetentionLimits(
        max_size=10 * (RECORD_HEADER_SIZE + 3 + 5 + 10), strategy_on_full="overwrite_oldest"
    )
    db = Database.open(tmp_path)
    stream = db.open_stream("s")
    assert stream.append_batch([new_record(b"a" * 10) for _ in range(8)], limits=limits).sequences == tuple(
        range(8)
    )
    stream.set_checkpoint("kinesis", 5)
    outcome = stream.append_batch(
        [new_record(b"b" * 10) for _ in range(4)], limits=limits, export_ids=["kinesis", "s3"]
    )
    assert outcome == AppendOutcome((8, 9, 10, 11), 2, {"s3": 2})
    rejected = stream.append_batch([new_record(b"c" * 1000)], limits=limits)
    assert rejected.sequences == (None,)
    assert rejected.rejected_new == 1
    info = stream.info()
    db.close()
    with pytest.raises(StorageError, match="closed"):
        stream.read(0, max_count=1)

    db = Database.open(tmp_path)
    stream = db.open_stream("s")
    assert stream.info() == info == StorageInfo(2, 11, 10 * 36, 10, dropped_oldest=2, rejected_new=1)
    assert stream.checkpoint("kinesis") == 5
    assert stream.checkpoint("s3") is None
    assert stream.dropped_unexported() == {"s3": 2}
    assert stream.append_batch([new_record(b"d")], limits=limits).sequences == (12,)
    assert [r.sequence for r in stream.read(0, max_count=100)] == list(range(3, 13))
    db.close()


def test_an_emptied_stream_keeps_counting_after_a_reopen(tmp_path: Path) -> None:
    db = Database.open(tmp_path)
    stream = db.open_stream("s")
    stream.append_batch([new_record(b"x")] * 5, limits=UNLIMITED)
    assert stream.free_through(100) == 5
    assert stream.info() == StorageInfo(None, None, 0, 0)
    db.close()
    db = Database.open(tmp_path)
    stream = db.open_stream("s")
    assert stream.next_sequence == 5
    assert stream.append_batch([new_record(b"y")], limits=UNLIMITED).sequences == (5,)
    db.close()


def test_delete_stream_and_definitions(tmp_path: Path) -> None:
    db = Database.open(tmp_path)
    old = db.open_stream("gone")
    old.append_batch([new_record(b"x")] * 3, limits=UNLIMITED)
    old.set_checkpoint("e", 1)
    db.open_stream("kept")
    db.put_stream_definition("gone", b'{"topics": ["a"]}')
    db.put_stream_definition("kept", b"{}")
    db.delete_stream("gone")
    db.delete_stream("never-existed")
    with pytest.raises(StorageError, match="deleted"):
        old.read(0, max_count=1)
    assert db.stream_names() == ["kept"]
    assert db.stream_definitions() == {"gone": b'{"topics": ["a"]}', "kept": b"{}"}  # left alone
    db.delete_stream_definition("gone")
    db.close()

    db = Database.open(tmp_path)
    assert db.stream_names() == ["kept"]
    assert db.stream_definitions() == {"kept": b"{}"}
    again = db.open_stream("gone")
    assert again.info() == StorageInfo(None, None, 0, 0)
    assert again.checkpoint("e") is None
    assert again.append_batch([new_record(b"x")], limits=UNLIMITED).sequences == (0,)
    db.close()


def test_checkpoints(database: Database) -> None:
    stream = database.open_stream("s")
    with pytest.raises(ValueError, match="not a sequence"):
        stream.set_checkpoint("e", 0)  # nothing appended yet
    stream.append_batch([new_record(b"x")] * 3, limits=UNLIMITED)
    stream.set_checkpoint("e", 2)
    stream.set_checkpoint("f", 0)
    assert stream.checkpoints() == {"e": 2, "f": 0}
    stream.delete_checkpoint("f")
    assert stream.checkpoints() == {"e": 2}
    with pytest.raises(ValueError, match="not a sequence"):
        stream.set_checkpoint("e", 3)


def test_expire_is_bounded_and_stops_at_the_first_young_record(database: Database) -> None:
    stream = database.open_stream("s")
    stamps = [10, 20, 30, 40, 500, 50, 60]  # not strictly ordered: 50 and 60 sit behind 500
    stream.append_batch([new_record(b"x", timestamp_ms=ms) for ms in stamps], limits=UNLIMITED)
    stream.set_checkpoint("e", 0)
    assert stream.expire(older_than_ms=100, max_records=3, export_ids=["e"]) == 3
    assert stream.expire(older_than_ms=100, max_records=3, export_ids=["e"]) == 1
    assert stream.expire(older_than_ms=100, max_records=3, export_ids=["e"]) == 0
    assert [r.timestamp_ms for r in stream.read(0, max_count=10)] == [500, 50, 60]
    assert stream.info().expired == 4
    assert stream.dropped_unexported() == {"e": 3}


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    db = Database.open(tmp_path)
    stream = db.open_stream("s")
    stream.append_batch([new_record(b"x")], limits=UNLIMITED)
    info = stream.info()
    db.close()
    with pytest.raises(StorageError):
        stream.append_batch([new_record(b"y")], limits=UNLIMITED)
    assert stream.info() == info
    assert stream.next_sequence == 1


# --- a full disk ------------------------------------------------------------------------------

_FILL_THE_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from headwater.core.store import Database, NewRecord, RetentionLimits, StorageWriteError

    db = Database.open(Path(sys.argv[1]))
    stream = db.open_stream("s")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = 4 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    limits = RetentionLimits(max_size=1 << 40, strategy_on_full="reject_new")
    batch = [NewRecord(0, "t", 1, "c", b"x" * 1000)] * 100
    try:
        for _ in range(1000):
            stream.append_batch(batch, limits=limits)
    except StorageWriteError as exc:
        info = stream.info()
        print("StorageWriteError", info.record_count, stream.next_sequence, exc)
    """
)


def test_a_full_disk_raises_storage_write_error(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the WAL write fail like a full disk, in a child process only.
    result = subprocess.run(
        [sys.executable, "-c", _FILL_THE_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    kind, count, next_sequence, *message = result.stdout.split()
    assert kind == "StorageWriteError", result.stdout
    assert int(count) == int(next_sequence) > 0  # the failed batch left no trace in memory
    assert "write to" in " ".join(message)

    # Space is back (no limit here): what was acknowledged is there, and writing works again.
    db = Database.open(tmp_path)
    stream = db.open_stream("s")
    assert stream.next_sequence == int(next_sequence)
    assert len(stream.read(0, max_count=1_000_000)) == int(count)
    stream.append_batch([new_record(b"again")], limits=UNLIMITED)
    db.close()


# --- corruption -------------------------------------------------------------------------------


def _raw_options() -> Options:
    options = Options(raw_mode=True)
    options.create_missing_column_families(True)  # noqa: FBT003 - rocksdict's setter API
    return options


def _open_raw(data_dir: Path) -> Rdict:
    path = str(data_dir / "db")
    families = {name: _raw_options() for name in Rdict.list_cf(path, _raw_options()) if name != "default"}
    return Rdict(path, options=_raw_options(), column_families=families)


def sequence_key(sequence: int) -> bytes:
    return sequence.to_bytes(8, "big")


def raw_values(data_dir: Path, stream: str, keys: list[bytes]) -> list[bytes]:
    """Values of a stream's column family, read with rocksdict directly (below the store)."""
    raw = _open_raw(data_dir)
    family = raw.get_column_family(f"s/{stream}")
    values: list[bytes] = []
    for key in keys:
        value = family[key]
        assert isinstance(value, bytes)
        values.append(value)
    del family  # rocksdict closes only once no column-family object is alive
    raw.close()
    return values


def overwrite_raw(data_dir: Path, stream: str, values: dict[bytes, bytes]) -> None:
    """Fault injection: write values into a stream's column family with rocksdict directly."""
    raw = _open_raw(data_dir)
    family = raw.get_column_family(f"s/{stream}")
    for key, value in values.items():
        family[key] = value
    del family
    raw.close()


def _corrupt_copy(original: Path, copy: Path) -> None:
    """Rewrite three record values of a copy of ``original``."""
    shutil.copytree(original, copy)
    three, five, seven = raw_values(copy, "s", [sequence_key(3), sequence_key(5), sequence_key(7)])
    flipped = bytearray(three)
    flipped[-1] ^= 0xFF  # a flipped payload byte: the checksum no longer matches
    overwrite_raw(
        copy,
        "s",
        {
            sequence_key(3): bytes(flipped),
            sequence_key(5): five[:10],  # truncated
            sequence_key(7): b"\x09" + seven[1:],  # unknown version
        },
    )


def test_a_corrupt_record_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database.open(tmp_path / "original")
    records = [new_record(f"payload {n}".encode(), timestamp_ms=n) for n in range(10)]
    db.open_stream("s").append_batch(records, limits=UNLIMITED)
    db.close()
    _corrupt_copy(tmp_path / "original", tmp_path / "copy")

    db = Database.open(tmp_path / "copy")
    stream = db.open_stream("s")
    with caplog.at_level(logging.ERROR, logger="headwater.core.store"):
        read = stream.read(0, max_count=100)
    assert [r.sequence for r in read] == [0, 1, 2, 4, 6, 8, 9]
    assert [r.payload for r in read] == [records[n].payload for n in (0, 1, 2, 4, 6, 8, 9)]
    assert db.statistics().corrupt_records_skipped == 3
    messages = "\n".join(caplog.messages)
    assert "sequence 3: checksum mismatch" in messages
    assert "sequence 5: record shorter than its header" in messages
    assert "sequence 7: unknown record version 9" in messages
    # The count is still what is stored, corrupt records included.
    assert stream.info().record_count == 10
    # A bounded read reading past a corrupt record still returns max_count good ones.
    assert [r.sequence for r in stream.read(3, max_count=2)] == [4, 6]
    # The TTL sweep removes a record it can't date instead of stalling on it.
    assert stream.expire(older_than_ms=6, max_records=100) == 6
    assert [r.sequence for r in stream.read(0, max_count=100)] == [6, 8, 9]
    db.close()

    db = Database.open(tmp_path / "original")  # the original was not touched
    assert len(db.open_stream("s").read(0, max_count=100)) == 10
    assert db.statistics().corrupt_records_skipped == 0
    db.close()


def test_corrupt_stream_metadata_is_rebuilt_from_the_records(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "original")
    stream = db.open_stream("s")
    stream.append_batch([new_record(b"12345")] * 6, limits=UNLIMITED)
    stream.free_through(1)
    db.close()
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    overwrite_raw(tmp_path / "copy", "s", {b"\xff" * 8 + b"m": b"garbage"})

    db = Database.open(tmp_path / "copy")
    stream = db.open_stream("s")
    assert db.statistics().corrupt_records_skipped == 1
    assert stream.info() == StorageInfo(2, 5, 4 * (RECORD_HEADER_SIZE + 3 + 5 + 5), 4)
    db.close()


# --- compaction -------------------------------------------------------------------------------


def test_disk_shrinks_after_deletes_and_compaction(tmp_path: Path) -> None:
    db = Database.open(tmp_path)
    stream = db.open_stream("big")
    batch = [new_record(os.urandom(1000)) for _ in range(500)]  # random: not compressible
    for _ in range(80):  # 40,000 records, ~41 MB
        stream.append_batch(batch, limits=UNLIMITED)
    db.retained.put("some/topic", b"keeps an old WAL file alive unless compaction flushes it", 1)
    asyncio.run(db.compact_stream("big"))
    full = directory_size(tmp_path)
    assert full > 40_000_000

    assert stream.free_through(37_999) == 38_000
    asyncio.run(db.compact_stream("big"))
    compacted = directory_size(tmp_path)
    assert compacted < full // 5, (full, compacted)
    assert len(stream.read(0, max_count=100_000)) == 2000
    db.close()


# --- the model-based property test ------------------------------------------------------------

EXPORTS = ("kinesis", "s3")


@dataclass
class StreamModel:
    """What a stream must hold: the simplest implementation of the retention rules."""

    records: list[tuple[int, NewRecord]] = field(default_factory=list)
    next_sequence: int = 0
    dropped_oldest: int = 0
    rejected_new: int = 0
    expired: int = 0
    checkpoints: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(encoded_size(record) for _, record in self.records)

    def _remove_oldest(self) -> None:
        sequence, _ = self.records.pop(0)
        for export_id in EXPORTS:
            if sequence > self.checkpoints.get(export_id, -1):
                self.lost[export_id] = self.lost.get(export_id, 0) + 1

    def append(self, record: NewRecord, limits: RetentionLimits) -> int | None:
        size = encoded_size(record)
        if size > limits.max_size or (
            self.total_bytes + size > limits.max_size and limits.strategy_on_full == "reject_new"
        ):
            self.rejected_new += 1
            return None
        while self.total_bytes + size > limits.max_size:
            self._remove_oldest()
            self.dropped_oldest += 1
        self.records.append((self.next_sequence, record))
        self.next_sequence += 1
        return self.next_sequence - 1

    def expire(self, older_than_ms: int, max_records: int) -> int:
        count = 0
        while self.records and count < max_records and self.records[0][1].timestamp_ms < older_than_ms:
            self._remove_oldest()
            count += 1
        self.expired += count
        return count

    def free_through(self, sequence: int) -> int:
        count = 0
        while self.records and self.records[0][0] <= sequence:
            self.records.pop(0)
            count += 1
        return count

    def read(self, from_sequence: int, max_count: int, max_bytes: int | None) -> list[tuple[int, NewRecord]]:
        selected: list[tuple[int, NewRecord]] = []
        payload_bytes = 0
        for sequence, record in self.records:
            if sequence < from_sequence or len(selected) >= max_count:
                continue
            if max_bytes is not None and selected and payload_bytes + len(record.payload) > max_bytes:
                break
            payload_bytes += len(record.payload)
            selected.append((sequence, record))
        return selected

    def info(self) -> StorageInfo:
        return StorageInfo(
            oldest_sequence=self.records[0][0] if self.records else None,
            newest_sequence=self.records[-1][0] if self.records else None,
            total_bytes=self.total_bytes,
            record_count=len(self.records),
            dropped_oldest=self.dropped_oldest,
            rejected_new=self.rejected_new,
            expired=self.expired,
        )


records_strategy = st.builds(
    NewRecord,
    timestamp_ms=st.integers(0, 100),
    topic=st.sampled_from(["a", "sensors/1/t", "ü"]),
    qos=st.integers(0, 2),
    client_id=st.sampled_from(["", "dev-1"]),
    payload=st.binary(max_size=120),
)
limits_strategy = st.builds(
    RetentionLimits,
    max_size=st.sampled_from([60, 150, 400, 1000]),
    strategy_on_full=st.sampled_from(["overwrite_oldest", "reject_new"]),
)


class StreamStoreMachine(RuleBasedStateMachine):
    """Random appends, reads, TTL sweeps, checkpoints, frees and restarts, against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory(prefix="headwater-store-")
        self.path = Path(self.directory.name)
        self.model = StreamModel()
        self.database = Database.open(self.path)
        self.stream: StreamStore = self.database.open_stream("s")

    @initialize()
    def start(self) -> None:
        assert self.stream.info() == StorageInfo(None, None, 0, 0)

    @rule(records=st.lists(records_strategy, max_size=12), limits=limits_strategy)
    def append_batch(self, records: list[NewRecord], limits: RetentionLimits) -> None:
        dropped_before = self.model.dropped_oldest
        lost_before = dict(self.model.lost)
        expected = tuple(self.model.append(record, limits) for record in records)
        outcome = self.stream.append_batch(records, limits=limits, export_ids=EXPORTS)
        assert outcome.sequences == expected
        assert outcome.dropped_oldest == self.model.dropped_oldest - dropped_before
        lost_now = {e: n - lost_before.get(e, 0) for e, n in self.model.lost.items()}
        assert outcome.dropped_unexported == {e: n for e, n in lost_now.items() if n}

    @rule(
        from_sequence=st.integers(0, 80),
        max_count=st.integers(0, 20),
        max_bytes=st.none() | st.integers(0, 500),
    )
    def read(self, from_sequence: int, max_count: int, max_bytes: int | None) -> None:
        got = self.stream.read(from_sequence, max_count=max_count, max_bytes=max_bytes)
        expected = self.model.read(from_sequence, max_count, max_bytes)
        assert [(record.sequence, as_new(record)) for record in got] == expected

    @rule(older_than_ms=st.integers(0, 110), max_records=st.integers(0, 8))
    def expire(self, older_than_ms: int, max_records: int) -> None:
        expected = self.model.expire(older_than_ms, max_records)
        assert self.stream.expire(
            older_than_ms=older_than_ms, max_records=max_records, export_ids=EXPORTS
        ) == (expected)

    @precondition(lambda self: self.model.next_sequence > 0)
    @rule(export_id=st.sampled_from(EXPORTS), data=st.data())
    def checkpoint(self, export_id: str, data: st.DataObject) -> None:
        sequence = data.draw(st.integers(0, self.model.next_sequence - 1))
        self.model.checkpoints[export_id] = sequence
        self.stream.set_checkpoint(export_id, sequence)

    @precondition(lambda self: all(export_id in self.model.checkpoints for export_id in EXPORTS))
    @rule()
    def free_exported(self) -> None:
        through = min(self.model.checkpoints.values())
        assert self.stream.free_through(through) == self.model.free_through(through)

    @rule()
    def reopen(self) -> None:
        self.database.close()
        self.database = Database.open(self.path)
        self.stream = self.database.open_stream("s")

    @invariant()
    def store_equals_model(self) -> None:
        assert self.stream.info() == self.model.info()
        assert self.stream.next_sequence == self.model.next_sequence
        assert self.stream.checkpoints() == self.model.checkpoints
        assert self.stream.dropped_unexported() == self.model.lost
        everything = self.stream.read(0, max_count=1_000_000)
        assert [(record.sequence, as_new(record)) for record in everything] == self.model.records
        # Physically too: removed records are deleted, not merely hidden behind the metadata.
        stored = [key for key, _ in self.database.iter_items("s/s") if len(key) == len(sequence_key(0))]
        assert stored == [sequence_key(sequence) for sequence, _ in self.model.records]
        assert self.database.statistics().corrupt_records_skipped == 0

    def teardown(self) -> None:
        self.database.close()
        self.directory.cleanup()


StreamStoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_equals_the_model = StreamStoreMachine.TestCase


# --- throughput -------------------------------------------------------------------------------


def measure_append_rate(
    path: Path, *, batches: int = 400, batch_size: int = 500, payload_size: int = 200
) -> float:
    """Records per second of ``append_batch`` (no fsync) of ``batches`` batches."""
    db = Database.open(path)
    stream = db.open_stream("bench")
    batch = [
        NewRecord(
            1_700_000_000_000 + n, f"sensors/{n % 10}/telemetry", 1, f"dev-{n % 10}", os.urandom(payload_size)
        )
        for n in range(batch_size)
    ]
    limits = RetentionLimits(max_size=256 * 1024 * 1024, strategy_on_full="overwrite_oldest")
    started = time.perf_counter()
    for _ in range(batches):
        stream.append_batch(batch, limits=limits)
    elapsed = time.perf_counter() - started
    db.close()
    return batches * batch_size / elapsed


def test_checksum_is_crc32_of_the_record_after_it(tmp_path: Path) -> None:
    # Pins the documented layout: byte 0 version, bytes 1..4 CRC-32 of the rest.
    db = Database.open(tmp_path)
    db.open_stream("s").append_batch([new_record(b"abc")], limits=UNLIMITED)
    db.close()
    (value,) = raw_values(tmp_path, "s", [sequence_key(0)])
    assert value[0] == 1
    assert int.from_bytes(value[1:5], "big") == zlib.crc32(value[5:])
    assert len(value) == encoded_size(new_record(b"abc"))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        rate = measure_append_rate(Path(directory))
    sys.stdout.write(f"append_batch, 500 records x 200 B: {rate:,.0f} records/s\n")
