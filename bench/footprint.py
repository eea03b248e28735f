"""Footprint with a backlog: start-up time and RSS of ``headwater run`` over a filled file stream.

For each backlog size (``--backlogs``, records of ``--payload-size`` bytes):

1. Fill a fresh data directory directly through Headwater's store API (no broker involved;
   payloads are a sequence number and random bytes, so RocksDB's compression cannot shrink them):
   :meth:`Database.open`, :meth:`Database.open_stream` ``("bench")``, then
   :meth:`StreamStore.append_batch` of ``--batch`` records at a time until the backlog is stored;
   then close the database.
2. Start ``headwater run -c CONFIG --data-dir DIR`` (the ``headwater`` next to
   ``sys.executable``) with a config that defines that stream, and time from just before the
   process is spawned until its log says ``listening on mqtt://`` *and* the port accepts a TCP
   connection. Read the process's RSS (``VmRSS`` of ``/proc/PID/status``) right then, and again
   after ``--idle`` seconds with nothing connected; ``VmHWM`` is the peak RSS so far.
3. Stop it with SIGTERM (SIGKILL after a grace period). Steps 2-3 run ``--repeat`` times per
   backlog; the table shows the median start time and the largest RSS.

The store was just written, so its files are in the page cache: this measures a warm start.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from _common import exit_on_sigterm, load_average, log_tail, stop_process

from headwater.core.retention import RetentionLimits
from headwater.core.store import Database, NewRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

HOST = "127.0.0.1"
TOPIC = "bench/ingest"
STREAM = "bench"
MAX_SIZE = 1024**3  # 1GiB, as in the config below
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
READY = re.compile(rb"listening on mqtt://127\.0\.0\.1:(\d+)")


class FootprintError(Exception):
    """Filling the store or running Headwater failed; the message says how."""


@dataclass(slots=True)
class Sample:
    """One start of ``headwater run``."""

    log_line_s: float  # spawn -> "listening on mqtt://" in the log
    ready_s: float  # spawn -> that line seen and the port accepting a TCP connection
    rss_ready_kib: int
    rss_idle_kib: int
    hwm_kib: int


@dataclass(slots=True)
class Result:
    """Every start over one backlog."""

    records: int
    fill_s: float
    store_bytes: int
    samples: list[Sample] = field(default_factory=list)


def _headwater_executable() -> Path:
    beside = Path(sys.executable).parent / "headwater"  # a venv's bin/, not resolved
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("headwater")
    if found is None:
        raise FootprintError(f"headwater not found next to {sys.executable} nor on PATH: pip install -e .")
    return Path(found)


def _directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def fill(data_dir: Path, *, records: int, payload_size: int, batch: int) -> float:
    """Append ``records`` records to stream ``bench`` in ``data_dir``; return the seconds it took."""
    limits = RetentionLimits(max_size=MAX_SIZE, strategy_on_full="reject_new")
    # Random filler: RocksDB compresses its files, and repetitive payloads would make the store
    # (and what a start could have to read) unrealistically small.
    rng = random.Random(1883)
    filler_size = max(payload_size - 12, 0)
    started = time.perf_counter()
    database = Database.open(data_dir)
    try:
        stream = database.open_stream(STREAM)
        written = 0
        while written < records:
            count = min(batch, records - written)
            now_ms = time.time_ns() // 1_000_000
            chunk = [
                NewRecord(
                    timestamp_ms=now_ms,
                    topic=TOPIC,
                    qos=1,
                    client_id="bench-footprint",
                    # A distinct payload per record: the sequence, then random bytes.
                    payload=(f"{written + index:012d}".encode() + rng.randbytes(filler_size))[:payload_size],
                )
                for index in range(count)
            ]
            outcome = stream.append_batch(chunk, limits=limits)
            if outcome.rejected_new:
                raise FootprintError(f"the store rejected {outcome.rejected_new} records: raise MAX_SIZE")
            written += count
        stored = stream.info().record_count
        if stored != records:
            raise FootprintError(f"stream {STREAM!r} holds {stored} records, expected {records}")
    finally:
        database.close()
    return time.perf_counter() - started


def write_config(path: Path) -> None:
    """The broker on a free port, deploy off, and the one file stream the store was filled for."""
    path.write_text(
        "topic_prefix: headwater\n"
        "broker:\n"
        f'  listeners:\n    default: {{bind: "{HOST}:0"}}\n'
        "streams:\n"
        f"  {STREAM}:\n"
        f'    topics: ["{TOPIC}"]\n'
        "    persistence: file\n"
        "    max_size: 1GiB\n"
        "    strategy_on_full: reject_new\n"
        "    exports: []\n"
        "deploy: {enabled: false}\n"
    )


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # "VmRSS:	   51234 kB"
    raise FootprintError(f"no {key} in /proc/{pid}/status")


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def start_once(headwater: Path, config: Path, data_dir: Path, workdir: Path, idle_s: float) -> Sample:
    """Start Headwater once over ``data_dir``, measure, stop it."""
    log_path = workdir / "headwater.log"
    command = [str(headwater), "run", "-c", str(config), "--data-dir", str(data_dir)]
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our command line, absolute executable
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    try:
        deadline = started + START_TIMEOUT_S
        port: int | None = None
        log_line_s = 0.0
        while port is None or not _accepts_connections(port):
            if process.poll() is not None:
                status = process.returncode
                raise FootprintError(f"headwater exited with status {status}:\n{log_tail(log_path)}")
            if time.perf_counter() > deadline:
                raise FootprintError(f"not listening after {START_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")
            if port is None and (match := READY.search(log_path.read_bytes())):
                log_line_s = time.perf_counter() - started
                port = int(match.group(1))
                continue
            time.sleep(0.005)
        ready_s = time.perf_counter() - started
        rss_ready = _status_kib(process.pid, "VmRSS")
        time.sleep(idle_s)
        if process.poll() is not None:
            raise FootprintError(f"headwater died while idle:\n{log_tail(log_path)}")
        rss_idle = _status_kib(process.pid, "VmRSS")
        hwm = _status_kib(process.pid, "VmHWM")
    finally:
        stop_process(process, STOP_GRACE_S)
    return Sample(log_line_s, ready_s, rss_ready, rss_idle, hwm)


def measure(
    backlogs: Sequence[int], *, payload_size: int, batch: int, repeat: int, idle_s: float
) -> list[Result]:
    """Fill a store per backlog and start Headwater over it ``repeat`` times."""
    headwater = _headwater_executable()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="headwater-footprint-") as scratch:
        for records in backlogs:
            workdir = Path(scratch) / f"backlog-{records}"
            data_dir = workdir / "data"
            workdir.mkdir()
            fill_s = fill(data_dir, records=records, payload_size=payload_size, batch=batch)
            result = Result(records, fill_s, _directory_bytes(data_dir))
            print(
                f"  filled   {records:>9,} records in {fill_s:6.1f} s, "
                f"store {result.store_bytes / 2**20:,.1f} MiB",
                flush=True,
            )
            config = workdir / "headwater.yaml"
            write_config(config)
            for attempt in range(1, repeat + 1):
                sample = start_once(headwater, config, data_dir, workdir, idle_s)
                result.samples.append(sample)
                print(
                    f"  start {attempt}/{repeat} {records:>9,} records: "
                    f"listening after {sample.ready_s * 1000:6.0f} ms "
                    f"(log line {sample.log_line_s * 1000:.0f} ms),"
                    f" RSS {sample.rss_ready_kib / 1024:5.1f} MiB, after {idle_s:g} s idle "
                    f"{sample.rss_idle_kib / 1024:5.1f} MiB (peak {sample.hwm_kib / 1024:5.1f} MiB)",
                    flush=True,
                )
            results.append(result)
    return results


def format_table(results: Sequence[Result], idle_s: float) -> str:
    """A Markdown table for docs/benchmarks.md."""
    header = (
        "records stored",
        "store on disk",
        "start -> listening (median)",
        "min..max",
        "RSS when listening",
        f"RSS after {idle_s:g} s idle",
        "peak RSS (VmHWM)",
    )
    lines = [header]
    for result in results:
        ready = [sample.ready_s * 1000 for sample in result.samples]
        lines.append(
            (
                f"{result.records:,}",
                f"{result.store_bytes / 2**20:,.1f} MiB",
                f"{statistics.median(ready):,.0f} ms",
                f"{min(ready):,.0f}..{max(ready):,.0f} ms",
                f"{max(sample.rss_ready_kib for sample in result.samples) / 1024:.1f} MiB",
                f"{max(sample.rss_idle_kib for sample in result.samples) / 1024:.1f} MiB",
                f"{max(sample.hwm_kib for sample in result.samples) / 1024:.1f} MiB",
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 1) + ":" for width in widths) + "|"
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Start-up time and RSS of `headwater run` over a file stream holding a backlog."
    )
    parser.add_argument(
        "--backlogs",
        default="0,100000,1000000",
        metavar="N,N,...",
        help="records stored before each start (default: 0,100000,1000000)",
    )
    parser.add_argument("--payload-size", type=int, default=200, help="payload bytes (default: 200)")
    parser.add_argument("--batch", type=int, default=500, help="records per append_batch (default: 500)")
    parser.add_argument("--repeat", type=int, default=3, help="starts per backlog (default: 3)")
    parser.add_argument("--idle", type=float, default=2.0, metavar="SECONDS", help="idle time (default: 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table; 1 on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        backlogs = [int(value) for value in args.backlogs.split(",") if value.strip()]
    except ValueError:
        parser.error("--backlogs: comma-separated record counts")
    if any(value < 0 for value in backlogs) or args.payload_size < 1 or args.batch < 1 or args.repeat < 1:
        parser.error("--backlogs must be >= 0; --payload-size, --batch and --repeat >= 1")
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # unwind: the finally blocks stop Headwater
    print(f"command:   {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine:   {platform.system()} {platform.release()} {platform.machine()}, "
        f"nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}"
    )
    print(f"load avg:  {load_average()} (before)", flush=True)
    try:
        results = measure(
            backlogs, payload_size=args.payload_size, batch=args.batch, repeat=args.repeat, idle_s=args.idle
        )
    except FootprintError as exc:
        print(f"footprint: {exc}", file=sys.stderr)
        return 1
    print(f"load avg:  {load_average()} (after)")
    print()
    print(format_table(results, args.idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
