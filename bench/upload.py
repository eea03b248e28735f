"""Upload throughput: how fast Headwater's exports drain a backlog to AWS, vs raw boto3 calls.

AWS is moto's ``ThreadedMotoServer`` on 127.0.0.1 and an ephemeral port, in a child process of
this script (so that its work never shares a GIL with the client being measured), with fake
credentials; its state is reset before every measurement. moto is slow, and both sides of each
comparison pay for it: the ratios say how much Headwater adds to the same calls, the absolute
rates say little about real AWS. One moto hot spot is patched in that process (its Kinesis
shard costs O(records stored) per record put, quadratic over a backlog: see
:func:`_patch_moto_kinesis`; ``--moto-as-is`` turns the patch off).

Rows (``--only`` takes the names in brackets):

* ``boto3 kinesis PutRecords`` [``boto3-kinesis``]: a boto3 client (a session of its own, one
  attempt per call, as Headwater's) sends the backlog as PutRecords calls of ≤ 500 records and
  ≤ 5 MiB, partition key = the records' topic, one call in flight at a time. The clock covers
  creating the client and every call; ``FailedRecordCount`` must be 0.
* ``headwater kinesis export`` [``headwater-kinesis``]: the same records are appended to stream
  ``bench`` of a fresh data directory through the store API (``Database.open``,
  ``open_stream``, ``append_batch``; not timed). Then ``headwater run -c CONFIG --data-dir DIR``
  (the ``headwater`` next to ``sys.executable``; the stream with one ``kinesis`` export,
  ``batch_size: 500``, ``batch_interval: 0s``, ``aws.endpoint_url`` = moto) runs, and the clock
  goes from just before the process is spawned until the stream API
  (``StreamClient.describe("bench")``, polled every 50 ms) shows the export's
  ``last_exported_sequence`` at the last record. Nothing is subtracted; "start-up" (spawn until
  the log says ``listening on mqtt://``) is shown separately, and "drain-only" rates divide by
  the time after it. The export starts before the listener (plugins start first), so drain-only
  slightly flatters Headwater.
* ``boto3 s3 PutObject (gzip jsonl)`` [``boto3-s3``] vs ``headwater s3 export``
  [``headwater-s3``]: the same, with objects: JSON lines of ``StreamRecord.to_json_dict()``,
  cut greedily at ``--max-object-size`` uncompressed bytes, gzip level 6, one PutObject each,
  keys as Headwater names them. The baseline's clock covers the JSON encoding and gzip too (the
  export does that work inside its clock). Headwater: ``max_object_size`` = the same,
  ``max_object_age: 1s``.
* ``headwater kinesis export, capped`` [``headwater-kinesis-capped``]: the kinesis export with
  ``uploads.max_bandwidth: --cap``; its ratio is measured MiB/s over the cap (≈ 1.0 when the cap
  holds). The token bucket starts with one second of budget, so a short run sits above 1.0.

Records: a zero-padded sequence number and random hex digits (``--payload-size`` bytes),
topic ``bench/upload``, timestamps an hour old (a backlog: no export waits for a batch to age).
"MiB" counts what the service and Headwater's bandwidth budget count: data + partition key for
Kinesis (the wire carries data base64'd, ~4/3), uncompressed JSON-line bytes for S3 (the wire
carries them gzip'd; the compressed size is printed per run).

Every run is verified, untimed, before it counts: Kinesis GetRecords must return exactly the
records, in order; S3 objects must hold exactly one line per record (and for Headwater, the
objects are compared with the baseline's). A failed verification, a failed call, an export
showing ``last_error`` or a timeout ends the benchmark with status 1. Repeats are interleaved
(every row once, then again); each row reports the median.

``--serve-moto`` is internal: it is how the benchmark runs moto in its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import os
import platform
import random
import re
import selectors
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

# Fake credentials before boto3 is imported; `headwater run` inherits them. Nothing may reach
# real AWS nor a developer's ~/.aws (the same environment as tests/fixtures/aws.py).
REGION = "us-east-1"
_FAKE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
os.environ.update(_FAKE_ENVIRONMENT)
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE"):
    os.environ.pop(_name, None)

import boto3  # noqa: E402 - after the fake environment, on purpose
from _common import (  # noqa: E402 - after the fake environment, on purpose
    cpu_model,
    exit_on_sigterm,
    load_average,
    log_tail,
    package_version,
    source_revision,
    stop_process,
)
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

from headwater.clients import StreamClient, StreamClientError  # noqa: E402
from headwater.core.config import parse_bandwidth, parse_size  # noqa: E402
from headwater.core.retention import RetentionLimits  # noqa: E402
from headwater.core.store import Database, NewRecord  # noqa: E402
from headwater.wire.streams import StreamRecord  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

Service = Literal["kinesis", "s3"]

HOST = "127.0.0.1"
TOPIC = "bench/upload"
CLIENT_ID = "bench-upload"
STREAM = "bench"  # the Headwater stream, the Kinesis stream and the S3 key prefix
BUCKET = "headwater-bench"
MAX_SIZE = 1024**3  # the stream's max_size, 1GiB, as in the config below
FILL_BATCH = 500
KINESIS_MAX_RECORDS = 500  # PutRecords: records per call
KINESIS_MAX_BYTES = 5 * 1024**2  # PutRecords: data + partition keys per call
S3_MIN_OBJECT_SIZE = 1024  # Headwater's config refuses less
S3_MAX_OBJECT_SIZE = 8 * 1024**2  # above this Headwater uploads multipart; the baseline does not
S3_KEY = "{stream}/{yyyy}/{mm}/{dd}/{HH}/{first_sequence}-{last_sequence}.jsonl.gz"  # Headwater's default
GZIP_LEVEL = 6  # as plugins/upload/s3.py
BACKLOG_AGE_MS = 3_600_000
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
POLL_S = 0.05
READY = re.compile(rb"listening on mqtt://127\.0\.0\.1:(\d+)")
MOTO_READY = re.compile(rb"moto listening on (http://\S+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(Exception):
    """A measurement failed or its result did not verify; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the table."""

    name: str  # for --only
    label: str
    service: Service
    client: Literal["boto3", "headwater"]
    capped: bool = False
    baseline: str | None = None  # the row this one is compared with (None: a baseline / the cap)


ALL_TARGETS = (
    Target("boto3-kinesis", "boto3 kinesis PutRecords", "kinesis", "boto3"),
    Target("headwater-kinesis", "headwater kinesis export", "kinesis", "headwater", baseline="boto3-kinesis"),
    Target("boto3-s3", "boto3 s3 PutObject (gzip jsonl)", "s3", "boto3"),
    Target("headwater-s3", "headwater s3 export", "s3", "headwater", baseline="boto3-s3"),
    Target(
        "headwater-kinesis-capped", "headwater kinesis export, capped", "kinesis", "headwater", capped=True
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run of the benchmark does, from the command line."""

    records: dict[str, int]  # per target name
    payload_size: int
    repeat: int
    max_object_size: int
    cap: float  # bytes per second
    cap_text: str
    timeout_s: float | None
    moto_as_is: bool = False

    def timeout_for(self, target: Target, total_bytes: int) -> float:
        """How long one measurement of ``target`` may take."""
        if self.timeout_s is not None:
            return self.timeout_s
        records = self.records[target.name]
        allowed = 60.0 + 0.002 * records
        if target.capped:
            allowed += 2 * total_bytes / self.cap
        return allowed


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement."""

    seconds: float
    startup_s: float | None  # Headwater rows: spawn -> "listening on"
    client_cpu_s: float  # the boto3 process or `headwater run` (all its threads)
    moto_cpu_s: float


@dataclass(slots=True)
class Row:
    """Every measurement of one target."""

    target: Target
    records: int = 0
    total_bytes: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Median seconds."""
        return statistics.median(sample.seconds for sample in self.samples)

    @property
    def startup_s(self) -> float | None:
        """Median start-up seconds (Headwater rows)."""
        values = [sample.startup_s for sample in self.samples if sample.startup_s is not None]
        return statistics.median(values) if values else None

    @property
    def drain_s(self) -> float:
        """Median of (seconds - start-up)."""
        return statistics.median(sample.seconds - (sample.startup_s or 0.0) for sample in self.samples)


