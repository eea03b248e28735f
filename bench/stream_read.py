"""Stream read throughput: reading a stored backlog back through the stream API.

Measures how fast a client gets ``--records`` stored records (``--payload-size`` bytes each) out
of a Headwater file stream, two ways:

* ``StreamClient.iter_records``: the client library (``headwater.clients.StreamClient``) of the
  checkout being measured, in a child process of *that checkout's* Python, so that both the
  plugin's encoding and the client's decoding are the measured checkout's code. The clock runs
  from ``StreamClient.connect(url)`` to the last record of ``iter_records("bench",
  page_size=--page)``, counting records and payload bytes (both checked against what was
  published).
* ``raw read (mosquitto_pub/sub)``: one ``read`` request of ``max`` 10,000 records (``max_bytes``
  4 MiB, so that the count, not the byte limit, ends the page) published with ``mosquitto_pub``
  to ``headwater/streams/bench/read`` while ``mosquitto_sub`` listens on its ``reply_to`` topic;
  the clock runs from mosquitto_pub's start until mosquitto_sub reports the response's PUBLISH.
  No Python client is involved: it times the plugin's side (read, JSON encoding, publish) plus a
  process start and a connection.

One measurement: start ``headwater run`` fresh as a subprocess (ephemeral port, one file stream
``bench`` on ``bench/#``, deploy disabled), fill it with ``mosquitto_pub -l -q 1`` (not timed),
wait until the stream's describe shows every record stored (not timed), then time the client
read, then the raw read, and stop the broker. ``--baseline PYTHON`` names another checkout's
venv Python: its ``headwater`` (next to it) and its client are measured the same way,
interleaved with this checkout's (this, baseline, this, baseline...) so that load from other
processes spreads over both. Each row reports the median and the range of ``--repeat`` runs, and
the CPU time the client process and the broker used during the timed span.

``--client-wait`` and ``--client-read`` are internal: they are the child processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from _common import (
    cpu_model,
    exit_on_sigterm,
    load_average,
    log_tail,
    package_version,
    source_revision,
    stop_process,
)
from ingest import HEADWATER_READY, MAX_MESSAGES_PER_PUBLISHER

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

HOST = "127.0.0.1"
STREAM = "bench"
TOPIC = "bench/read"
TOPIC_PREFIX = "headwater"
REQUEST_TOPIC = f"{TOPIC_PREFIX}/streams/{STREAM}/read"
RAW_MAX_COUNT = 10_000
RAW_MAX_BYTES = 4 * 1024 * 1024  # the server's largest max_bytes
BROKER_START_TIMEOUT_S = 30.0
BROKER_STOP_GRACE_S = 10.0
# mosquitto_sub -d writes this line once the whole PUBLISH packet has been read.
RECEIVED_PUBLISH = re.compile(rb"received PUBLISH \(.*\(\d+ bytes\)\)")
SUBACK = b"received SUBACK"
CLK_TCK = os.sysconf("SC_CLK_TCK")

Method = Literal["client", "raw"]


class BenchmarkError(Exception):
    """The broker, a child or a mosquitto tool failed; the message says which."""


@dataclass(frozen=True, slots=True)
class Checkout:
    """A Headwater checkout's venv: its Python runs the client, its ``headwater`` the broker."""

    label: str  # "headwater" or "headwater (baseline)"
    python: Path
    headwater: Path


@dataclass(frozen=True, slots=True)
class Tools:
    """The mosquitto clients, resolved to absolute paths up front."""

    mosquitto_pub: Path
    mosquitto_sub: Path
    stdbuf: Path


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run of the benchmark does, from the command line."""

    records: int
    payload_size: int
    repeat: int
    page: int
    raw: bool
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Measurement:
    """One timed read: what came back, how long it took, the CPU it cost each side."""

    records: int
    payload_bytes: int
    seconds: float
    client_cpu_s: float
    broker_cpu_s: float


@dataclass(slots=True)
class Row:
    """One row of the table: a checkout read one way, one measurement per repeat."""

    checkout: Checkout
    method: Method
    runs: list[Measurement] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The row's first column."""
        how = "StreamClient.iter_records" if self.method == "client" else "raw read (mosquitto_pub/sub)"
        return f"{self.checkout.label}: {how}"

    def median(self, value: str) -> float:
        """The median of one :class:`Measurement` attribute over the runs."""
        return statistics.median(float(getattr(run, value)) for run in self.runs)

    @property
    def seconds(self) -> list[float]:
        """The wall time of each run."""
        return [run.seconds for run in self.runs]


