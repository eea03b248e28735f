"""examples/: producer.py and aggregator.py against a Headwater with examples/headwater.yaml's streams."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from headwater.clients import StreamClient
from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from tests.fixtures.broker import BrokerFactory, InProcessBroker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# 2026-11-30T10:14:30Z: readings 20 s apart span 10:14 and 10:15.
START_MS = int(datetime(2026, 11, 30, 10, 14, 30, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def hub(headwater_factory: BrokerFactory) -> InProcessBroker:
    config = yaml.safe_load((EXAMPLES / "headwater.yaml").read_text())
    streams = StreamsPlugin()
    return headwater_factory({"streams": config["streams"]}, plugins=[streams, StreamsApi(streams)])


def _run(script: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _payloads(url: str, stream: str) -> list[dict[str, Any]]:
    with StreamClient.connect(url) as streams:
        return [json.loads(record.payload) for record in streams.iter_records(stream)]


def _expected(readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregates computed here from the telemetry records, independently of aggregator.py."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for reading in readings:
        minute = datetime.fromtimestamp(reading["ts"] / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")
        groups[reading["device"], minute].append(reading["temperature"])
    return [
        {
            "device": device,
            "minute": minute,
            "count": len(values),
            "min": min(values),
            "max": max(values),
            "mean": round(sum(values) / len(values), 3),
        }
        for (device, minute), values in groups.items()
    ]


def _key(aggregate: dict[str, Any]) -> tuple[str, str]:
    return aggregate["device"], aggregate["minute"]


def test_producer_and_aggregator_resume_from_the_checkpoint(hub: InProcessBroker, tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{hub.port}"
    checkpoint = tmp_path / "aggregator.checkpoint"
    produce = ("--url", url, "--devices", "2", "--interval", "0", "--step-ms", "20000", "--seed", "7")

    out = _run("producer.py", *produce, "--count", "5", "--start-ts", str(START_MS), cwd=tmp_path)
    assert "published 10 reading(s) from 2 device(s)" in out
    readings = _payloads(url, "telemetry")
    assert len(readings) == 10
    assert {reading["device"] for reading in readings} == {"pump-1", "pump-2"}

    out = _run("aggregator.py", "--url", url, "--checkpoint", str(checkpoint), "--once", cwd=tmp_path)
    assert "appended 4 aggregate(s)" in out
    aggregates = _payloads(url, "aggregates")
    assert sorted(aggregates, key=_key) == sorted(_expected(readings), key=_key)
    counts = {_key(aggregate): aggregate["count"] for aggregate in aggregates}
    assert counts == {
        ("pump-1", "2026-11-30T10:14Z"): 2,
        ("pump-1", "2026-11-30T10:15Z"): 3,
        ("pump-2", "2026-11-30T10:14Z"): 2,
        ("pump-2", "2026-11-30T10:15Z"): 3,
    }
    with StreamClient.connect(url) as streams:
        topics = [record.topic for record in streams.iter_records("aggregates")]
    assert sorted(set(topics)) == ["aggregates/pump-1", "aggregates/pump-2"]
    assert json.loads(checkpoint.read_text())["next_sequence"] == 10

    # Nothing new: a second run appends nothing.
    out = _run("aggregator.py", "--url", url, "--checkpoint", str(checkpoint), "--once", cwd=tmp_path)
    assert "appended 0 aggregate(s)" in out
    assert len(_payloads(url, "aggregates")) == 4

    # Two more readings per device in 10:16: only those minutes are aggregated, from the checkpoint.
    _run("producer.py", *produce, "--count", "2", "--start-ts", str(START_MS + 90_000), cwd=tmp_path)
    out = _run("aggregator.py", "--url", url, "--checkpoint", str(checkpoint), "--once", cwd=tmp_path)
    assert "reading telemetry from sequence 10" in out
    assert "appended 2 aggregate(s)" in out
    aggregates = _payloads(url, "aggregates")
    assert len(aggregates) == 6
    assert sorted(aggregates, key=_key) == sorted(_expected(_payloads(url, "telemetry")), key=_key)


def test_following_aggregator_closes_minutes_as_later_ones_start(
    hub: InProcessBroker, tmp_path: Path
) -> None:
    url = f"mqtt://127.0.0.1:{hub.port}"
    checkpoint = tmp_path / "aggregator.checkpoint"
    follower = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "aggregator.py"), "--url", url, "--checkpoint", str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        produce = ("--url", url, "--devices", "2", "--interval", "0", "--step-ms", "20000", "--seed", "3")
        _run("producer.py", *produce, "--count", "5", "--start-ts", str(START_MS), cwd=tmp_path)
        deadline = time.monotonic() + 20
        while len(_payloads(url, "aggregates")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        follower.send_signal(signal.SIGINT)
        out, _ = follower.communicate(timeout=30)
    # Only 10:14 is complete (10:15 is still open when it stops), and the checkpoint keeps
    # the 10:15 readings for the next run.
    aggregates = _payloads(url, "aggregates")
    assert sorted(map(_key, aggregates)) == [("pump-1", "2026-11-30T10:14Z"), ("pump-2", "2026-11-30T10:14Z")]
    assert json.loads(checkpoint.read_text())["next_sequence"] == 4, out

    _run("aggregator.py", "--url", url, "--checkpoint", str(checkpoint), "--once", cwd=tmp_path)
    aggregates = _payloads(url, "aggregates")
    assert sorted(aggregates, key=_key) == sorted(_expected(_payloads(url, "telemetry")), key=_key)
    assert len(aggregates) == 4
