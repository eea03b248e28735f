
"""Ingest throughput: QoS 1 publishes from ``mosquitto_pub -l``, Headwater vs amqtt vs mosquitto.

Measures how many messages per second one publisher gets acknowledged by

* Headwater (``headwater run``; no streams, deploy disabled) on uvloop and on asyncio's loop,
* Headwater on uvloop storing every message in a file stream ``bench`` (topics
  ``bench/ingest``, max_size 1GiB): ``headwater-stream``, and the same with
  ``flush_on_write: true`` (an fsync before each PUBACK, grouped): ``headwater-stream-fsync``,
* bare amqtt 0.12.1 (``amqtt.broker.Broker`` with only the anonymous auth plugin) on the same
  two loops, so that Headwater is compared with amqtt like for like,
* mosquitto, the C reference broker.

One measurement: start the broker fresh as a subprocess, wait until its port accepts TCP
connections, then time ``mosquitto_pub -l -q 1`` from its start to its exit while it publishes
one message per line of prepared files (``--messages`` lines of ``--payload-size`` bytes). With
QoS 1, mosquitto_pub exits only after the PUBACK of its last message, and its exit status must be
0. Nothing subscribes while the clock runs: a subscriber would measure delivery too. Then the
broker is stopped (SIGTERM, SIGKILL after a grace period). Repeats are interleaved (every row
once, then again), so that load from other processes spreads over all rows; each row reports the
median.

Two things keep the count honest:

* mosquitto_pub 2.0's ``-l`` mode stops early, still with status 0, past 65535 messages (see
  :data:`MAX_MESSAGES_PER_PUBLISHER`): more messages are sent by consecutive mosquitto_pub
  processes of at most 65535 lines each, one connection at a time, all inside the timed span.
* Before the timed runs, an untimed verification pass per row publishes the same files with a
  paho subscriber attached and checks that every sequence number (payloads start with one)
  arrived. ``--no-verify`` skips it.

``--serve-amqtt LOOP --port PORT`` is internal: it is how the benchmark runs bare amqtt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
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

import paho.mqtt.client as mqtt
from _common import (
    cpu_model,
    exit_on_sigterm,
    load_average,
    log_tail,
    package_version,
    source_revision,
    stop_process,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

LoopName = Literal["uvloop", "asyncio"]

HOST = "127.0.0.1"
TOPIC = "bench/ingest"
BROKER_START_TIMEOUT_S = 30.0
BROKER_STOP_GRACE_S = 10.0
HEADWATER_READY = re.compile(rb"listening on mqtt://127\.0\.0\.1:(\d+)")


class BenchmarkError(Exception):
    """A broker or the publisher failed; the message says which and shows its log."""


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the table: a broker on an event loop (mosquitto has none of Python's)."""

    broker: Literal["headwater", "amqtt", "mosquitto"]
    loop: LoopName | None
    #: Headwater only: None (no streams), or the durable file stream with or without fsync.
    stream: Literal["file", "file-fsync"] | None = None
    #: Headwater only: True runs the ``--baseline`` executable (another checkout) instead.
    baseline: bool = False

    @property
    def name(self) -> str:
        """The row's name for ``--only``: ``headwater-uvloop``, ``headwater-stream``, ``mosquitto``..."""
        if self.stream == "file":
            name = f"{self.broker}-stream"
        elif self.stream == "file-fsync":
            name = f"{self.broker}-stream-fsync"
        else:
            name = f"{self.broker}-{self.loop}" if self.loop else self.broker
        return f"{name}-baseline" if self.baseline else name

    @property
    def label(self) -> str:
        """The broker column of the table."""
        label: str = self.broker
        if self.stream == "file":
            label = f"{self.broker} + stream"
        elif self.stream == "file-fsync":
            label = f"{self.broker} + stream, fsync"
        return f"{label} (baseline)" if self.baseline else label


ALL_TARGETS = (
    Target("headwater", "uvloop"),
    Target("headwater", "asyncio"),
    Target("headwater", "uvloop", stream="file"),
    Target("headwater", "uvloop", stream="file-fsync"),
    Target("amqtt", "uvloop"),
    Target("amqtt", "asyncio"),
    Target("mosquitto", None),
)