# --- the backlog -------------------------------------------------------------------------------


def make_records(count: int, payload_size: int) -> list[StreamRecord]:
    """``count`` records as the stream will hold them: sequences 0.., an hour-old backlog."""
    width = len(str(count - 1))
    filler_size = payload_size - width
    rng = random.Random(1883)
    base_ms = time.time_ns() // 1_000_000 - BACKLOG_AGE_MS
    records = []
    for sequence in range(count):
        # Printable (payloads stay text in the JSON lines) and random: hex gzips about 2:1, so
        # the S3 rows compress no better than real data would (filler cut from one shared
        # string gzipped 27:1 and made gzip and the uploads unrealistically cheap).
        filler = rng.randbytes(filler_size // 2 + 1).hex()[:filler_size]
        payload = f"{sequence:0{width}d}{filler}".encode()
        records.append(
            StreamRecord(
                sequence=sequence,
                timestamp_ms=base_ms + sequence // 100,
                topic=TOPIC,
                qos=1,
                client_id=CLIENT_ID,
                payload=payload,
            )
        )
    return records


def fill(data_dir: Path, records: Sequence[StreamRecord]) -> None:
    """Append ``records`` to stream ``bench`` of a new data directory, as the broker would."""
    limits = RetentionLimits(max_size=MAX_SIZE, strategy_on_full="reject_new")
    database = Database.open(data_dir)
    try:
        stream = database.open_stream(STREAM)
        for start in range(0, len(records), FILL_BATCH):
            chunk = [
                NewRecord(
                    timestamp_ms=record.timestamp_ms,
                    topic=record.topic,
                    qos=record.qos,
                    client_id=record.client_id,
                    payload=record.payload,
                )
                for record in records[start : start + FILL_BATCH]
            ]
            outcome = stream.append_batch(chunk, limits=limits)
            if outcome.sequences != tuple(record.sequence for record in records[start : start + FILL_BATCH]):
                raise BenchmarkError(f"the store did not take records {start}.. as expected: {outcome}")
        info = stream.info()
        if info.record_count != len(records) or info.newest_sequence != len(records) - 1:
            raise BenchmarkError(f"stream {STREAM!r} holds {info}, expected {len(records)} records")
    finally:
        database.close()


def json_line(record: StreamRecord) -> bytes:
    """One line of an S3 object: the record's JSON object as compact UTF-8, then a newline."""
    return json.dumps(record.to_json_dict(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def kinesis_bytes(records: Sequence[StreamRecord]) -> int:
    """Data + partition key bytes: what Kinesis and Headwater's budget count."""
    return sum(len(record.payload) + len(record.topic.encode()) for record in records)


def split_greedy(sizes: Sequence[int], *, max_records: int, max_bytes: int) -> list[range]:
    """Consecutive index ranges of ≤ ``max_records`` items and ≤ ``max_bytes`` (≥ 1 item each)."""
    ranges: list[range] = []
    start = total = 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_records or total + size > max_bytes):
            ranges.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


def object_key(first: StreamRecord, last: StreamRecord) -> str:
    """The key Headwater's default template gives the object holding ``first`` .. ``last``."""
    when = datetime.fromtimestamp(first.timestamp_ms / 1000, tz=UTC)
    return S3_KEY.format(
        stream=STREAM,
        yyyy=f"{when.year:04d}",
        mm=f"{when.month:02d}",
        dd=f"{when.day:02d}",
        HH=f"{when.hour:02d}",
        first_sequence=first.sequence,
        last_sequence=last.sequence,
    )


def build_objects(records: Sequence[StreamRecord], max_object_size: int) -> list[tuple[str, bytes]]:
    """(key, gzip'd body) of each object, cut at ``max_object_size`` uncompressed bytes."""
    lines = [json_line(record) for record in records]
    objects = []
    for span in split_greedy([len(line) for line in lines], max_records=100_000, max_bytes=max_object_size):
        body = gzip.compress(b"".join(lines[span.start : span.stop]), compresslevel=GZIP_LEVEL, mtime=0)
        objects.append((object_key(records[span.start], records[span.stop - 1]), body))
    return objects


# --- moto, in a process of its own ---------------------------------------------------------------


def _patch_moto_kinesis() -> None:
    """Make moto's per-record cost constant (it grows with the shard: quadratic over a backlog).

    moto 5.x's ``Shard.put_record`` asks ``get_max_sequence_number()``, which copies every key of
    the shard into a list to take the last one: O(records in the shard) per record. At 100,000
    records that is ~47 s of moto CPU, and the benchmark would measure nothing but that. The
    shard's dict is in insertion order and sequence numbers only grow, so its last key is the
    same answer in O(1). Only this benchmark's moto process is patched.
    """
    from moto.kinesis.models import Shard  # noqa: PLC0415 - only the moto process needs it

    def get_max_sequence_number(self: Shard) -> int:
        return next(reversed(self.records), 0)

    Shard.get_max_sequence_number = get_max_sequence_number  # type: ignore[method-assign]


def serve_moto(*, as_is: bool) -> int:
    """Run moto's server on 127.0.0.1 and an ephemeral port until stdin closes (the parent left)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - only this process needs it

    if not as_is:
        _patch_moto_kinesis()

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"moto listening on http://{host}:{port}", flush=True)
    try:
        sys.stdin.buffer.read()  # EOF when the parent closes the pipe, or dies
    finally:
        server.stop()
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


@dataclass(frozen=True, slots=True)
class Moto:
    """The running emulator."""

    url: str
    pid: int

    def reset(self) -> None:
        """Forget every stream and bucket."""
        # Our local emulator's http:// URL.
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            response.read()

    def cpu_seconds(self) -> float:
        """CPU seconds moto's process used so far."""
        return _cpu_seconds(self.pid)

    def client(self, service: str) -> Any:
        """A boto3 client bound to the emulator (one attempt per call, like Headwater's)."""
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=60
        )
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            region_name=REGION,
            endpoint_url=self.url,
            config=config,
        )


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return stream.readline()


