"""Broker responsiveness while an export drains a backlog: stream-API round trips, idle vs busy.

An export runs on the broker's event loop; while it gathers, sizes and encodes a large batch
(an S3 object of up to ``max_object_size``), every MQTT client of the broker waits. This script
measures how long, side by side in one run:

1. Fill a fresh data directory's stream ``bench`` with ``--records`` records of
   ``--payload-size`` bytes through the store API (not timed).
2. Row ``idle``: start ``headwater run`` (the ``headwater`` next to ``sys.executable``) with the
   stream and **no export**, and time ``StreamClient.describe("bench")`` round trips, one every
   ``--interval`` seconds, ``--samples`` of them.
3. Row ``during s3 drain``: start it again on a copy of the same data with one ``s3`` export
   (``max_object_size: --object-size``, ``max_object_age: 1s``) to moto (a child process, fake
   credentials), and time the same round trips until the export's checkpoint reaches the last
   record.

The table shows median, p99 and max round trip per row; the max is what a device's PUBACK may
wait at worst while the export works.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

# AWS must never be reached for real: fake credentials, no profile, no instance metadata.
os.environ.update(
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - a fake credential for the emulator
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    AWS_CONFIG_FILE="/dev/null",
    AWS_SHARED_CREDENTIALS_FILE="/dev/null",
)

import boto3
from _common import exit_on_sigterm, load_average, log_tail, source_revision, stop_process

from headwater.clients import StreamClient
from headwater.core.config import parse_size
from headwater.core.retention import RetentionLimits
from headwater.core.store import Database, NewRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

HOST = "127.0.0.1"
STREAM = "bench"
BUCKET = "bench-latency"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


class BenchmarkError(Exception):
    """A child failed; the message says how."""


def fill(data_dir: Path, *, records: int, payload_size: int) -> None:
    """Append ``records`` random-text records to stream ``bench`` (not timed)."""
    database = Database.open(data_dir)
    try:
        store = database.open_stream(STREAM)
        limits = RetentionLimits(max_size=2**62, strategy_on_full="overwrite_oldest")
        now = time.time_ns() // 1_000_000
        for start in range(0, records, 5000):
            batch = [
                NewRecord(
                    timestamp_ms=now,
                    topic="bench/latency",
                    qos=1,
                    client_id="bench",
                    payload=os.urandom(payload_size // 2).hex().encode(),
                )
                for _ in range(min(5000, records - start))
            ]
            store.append_batch(batch, limits=limits)
    finally:
        database.close()


def _free_port() -> int:
    import socket  # noqa: PLC0415 - only here

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the moto server in a child process; return it and its URL."""
    port = _free_port()
    code = (
        "from moto.server import ThreadedMotoServer; import time; "
        f"s = ThreadedMotoServer(ip_address='{HOST}', port={port}, verbose=False); "
        "s.start(); time.sleep(10**6)"
    )
    log = (workdir / "moto.log").open("wb")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)  # noqa: S603
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or process.poll() is not None:
                stop_process(process, STOP_GRACE_S)
                msg = f"moto did not start:\n{log_tail(workdir / 'moto.log')}"
                raise BenchmarkError(msg) from None
            time.sleep(0.2)
        else:
            return process, url


def run_headwater(workdir: Path, data_dir: Path, config: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``headwater run``; return it and its port once it listens."""
    port = _free_port()
    config_path = workdir / "headwater.yaml"
    config_path.write_text(config.replace("PORT", str(port)))
    log_path = workdir / "headwater.log"
    headwater = Path(sys.executable).with_name("headwater")
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the headwater next to this interpreter
            [str(headwater), "run", "-c", str(config_path), "--data-dir", str(data_dir)],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while b"listening on" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process, STOP_GRACE_S)
            msg = f"headwater did not start:\n{log_tail(log_path)}"
            raise BenchmarkError(msg)
        time.sleep(0.02)
    return process, port


def round_trips(
    port: int, *, interval: float, samples: int | None, until_sequence: int | None
) -> list[float]:
    """Time describe round trips (ms) every ``interval`` s: ``samples`` of them, or until exported."""
    rtts: list[float] = []
    with StreamClient.connect(f"mqtt://{HOST}:{port}", timeout=60) as client:
        while True:
            started = time.perf_counter()
            description = client.describe(STREAM)
            rtts.append((time.perf_counter() - started) * 1000)
            if samples is not None and len(rtts) >= samples:
                return rtts
            if until_sequence is not None and description.exports[0].last_exported_sequence == until_sequence:
                return rtts
            time.sleep(interval)


BASE_CONFIG = f"""
broker: {{listeners: {{default: {{bind: "{HOST}:PORT"}}}}}}
deploy: {{enabled: false}}
streams:
  {STREAM}:
    topics: []
    max_size: 64GiB
"""


def format_table(rows: Sequence[tuple[str, list[float]]]) -> str:
    """The markdown table of the rows."""
    lines = [
        "| row | round trips | median ms | p99 ms | max ms |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, rtts in rows:
        ordered = sorted(rtts)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        lines.append(
            f"| {name} | {len(ordered)} | {statistics.median(ordered):.1f} | {p99:.1f} | {ordered[-1]:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000, help="backlog size (default: 300000)")
    parser.add_argument("--payload-size", type=int, default=200, help="payload bytes (default: 200)")
    parser.add_argument(
        "--object-size", default="64MiB", help="the export's max_object_size (default: 64MiB)"
    )
    parser.add_argument(
        "--interval", type=float, default=0.02, help="seconds between round trips (default: 0.02)"
    )
    parser.add_argument("--samples", type=int, default=100, help="round trips of the idle row (default: 100)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both rows and print the table; 1 on failure."""
    args = build_parser().parse_args(argv)
    object_size = parse_size(args.object_size)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    print(f"command:   {' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}")
    print(f"headwater: checkout at {source_revision()}; load avg {load_average()} (before)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="headwater-latency-"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        fill(workdir / "filled", records=args.records, payload_size=args.payload_size)
        rows = []
        shutil.copytree(workdir / "filled", workdir / "idle")
        process, port = run_headwater(workdir, workdir / "idle", BASE_CONFIG)
        children.append(process)
        rows.append(
            (
                "idle (no export)",
                round_trips(port, interval=args.interval, samples=args.samples, until_sequence=None),
            )
        )
        stop_process(process, STOP_GRACE_S)
        moto, url = start_moto(workdir)
        children.append(moto)
        export = (
            f"    exports: [{{id: s3, type: s3, bucket: {BUCKET}, max_object_size: {object_size}, "
            "max_object_age: 1s}]\n"
        )
        config = BASE_CONFIG.replace("deploy:", f'aws: {{endpoint_url: "{url}"}}\ndeploy:') + export
        process, port = run_headwater(workdir, workdir / "filled", config)
        children.append(process)
        busy = round_trips(port, interval=args.interval, samples=None, until_sequence=args.records - 1)
        rows.append((f"during s3 drain ({args.records:,} records, {args.object_size} objects)", busy))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in children:
            stop_process(child, STOP_GRACE_S)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load avg:  {load_average()} (after)\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