# --- locating tools ----------------------------------------------------------------------------


def find_tools() -> Tools:
    """mosquitto_pub, mosquitto_sub and stdbuf (coreutils), or what to install."""
    pub, sub, stdbuf = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub"), shutil.which("stdbuf")
    if pub is None or sub is None:
        msg = "mosquitto_pub/mosquitto_sub not found on PATH: apt-get install -y mosquitto-clients"
        raise BenchmarkError(msg)
    if stdbuf is None:
        raise BenchmarkError("stdbuf (coreutils) not found on PATH")
    return Tools(mosquitto_pub=Path(pub), mosquitto_sub=Path(sub), stdbuf=Path(stdbuf))


def checkout_of(python: Path, label: str) -> Checkout:
    """The checkout whose venv holds ``python``; its ``headwater`` must sit next to it."""
    # Not resolved: a venv's python is a symlink to the system's, its bin/ is the venv's.
    headwater = python.absolute().parent / "headwater"
    if not os.access(python, os.X_OK):
        raise BenchmarkError(f"{python} is not an executable")
    if not os.access(headwater, os.X_OK):
        msg = f"no headwater next to {python} (expected {headwater}): pip install it in that venv"
        raise BenchmarkError(msg)
    return Checkout(label=label, python=python.absolute(), headwater=headwater)


# --- the broker --------------------------------------------------------------------------------

_CONFIG = f"""\
# One durable file stream storing every benchmark message; no deploy.
topic_prefix: {TOPIC_PREFIX}
broker:
  listeners:
    default: {{bind: "{HOST}:0"}}
streams:
  {STREAM}:
    topics: ["bench/#"]
    persistence: file
    max_size: 1GiB
    flush_on_write: false
    exports: []
deploy: {{enabled: false}}
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(frozen=True, slots=True)
class Broker:
    """A running ``headwater run``: its port, and its process for CPU readings."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        """The URL StreamClient.connect takes."""
        return f"mqtt://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """The broker's CPU time so far."""
        return _cpu_seconds(self.pid)


def _wait_until_listening(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"headwater exited with status {process.returncode}:\n{log_tail(log_path)}")
        if match := HEADWATER_READY.search(log_path.read_bytes()):
            return int(match.group(1))
        time.sleep(0.05)
    msg = f"headwater not listening after {BROKER_START_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}"
    raise BenchmarkError(msg)


@contextlib.contextmanager
def running_broker(checkout: Checkout, workdir: Path) -> Iterator[Broker]:
    """Start the checkout's ``headwater run`` fresh in ``workdir``, yield it once it listens, stop it."""
    config = workdir / "headwater.yaml"
    config.write_text(_CONFIG)
    log_path = workdir / "broker.log"
    command = [str(checkout.headwater), "run", "-c", str(config), "--data-dir", str(workdir / "data")]
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the headwater executable the user named
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    try:
        yield Broker(port=_wait_until_listening(process, log_path), pid=process.pid)
        if process.poll() is not None:
            raise BenchmarkError(
                f"headwater died during the measurement (status {process.returncode}):\n{log_tail(log_path)}"
            )
    finally:
        stop_process(process, BROKER_STOP_GRACE_S)


# --- filling the stream (not timed) ------------------------------------------------------------