@contextlib.contextmanager
def running_moto(workdir: Path, *, as_is: bool) -> Iterator[Moto]:
    """Start moto in a child process; yield it; stop it (closing its stdin ends it)."""
    log_path = workdir / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - this script, this interpreter
            [sys.executable, __file__, "--serve-moto", *(["--moto-as-is"] if as_is else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None  # noqa: S101 - PIPE above
    assert process.stdin is not None  # noqa: S101
    try:
        match = MOTO_READY.search(_read_line(process.stdout, START_TIMEOUT_S))
        if match is None:
            raise BenchmarkError(f"moto did not start within {START_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")
        yield Moto(url=match.group(1).decode(), pid=process.pid)
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            stop_process(process, STOP_GRACE_S)


# --- the AWS side: create, read back -------------------------------------------------------------


def create_target(moto: Moto, service: Service) -> None:
    """A fresh emulator with the one-shard Kinesis stream or the bucket."""
    moto.reset()
    if service == "s3":
        moto.client("s3").create_bucket(Bucket=BUCKET)
        return
    kinesis = moto.client("kinesis")
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    deadline = time.monotonic() + 30
    while kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamStatus"] != (
        "ACTIVE"
    ):
        if time.monotonic() > deadline:
            raise BenchmarkError("the Kinesis stream did not become ACTIVE in moto")
        time.sleep(0.05)


def verify_kinesis(moto: Moto, records: Sequence[StreamRecord], label: str) -> str:
    """Every record in the shard exactly once, in order, with the topic as partition key."""
    kinesis = moto.client("kinesis")
    [shard] = kinesis.list_shards(StreamName=STREAM)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=STREAM, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    got: list[tuple[bytes, str]] = []
    while True:
        answer = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
        got += [(entry["Data"], entry["PartitionKey"]) for entry in answer["Records"]]
        if not answer["Records"] or "NextShardIterator" not in answer:
            break
        iterator = answer["NextShardIterator"]
    if len(got) != len(records):
        raise BenchmarkError(f"{label}: Kinesis holds {len(got)} records, expected {len(records)}")
    for index, (record, (data, key)) in enumerate(zip(records, got, strict=True)):
        if data != record.payload or key != record.topic:
            raise BenchmarkError(f"{label}: Kinesis record {index} differs: {data[:20]!r}, key {key!r}")
    return f"Kinesis holds all {len(got):,} records, in order"


def verify_s3(
    moto: Moto, records: Sequence[StreamRecord], label: str, expected: dict[str, int] | None
) -> tuple[str, dict[str, int]]:
    """One JSON line per record, each sequence once; returns the objects' keys and sizes."""
    s3 = moto.client("s3")
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        sizes.update({entry["Key"]: entry["Size"] for entry in page.get("Contents", [])})
    sequences: list[int] = []
    for key in sizes:
        answer = s3.get_object(Bucket=BUCKET, Key=key)
        body = answer["Body"].read()
        if answer.get("ContentEncoding") == "gzip":
            body = gzip.decompress(body)
        sequences += [json.loads(line)["sequence"] for line in body.splitlines()]
    if len(sequences) != len(records) or sorted(sequences) != list(range(len(records))):
        raise BenchmarkError(
            f"{label}: S3 holds {len(sequences)} lines in {len(sizes)} objects "
            f"({len(set(sequences))} distinct sequences), expected each of {len(records)} once"
        )
    outcome = f"S3 holds all {len(sequences):,} records once, {len(sizes)} objects, {sum(sizes.values()):,} B"
    if expected is not None:
        outcome += ", objects identical to the baseline's" if sizes == expected else ", OBJECTS DIFFER"
    return outcome, sizes


# --- the rows ---------------------------------------------------------------------------------


def run_boto3(target: Target, moto: Moto, records: Sequence[StreamRecord], settings: Settings) -> Sample:
    """The baseline: the same work as the export, with plain boto3 calls, one at a time."""
    create_target(moto, target.service)
    cpu_before, moto_before = time.process_time(), moto.cpu_seconds()
    started = time.perf_counter()
    client = moto.client(target.service)
    if target.service == "kinesis":
        sizes = [len(record.payload) + len(record.topic.encode()) for record in records]
        for span in split_greedy(sizes, max_records=KINESIS_MAX_RECORDS, max_bytes=KINESIS_MAX_BYTES):
            answer = client.put_records(
                StreamName=STREAM,
                Records=[
                    {"Data": record.payload, "PartitionKey": record.topic}
                    for record in records[span.start : span.stop]
                ],
            )
            if answer.get("FailedRecordCount"):
                raise BenchmarkError(
                    f"{target.name}: PutRecords failed {answer['FailedRecordCount']} records"
                )
    else:
        for key, body in build_objects(records, settings.max_object_size):
            client.put_object(
                Bucket=BUCKET, Key=key, Body=body, ContentType="application/x-ndjson", ContentEncoding="gzip"
            )
    seconds = time.perf_counter() - started
    sample = Sample(seconds, None, time.process_time() - cpu_before, moto.cpu_seconds() - moto_before)
    client.close()
    return sample


def headwater_config(target: Target, moto: Moto, settings: Settings) -> str:
    """The broker on a free port, deploy off, stream ``bench`` with the row's one export."""
    if target.service == "kinesis":
        export = f"{{id: out, type: kinesis, stream_name: {STREAM}, batch_size: 500, batch_interval: 0s}}"
    else:
        export = (
            f"{{id: out, type: s3, bucket: {BUCKET}, max_object_size: {settings.max_object_size}, "
            "max_object_age: 1s}"
        )
    uploads = (
        "uploads: {max_backoff: 5s"
        + (f", max_bandwidth: {settings.cap_text}" if target.capped else "")
        + "}\n"
    )
    return (
        "topic_prefix: headwater\n"
        "broker:\n"
        f'  listeners:\n    default: {{bind: "{HOST}:0"}}\n'
        f"aws: {{region: {REGION}, endpoint_url: {moto.url}}}\n" + uploads + "streams:\n"
        f"  {STREAM}:\n"
        f'    topics: ["{TOPIC}"]\n'
        "    persistence: file\n"
        "    max_size: 1GiB\n"
        "    strategy_on_full: reject_new\n"
        f"    exports:\n      - {export}\n"
        "deploy: {enabled: false}\n"
    )


def _wait_listening(process: subprocess.Popen[bytes], log_path: Path, started: float) -> tuple[int, float]:
    """Port and seconds from spawn until the log says "listening on"."""
    deadline = started + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise BenchmarkError(f"headwater exited with status {process.returncode}:\n{log_tail(log_path)}")
        if time.perf_counter() > deadline:
            raise BenchmarkError(
                f"headwater not listening after {START_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}"
            )
        if match := READY.search(log_path.read_bytes()):
            # No TCP probe: amqtt logs an error for a connection without CONNECT; the stream
            # client's connect right after fails loudly if the port does not answer.
            return int(match.group(1)), time.perf_counter() - started
        time.sleep(0.002)


def _wait_exported(
    client: StreamClient, process: subprocess.Popen[bytes], last: int, deadline: float, log_path: Path
) -> float:
    """Poll the export until its checkpoint is ``last``; the time it was seen there."""
    while True:
        if process.poll() is not None:
            raise BenchmarkError(f"headwater exited with status {process.returncode}:\n{log_tail(log_path)}")
        [export] = client.describe(STREAM).exports
        now = time.perf_counter()
        if export.last_error is not None:
            raise BenchmarkError(
                f"the export failed a request ({export.state}: {export.last_error}); a retry's backoff "
                f"would be measured, not throughput:\n{log_tail(log_path)}"
            )
        if export.last_exported_sequence == last:
            if export.exported_records != last + 1:
                raise BenchmarkError(
                    f"the export counts {export.exported_records} records, expected {last + 1}"
                )
            return now
        if now > deadline:
            raise BenchmarkError(
                f"the export reached {export.last_exported_sequence} of {last} before the timeout "
                f"({export.state}):\n{log_tail(log_path)}"
            )
        time.sleep(POLL_S)


def run_headwater(
    target: Target,
    moto: Moto,
    records: Sequence[StreamRecord],
    settings: Settings,
    *,
    workdir: Path,
    headwater: Path,
) -> Sample:
    """Fill a data directory, start ``headwater run`` over it, time until the export caught up."""
    data_dir = workdir / "data"
    fill(data_dir, records)
    create_target(moto, target.service)
    config = workdir / "headwater.yaml"
    config.write_text(headwater_config(target, moto, settings))
    total_bytes = kinesis_bytes(records) if target.service == "kinesis" else 0
    timeout = settings.timeout_for(target, total_bytes)
    log_path = workdir / "headwater.log"
    command = [str(headwater), "run", "-c", str(config), "--data-dir", str(data_dir)]
    moto_before = moto.cpu_seconds()
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our command line, absolute executable
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    try:
        port, startup = _wait_listening(process, log_path, started)
        with StreamClient.connect(
            f"mqtt://{HOST}:{port}", client_id="bench-upload-poll", timeout=10
        ) as client:
            done = _wait_exported(client, process, len(records) - 1, started + timeout, log_path)
        client_cpu = _cpu_seconds(process.pid)
        moto_cpu = moto.cpu_seconds() - moto_before
    finally:
        stop_process(process, STOP_GRACE_S)
    return Sample(done - started, startup, client_cpu, moto_cpu)


# --- the report ------------------------------------------------------------------------------


def machine_lines(headwater: Path | None) -> list[str]:
    """What the numbers were measured on: hardware and software versions."""
    packages = ", ".join(
        f"{name} {package_version(name)}" for name in ("boto3", "botocore", "moto", "rocksdict", "uvloop")
    )
    return [
        (
            f"machine:   {platform.system()} {platform.release()} {platform.machine()}, "
            f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}"
        ),
        f"software:  Python {platform.python_version()}, {packages}",
        f"headwater: {headwater or '-'} (checkout at {source_revision()})",
    ]


