"""The export driver: one per export, the same for every type.

Owns one export's loop: read the stream from the checkpoint, batch within the sink's
:class:`~headwater.plugins.upload.sink.BatchLimits`, wait for a turn from the
:class:`~headwater.plugins.upload.scheduler.UploadScheduler`, call
:meth:`~headwater.plugins.upload.sink.ExportSink.send`, retry what failed, move records AWS
refuses for good to the dead-letter stream, and checkpoint. It never calls boto3 (the sink does)
and never touches RocksDB (the streams plugin does, through :class:`ExportedStreams`).

Delivery rules
--------------

* One request in flight per export, records in stream order: a batch is finished (every record
  accepted or dead-lettered) before the next one is read.
* The checkpoint moves only over records AWS accepted or that were dead-lettered, and only over
  the longest such prefix of the batch: after a partial failure only the failed records are
  sent again, and the checkpoint waits for them. Checkpoint and counters are written together.
  After a crash the export resumes after its checkpoint: duplicates are bounded by one batch.
* A record the sink calls impossible (:meth:`ExportSink.problem`, e.g. too large) or AWS rejects
  for good (``SendOutcome.rejected``) goes to the dead-letter stream with the reason and does not
  block the export. If the dead-letter stream refuses it (full, ``reject_new``) it is counted
  in ``dead_letter_dropped`` and logged; a storage failure there is retried like an AWS failure.

States (``ExportInfo.state``)
-----------------------------

``idle`` caught up, waiting for records · ``queued`` a batch waits for its bandwidth turn ·
``sending`` a request is in flight · ``backoff`` AWS failed or throttled: waiting to retry ·
``offline`` AWS unreachable: waiting to retry · ``blocked`` credentials or permissions missing
(or the target does not exist): retried every ``max_backoff`` · ``disabled`` paused through the
stream API (persisted).

Retry delays: exponential from 1 s, doubling per consecutive failure, capped at ``max_backoff``
(``uploads.max_backoff``, default 5 min), with "equal jitter" (a delay ``d`` becomes a random value
in ``[d/2, d]``): never a busy loop, and many gateways coming back at once do not retry in step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, Protocol

from headwater.core.store import StorageError
from headwater.core.streams import ExportedStreams, StreamError, StreamNotFoundError
from headwater.plugins.upload.sink import (
    ExportBlockedError,
    ExportError,
    ExportOfflineError,
    ExportThrottledError,
)
from headwater.wire.streams import ExportInfo, StreamRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from headwater.core.config import ExportConfig
    from headwater.plugins.upload.scheduler import UploadScheduler
    from headwater.plugins.upload.sink import ExportSink

__all__ = [
    "BASE_DELAY",
    "DeadLetters",
    "ExportDriver",
    "ExportState",
    "ExportedStreams",
    "dead_letter_payload",
    "retry_delay",
]

logger = logging.getLogger(__name__)

ExportState = Literal["idle", "queued", "sending", "backoff", "offline", "blocked", "disabled"]

#: The first retry delay, in seconds; it doubles per consecutive failure up to ``max_backoff``.
BASE_DELAY: Final = 1.0
# How many records one read of the stream returns at most (bounded memory per read).
_READ_CHUNK: Final = 1000
# The longest an idle driver waits before looking again (the stream API's long-poll cap).
_IDLE_WAIT: Final = 60.0


def retry_delay(failures: int, *, cap: float, rand: Callable[[], float] = random.random) -> float:
    """The delay before retry number ``failures`` (1 = the first retry): see the module docstring."""
    delay = min(cap, BASE_DELAY * 2.0 ** max(0, failures - 1))
    return delay / 2 + rand() * delay / 2


def dead_letter_payload(stream: str, export_id: str, record: StreamRecord, reason: str) -> bytes:
    """The dead-letter record for ``record``: the original record and why AWS will not take it."""
    entry = {"stream": stream, "export": export_id, "reason": reason, **record.to_json_dict()}
    return json.dumps(entry, separators=(",", ":")).encode()


class DeadLetters(Protocol):
    """Where records AWS will never take go."""

    async def put(self, stream: str, export_id: str, record: StreamRecord, reason: str) -> bool:
        """Store the record with ``reason``; False if the dead-letter stream refused it (counted).

        Raises ``StorageError`` when it could not be written (the driver retries).
        """
        ...


@dataclass(slots=True)
class _Batch:
    records: list[StreamRecord]
    to_send: list[StreamRecord]
    settled: set[int]  # sequences accepted by AWS or dead-lettered
    rejected: dict[int, str]  # sequence -> reason, waiting to be dead-lettered


class ExportDriver:
    """One export's loop; :meth:`run` is its task (owned by the upload plugin)."""

    def __init__(
        self,
        *,
        stream: str,
        export: ExportConfig,
        sink: ExportSink,
        streams: ExportedStreams,
        scheduler: UploadScheduler,
        dead_letters: DeadLetters,
        max_backoff: float,
    ) -> None:
        self.stream = stream
        self.export = export
        self._sink = sink
        self._streams = streams
        self._scheduler = scheduler
        self._dead_letters = dead_letters
        self._max_backoff = max_backoff
        self.key = f"{stream}/{export.id}"
        self._progress = streams.export_progress(stream, export.id)
        self._enabled = asyncio.Event()
        if not self._progress.disabled:
            self._enabled.set()
        self._state: ExportState = "disabled" if self._progress.disabled else "idle"
        self._last_error: str | None = None
        self._cursor = 0
        self._failures = 0
        self._sizes: dict[int, int] = {}  # sequence -> record_size, of the batch being delivered
        self.requests = 0  # send() calls, for statistics and tests
        self.dead_letter_dropped = 0
        if self._state == "idle" and self.info().lag_records:
            self._state = "queued"  # a backlog from before a restart: not caught up yet

    # --- what the plugin and the status see ------------------------------------------------

    @property
    def state(self) -> ExportState:
        """The current state (see the module docstring)."""
        return self._state

    def info(self) -> ExportInfo:
        """This export as ``streams describe`` shows it."""
        storage = self._streams.storage_info(self.stream)
        checkpoint = self._streams.export_checkpoint(self.stream, self.export.id)
        lag = 0
        if storage.newest_sequence is not None:
            first_unsent = max(storage.oldest_sequence or 0, -1 if checkpoint is None else checkpoint + 1)
            lag = max(0, storage.newest_sequence - first_unsent + 1)
        average = storage.total_bytes // storage.record_count if storage.record_count else 0
        progress = self._progress
        return ExportInfo(
            id=self.export.id,
            type=self.export.type,
            priority=self.export.priority,
            state=self._state,
            last_exported_sequence=checkpoint,
            last_export_time=progress.last_export_time_ms,
            exported_records=progress.exported_records,
            exported_bytes=progress.exported_bytes,
            lag_records=lag,
            lag_bytes=lag * average,
            dead_lettered=progress.dead_lettered,
            lost_records=self._streams.export_lost(self.stream, self.export.id),
            last_error=self._last_error,
        )

    def set_enabled(self, enabled: bool) -> None:  # noqa: FBT001 - the switch's value
        """Pause or resume (persisted). A request in flight finishes; nothing new is sent."""
        if enabled == self._enabled.is_set():
            return
        self._progress = replace(self._progress, disabled=not enabled)
        self._streams.save_export_progress(self.stream, self.export.id, self._progress)
        if enabled:
            self._enabled.set()
            self._set_state("idle")
        else:
            self._enabled.clear()
            self._set_state("disabled")
        logger.info("export %s %s", self.key, "resumed" if enabled else "paused")

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver forever (until cancelled or the stream is deleted)."""
        self._scheduler.set_export_rate(self.key, self.export.max_bandwidth)
        try:
            self._cursor = self._initial_cursor()
            while True:
                records = await self._gather()
                await self._deliver(records)
        except StreamNotFoundError:
            logger.info("export %s stopped: its stream was deleted", self.key)
        finally:
            self._scheduler.set_export_rate(self.key, None)
            await self._sink.aclose()

    def _initial_cursor(self) -> int:
        checkpoint = self._streams.export_checkpoint(self.stream, self.export.id)
        if checkpoint is not None:
            return checkpoint + 1
        start = self.export.start
        storage = self._streams.storage_info(self.stream)
        next_sequence = 0 if storage.newest_sequence is None else storage.newest_sequence + 1
        if start == "newest":
            if next_sequence:
                # Written now, so that a restart before the first delivery starts at the same place.
                self._streams.commit_export(self.stream, self.export.id, next_sequence - 1, self._progress)
            return next_sequence
        if start == "oldest":
            return storage.oldest_sequence or 0
        return start

    async def _wait_enabled(self) -> None:
        if not self._enabled.is_set():
            self._set_state("disabled")
            await self._enabled.wait()

    async def _gather(self) -> list[StreamRecord]:
        """The next batch from the cursor: full, or as old as ``max_wait`` (see BatchLimits)."""
        limits = self._sink.limits
        batch: list[StreamRecord] = []
        size = 0
        next_read = self._cursor
        while True:
            await self._wait_enabled()
            room = limits.max_records - len(batch)
            chunk = self._streams.read(
                self.stream, from_sequence=next_read, max_count=min(room, _READ_CHUNK), max_bytes=None
            )
            for record in chunk:
                record_size = self._sink.record_size(record)
                if batch and size + record_size > limits.max_bytes:
                    return batch
                batch.append(record)
                self._sizes[record.sequence] = record_size
                size += record_size
                next_read = record.sequence + 1
            # Reading and sizing a large batch (an S3 object) is CPU work: let the broker breathe.
            await asyncio.sleep(0)
            if len(batch) >= limits.max_records:
                return batch
            if len(chunk) == min(room, _READ_CHUNK):
                continue  # there may be more stored already
            newest = self._streams.storage_info(self.stream).newest_sequence
            if not chunk and newest is not None and newest >= next_read:
                # Stored but unreadable (corrupt: the store counted and logged them): they can
                # never be delivered, and waiting for them would spin.
                logger.warning("export %s: skipping unreadable records %d..%d", self.key, next_read, newest)
                next_read = newest + 1
                if not batch:
                    self._cursor = next_read
                continue
            if not batch:
                self._set_state("idle")
                await self._streams.wait_for_records(self.stream, from_sequence=next_read, timeout=_IDLE_WAIT)
                continue
            waited = time.time() - batch[0].timestamp_ms / 1000
            if waited >= limits.max_wait:
                return batch
            await self._streams.wait_for_records(
                self.stream, from_sequence=next_read, timeout=limits.max_wait - waited
            )

    async def _deliver(self, records: list[StreamRecord]) -> None:
        """Send ``records`` until each is accepted or dead-lettered; checkpoint as they settle."""
        batch = _Batch(records=records, to_send=[], settled=set(), rejected={})
        for index, record in enumerate(records):
            if index and not index % _READ_CHUNK:
                await asyncio.sleep(0)
            problem = self._sink.problem(record)
            if problem is None:
                batch.to_send.append(record)
            else:
                batch.rejected[record.sequence] = problem
        while True:
            if batch.rejected and not await self._dead_letter(batch):
                continue
            try:
                self._checkpoint(batch)
            except StorageError as exc:
                await self._retry_later(exc)
                continue
            if not batch.to_send:
                self._cursor = records[-1].sequence + 1
                self._sizes.clear()
                return
            await self._wait_enabled()
            await self._send(batch)

    async def _send(self, batch: _Batch) -> None:
        size = sum(self._sizes.get(r.sequence) or self._sink.record_size(r) for r in batch.to_send)
        self._set_state("queued")
        await self._scheduler.acquire(self.key, priority=self.export.priority, size=size)
        self._set_state("sending")
        self.requests += 1
        try:
            outcome = await self._sink.send(batch.to_send)
        except ExportError as exc:
            await self._retry_later(exc)
            return
        failed = outcome.failed
        unsettled = failed.keys() | outcome.rejected.keys()
        accepted = [record for record in batch.to_send if record.sequence not in unsettled]
        batch.settled.update(record.sequence for record in accepted)
        batch.rejected.update(outcome.rejected)
        if accepted:
            progress = self._progress
            self._progress = replace(
                progress,
                exported_records=progress.exported_records + len(accepted),
                exported_bytes=progress.exported_bytes + sum(len(record.payload) for record in accepted),
                last_export_time_ms=time.time_ns() // 1_000_000,
            )
        batch.to_send = [record for record in batch.to_send if record.sequence in failed]
        if batch.to_send:
            first = batch.to_send[0].sequence
            reason = f"{len(batch.to_send)} of the batch's records failed; retrying them: {failed[first]}"
            await self._retry_later(ExportThrottledError(reason))
            return
        self._failures = 0
        self._last_error = None

    async def _retry_later(self, exc: BaseException) -> None:
        self._failures += 1
        self._last_error = str(exc)
        if isinstance(exc, ExportBlockedError):
            state: ExportState = "blocked"
            delay = self._max_backoff
        else:
            state = "offline" if isinstance(exc, ExportOfflineError) else "backoff"
            delay = retry_delay(self._failures, cap=self._max_backoff)
        if self._failures == 1 or state == "blocked":
            logger.warning("export %s: %s (%s, retrying in %.1fs)", self.key, exc, state, delay)
        self._set_state(state)
        await asyncio.sleep(delay)

    async def _dead_letter(self, batch: _Batch) -> bool:
        """Dead-letter the rejected records; False if storage failed (after waiting to retry)."""
        for sequence, reason in sorted(batch.rejected.items()):
            record = next(record for record in batch.records if record.sequence == sequence)
            try:
                stored = await self._dead_letters.put(self.stream, self.export.id, record, reason)
            except (StorageError, StreamError) as exc:
                await self._retry_later(exc)
                return False
            if not stored:
                self.dead_letter_dropped += 1
            del batch.rejected[sequence]
            batch.settled.add(sequence)
            self._progress = replace(self._progress, dead_lettered=self._progress.dead_lettered + 1)
            logger.warning(
                "export %s: record %d moved to the dead-letter stream: %s", self.key, sequence, reason
            )
        return True

    def _checkpoint(self, batch: _Batch) -> None:
        """Checkpoint through the longest settled prefix of the batch, with the counters."""
        current = self._streams.export_checkpoint(self.stream, self.export.id)
        through: int | None = None
        for record in batch.records:
            if record.sequence not in batch.settled:
                break
            through = record.sequence
        if through is None or (current is not None and through <= current):
            return
        self._streams.commit_export(self.stream, self.export.id, through, self._progress)
        self._streams.mark_status_changed(self.stream)

    def _set_state(self, state: ExportState) -> None:
        if state != self._state:
            self._state = state
            self._streams.mark_status_changed(self.stream)
