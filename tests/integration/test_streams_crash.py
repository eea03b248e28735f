"""The issue's crash test: ``headwater run`` killed with -9 loses no acknowledged record.

``mosquitto_pub -l -q 1`` publishes numbered messages into a file stream; Headwater is killed
the moment it returns (every message acknowledged) or while it is still publishing. After each
kill the test opens the dead process's database directly (our own store API) and checks the
stream record by record, then restarts Headwater and publishes more: sequences continue.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from headwater.core.store import Database
from headwater.wire.streams import StreamRecord
from tests.fixtures.broker import HeadwaterProcess
from tests.fixtures.mosquitto import MosquittoSub, MqttMessage, mosquitto_pub

pytestmark = pytest.mark.slow

MESSAGES = 20_000
TOPIC = "sensors/crash-test/telemetry"
STATUS_TOPIC = "headwater/streams/telemetry/status"
CONFIG = """
streams:
  telemetry:
    topics: ["sensors/+/telemetry"]
    max_size: 1GiB
"""


@contextmanager
def opened_stream(data_dir: Path) -> Iterator[Callable[[], tuple[list[StreamRecord], int, int]]]:
    """The dead process's database: a reader returning (records, record_count, next_sequence)."""
    database = Database.open(data_dir)
    try:

        def read_all() -> tuple[list[StreamRecord], int, int]:
            store = database.open_stream("telemetry")
            records: list[StreamRecord] = []
            while batch := store.read(
                records[-1].sequence + 1 if records else 0, max_count=5000, max_bytes=None
            ):
                records += batch
            return records, store.info().record_count, store.next_sequence

        yield read_all
    finally:
        database.close()


def payloads(cycle: int, count: int) -> list[str]:
    return [f"cycle{cycle}-{index:06d}" for index in range(count)]


def check_contiguous(records: list[StreamRecord], record_count: int, next_sequence: int) -> None:
    sequences = [record.sequence for record in records]
    assert sequences == list(range(next_sequence - len(records), next_sequence)), "gaps or disorder"
    assert record_count == len(records), "the metadata disagrees with what is stored"
    assert sequences[0] == 0  # max_size is far away: nothing was dropped


def test_acknowledged_records_survive_kill_9_over_cycles(
    headwater_process: Callable[..., HeadwaterProcess], tmp_path: Path
) -> None:
    process = headwater_process(CONFIG)
    data_dir = tmp_path / "data"
    expected: list[str] = []
    for cycle in range(3):
        lines = payloads(cycle, MESSAGES)
        # -q 1 -l: mosquitto_pub exits 0 only once the last PUBACK is in: all were acknowledged.
        mosquitto_pub(process.port, TOPIC, lines=lines, qos=1, client_id=f"crash-{cycle}", timeout=300)
        process.kill()
        expected += lines
        with opened_stream(data_dir) as read_all:
            records, record_count, next_sequence = read_all()
        check_contiguous(records, record_count, next_sequence)
        # Every acknowledged message exactly once, in publish order (one connection, no resends).
        assert [record.payload.decode() for record in records] == expected
        assert {record.client_id for record in records[-MESSAGES:]} == {f"crash-{cycle}"}
        process.start()
    assert "Traceback" not in process.log_text()


def test_kill_9_while_publishing_leaves_a_clean_prefix(
    headwater_process: Callable[..., HeadwaterProcess], tmp_path: Path
) -> None:
    process = headwater_process(CONFIG)
    data_dir = tmp_path / "data"
    stored_before = 0
    for cycle in range(3):
        lines = payloads(cycle, MESSAGES)
        source = tmp_path / f"lines-{cycle}.txt"
        source.write_text("".join(f"{line}\n" for line in lines))
        with (
            MosquittoSub(process.port, STATUS_TOPIC) as status,
            source.open("rb") as stdin,
            subprocess.Popen(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(process.port), "-t", TOPIC, "-q", "1", "-l"],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ) as publisher,
        ):
            # Kill once a good part is stored (the retained status counts it), mid-publishing.
            status.wait_for(predicate=stored_at_least(stored_before + MESSAGES // 10), timeout=60)
            process.kill()
            publisher.kill()  # it would keep trying to reconnect
        with opened_stream(data_dir) as read_all:
            records, record_count, next_sequence = read_all()
        check_contiguous(records, record_count, next_sequence)
        new = [record.payload.decode() for record in records[stored_before:]]
        # What was stored is exactly the first messages mosquitto_pub sent, in order: nothing
        # missing in between, nothing twice, nothing half-written (each record passed its CRC).
        assert MESSAGES // 10 <= len(new) < MESSAGES, "the kill should land in the middle of publishing"
        assert new == lines[: len(new)]
        stored_before = len(records)
        process.start()
    assert "Traceback" not in process.log_text()


def stored_at_least(count: int) -> Callable[[list[MqttMessage]], bool]:
    """A predicate on status messages: the latest one counts at least ``count`` records."""

    def holds(status_messages: list[MqttMessage]) -> bool:
        if not status_messages:
            return False
        stored: int = json.loads(status_messages[-1].payload)["storage"]["record_count"]
        return stored >= count

    return holds
