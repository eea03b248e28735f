"""Per-device, per-minute aggregates of stream ``telemetry``, appended to stream ``aggregates``.

Reads ``telemetry`` through the stream API (``StreamClient``) from its own checkpoint, groups the
readings by device and by the minute of the reading's ``ts`` field (the time the device took the
reading, in ms; the record's own timestamp, when Headwater received it, is used only when a
payload has no ``ts``), and appends one JSON object per completed minute to ``aggregates``, with
topic ``aggregates/<device>``::

    {"device": "pump-1", "minute": "2026-11-30T10:15Z", "count": 60, "min": 20.1, "max": 22.9, "mean": 21.47}

A device's minute is complete when a reading of a later minute arrives for that device (or, with
``--once``, at the end of the stream: ``--once`` closes every open minute).

The checkpoint file (``--checkpoint``, JSON, replaced atomically after every appended aggregate)
holds the sequence to read from next, which is the oldest record of a minute not yet aggregated,
and the last minute aggregated for each device, so that a restart neither loses readings nor
aggregates a minute twice. Delivery is at least once: a crash between the append and the
checkpoint write repeats that one aggregate after the restart. Readings older than the last
aggregated minute of their device (late or out of order) are dropped and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.clients import StreamClient, StreamClientError
from headwater.clients.connection import InvalidURLError

if TYPE_CHECKING:
    from headwater.clients import StreamRecord

DEFAULT_URL = "mqtt://127.0.0.1:1883"
SOURCE = "telemetry"
TARGET = "aggregates"
MINUTE_MS = 60_000


def say(line: str) -> None:
    """One progress line on stdout, flushed (the output is this script's interface)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def minute_label(minute_ms: int) -> str:
    """``2026-11-30T10:15Z`` for the minute starting at ``minute_ms``."""
    return datetime.fromtimestamp(minute_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclass
class Checkpoint:
    """Where to resume: the next sequence to read and the last aggregated minute per device."""

    next_sequence: int = 0
    done: dict[str, int] = field(default_factory=dict)  # device -> start of last aggregated minute (ms)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """The checkpoint in ``path``, or a fresh one when there is no file yet."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        return cls(
            next_sequence=int(data["next_sequence"]), done={k: int(v) for k, v in data["done"].items()}
        )

    def save(self, path: Path) -> None:
        """Replace ``path`` atomically (write a temporary file, fsync, rename, fsync the folder)."""
        directory = path.resolve().parent
        text = json.dumps({"next_sequence": self.next_sequence, "done": self.done}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(text + "\n")
                file.flush()
                os.fsync(file.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass
class Window:
    """The readings of one device in one minute, not aggregated yet."""

    minute_ms: int
    first_sequence: int
    values: list[float] = field(default_factory=list)

    def aggregate(self, device: str) -> dict[str, Any]:
        """The aggregate record's JSON object."""
        return {
            "device": device,
            "minute": minute_label(self.minute_ms),
            "count": len(self.values),
            "min": min(self.values),
            "max": max(self.values),
            "mean": round(sum(self.values) / len(self.values), 3),
        }


@dataclass
class Aggregator:
    """The grouping state; ``streams`` receives the appends, ``checkpoint_path`` the progress."""

    streams: StreamClient
    checkpoint_path: Path
    checkpoint: Checkpoint
    open: dict[str, Window] = field(default_factory=dict)
    appended: int = 0
    skipped: int = 0
    read_up_to: int = 0  # the sequence after the last record fed

    def __post_init__(self) -> None:
        self.read_up_to = self.checkpoint.next_sequence

    def feed(self, record: StreamRecord) -> None:
        """Take one ``telemetry`` record; close its device's minute when a later one starts."""
        reading = _parse(record)
        if reading is None:
            self.skipped += 1
            self.read_up_to = record.sequence + 1
            return
        device, value, ts = reading
        minute_ms = ts - ts % MINUTE_MS
        window = self.open.get(device)
        done = self.checkpoint.done.get(device)
        if (done is not None and minute_ms <= done) or (window is not None and minute_ms < window.minute_ms):
            self.skipped += 1  # late: its minute is aggregated already
        elif window is not None and minute_ms == window.minute_ms:
            window.values.append(value)
        else:
            if window is not None:
                self._close(device)
            self.open[device] = Window(minute_ms, record.sequence, [value])
        self.read_up_to = record.sequence + 1

    def close_all(self) -> None:
        """Aggregate every open minute (``--once`` at the end of the stream), save the checkpoint."""
        for device in sorted(self.open, key=lambda name: self.open[name].first_sequence):
            self._close(device)
        if self.checkpoint.next_sequence != self.read_up_to:
            self.checkpoint.next_sequence = self.read_up_to
            self.checkpoint.save(self.checkpoint_path)

    def _close(self, device: str) -> None:
        window = self.open.pop(device)
        aggregate = window.aggregate(device)
        sequence = self.streams.append(TARGET, json.dumps(aggregate), topic=f"{TARGET}/{device}")
        self.appended += 1
        # A crash here, before the checkpoint is saved, repeats this aggregate (at least once).
        self.checkpoint.done[device] = window.minute_ms
        pending = [open_window.first_sequence for open_window in self.open.values()]
        self.checkpoint.next_sequence = min(pending, default=self.read_up_to)
        self.checkpoint.save(self.checkpoint_path)
        say(f"{TARGET}#{sequence} {json.dumps(aggregate)}")


def _parse(record: StreamRecord) -> tuple[str, float, int] | None:
    """``(device, temperature, ts)`` of a reading, or None for a payload that is not one."""
    try:
        data = json.loads(record.payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    parts = record.topic.split("/")
    device = data.get("device") or (parts[1] if len(parts) == 3 else None)  # noqa: PLR2004 - sensors/<device>/telemetry
    value = data.get("temperature")
    ts = data.get("ts", record.timestamp_ms)
    if not isinstance(device, str) or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(ts, bool) or not isinstance(ts, int):
        return None
    return device, float(value), ts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("HEADWATER_URL", DEFAULT_URL),
        help="broker URL, mqtt:// or mqtts:// (default: $HEADWATER_URL, else %(default)s)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("aggregator.checkpoint"),
        help="checkpoint file (default: ./%(default)s)",
    )
    parser.add_argument(
        "--once", action="store_true", help="aggregate what is in the stream, close every minute, exit"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Aggregate until the end of the stream (``--once``) or forever."""
    checkpoint = Checkpoint.load(args.checkpoint)
    say(f"reading {SOURCE} from sequence {checkpoint.next_sequence} ({args.checkpoint})")
    with StreamClient.connect(args.url) as streams:
        aggregator = Aggregator(streams, args.checkpoint, checkpoint)
        try:
            for record in streams.iter_records(
                SOURCE, from_sequence=checkpoint.next_sequence, follow=not args.once
            ):
                aggregator.feed(record)
            aggregator.close_all()
        except KeyboardInterrupt:
            pass  # open minutes stay open: the checkpoint still points at their first reading
    say(f"appended {aggregator.appended} aggregate(s), skipped {aggregator.skipped} record(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 2 when the stream API can't be used."""
    args = parse_args(argv)
    try:
        return run(args)
    except (InvalidURLError, StreamClientError, OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"aggregator: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