@dataclass(frozen=True, slots=True)
class Tools:
    """Executables the benchmark runs, resolved to absolute paths up front."""

    mosquitto_pub: Path
    mosquitto: Path | None
    headwater: Path | None
    #: ``--baseline``: another checkout's ``headwater``, measured in the same interleaved run.
    baseline: Path | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run of the benchmark does, from the command line."""

    messages: int
    payload_size: int
    repeat: int
    qos: int
    timeout_s: float
    verify: bool


@dataclass(slots=True)
class Row:
    """The measured rates of one target, one per repeat."""

    target: Target
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median rate in messages per second."""
        return statistics.median(self.rates)


# --- locating tools ----------------------------------------------------------------------------


def _which(name: str, *extra_dirs: str) -> Path | None:
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _headwater_executable() -> Path | None:
    # Next to this interpreter first (a venv's bin/, not resolved: the venv's python is a symlink).
    beside = Path(sys.executable).parent / "headwater"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    return _which("headwater")


def find_tools(targets: Sequence[Target]) -> Tools:
    """Resolve every executable the chosen targets need; fail with what to install."""
    brokers = {target.broker for target in targets}
    mosquitto_pub = _which("mosquitto_pub")
    if mosquitto_pub is None:
        raise BenchmarkError("mosquitto_pub not found on PATH: apt-get install -y mosquitto-clients")
    mosquitto = _which("mosquitto", "/usr/sbin", "/usr/local/sbin")
    if "mosquitto" in brokers and mosquitto is None:
        raise BenchmarkError("mosquitto not found (PATH, /usr/sbin): apt-get install -y mosquitto")
    headwater = _headwater_executable()
    if "headwater" in brokers and headwater is None:
        raise BenchmarkError(f"headwater not found next to {sys.executable} nor on PATH: pip install -e .")
    if any(target.loop == "uvloop" for target in targets) and importlib.util.find_spec("uvloop") is None:
        # `headwater run` silently falls back to asyncio without uvloop: the row would lie.
        raise BenchmarkError("uvloop is not installed in this Python; use --only to skip the uvloop rows")
    return Tools(mosquitto_pub=mosquitto_pub, mosquitto=mosquitto, headwater=headwater)


# --- brokers -----------------------------------------------------------------------------------


def _free_port() -> int:
    # The port could be taken between this close and the broker's bind; then the start fails
    # loudly (the broker exits), it never measures the wrong server.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


# The verification pass has a subscriber that may fall behind the publisher: like mosquitto's
# `max_queued_messages 0` below, let Headwater queue everything for it (its defaults keep
# 10,000 waiting deliveries and drop the rest). Checkouts before broker.limits lack the key.
_UNLIMITED_QUEUE = "  limits: {max_queued_messages: 10000000, max_pending_deliveries: 10000000}\n"


@functools.cache
def _knows_broker_limits(executable: Path) -> bool:
    with tempfile.TemporaryDirectory(prefix="headwater-bench-probe-") as scratch:
        config = Path(scratch) / "probe.yaml"
        config.write_text("broker:\n" + _UNLIMITED_QUEUE)
        probe = subprocess.run(  # noqa: S603 - the headwater executable the user named
            [str(executable), "run", "-c", str(config), "--check-config"], capture_output=True, check=False
        )
    return probe.returncode == 0


def _headwater_config(target: Target, executable: Path) -> str:
    """Headwater's config for ``target``: the broker alone, or with the benchmark's file stream."""
    if target.stream is None:
        streams = "streams: {}\n"
        comment = "# The embedded default config without streams and deploy: the broker alone.\n"
    else:
        fsync = "true" if target.stream == "file-fsync" else "false"
        streams = (
            "streams:\n"
            "  bench:\n"
            f'    topics: ["{TOPIC}"]\n'
            "    persistence: file\n"
            "    max_size: 1GiB\n"
            f"    flush_on_write: {fsync}\n"
            "    exports: []\n"
        )
        comment = "# The broker with one durable file stream storing every benchmark message.\n"
    return (
        comment
        + "topic_prefix: headwater\n"
        + "broker:\n"
        + f'  listeners:\n    default: {{bind: "{HOST}:0"}}\n'
        + (_UNLIMITED_QUEUE if _knows_broker_limits(executable) else "")
        + streams
        + "deploy: {enabled: false}\n"
    )


