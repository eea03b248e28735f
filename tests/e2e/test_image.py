"""The container image as a user runs it: built by scripts/build-image, a volume, a password file.

The smoke test of docs/container.md: add a user with ``headwater passwd`` in a throw-away
container, run the image with a named volume and a published port, wait for Docker's
HEALTHCHECK, publish with mosquitto_pub, read back with ``headwater streams read`` from the host,
``docker kill``, start again, and find the record still there.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.broker import headwater_executable
from tests.fixtures.image import BUILD_TIMEOUT, HeadwaterContainer, HeadwaterContainerFactory, add_user
from tests.fixtures.mosquitto import mosquitto_pub

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT + 240)]

USER, PASSWORD = "alice", "correct horse battery staple"
IMAGE_UID = 1883  # the Dockerfile's `headwater` user; docs/container.md tells users to chown to it


def read_stream(container: HeadwaterContainer, stream: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [headwater_executable(), "streams", "read", stream, "--json", "--url", container.url(USER, PASSWORD)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def process_uid(container: HeadwaterContainer) -> int:
    status = container.exec(["cat", "/proc/1/status"])
    match = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert match, status
    real, effective = (int(group) for group in match.groups())
    assert real == effective
    return real


def test_image_keeps_acknowledged_records_across_a_hard_kill(
    headwater_container: HeadwaterContainerFactory,
) -> None:
    volume = headwater_container.volume()
    add_user(headwater_container.image, volume, USER, PASSWORD)
    hub = headwater_container.run(volume, docker_socket=True)  # the run command of docs/container.md
    hub.wait_healthy()

    # The secure default: the port is published, so anonymous clients are refused.
    anonymous = mosquitto_pub(hub.port, "sensors/anon/telemetry", "x", qos=1, check=False)
    assert anonymous.returncode != 0
    assert b"not authorised" in anonymous.stderr

    mosquitto_pub(
        hub.port, "sensors/pump-1/telemetry", '{"temp": 21.5}', qos=1, username=USER, password=PASSWORD
    )
    [record] = read_stream(hub, "telemetry")
    assert (record["sequence"], record["topic"], record["payload"]) == (
        0,
        "sensors/pump-1/telemetry",
        '{"temp": 21.5}',
    )

    # Not root, and the data in the volume belongs to that user.
    assert process_uid(hub) == IMAGE_UID
    owners = hub.exec(
        ["stat", "-c", "%u %n", "/var/lib/headwater", "/var/lib/headwater/db", "/var/lib/headwater/passwd"]
    )
    assert {int(line.split()[0]) for line in owners.splitlines()} == {IMAGE_UID}, owners

    hub.kill()
    hub.start()
    hub.wait_healthy()
    assert read_stream(hub, "telemetry") == [record]
    # The check asks the loopback-only health listener: no password anywhere.
    assert "healthy: mqtt://127.0.0.1:1884 answered" in hub.health()["Log"][-1]["Output"]
    assert "headwater-healthcheck" not in hub.exec(["cat", "/var/lib/headwater/passwd"])


def test_image_ships_docker_compose_v2(headwater_container: HeadwaterContainerFactory) -> None:
    plugin = "/usr/local/lib/docker/cli-plugins/docker-compose"
    exit_code, output = headwater_container.run_command(
        ["sh", "-c", f"docker-compose version --short && readlink -f {plugin}"]
    )
    assert exit_code == 0, output
    version, target = output.split()
    assert version.startswith("2.")
    assert target == "/usr/local/bin/docker-compose"


def test_image_reaches_the_docker_engine_with_the_socket_group(
    headwater_container: HeadwaterContainerFactory,
) -> None:
    # What docs/container.md tells users: mount the socket and add its group, no root needed.
    socket = Path("/var/run/docker.sock")
    assert socket.is_socket(), "scripts/test's dockerd listens on /var/run/docker.sock"
    mounts = {str(socket): {"bind": str(socket), "mode": "rw"}}
    exit_code, output = headwater_container.run_command(
        ["sh", "-c", "id -u && docker-compose ls --quiet && echo compose-ok"],
        volumes=mounts,
        group_add=[str(socket.stat().st_gid)],
    )
    assert exit_code == 0, output
    uid, *_, last = output.split()
    assert (int(uid), last) == (IMAGE_UID, "compose-ok")

    exit_code, output = headwater_container.run_command(["docker-compose", "ls"], volumes=mounts)
    assert exit_code != 0
    assert "permission denied" in output
