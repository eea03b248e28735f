"""The scenario Headwater exists for, end to end, on its container image (docs/tutorial.md).

One test walks through what the tutorial tells a person to do, with the same config
(``examples/scenario/headwater.yaml``; only its ports and the emulator's URL are changed):

1. the image (``scripts/build-image``) runs with the Docker socket and its group, a data volume,
   and the host's network, so that it reaches the AWS emulator (moto's server, in this process,
   on 127.0.0.1) and the test reaches its MQTT port; users ``device`` and ``operator`` come from
   ``headwater passwd`` in the volume, anonymous clients only get the healthcheck's topics;
2. an operator deploys the visit-counter example with one retained message (``mosquitto_pub -r
   -f``); the app answers HTTP and counts visits;
3. simulated devices (``examples/producer.py``) publish a backlog of readings into ``telemetry``
   (exported to S3 at priority 9 under a small shared bandwidth cap); the aggregator
   (``examples/aggregator.py --once``) appends per-minute aggregates to ``aggregates`` (Kinesis,
   priority 1): all aggregates are in Kinesis while the raw backlog is still draining to S3;
4. ``docker kill`` while S3 is still draining, start again on the same volume: every stored
   record is still there, the app's container was left alone (same id, same start time) and
   keeps counting, each export resumes from its checkpoint and its counters go on;
5. a second round of readings and aggregates after the restart; at the end every raw record is in
   S3 and every aggregate in Kinesis (read back through boto3, and with the tutorial's
   ``examples/scenario/aws.py check``).

Everything the test creates (containers, the data volume, the compose project and its volume)
is removed at teardown; the app has a unique name and port, so runs can share an engine.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from headwater.clients import ConnectionFailedError, StreamClient
from headwater.wire.streams import StreamDescription, StreamRecord
from tests.fixtures.aws import AwsClients
from tests.fixtures.aws_targets import KinesisTarget, S3Target
from tests.fixtures.image import BUILD_TIMEOUT, HeadwaterContainer, HeadwaterContainerFactory, add_user
from tests.fixtures.mosquitto import MosquittoSub, free_port, mosquitto_pub, mosquitto_sub_once

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT + 300)]

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SCENARIO_CONFIG = EXAMPLES / "scenario" / "headwater.yaml"
VISIT_COUNTER = EXAMPLES / "visit-counter" / "compose.yaml"

# The users the scenario config's ACL names.
DEVICE = ("device", "device-secret")
OPERATOR = ("operator", "operator-secret")
# Fake credentials for the emulator; the region comes from the config. Never real ones.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}

DEVICES = 3
# Readings one simulated second apart from 10:00:00: 600 per device fill minutes 10:00-10:09,
# the 120 of the second round 10:10-10:11. The aggregator closes every minute (--once).
START_MS = int(datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp() * 1000)
FIRST_ROUND, SECOND_ROUND = 600, 120
STEP_MS = 1000
RAW_TOTAL = DEVICES * (FIRST_ROUND + SECOND_ROUND)  # 2160
AGGREGATES_FIRST = DEVICES * FIRST_ROUND // 60  # 30
AGGREGATES_TOTAL = DEVICES * (FIRST_ROUND + SECOND_ROUND) // 60  # 36

WAIT = 120.0  # generous bound for anything that normally takes seconds


# --- helpers ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``condition`` every 0.1 s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        time.sleep(0.1)


def write_config(path: Path, *, mqtt_port: int, health_port: int, endpoint_url: str) -> dict[str, Any]:
    """The tutorial's config with this test's loopback ports and emulator; written to ``path``."""
    config: dict[str, Any] = yaml.safe_load(SCENARIO_CONFIG.read_text())
    listeners = config["broker"]["listeners"]
    assert set(listeners) == {"default", "health"}, listeners
    listeners["default"]["bind"] = f"127.0.0.1:{mqtt_port}"
    listeners["health"]["bind"] = f"127.0.0.1:{health_port}"
    assert config["aws"]["endpoint_url"], "the tutorial's config points at a local emulator"
    config["aws"]["endpoint_url"] = endpoint_url
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o644)  # read by the image's user (uid 1883) through the bind mount
    return config


def run_script(script: Path, *args: str, cwd: Path, timeout: float = WAIT) -> str:
    """Run an example script with this Python (Headwater's environment); its stdout."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, f"{script.name} {' '.join(args)} exited {result.returncode}:\n" + (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    return result.stdout


def acknowledged_readings(producer_output: str) -> list[str]:
    """The payloads producer.py printed: it prints a reading only after its PUBACK."""
    return [line.split(" ", 1)[1] for line in producer_output.splitlines() if line.startswith("sensors/")]


def http_get(port: int, *, timeout: float = 30.0) -> str:
    """GET / of the app, retrying while it starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"the app on 127.0.0.1:{port} does not answer: {exc}") from exc
            time.sleep(0.2)


def visits(page: str) -> int:
    first = page.splitlines()[0]  # "Hello from Headwater! This page has been visited 3 times."
    assert first.startswith("Hello from Headwater! This page has been visited "), page
    return int(first.split()[-2])


def app_containers(docker_client: Any, project: str) -> dict[str, str]:
    """``{container id: State.StartedAt}`` of a compose project."""
    found = docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return {container.id: container.attrs["State"]["StartedAt"] for container in found}


def statuses(sub: MosquittoSub) -> list[dict[str, Any]]:
    return [json.loads(message.payload) for message in sub.messages if message.payload]


def s3_sequences_delivered(target: S3Target) -> int:
    """How many records the S3 objects hold, from their keys (``.../<first>-<last>.jsonl.gz``)."""
    total = 0
    keys = target.keys()
    for key in keys:
        first, last = key.rsplit("/", 1)[1].split(".", 1)[0].split("-")
        total += int(last) - int(first) + 1
    return total


@dataclass
class Hub:
    """The Headwater container, seen through the operator's stream API client."""

    container: HeadwaterContainer

    @property
    def port(self) -> int:
        return self.container.port

    def url(self, user: tuple[str, str]) -> str:
        return self.container.url(*user)

    @contextlib.contextmanager
    def streams(self) -> Iterator[StreamClient]:
        client = wait_until(self._connect, "the stream API after the start")
        with client:
            yield client

    def _connect(self) -> StreamClient | None:
        try:
            return StreamClient.connect(self.url(OPERATOR))
        except ConnectionFailedError:
            return None

    def describe(self) -> dict[str, StreamDescription]:
        with self.streams() as client:
            return {name: client.describe(name) for name in ("telemetry", "aggregates")}

    def records(self) -> dict[str, list[StreamRecord]]:
        with self.streams() as client:
            return {name: list(client.iter_records(name)) for name in ("telemetry", "aggregates")}


@contextlib.contextmanager
def logs_on_failure(hub: HeadwaterContainer) -> Iterator[None]:
    """Print the tail of Headwater's log when the test fails (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            print("--- tail of the Headwater container's log ---")  # noqa: T201 - failure context
            print("\n".join(hub.logs().splitlines()[-60:]))  # noqa: T201
        raise


# --- the test ---------------------------------------------------------------------------------


def test_the_scenario_end_to_end(  # noqa: PLR0915, PLR0917 - one story, told in order; fixtures
    deployed_projects: Callable[[str], str],  # first: taken down after Headwater's container is gone
    headwater_container: HeadwaterContainerFactory,
    aws_clients: AwsClients,
    visit_counter_image: str,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    del visit_counter_image  # built on the "gateway" (this engine): the deploy pulls nothing
    # --- the gateway: config, users, the container --------------------------------------------
    mqtt_port, health_port = free_port(), free_port()
    config_path = tmp_path / "headwater.yaml"
    config = write_config(
        config_path, mqtt_port=mqtt_port, health_port=health_port, endpoint_url=aws_clients.endpoint_url
    )
    [archive_export] = config["streams"]["telemetry"]["exports"]
    [kinesis_export] = config["streams"]["aggregates"]["exports"]
    assert (archive_export["type"], archive_export["priority"]) == ("s3", 9)
    assert (kinesis_export["type"], kinesis_export["priority"]) == ("kinesis", 1)
    assert config["uploads"]["max_bandwidth"]

    # The AWS side, created with the tutorial's helper.
    created = run_script(EXAMPLES / "scenario" / "aws.py", "create", "-c", str(config_path), cwd=tmp_path)
    assert "created" in created, created
    archive = S3Target(aws_clients)
    archive.bucket = archive_export["bucket"]
    kinesis = KinesisTarget(aws_clients, name=kinesis_export["stream_name"])

    volume = headwater_container.volume()
    for user in (DEVICE, OPERATOR):
        add_user(headwater_container.image, volume, *user)
    container = headwater_container.run(
        volume,
        docker_socket=True,
        host_network_port=mqtt_port,
        health_interval=1.0,
        environment=FAKE_AWS_ENV,
        volumes={str(config_path): {"bind": "/etc/headwater/headwater.yaml", "mode": "ro"}},
    )
    hub = Hub(container)
    with logs_on_failure(container):
        container.wait_healthy()
        assert f"healthy: mqtt://127.0.0.1:{health_port} answered" in container.health()["Log"][-1]["Output"]
        refused = mosquitto_pub(mqtt_port, "sensors/anon/telemetry", "x", qos=1, check=False)
        assert b"not authorised" in refused.stderr, "anonymous clients need a login on the MQTT port"

        # --- the operator deploys the visit counter with one retained message -----------------
        app = f"visits-{uuid.uuid4().hex[:8]}"  # unique: the compose project is headwater-<app>
        project = deployed_projects(app)
        app_port = free_port()
        envelope = tmp_path / "visits.json"
        envelope.write_text(
            json.dumps({"compose": VISIT_COUNTER.read_text(), "env": {"VISIT_COUNTER_PORT": str(app_port)}})
        )
        status_topic = f"headwater/deploy/{app}/status"
        with MosquittoSub(
            mqtt_port, status_topic, qos=1, username=OPERATOR[0], password=OPERATOR[1]
        ) as watch:
            subprocess.run(
                ["mosquitto_pub", "-p", str(mqtt_port), "-u", OPERATOR[0], "-P", OPERATOR[1],
                 "-r", "-q", "1", "-t", f"headwater/deploy/{app}", "-f", str(envelope)],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip

            # --- meanwhile, devices publish a backlog; the aggregator summarizes it -----------
            first_round = run_script(
                EXAMPLES / "producer.py",
                "--url", hub.url(DEVICE), "--devices", str(DEVICES), "--interval", "0",
                "--count", str(FIRST_ROUND), "--start-ts", str(START_MS), "--step-ms", str(STEP_MS),
                "--seed", "1",
                cwd=tmp_path,
            )  # fmt: skip
            acknowledged = acknowledged_readings(first_round)
            assert len(acknowledged) == DEVICES * FIRST_ROUND
            aggregator = ("--url", hub.url(OPERATOR), "--checkpoint", str(tmp_path / "aggregator.checkpoint"))
            run_script(EXAMPLES / "aggregator.py", *aggregator, "--once", cwd=tmp_path)

            # --- priorities: every aggregate reaches Kinesis while raw records still drain ----
            with hub.streams() as client:

                def aggregates_exported() -> StreamDescription | None:
                    described = client.describe("aggregates")
                    done = described.exports[0].last_exported_sequence == AGGREGATES_FIRST - 1
                    return described if done else None

                wait_until(aggregates_exported, f"{AGGREGATES_FIRST} aggregates exported")
                raw_in_s3 = s3_sequences_delivered(archive)
                telemetry = client.describe("telemetry")
            assert len(kinesis.delivered()) == AGGREGATES_FIRST
            assert raw_in_s3 < DEVICES * FIRST_ROUND, "raw records (priority 9) waited behind the aggregates"
            assert telemetry.exports[0].lag_records > 0, telemetry

            # --- the app answers and counts -----------------------------------------------------
            watch.wait_for(
                predicate=lambda _: any(s["state"] == "running" for s in statuses(watch)), timeout=WAIT
            )
            states = [status["state"] for status in statuses(watch)]
            assert states.index("deploying") < states.index("running"), states
            deployed = next(status for status in statuses(watch) if status["state"] == "running")
        [service] = deployed["services"]
        assert (service["state"], service["health"]) == ("running", "healthy"), deployed
        assert [visits(http_get(app_port)) for _ in range(2)] == [1, 2]
        app_before = app_containers(docker_client, project)
        assert len(app_before) == 1

        # --- docker kill in the middle of the S3 backlog, start again -----------------------
        stored_before = hub.records()
        described_before = hub.describe()
        raw_export_before = described_before["telemetry"].exports[0]
        assert raw_export_before.last_exported_sequence is not None
        assert raw_export_before.last_exported_sequence < DEVICES * FIRST_ROUND - 1, (
            "the kill must interrupt the S3 backlog (is the bandwidth cap still small?)"
        )
        assert Counter(r.payload.decode() for r in stored_before["telemetry"]) == Counter(acknowledged)
        container.kill()
        container.start()
        container.wait_healthy()

        # Nothing acknowledged is lost, nothing was added.
        assert hub.records() == stored_before
        # The exports resume from their checkpoints: nothing reset, nothing re-sent to Kinesis.
        described_after = hub.describe()
        raw_export_after = described_after["telemetry"].exports[0]
        assert raw_export_after.last_exported_sequence is not None
        assert raw_export_after.last_exported_sequence >= raw_export_before.last_exported_sequence
        assert raw_export_after.exported_records >= raw_export_before.exported_records
        kinesis_export_after = described_after["aggregates"].exports[0]
        assert kinesis_export_after.last_exported_sequence == AGGREGATES_FIRST - 1
        assert kinesis_export_after.exported_records == AGGREGATES_FIRST

        # The app was left alone: same container, never restarted, and it still counts. The
        # restarted Headwater republishes its status once it compared it with Docker.
        def reconciled(status: dict[str, Any]) -> bool:
            return bool(status["updated_at"] != deployed["updated_at"] and status["state"] != "pending")

        with MosquittoSub(
            mqtt_port, status_topic, qos=1, username=OPERATOR[0], password=OPERATOR[1]
        ) as watch:
            watch.wait_for(predicate=lambda _: any(map(reconciled, statuses(watch))), timeout=WAIT)
            since_restart = [s for s in statuses(watch) if s["updated_at"] != deployed["updated_at"]]
        after_restart = next(filter(reconciled, since_restart))
        assert after_restart["state"] == "running", since_restart
        assert {s["state"] for s in since_restart} <= {"pending", "running"}, since_restart
        assert after_restart["revision"] == deployed["revision"]
        assert after_restart["deployed_at"] == deployed["deployed_at"]
        assert app_containers(docker_client, project) == app_before
        assert visits(http_get(app_port)) == 3
        assert f"{app} revision {deployed['revision']} already runs; left untouched" in container.logs()

        # --- a second round after the restart: counters go on -----------------------------
        second_round = run_script(
            EXAMPLES / "producer.py",
            "--url", hub.url(DEVICE), "--devices", str(DEVICES), "--interval", "0",
            "--count", str(SECOND_ROUND), "--start-ts", str(START_MS + FIRST_ROUND * STEP_MS),
            "--step-ms", str(STEP_MS), "--seed", "2",
            cwd=tmp_path,
        )  # fmt: skip
        acknowledged += acknowledged_readings(second_round)
        run_script(EXAMPLES / "aggregator.py", *aggregator, "--once", cwd=tmp_path)

        def drained() -> dict[str, StreamDescription] | None:
            described = hub.describe()
            last = {name: d.exports[0].last_exported_sequence for name, d in described.items()}
            done = last == {"telemetry": RAW_TOTAL - 1, "aggregates": AGGREGATES_TOTAL - 1}
            return described if done else None

        final = wait_until(drained, "both exports to reach the end of their streams")

        # --- at the end, every raw record is in S3, every aggregate in Kinesis ---------------
        stored = hub.records()
        assert Counter(record.payload.decode() for record in stored["telemetry"]) == Counter(acknowledged)
        assert [record.sequence for record in stored["telemetry"]] == list(range(RAW_TOTAL))
        summaries = [json.loads(record.payload) for record in stored["aggregates"]]
        assert len({(s["device"], s["minute"]) for s in summaries}) == len(summaries) == AGGREGATES_TOTAL
        assert {s["count"] for s in summaries} == {60}

        lines = archive.records()
        by_sequence = {line["sequence"]: line for line in lines}
        assert by_sequence == {record.sequence: record.to_json_dict() for record in stored["telemetry"]}
        keys = archive.keys()
        biggest_object = max(len(archive.lines(key)) for key in keys)
        assert len(lines) - RAW_TOTAL <= biggest_object, "at least once: duplicates bounded by one batch"
        assert kinesis.delivered() == [record.payload for record in stored["aggregates"]]

        raw_export, kinesis_export_final = final["telemetry"].exports[0], final["aggregates"].exports[0]
        assert RAW_TOTAL <= raw_export.exported_records <= RAW_TOTAL + biggest_object
        assert (raw_export.lag_records, raw_export.last_error) == (0, None)
        assert kinesis_export_final.exported_records == AGGREGATES_TOTAL
        assert kinesis_export_final.last_error is None

        # What the tutorial tells a person to look at says the same.
        [status] = mosquitto_sub_once(
            mqtt_port, "headwater/streams/telemetry/status", username=OPERATOR[0], password=OPERATOR[1]
        )
        retained = json.loads(status.payload)
        assert retained["storage"]["record_count"] == RAW_TOTAL
        assert retained["exports"][0]["last_exported_sequence"] == RAW_TOTAL - 1
        checked = run_script(
            EXAMPLES / "scenario" / "aws.py", "check", "-c", str(config_path), "--url", hub.url(OPERATOR),
            cwd=tmp_path,
        )  # fmt: skip
        assert f"{RAW_TOTAL} of {RAW_TOTAL} records, 0 missing" in checked, checked
        assert f"{AGGREGATES_TOTAL} of {AGGREGATES_TOTAL} records, 0 missing, 0 sent twice" in checked