def _broker_command(target: Target, tools: Tools, workdir: Path) -> tuple[list[str], int | None]:
    """The command line starting ``target`` and its port (None: read it from Headwater's log)."""
    if target.broker == "headwater":
        executable = tools.baseline if target.baseline else tools.headwater
        assert executable is not None  # noqa: S101 - find_tools checked it
        config = workdir / "headwater.yaml"
        config.write_text(_headwater_config(target, executable))
        command = [str(executable), "run", "-c", str(config), "--data-dir", str(workdir / "data")]
        if target.loop == "asyncio":
            command.append("--no-uvloop")
        return command, None
    port = _free_port()
    if target.broker == "amqtt":
        assert target.loop is not None  # noqa: S101 - every amqtt target names its loop
        return [sys.executable, __file__, "--serve-amqtt", target.loop, "--port", str(port)], port
    assert tools.mosquitto is not None  # noqa: S101 - find_tools checked it
    config = workdir / "mosquitto.conf"
    # Unlimited queue towards a slow subscriber, as in amqtt: only the verification pass has one.
    config.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
    )
    return [str(tools.mosquitto), "-c", str(config)], port


def _wait_until_ready(process: subprocess.Popen[bytes], port: int | None, log_path: Path) -> int:
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"broker exited with status {process.returncode}:\n{log_tail(log_path)}")
        if port is None and (match := HEADWATER_READY.search(log_path.read_bytes())):
            port = int(match.group(1))
        if port is not None and _accepts_connections(port):
            return port
        time.sleep(0.05)
    raise BenchmarkError(f"broker not ready after {BROKER_START_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")