def _mib(value: float) -> str:
    return f"{value / 2**20:,.2f}"


def format_table(rows: Sequence[Row], settings: Settings) -> str:
    """A Markdown table: paste it into docs/benchmarks.md as is."""
    by_name = {row.target.name: row for row in rows}
    header = (
        "row",
        "records",
        "MiB",
        "seconds (median)",
        "min..max",
        "start-up",
        "records/s",
        "MiB/s",
        "vs baseline",
        "drain-only records/s",
        "drain-only vs baseline",
        "CPU s: client / moto",
    )
    lines = [header]
    for row in rows:
        seconds, drain = row.seconds, row.drain_s
        rate, drain_rate = row.records / seconds, row.records / drain
        startup = row.startup_s
        reference = by_name.get(row.target.baseline) if row.target.baseline else None
        if row.target.capped:
            ratio = f"{row.total_bytes / seconds / settings.cap:.2f}x of cap"
            drain_ratio = f"{row.total_bytes / drain / settings.cap:.2f}x of cap"
        elif reference is not None:
            ratio = f"{rate / (reference.records / reference.seconds):.2f}x"
            drain_ratio = f"{drain_rate / (reference.records / reference.drain_s):.2f}x"
        else:
            ratio = drain_ratio = "1.00x" if row.target.client == "boto3" else "-"
        all_seconds = [sample.seconds for sample in row.samples]
        lines.append(
            (
                row.target.label + (f" {settings.cap_text}" if row.target.capped else ""),
                f"{row.records:,}",
                _mib(row.total_bytes),
                f"{seconds:.2f}",
                f"{min(all_seconds):.2f}..{max(all_seconds):.2f}",
                "-" if startup is None else f"{startup:.2f}",
                f"{rate:,.0f}",
                _mib(row.total_bytes / seconds),
                ratio,
                f"{drain_rate:,.0f}",
                drain_ratio,
                (
                    f"{statistics.median(s.client_cpu_s for s in row.samples):.1f} / "
                    f"{statistics.median(s.moto_cpu_s for s in row.samples):.1f}"
                ),
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


# --- main ------------------------------------------------------------------------------------


def _headwater_executable(*, required: bool) -> Path | None:
    beside = Path(sys.executable).parent / "headwater"  # a venv's bin/, not resolved
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("headwater")
    if found is None and required:
        raise BenchmarkError(f"headwater not found next to {sys.executable} nor on PATH: pip install -e .")
    return Path(found) if found else None


def select_targets(only: str | None) -> list[Target]:
    """Targets named in ``only`` (comma-separated), in table order."""
    if not only:
        return list(ALL_TARGETS)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {target.name for target in ALL_TARGETS}
    if unknown := wanted - known:
        raise BenchmarkError(
            f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
        )
    return [target for target in ALL_TARGETS if target.name in wanted]


@dataclass(slots=True)
class _Session:
    """What the measurements of one benchmark run share."""

    settings: Settings
    moto: Moto
    scratch: Path
    headwater: Path | None
    backlogs: dict[int, list[StreamRecord]] = field(default_factory=dict)
    baseline_objects: dict[int, dict[str, int]] = field(default_factory=dict)

    def backlog(self, count: int) -> list[StreamRecord]:
        """The ``count`` records every row with that many drains (built once)."""
        if count not in self.backlogs:
            self.backlogs[count] = make_records(count, self.settings.payload_size)
        return self.backlogs[count]


def measure_once(session: _Session, row: Row, attempt: int) -> None:
    """One measurement of ``row``'s target, verified, added to ``row``; prints a progress line."""
    target, settings, moto = row.target, session.settings, session.moto
    count = settings.records[target.name]
    records = session.backlog(count)
    row.records = count
    if target.service == "kinesis":
        row.total_bytes = kinesis_bytes(records)
    else:
        row.total_bytes = sum(len(json_line(record)) for record in records)
    workdir = session.scratch / f"{target.name}-{attempt}"
    workdir.mkdir()
    if target.client == "boto3":
        sample = run_boto3(target, moto, records, settings)
    else:
        assert session.headwater is not None  # noqa: S101 - main checked it
        sample = run_headwater(target, moto, records, settings, workdir=workdir, headwater=session.headwater)
    if target.service == "kinesis":
        outcome = verify_kinesis(moto, records, target.name)
    else:
        expected = session.baseline_objects.get(count) if target.client == "headwater" else None
        outcome, sizes = verify_s3(moto, records, target.name, expected)
        if target.client == "boto3":
            session.baseline_objects[count] = sizes
    shutil.rmtree(workdir)
    row.samples.append(sample)
    startup = "" if sample.startup_s is None else f" (start-up {sample.startup_s:.2f} s)"
    print(
        f"  run {attempt}/{settings.repeat}  {target.name:<25} {count / sample.seconds:>9,.0f} records/s"
        f"  {sample.seconds:6.2f} s{startup}, CPU {sample.client_cpu_s:.1f} s + moto "
        f"{sample.moto_cpu_s:.1f} s; {outcome}",
        flush=True,
    )


def run_benchmark(targets: Sequence[Target], settings: Settings, headwater: Path | None) -> list[Row]:
    """Measure every target ``settings.repeat`` times, interleaved, each against a reset moto."""
    rows = [Row(target) for target in targets]
    with (
        tempfile.TemporaryDirectory(prefix="headwater-bench-upload-") as scratch,
        running_moto(Path(scratch), as_is=settings.moto_as_is) as moto,
    ):
        patch = "as is" if settings.moto_as_is else "Kinesis Shard.get_max_sequence_number patched to O(1)"
        print(f"moto:      {moto.url} (pid {moto.pid}, {patch})", flush=True)
        session = _Session(settings=settings, moto=moto, scratch=Path(scratch), headwater=headwater)
        for attempt in range(1, settings.repeat + 1):
            for row in rows:
                measure_once(session, row, attempt)
    return rows


HELP_EPILOG = "Rows: " + ", ".join(target.name for target in ALL_TARGETS)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--serve-moto`` is internal and hidden)."""
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--records", type=int, default=100_000, help="backlog records per row (default: 100000)"
    )
    parser.add_argument(
        "--kinesis-records", type=int, metavar="N", help="override --records for the kinesis pair"
    )
    parser.add_argument("--s3-records", type=int, metavar="N", help="override --records for the s3 pair")
    parser.add_argument(
        "--capped-records",
        type=int,
        metavar="N",
        help="override for the capped row (default: about 10 s of records at --cap, at most --records)",
    )
    parser.add_argument("--payload-size", type=int, default=200, help="payload bytes (default: 200)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per row; the median is shown (default: 3)"
    )
    parser.add_argument(
        "--max-object-size",
        default="1MiB",
        help="S3 objects, uncompressed JSON lines (default: 1MiB, ≤ 8MiB)",
    )
    parser.add_argument(
        "--cap", default="1MiB/s", help="uploads.max_bandwidth of the capped row (default: 1MiB/s)"
    )
    parser.add_argument("--only", metavar="NAMES", help="comma-separated row names (default: all)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="limit for one Headwater run (default: 60 s + 2 ms per record, + twice the time at the cap)",
    )
    parser.add_argument(
        "--moto-as-is",
        action="store_true",
        help="do not patch moto's quadratic Kinesis put_record (see _patch_moto_kinesis)",
    )
    parser.add_argument("--serve-moto", action="store_true", help=argparse.SUPPRESS)
    return parser


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    if args.records < 1 or args.payload_size < 1 or args.repeat < 1:
        parser.error("--records, --payload-size and --repeat must be at least 1")
    try:
        max_object_size = parse_size(args.max_object_size)
        cap = parse_bandwidth(args.cap)
    except ValueError as exc:
        parser.error(str(exc))
    if not S3_MIN_OBJECT_SIZE <= max_object_size <= S3_MAX_OBJECT_SIZE:
        parser.error("--max-object-size must be 1KiB..8MiB (larger objects go multipart in Headwater)")
    record_bytes = args.payload_size + len(TOPIC)
    default_capped = max(1, min(args.records, int(10 * cap / record_bytes)))
    records = {
        "boto3-kinesis": args.kinesis_records or args.records,
        "headwater-kinesis": args.kinesis_records or args.records,
        "boto3-s3": args.s3_records or args.records,
        "headwater-s3": args.s3_records or args.records,
        "headwater-kinesis-capped": args.capped_records or default_capped,
    }
    smallest = min(records.values())
    if smallest < 1:
        parser.error("record counts must be at least 1")
    if args.payload_size <= len(str(max(records.values()) - 1)):
        parser.error("--payload-size must exceed the digits of the largest sequence number")
    if args.payload_size + len(TOPIC) > 1024**2:
        parser.error("--payload-size: a Kinesis record is at most 1 MiB with its partition key")
    return Settings(
        records=records,
        payload_size=args.payload_size,
        repeat=args.repeat,
        max_object_size=max_object_size,
        cap=cap,
        cap_text=args.cap,
        timeout_s=args.timeout,
        moto_as_is=args.moto_as_is,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 when a measurement or a verification failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_moto:
        return serve_moto(as_is=args.moto_as_is)
    settings = _settings(parser, args)
    # SIGTERM unwinds like Ctrl-C: the `finally` blocks stop Headwater and moto.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        targets = select_targets(args.only)
        headwater = _headwater_executable(required=any(target.client == "headwater" for target in targets))
        print(f"command:   {shlex.join([sys.executable, *sys.argv])}")
        counts = ", ".join(f"{target.name} {settings.records[target.name]:,}" for target in targets)
        print(
            f"backlog:   records of {settings.payload_size} B on {TOPIC!r}: {counts}; "
            f"S3 objects ≤ {settings.max_object_size:,} B uncompressed; cap {settings.cap_text}"
        )
        for line in machine_lines(headwater):
            print(line)
        print(f"load avg:  {load_average()} (before)", flush=True)
        rows = run_benchmark(targets, settings, headwater)
    except (BenchmarkError, BotoCoreError, ClientError, StreamClientError, OSError) as exc:
        print(f"upload: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"load avg:  {load_average()} (after)")
    print()
    print(format_table(rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