def write_payloads(directory: Path, *, records: int, payload_size: int) -> list[Path]:
    """``records`` lines of ``payload_size`` printable bytes, in files of at most 65,535 lines."""
    alphabet = string.ascii_letters + string.digits
    rng = random.Random(1883)
    pool = "".join(rng.choices(alphabet, k=payload_size * 2))
    chunk_count = -(-records // MAX_MESSAGES_PER_PUBLISHER)
    paths: list[Path] = []
    written = 0
    for chunk in range(chunk_count):
        chunk_end = records * (chunk + 1) // chunk_count
        path = directory / f"payloads-{chunk}.txt"
        with path.open("w") as out:
            while written < chunk_end:
                offset = rng.randrange(payload_size + 1)
                out.write(pool[offset : offset + payload_size] + "\n")
                written += 1
        paths.append(path)
    return paths


def fill(tools: Tools, broker: Broker, payloads: Sequence[Path], timeout_s: float) -> None:
    """Publish every payload at QoS 1, one mosquitto_pub -l at a time (see bench/ingest.py)."""
    command = [str(tools.mosquitto_pub), "-h", HOST, "-p", str(broker.port), "-t", TOPIC, "-q", "1", "-l"]
    for path in payloads:
        with path.open("rb") as stdin:
            try:
                completed = subprocess.run(  # noqa: S603 - our command line, absolute executable
                    command, stdin=stdin, capture_output=True, timeout=timeout_s, check=False
                )
            except subprocess.TimeoutExpired as exc:
                msg = f"filling: mosquitto_pub did not finish within {timeout_s:.0f} s"
                raise BenchmarkError(msg) from exc
        if completed.returncode != 0:
            error = completed.stderr.decode(errors="replace").strip()
            raise BenchmarkError(f"filling: mosquitto_pub exited with status {completed.returncode}: {error}")


# --- the client, in a child process of the measured checkout's Python --------------------------


def _run_child(checkout: Checkout, arguments: Sequence[str], timeout_s: float) -> dict[str, float]:
    """Run this script with the checkout's Python and ``arguments``; its one line of JSON output."""
    command = [str(checkout.python), __file__, *arguments]
    try:
        completed = subprocess.run(  # noqa: S603 - the python the user named, this script
            command, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{shlex.join(command)} did not finish within {timeout_s:.0f} s") from exc
    if completed.returncode != 0:
        error = completed.stderr.decode(errors="replace").strip()
        raise BenchmarkError(f"{shlex.join(command)} exited with status {completed.returncode}:\n{error}")
    result: dict[str, float] = json.loads(completed.stdout.splitlines()[-1])
    return result


def wait_stored(checkout: Checkout, broker: Broker, settings: Settings) -> None:
    """Wait (not timed) until the stream's describe counts every record."""
    arguments = ["--client-wait", broker.url, "--records", str(settings.records)]
    _run_child(checkout, arguments, settings.timeout_s)


def read_with_client(checkout: Checkout, broker: Broker, settings: Settings) -> Measurement:
    """Time the checkout's StreamClient reading the whole stream; the broker's CPU around it."""
    arguments = ["--client-read", broker.url, "--page", str(settings.page)]
    broker_cpu = broker.cpu_seconds()
    result = _run_child(checkout, arguments, settings.timeout_s)
    broker_cpu = broker.cpu_seconds() - broker_cpu
    expected_bytes = settings.records * settings.payload_size
    if result["records"] != settings.records or result["payload_bytes"] != expected_bytes:
        raise BenchmarkError(
            f"{checkout.label}: read {result['records']:.0f} records / {result['payload_bytes']:.0f} B, "
            f"expected {settings.records} / {expected_bytes} B"
        )
    return Measurement(
        records=int(result["records"]),
        payload_bytes=int(result["payload_bytes"]),
        seconds=result["seconds"],
        client_cpu_s=result["cpu_seconds"],
        broker_cpu_s=broker_cpu,
    )


def _client_wait(url: str, records: int, timeout_s: float) -> int:
    """``--client-wait``: poll describe until ``records`` are stored (in the measured checkout)."""
    from headwater.clients import StreamClient  # noqa: PLC0415 - the measured checkout's client

    deadline = time.monotonic() + timeout_s
    with StreamClient.connect(url) as client:
        while (stored := client.describe(STREAM).storage.record_count) < records:
            if time.monotonic() > deadline:
                print(f"only {stored} of {records} records stored after {timeout_s:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
    print(json.dumps({"stored": stored}))
    return 0


def _client_read(url: str, page: int) -> int:
    """``--client-read``: time connect + iter_records over the whole stream; print one JSON line."""
    from headwater.clients import StreamClient  # noqa: PLC0415 - the measured checkout's client

    records = payload_bytes = 0
    expected_sequence: int | None = None
    cpu_started = time.process_time()  # the whole process: paho's network thread included
    started = time.perf_counter()
    with StreamClient.connect(url) as client:
        for record in client.iter_records(STREAM, page_size=page):
            if expected_sequence is not None and record.sequence != expected_sequence:
                print(f"sequence {record.sequence} after {expected_sequence - 1}", file=sys.stderr)
                return 1
            expected_sequence = record.sequence + 1
            records += 1
            payload_bytes += len(record.payload)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    summary = {"records": records, "payload_bytes": payload_bytes, "seconds": seconds}
    print(json.dumps({**summary, "cpu_seconds": cpu_seconds}))
    return 0


# --- the raw request/response --------------------------------------------------------------------


class _SubscriberOutput:
    """Reads ``mosquitto_sub -d``'s line-buffered output in a thread: SUBACK, PUBLISH, the payload."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None  # noqa: S101 - started with stdout=PIPE
        self._stdout = process.stdout
        self.suback = threading.Event()
        self.publish = threading.Event()
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=self._read, name="mosquitto_sub-output")
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            if SUBACK in line:
                self.suback.set()
            elif RECEIVED_PUBLISH.search(line):
                self.publish.set()
            else:
                self.lines.append(line)

    def join(self) -> None:
        """Wait until the process closed its output."""
        self._thread.join()


def read_raw(tools: Tools, broker: Broker, settings: Settings) -> Measurement:
    """Time one read request of RAW_MAX_COUNT records: mosquitto_pub's start to the response's arrival."""
    reply_to = f"{TOPIC_PREFIX}/replies/anonymous/bench-raw-{os.getpid()}"
    request = json.dumps(
        {"from": 0, "max": RAW_MAX_COUNT, "max_bytes": RAW_MAX_BYTES, "reply_to": reply_to, "request_id": 1}
    )
    # stdbuf -oL: mosquitto_sub's stdout is a pipe, and its debug lines must arrive when written.
    sub_command = [
        str(tools.stdbuf),
        "-oL",
        str(tools.mosquitto_sub),
        "-h",
        HOST,
        "-p",
        str(broker.port),
        "-t",
        reply_to,
        "-q",
        "1",
        "-C",
        "1",
        "-d",
    ]
    pub_command = [
        str(tools.mosquitto_pub),
        "-h",
        HOST,
        "-p",
        str(broker.port),
        "-t",
        REQUEST_TOPIC,
        "-q",
        "1",
        "-m",
        request,
    ]
    subscriber = subprocess.Popen(  # noqa: S603 - our command line, absolute executables
        sub_command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    output = _SubscriberOutput(subscriber)
    try:
        if not output.suback.wait(BROKER_START_TIMEOUT_S):
            raise BenchmarkError("raw read: mosquitto_sub got no SUBACK")
        broker_cpu = broker.cpu_seconds()
        started = time.perf_counter()
        published = subprocess.run(  # noqa: S603 - our command line, absolute executable
            pub_command, capture_output=True, timeout=settings.timeout_s, check=False
        )
        if published.returncode != 0:
            error = published.stderr.decode(errors="replace").strip()
            msg = f"raw read: mosquitto_pub exited with status {published.returncode}: {error}"
            raise BenchmarkError(msg)
        if not output.publish.wait(settings.timeout_s):
            raise BenchmarkError("raw read: no response within the timeout")
        seconds = time.perf_counter() - started
        broker_cpu = broker.cpu_seconds() - broker_cpu
        subscriber.wait(timeout=settings.timeout_s)
    finally:
        stop_process(subscriber, 1.0)
        output.join()
    records, payload_bytes = _count_response(output.lines)
    expected = min(RAW_MAX_COUNT, settings.records)
    if records != expected:
        raise BenchmarkError(f"raw read: {records} records in the response, expected {expected}")
    return Measurement(
        records=records,
        payload_bytes=payload_bytes,
        seconds=seconds,
        client_cpu_s=0.0,
        broker_cpu_s=broker_cpu,
    )


def _count_response(lines: Sequence[bytes]) -> tuple[int, int]:
    """Records and payload bytes of the read response mosquitto_sub printed (one JSON line)."""
    for line in lines:
        if line.startswith(b"{"):
            response = json.loads(line)
            if not response.get("ok"):
                raise BenchmarkError(f"raw read: error response {response.get('error')}")
            records = response["result"]["records"]
            return len(records), sum(len(record["payload"].encode()) for record in records)
    raise BenchmarkError("raw read: no JSON response in mosquitto_sub's output")


# --- the run -------------------------------------------------------------------------------------


def run_benchmark(checkouts: Sequence[Checkout], tools: Tools, settings: Settings) -> list[Row]:
    """Measure every checkout ``settings.repeat`` times, interleaved, each on a fresh broker."""
    methods: tuple[Method, ...] = ("client", "raw") if settings.raw else ("client",)
    rows = [Row(checkout, method) for method in methods for checkout in checkouts]
    with tempfile.TemporaryDirectory(prefix="headwater-bench-read-") as scratch:
        scratch_dir = Path(scratch)
        payloads = write_payloads(scratch_dir, records=settings.records, payload_size=settings.payload_size)
        for attempt in range(1, settings.repeat + 1):
            for index, checkout in enumerate(checkouts):
                workdir = scratch_dir / f"{index}-{attempt}"
                workdir.mkdir()
                with running_broker(checkout, workdir) as broker:
                    filled = time.perf_counter()
                    fill(tools, broker, payloads, settings.timeout_s)
                    wait_stored(checkout, broker, settings)
                    filled = time.perf_counter() - filled
                    for row in rows:
                        if row.checkout != checkout:
                            continue
                        if row.method == "client":
                            run = read_with_client(checkout, broker, settings)
                        else:
                            run = read_raw(tools, broker, settings)
                        row.runs.append(run)
                        print(
                            f"  run {attempt}/{settings.repeat}  {row.name:<55} {run.records:>7,} records "
                            f"in {run.seconds:6.3f} s  ({run.records / run.seconds:>9,.0f} records/s; "
                            f"filled in {filled:.1f} s)",
                            flush=True,
                        )
    return rows


# --- the report ----------------------------------------------------------------------------------


def machine_lines(checkouts: Sequence[Checkout], tools: Tools) -> list[str]:
    """What the numbers were measured on."""
    machine = (
        f"machine:   {platform.system()} {platform.release()} {platform.machine()}, "
        f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}"
    )
    software = (
        f"software:  Python {platform.python_version()}, paho-mqtt {package_version('paho-mqtt')}, "
        f"amqtt {package_version('amqtt')}, rocksdict {package_version('rocksdict')}, "
        f"uvloop {package_version('uvloop')}, {_tool_version(tools.mosquitto_pub)}"
    )
    lines = [machine, software, f"headwater: {checkouts[0].headwater} (checkout at {source_revision()})"]
    lines.extend(
        f"baseline:  {checkout.headwater}, client run by {checkout.python}" for checkout in checkouts[1:]
    )
    return lines


def _tool_version(executable: Path) -> str:
    completed = subprocess.run(  # noqa: S603 - absolute executable, fixed arguments
        [str(executable), "--help"], capture_output=True, timeout=10, check=False
    )
    match = re.search(rb"version (\S+)", completed.stdout + completed.stderr)
    return f"mosquitto_pub {match.group(1).decode() if match else '?'}"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table: paste it into docs/benchmarks.md as is."""
    header = (
        "row",
        "records",
        "seconds (median)",
        "min..max",
        "records/s",
        "payload MB/s",
        "vs baseline",
        "CPU s: client / broker",
    )
    baselines = {row.method: row for row in rows if row.checkout.label.endswith("(baseline)") and row.runs}
    lines = [header]
    for row in rows:
        seconds = row.median("seconds")
        baseline = baselines.get(row.method)
        ratio = "-" if baseline is None else f"{baseline.median('seconds') / seconds:.2f}x"
        client_cpu = "-" if row.method == "raw" else f"{row.median('client_cpu_s'):.2f}"
        lines.append(
            (
                row.name,
                f"{row.runs[0].records:,}",
                f"{seconds:.3f}",
                f"{min(row.seconds):.3f}..{max(row.seconds):.3f}",
                f"{row.runs[0].records / seconds:,.0f}",
                f"{row.runs[0].payload_bytes / seconds / 1e6:.2f}",
                ratio,
                f"{client_cpu} / {row.median('broker_cpu_s'):.2f}",
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule_cells = (
        "-" * (width + 2) if index == 0 else "-" * (width + 1) + ":" for index, width in enumerate(widths)
    )
    rule = "|" + "|".join(rule_cells) + "|"
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


# --- main ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--client-wait`` and ``--client-read`` are internal and hidden)."""
    parser = argparse.ArgumentParser(
        description="Stream read throughput of Headwater's stream API: fill a file stream with "
        "--records records (mosquitto_pub -l, QoS 1, not timed), then time reading them all back "
        "with StreamClient.iter_records (the measured checkout's client, in a child process of its "
        "Python) and one raw read request answered to mosquitto_sub. Each measurement starts "
        "headwater run fresh on an ephemeral port.",
        epilog="example: .venv/bin/python bench/stream_read.py --baseline /tmp/base-venv/bin/python",
    )
    parser.add_argument(
        "--records", type=int, default=100_000, help="records stored and read back (default: 100000)"
    )
    parser.add_argument(
        "--payload-size", type=int, default=200, help="payload bytes per record (default: 200)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per row, interleaved; the median is shown (default: 3)"
    )
    parser.add_argument(
        "--page",
        type=int,
        default=1000,
        help="records per read request of iter_records (its page_size; default: 1000, the client's "
        "default; the server caps it at 10000 and at 1MiB of payload per response)",
    )
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        type=Path,
        help="another checkout's venv Python (its headwater next to it): its broker and client are "
        "measured too, interleaved in the same run, e.g. /tmp/base-venv/bin/python",
    )
    parser.add_argument("--no-raw", action="store_true", help="skip the raw mosquitto_pub/sub read rows")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="limit for each fill, wait and read step (default: 60 s + 1 ms per record)",
    )
    parser.add_argument("--client-wait", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--client-read", metavar="URL", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 when the broker, a child or a tool failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    timeout_s = args.timeout if args.timeout is not None else 60 + 0.001 * args.records
    if args.client_wait is not None:
        return _client_wait(args.client_wait, args.records, timeout_s)
    if args.client_read is not None:
        return _client_read(args.client_read, args.page)
    if args.records < 1 or args.payload_size < 1 or args.repeat < 1 or not 1 <= args.page <= RAW_MAX_COUNT:
        parser.error("--records, --payload-size and --repeat must be at least 1, --page 1..10000")
    settings = Settings(
        records=args.records,
        payload_size=args.payload_size,
        repeat=args.repeat,
        page=args.page,
        raw=not args.no_raw,
        timeout_s=timeout_s,
    )
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop every broker started so far.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        tools = find_tools()
        checkouts = [checkout_of(Path(sys.executable), "headwater")]
        if args.baseline is not None:
            checkouts.append(checkout_of(args.baseline, "headwater (baseline)"))
        print(f"command:   {shlex.join([sys.executable, *sys.argv])}")
        print(
            f"backlog:   {settings.records:,} records of {settings.payload_size} B in file stream "
            f"'{STREAM}' (mosquitto_pub -l -q 1, not timed); client pages of {settings.page}; raw read: "
            f"one request of max {RAW_MAX_COUNT}, max_bytes {RAW_MAX_BYTES}"
        )
        for line in machine_lines(checkouts, tools):
            print(line)
        print(f"load avg:  {load_average()} (before)", flush=True)
        rows = run_benchmark(checkouts, tools, settings)
    except BenchmarkError as exc:
        print(f"stream_read: {exc}", file=sys.stderr)
        return 1
    print(f"load avg:  {load_average()} (after)")
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