@contextlib.contextmanager
def running_broker(target: Target, tools: Tools, workdir: Path) -> Iterator[int]:
    """Start ``target`` fresh in ``workdir``, yield its port once it accepts connections, stop it."""
    command, port = _broker_command(target, tools, workdir)
    log_path = workdir / "broker.log"
    with log_path.open("wb") as log:
        # Our own command lines, absolute executables: nothing here comes from outside.
        process = subprocess.Popen(  # noqa: S603
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    try:
        yield _wait_until_ready(process, port, log_path)
        if process.poll() is not None:
            raise BenchmarkError(
                f"{target.name} died during the measurement (status {process.returncode}):\n"
                f"{log_tail(log_path)}"
            )
    finally:
        stop_process(process, BROKER_STOP_GRACE_S)


# --- the publisher ------------------------------------------------------------------------------


#: mosquitto_pub's message ids wrap after 65535. In -l mode it disconnects (exit status 0) when the
#: PUBACK for the *id* of its last message arrives: past 65535 messages that is an earlier message
#: with the same id, and the rest are never sent. So one process publishes at most this many.
MAX_MESSAGES_PER_PUBLISHER = 65_535


def sequence_width(messages: int) -> int:
    """Digits of the sequence number that starts every payload."""
    return len(str(messages - 1))


def write_payloads(directory: Path, *, messages: int, payload_size: int) -> list[Path]:
    """Write the publisher's input: ``messages`` lines, split into files of at most 65535.

    Each line is one payload of ``payload_size`` printable bytes (mosquitto_pub drops the
    newline): a zero-padded sequence number, then filler, so the verification pass can tell that
    every single message arrived.
    """
    width = sequence_width(messages)
    alphabet = string.ascii_letters + string.digits
    rng = random.Random(1883)
    filler_size = payload_size - width
    # Varied filler without paying for `messages` x `payload_size` random draws.
    pool = "".join(rng.choices(alphabet, k=filler_size * 2))
    chunk_count = -(-messages // MAX_MESSAGES_PER_PUBLISHER)
    paths: list[Path] = []
    sequence = 0
    for chunk in range(chunk_count):
        # Even chunks (100000 = 50000 + 50000), so no process is a short tail.
        chunk_end = messages * (chunk + 1) // chunk_count
        path = directory / f"payloads-{chunk}.txt"
        with path.open("w") as out:
            while sequence < chunk_end:
                offset = rng.randrange(filler_size + 1)
                out.write(f"{sequence:0{width}d}{pool[offset : offset + filler_size]}\n")
                sequence += 1
        paths.append(path)
    return paths


def publisher_command(tools: Tools, port: int | str, qos: int) -> list[str]:
    """The mosquitto_pub command line: one connection, one message per stdin line."""
    return [str(tools.mosquitto_pub), "-h", HOST, "-p", str(port), "-t", TOPIC, "-q", str(qos), "-l"]


def publish_all(tools: Tools, port: int, settings: Settings, payloads: Sequence[Path]) -> float:
    """Run mosquitto_pub over each payload file in turn; return acknowledged messages per second.

    The clock runs from the first process's start to the last one's exit. With QoS 1 or 2 each
    process exits only once its last message is acknowledged; a non-zero exit status fails.
    """
    command = publisher_command(tools, port, settings.qos)
    started = time.perf_counter()
    deadline = started + settings.timeout_s
    for path in payloads:
        with path.open("rb") as stdin:
            try:
                completed = subprocess.run(  # noqa: S603 - our command line, absolute executable
                    command,
                    stdin=stdin,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=max(deadline - time.perf_counter(), 0.001),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BenchmarkError(
                    f"mosquitto_pub did not finish within {settings.timeout_s:.0f} s"
                ) from exc
        if completed.returncode != 0:
            error = completed.stderr.decode(errors="replace").strip()
            raise BenchmarkError(f"mosquitto_pub exited with status {completed.returncode}: {error}")
    elapsed = time.perf_counter() - started
    return settings.messages / elapsed


class DeliveryCounter:
    """A paho subscriber on the benchmark topic that records which sequence numbers arrived.

    Used only by the verification pass, never while a measurement is timed.
    """

    def __init__(self, port: int, *, width: int) -> None:
        self._width = width
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._received = 0
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ingest-verify")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(HOST, port)
        self._client.loop_start()

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(TOPIC, qos=1)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if reason_codes and not reason_codes[0].is_failure:
            self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._received += 1
            with contextlib.suppress(ValueError):
                self._seen.add(int(message.payload[: self._width]))

    def wait_subscribed(self, timeout: float) -> None:
        """Block until the broker granted the subscription."""
        if not self._subscribed.wait(timeout):
            raise BenchmarkError(f"the verification subscriber got no SUBACK within {timeout:.0f} s")

    def wait_for(self, expected: int, timeout: float) -> tuple[int, int]:
        """Wait until ``expected`` distinct messages arrived (or ``timeout``); (distinct, received)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                distinct, received = len(self._seen), self._received
            if distinct >= expected or time.monotonic() > deadline:
                return distinct, received
            time.sleep(0.1)

    def close(self) -> None:
        """Disconnect and stop paho's network thread."""
        self._client.disconnect()
        self._client.loop_stop()


def verify_delivery(
    target: Target, tools: Tools, settings: Settings, payloads: Sequence[Path], workdir: Path
) -> str:
    """One untimed run with a subscriber: every sequence number must arrive, or this raises."""
    with running_broker(target, tools, workdir) as port:
        counter = DeliveryCounter(port, width=sequence_width(settings.messages))
        try:
            counter.wait_subscribed(BROKER_START_TIMEOUT_S)
            publish_all(tools, port, settings, payloads)
            distinct, received = counter.wait_for(settings.messages, settings.timeout_s)
        finally:
            counter.close()
    if distinct != settings.messages:
        raise BenchmarkError(
            f"{target.name}: mosquitto_pub exited with status 0 but only {distinct} of {settings.messages} "
            f"messages reached a subscriber"
        )
    duplicates = received - distinct
    return f"all {distinct} delivered" + (f" ({duplicates} duplicates)" if duplicates else "")


# --- the report ------------------------------------------------------------------------------


def _version_of(executable: Path | None, *args: str) -> str:
    if executable is None:
        return "-"
    try:
        result = subprocess.run(  # noqa: S603 - absolute executable, fixed arguments
            [str(executable), *args], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(rb"version (\S+)", result.stdout + result.stderr)
    return match.group(1).decode().rstrip(".") if match else "?"


def machine_lines(tools: Tools) -> list[str]:
    """What the numbers were measured on: hardware and software versions."""
    machine = (
        f"machine:   {platform.system()} {platform.release()} {platform.machine()}, "
        f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}"
    )
    software = (
        f"software:  Python {platform.python_version()}, amqtt {package_version('amqtt')}, "
        f"uvloop {package_version('uvloop')}, mosquitto {_version_of(tools.mosquitto, '-h')}, "
        f"mosquitto_pub {_version_of(tools.mosquitto_pub, '--help')}"
    )
    source = f"headwater: {tools.headwater or '-'} (checkout at {source_revision()})"
    return [machine, software, source]


def _ratio(value: float, reference: Row | None) -> str:
    if reference is None or not reference.rates:
        return "-"
    return f"{value / reference.median:.2f}x"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table: paste it into docs/benchmarks.md as is."""
    by_name = {row.target.name: row for row in rows}
    header = ("broker", "loop", "msg/s (median)", "min..max", "vs amqtt, same loop", "vs mosquitto")
    lines = [header]
    for row in rows:
        target = row.target
        amqtt = by_name.get(f"amqtt-{target.loop}") if target.loop else None
        lines.append(
            (
                target.label,
                target.loop or "(C)",
                f"{row.median:,.0f}",
                f"{min(row.rates):,.0f}..{max(row.rates):,.0f}",
                _ratio(row.median, amqtt),
                _ratio(row.median, by_name.get("mosquitto")),
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    numeric = {2, 3, 4, 5}

    def render(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if index in numeric else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule_cells = (
        "-" * (width + 1) + ":" if index in numeric else "-" * (width + 2)
        for index, width in enumerate(widths)
    )
    rule = "|" + "|".join(rule_cells) + "|"
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


# --- main ------------------------------------------------------------------------------------


def select_targets(only: str | None) -> list[Target]:
    """Targets named in ``only`` (comma-separated row or broker names), in table order."""
    if not only:
        return list(ALL_TARGETS)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {target.name for target in ALL_TARGETS} | {target.broker for target in ALL_TARGETS}
    if unknown := wanted - known:
        listed = ", ".join(sorted(known))
        raise BenchmarkError(f"--only: unknown {', '.join(sorted(unknown))} (known: {listed})")
    return [target for target in ALL_TARGETS if target.name in wanted or target.broker in wanted]


def with_baseline(tools: Tools, targets: Sequence[Target], baseline: Path) -> tuple[Tools, list[Target]]:
    """Add a baseline twin after every headwater target, run with the ``baseline`` executable."""
    if not os.access(baseline, os.X_OK):
        raise BenchmarkError(f"--baseline: {baseline} is not an executable")
    twins: list[Target] = []
    for target in targets:
        twins.append(target)
        if target.broker == "headwater":
            twins.append(dataclasses.replace(target, baseline=True))
    return dataclasses.replace(tools, baseline=baseline.absolute()), twins


def run_benchmark(targets: Sequence[Target], tools: Tools, settings: Settings) -> list[Row]:
    """Measure every target ``settings.repeat`` times, interleaved, each on a fresh broker."""
    rows = [Row(target) for target in targets]
    with tempfile.TemporaryDirectory(prefix="headwater-bench-") as scratch:
        scratch_dir = Path(scratch)
        payloads = write_payloads(scratch_dir, messages=settings.messages, payload_size=settings.payload_size)
        if settings.verify:
            for row in rows:
                workdir = scratch_dir / f"{row.target.name}-verify"
                workdir.mkdir()
                outcome = verify_delivery(row.target, tools, settings, payloads, workdir)
                print(f"  verify   {row.target.name:<22} {outcome}", flush=True)
        for attempt in range(1, settings.repeat + 1):
            for row in rows:
                workdir = scratch_dir / f"{row.target.name}-{attempt}"
                workdir.mkdir()
                with running_broker(row.target, tools, workdir) as port:
                    rate = publish_all(tools, port, settings, payloads)
                row.rates.append(rate)
                print(
                    f"  run {attempt}/{settings.repeat}  {row.target.name:<22} {rate:>10,.0f} msg/s"
                    f"  ({settings.messages / rate:.1f} s)",
                    flush=True,
                )
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--serve-amqtt`` and ``--port`` are internal and hidden)."""
    parser = argparse.ArgumentParser(
        description="QoS 1 ingest throughput of Headwater, bare amqtt and mosquitto, "
        "one mosquitto_pub -l publisher, no subscriber.",
    )
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run (default: 100000)")
    parser.add_argument("--payload-size", type=int, default=200, help="payload bytes (default: 200)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per row; the median is shown (default: 3)"
    )
    parser.add_argument(
        "--qos",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="default: 1 (with 0 mosquitto_pub does not wait for the broker: not a broker measurement)",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated rows or brokers: "
        + ", ".join(target.name for target in ALL_TARGETS)
        + ", headwater, amqtt (default: all)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="limit for publishing all messages once (default: 30 s + 2 ms per message)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the untimed pass that checks, with a subscriber, that every message arrives",
    )
    parser.add_argument(
        "--baseline",
        metavar="HEADWATER",
        type=Path,
        help="another checkout's headwater executable: each headwater row is also measured with "
        "it, interleaved in the same run (to check a change for regressions)",
    )
    parser.add_argument("--serve-amqtt", choices=("uvloop", "asyncio"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 when a broker or the publisher failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_amqtt is not None:
        if args.port is None:
            parser.error("--serve-amqtt needs --port")
        return serve_amqtt(loop_name=args.serve_amqtt, port=args.port)
    if args.messages < 1 or args.payload_size < 1 or args.repeat < 1:
        parser.error("--messages, --payload-size and --repeat must be at least 1")
    if args.payload_size <= sequence_width(args.messages):
        parser.error(
            f"--payload-size must exceed {sequence_width(args.messages)} (the sequence number's digits)"
        )
    settings = Settings(
        messages=args.messages,
        payload_size=args.payload_size,
        repeat=args.repeat,
        qos=args.qos,
        timeout_s=args.timeout if args.timeout is not None else 30 + 0.002 * args.messages,
        verify=not args.no_verify,
    )
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop every broker started so far.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        targets = select_targets(args.only)
        tools = find_tools(targets)
        if args.baseline is not None:
            tools, targets = with_baseline(tools, targets, args.baseline)
            print(f"baseline:  {tools.baseline}")
        print(f"command:   {shlex.join([sys.executable, *sys.argv])}")
        chunks = -(-settings.messages // MAX_MESSAGES_PER_PUBLISHER)
        print(
            f"publisher: {shlex.join(publisher_command(tools, 'PORT', settings.qos))} "
            f"< {settings.messages} lines of {settings.payload_size} B"
            + (f" ({chunks} consecutive processes, one connection at a time)" if chunks > 1 else "")
            + ", no subscriber"
        )
        for line in machine_lines(tools):
            print(line)
        print(f"load avg:  {load_average()} (before)", flush=True)
        rows = run_benchmark(targets, tools, settings)
    except BenchmarkError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    print(f"load avg:  {load_average()} (after)")
    print()
    print(format_table(rows))
    return 0


# --- bare amqtt, in its own process ------------------------------------------------------------


def serve_amqtt(*, loop_name: LoopName, port: int) -> int:
    """Run amqtt's Broker with only the anonymous auth plugin until SIGTERM/SIGINT."""
    loop_factory = None
    if loop_name == "uvloop":
        import uvloop  # noqa: PLC0415 - only this row needs it

        loop_factory = uvloop.Loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_amqtt(port))
    return 0


async def _serve_amqtt(port: int) -> None:
    from amqtt.broker import Broker  # noqa: PLC0415 - the parent process never needs amqtt

    # Listing a plugin replaces amqtt's defaults (loggers, $SYS): this is amqtt at its leanest.
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    sys.exit(main())
