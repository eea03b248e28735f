"""Deployments end to end: retained messages → docker compose → status topics.

Real dockerd, real docker compose v2, locally built images (no registry), real mosquitto
clients. Every app gets a unique name and its compose project is taken down after the test
(``deployed_projects``), whatever Headwater left behind.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from headwater.broker.passwords import set_password
from headwater.clients import DeployClient, DeployTimeoutError, InvalidDeployRequestError
from headwater.plugins.deploy.plugin import DeployPlugin
from headwater.wire.deploy import revision_of
from tests.fixtures.broker import BrokerFactory, InProcessBroker, headwater_executable
from tests.fixtures.docker_engine import DockerSocketProxy
from tests.fixtures.mosquitto import MosquittoSub, MqttMessage, free_port, mosquitto_pub

pytestmark = pytest.mark.docker

QUIET = 2.0  # seconds we listen to make sure nothing arrives
WAIT = 90.0  # generous: a deployment on a loaded 2-core machine


def unique_app() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def web(version: str, *, extra: str = "") -> str:
    """A compose file whose one service answers HTTP with ``version``."""
    return f"""
services:
  web:
    image: headwater-test/busybox:1
    command:
      - sh
      - -c
      - 'mkdir -p /www && echo "$$VERSION" > /www/index.html && exec httpd -f -p 8080 -h /www'
    environment:
      VERSION: "{version}"
    init: true
    ports: ["127.0.0.1::8080"]
{extra}"""


def deploy_plugin() -> DeployPlugin:
    return DeployPlugin(settle_timeout=30, settle_poll=0.2, retry_delays=(0.2, 1.0))


def start_hub(
    factory: BrokerFactory, deploy: dict[str, Any] | None = None, **sections: Any
) -> InProcessBroker:
    body = {"deploy": {"status_interval": "2s", **(deploy or {})}, **sections}
    return factory(body, plugins=[deploy_plugin()])


@pytest.fixture
def hub(headwater_factory: BrokerFactory, busybox_image: str) -> InProcessBroker:
    """An in-process Headwater with the deploy plugin, anonymous access, no ACL."""
    del busybox_image
    return start_hub(headwater_factory)


def statuses_of(messages: list[MqttMessage]) -> list[dict[str, Any]]:
    return [json.loads(message.payload) for message in messages if message.payload]


def last_state(messages: list[MqttMessage]) -> str | None:
    statuses = statuses_of(messages)
    return statuses[-1]["state"] if statuses else None


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args)``: the ``headwater`` command as a subprocess (this environment)."""

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [headwater_executable(), *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    return run


class StatusWatch:
    """mosquitto_sub on one app's status topic, with waits on what the statuses say."""

    def __init__(self, port: int, app: str, **credentials: str) -> None:
        self.topic = f"headwater/deploy/{app}/status"
        self.sub = MosquittoSub(port, self.topic, qos=1, **credentials)

    def __enter__(self) -> Self:
        self.sub.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sub.close()

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return statuses_of(self.sub.messages)

    def wait_for(
        self,
        state: str,
        *,
        revision: str | None = None,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = WAIT,
    ) -> dict[str, Any]:
        """The first status in ``state`` (with ``revision``, if given) that also satisfies ``where``."""

        def match(status: dict[str, Any]) -> bool:
            return (
                status.get("state") == state
                and (revision is None or status.get("revision") == revision)
                and where(status)
            )

        messages = self.sub.wait_for(predicate=lambda ms: any(map(match, statuses_of(ms))), timeout=timeout)
        return next(status for status in statuses_of(messages) if match(status))


def publish(port: int, app: str, payload: str | bytes, **credentials: str) -> str | None:
    """Publish the retained desired state of ``app``; return its revision."""
    data = payload.encode() if isinstance(payload, str) else payload
    mosquitto_pub(port, f"headwater/deploy/{app}", data, qos=1, retain=True, **credentials)
    return revision_of(data)


def host_port(status: dict[str, Any], service: str = "web") -> int:
    """The host port of ``service``'s first published port, as the status reports it."""
    entry = next(item for item in status["services"] if item["name"] == service)
    mapping = entry["ports"][0]  # "127.0.0.1:49153->8080/tcp"
    return int(mapping.split("->")[0].rsplit(":", 1)[1])


def http_get(port: int, path: str = "/", *, timeout: float = 20.0) -> str:
    """GET a page, retrying while the server is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"http://127.0.0.1:{port}{path} does not answer: {exc}") from exc
            time.sleep(0.2)


def containers(docker_client: Any, project: str) -> dict[str, str]:
    """``{container id: StartedAt}`` of a compose project (stopped containers too)."""
    found = docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return {container.id: container.attrs["State"]["StartedAt"] for container in found}


def networks(docker_client: Any, project: str) -> list[str]:
    return [
        n.name
        for n in docker_client.networks.list(filters={"label": f"com.docker.compose.project={project}"})
    ]


def plugin_of(hub: InProcessBroker) -> DeployPlugin:
    plugin = next(p for p in hub.app._plugins if isinstance(p, DeployPlugin))  # noqa: SLF001
    assert isinstance(plugin, DeployPlugin)
    return plugin


def deploy_root(tmp_path: Path) -> Path:
    return tmp_path / "data" / "deploy"


# --- deploy, update, remove ------------------------------------------------------------------


def test_deploy_update_and_remove(
    hub: InProcessBroker, deployed_projects: Callable[[str], str], docker_client: Any, tmp_path: Path
) -> None:
    app = unique_app()
    project = deployed_projects(app)
    with StatusWatch(hub.port, app) as watch:
        first = publish(hub.port, app, web("v1"))
        running = watch.wait_for("running", revision=first)
        assert http_get(host_port(running)).strip() == "v1"
        assert running["app"] == app
        assert running["error"] is None
        assert running["deployed_at"]
        [service] = running["services"]
        assert service["name"] == "web"
        assert service["image"] == "headwater-test/busybox:1"
        assert (service["state"], service["restarts"], service["containers"]) == ("running", 0, 1)
        states = [s["state"] for s in watch.statuses]
        assert states.index("deploying") < states.index("running")
        assert set(states[: states.index("deploying")]) <= {"pending"}  # while the plugin starts
        v1_containers = containers(docker_client, project)
        assert len(v1_containers) == 1

        second = publish(hub.port, app, web("v2"))
        running = watch.wait_for("running", revision=second)
        assert http_get(host_port(running)).strip() == "v2"
        assert containers(docker_client, project).keys().isdisjoint(v1_containers)

        app_dir = deploy_root(tmp_path) / f"app-{app}"
        assert app_dir.stat().st_mode & 0o777 == 0o700
        assert deploy_root(tmp_path).stat().st_mode & 0o777 == 0o700
        for file in app_dir.iterdir():
            assert file.stat().st_mode & 0o777 == 0o600, file
        assert "v2" in (app_dir / "compose.yaml").read_text()

        publish(hub.port, app, b"")
        removed = watch.wait_for("removed")
    assert removed["revision"] is None
    assert removed["services"] == []
    assert containers(docker_client, project) == {}
    assert networks(docker_client, project) == []
    assert not app_dir.exists()


def test_the_same_revision_is_left_alone_unless_forced(
    hub: InProcessBroker, deployed_projects: Callable[[str], str], docker_client: Any
) -> None:
    app = unique_app()
    project = deployed_projects(app)
    with StatusWatch(hub.port, app) as watch:
        revision = publish(hub.port, app, web("same"))
        first = watch.wait_for("running", revision=revision)
        before = containers(docker_client, project)

        assert publish(hub.port, app, web("same")) == revision
        again = watch.wait_for(
            "running", revision=revision, where=lambda s: s["updated_at"] != first["updated_at"]
        )
        assert again["deployed_at"] == first["deployed_at"]
        assert containers(docker_client, project) == before
        states = [s["state"] for s in watch.statuses]
        assert "deploying" not in states[states.index("running") :]

        # The envelope with force has the same revision (force is not part of it) and recreates.
        forced = json.dumps({"compose": web("same"), "force": True})
        assert publish(hub.port, app, forced) == revision
        watch.wait_for("running", revision=revision, where=lambda s: s["deployed_at"] != first["deployed_at"])
    assert containers(docker_client, project).keys().isdisjoint(before)
    assert plugin_of(hub).statistics().unchanged >= 1


# --- refusals ------------------------------------------------------------------------------


REFUSED_FILES: dict[str, tuple[str, str]] = {
    "invalid-yaml": ("services:\n  web: [image: x\n", "invalid YAML in the compose file at line"),
    "privileged": (
        web("x", extra="    privileged: true\n"),
        "services.web.privileged: a privileged container is not allowed (deploy.policy.allow_privileged)",
    ),
    "bind-mount": (
        web("x").replace("    init: true\n", "    init: true\n    volumes: ['/etc:/host-etc:ro']\n"),
        "services.web.volumes[0]: a bind mount of /etc is outside deploy.policy.allowed_bind_mounts",
    ),
    "missing-image": (
        json.dumps(
            {
                "compose": web("x").replace("headwater-test/busybox:1", "headwater-test/nope:1"),
                "pull": "never",
            }
        ),
        "image(s) not on this gateway and pull is never: headwater-test/nope:1",
    ),
    "no-services": ("version: '3'\n", "services: expected a mapping of at least one service"),
    "bad-envelope": (json.dumps({"compose": "services: {}", "pull": "sometimes"}), "deploy message: pull:"),
}


def test_refused_deployments_fail_start_nothing_and_leave_others_alone(
    hub: InProcessBroker, deployed_projects: Callable[[str], str], docker_client: Any, tmp_path: Path
) -> None:
    good = unique_app()
    good_project = deployed_projects(good)
    with StatusWatch(hub.port, good) as watch:
        running = watch.wait_for("running", revision=publish(hub.port, good, web("good")))
    good_containers = containers(docker_client, good_project)

    for case, (payload, expected_error) in REFUSED_FILES.items():
        app = unique_app()
        project = deployed_projects(app)
        with StatusWatch(hub.port, app) as watch:
            revision = publish(hub.port, app, payload)
            failed = watch.wait_for("failed", revision=revision)
        assert expected_error in failed["error"], case
        assert "\n" not in failed["error"]
        assert containers(docker_client, project) == {}, case
        assert networks(docker_client, project) == [], case
        assert not (deploy_root(tmp_path) / f"app-{app}").exists(), case

    assert containers(docker_client, good_project) == good_containers
    assert http_get(host_port(running)).strip() == "good"
    assert sorted(path.name for path in deploy_root(tmp_path).iterdir()) == [
        "app-" + good,
        "instance",
        "refused.json",  # the refused revisions, not tried again (missing images are)
    ]
    refused = json.loads((deploy_root(tmp_path) / "refused.json").read_text())["apps"]
    assert len(refused) == len(REFUSED_FILES) - 1


@pytest.mark.parametrize("name", ["Bad_Name", "-dash", "a" * 64, "../x", "sub/../../x", "a.b", "..", "x y"])
def test_bad_app_names_are_refused_with_a_status(hub: InProcessBroker, name: str, tmp_path: Path) -> None:
    topic = f"headwater/deploy/{name}"
    with MosquittoSub(hub.port, f"{topic}/status", qos=1) as sub:
        mosquitto_pub(hub.port, topic, web("x"), qos=1, retain=True)
        [status] = statuses_of(sub.wait_for(1, timeout=WAIT))
    assert status["state"] == "failed"
    assert status["app"] == name
    assert "invalid app name" in status["error"]
    assert "[a-z0-9]" in status["error"] or "a-z 0-9" in status["error"]
    # Nothing reached the file system: no folder for it, inside data_dir or out of it.
    assert sorted(path.name for path in deploy_root(tmp_path).iterdir()) == ["instance"]
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "data" / "x").exists()
    assert plugin_of(hub).statistics().refused_names == 1
    # Clearing the bad message clears its status.
    with MosquittoSub(hub.port, f"{topic}/status", qos=1) as sub:
        mosquitto_pub(hub.port, topic, b"", qos=1, retain=True)
        sub.wait_for(predicate=lambda ms: any(not m.payload for m in ms), timeout=WAIT)


# --- several apps, bursts ------------------------------------------------------------------


def test_two_apps_deployed_at_once_both_come_up(
    hub: InProcessBroker, deployed_projects: Callable[[str], str]
) -> None:
    apps = [unique_app(), unique_app()]
    for app in apps:
        deployed_projects(app)
    with StatusWatch(hub.port, apps[0]) as first, StatusWatch(hub.port, apps[1]) as second:
        revisions = [publish(hub.port, app, web(app)) for app in apps]
        results = [
            watch.wait_for("running", revision=rev)
            for watch, rev in zip((first, second), revisions, strict=True)
        ]
    for app, status in zip(apps, results, strict=True):
        assert http_get(host_port(status)).strip() == app


def test_a_burst_of_five_updates_ends_with_the_last(
    hub: InProcessBroker, deployed_projects: Callable[[str], str]
) -> None:
    app = unique_app()
    deployed_projects(app)
    with StatusWatch(hub.port, app) as watch:
        revisions = [publish(hub.port, app, web(f"v{n}")) for n in range(1, 6)]
        final = watch.wait_for("running", revision=revisions[-1])
        assert http_get(host_port(final)).strip() == "v5"
        # Quiet afterwards: nothing older comes back after the last one ran.
        time.sleep(QUIET)
        assert watch.statuses[-1]["revision"] == revisions[-1]
        assert watch.statuses[-1]["state"] == "running"
    assert plugin_of(hub).statistics().deployments <= 5


# --- restarts -----------------------------------------------------------------------------


def test_restart_and_kill_9_leave_a_running_app_untouched(
    headwater_process: Callable[..., Any],
    deployed_projects: Callable[[str], str],
    docker_client: Any,
    busybox_image: str,
) -> None:
    del busybox_image
    process = headwater_process({"deploy": {"status_interval": "2s"}})
    app = unique_app()
    project = deployed_projects(app)
    with StatusWatch(process.port, app) as watch:
        revision = publish(process.port, app, web("steady"))
        status = watch.wait_for("running", revision=revision)
    before = containers(docker_client, project)
    for how in ("SIGTERM", "SIGKILL"):
        if how == "SIGTERM":
            process.signal(signal.SIGTERM)
            assert process.wait(30) == 0
            process.start()
        else:
            process.restart()  # kill -9, then start
        previous = status
        with StatusWatch(process.port, app) as watch:
            # The restarted Headwater publishes the app's status once it compared it with Docker.
            status = watch.wait_for("running", where=lambda s, p=previous: s["updated_at"] != p["updated_at"])
        assert status["revision"] == revision
        assert status["deployed_at"] == previous["deployed_at"], how
        assert containers(docker_client, project) == before, how
        assert http_get(host_port(status)).strip() == "steady"
    log = process.log_text()
    assert log.count(f"{app} revision {revision} already runs; left untouched") == 2
    assert log.count(f"{app} revision {revision} is up") == 1


# --- Docker going away ------------------------------------------------------------------------


def test_pending_while_the_engine_is_away_then_deployed(
    headwater_factory: BrokerFactory,
    docker_socket_proxy: DockerSocketProxy,
    deployed_projects: Callable[[str], str],
    docker_client: Any,
    busybox_image: str,
) -> None:
    del busybox_image
    hub = start_hub(headwater_factory, {"docker_host": docker_socket_proxy.docker_host})
    with MosquittoSub(hub.port, "headwater/deploy/_plugin/status", qos=1) as plugin:
        plugin.wait_for(predicate=lambda ms: last_state(ms) == "ready")
        docker_socket_proxy.cut()
        app = unique_app()
        project = deployed_projects(app)
        with StatusWatch(hub.port, app) as watch:
            revision = publish(hub.port, app, web("patient"))
            pending = watch.wait_for("pending", revision=revision)
            assert "Docker" in pending["error"]
            assert docker_socket_proxy.docker_host in pending["error"]
            waiting = plugin.wait_for(
                predicate=lambda ms: any(s["state"] == "pending" for s in statuses_of(ms))
            )
            assert any(docker_socket_proxy.docker_host in (s["error"] or "") for s in statuses_of(waiting))
            time.sleep(QUIET)  # still pending, nothing started behind the cut
            assert watch.statuses[-1]["state"] == "pending"
            assert containers(docker_client, project) == {}

            docker_socket_proxy.restore()
            running = watch.wait_for("running", revision=revision)
        plugin.wait_for(predicate=lambda ms: last_state(ms) == "ready")
    assert http_get(host_port(running)).strip() == "patient"


# --- access control -----------------------------------------------------------------------------


def test_a_user_without_rights_can_neither_deploy_nor_read_deploy_topics(
    headwater_factory: BrokerFactory,
    deployed_projects: Callable[[str], str],
    docker_client: Any,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    del busybox_image
    passwords = tmp_path / "passwd"
    for user in ("ops", "mallory"):
        set_password(passwords, user, f"{user}-pw")
    hub = start_hub(
        headwater_factory,
        broker={
            "allow_anonymous": False,
            "password_file": str(passwords),
            "acl": {
                "ops": {"publish": ["headwater/deploy/#"], "subscribe": ["headwater/deploy/#"]},
                "mallory": {"publish": ["sensors/#"], "subscribe": ["sensors/#"]},
            },
        },
    )
    ops = {"username": "ops", "password": "ops-pw"}
    mallory = {"username": "mallory", "password": "mallory-pw"}
    legit, sneaky = unique_app(), unique_app()
    legit_project, sneaky_project = deployed_projects(legit), deployed_projects(sneaky)
    with StatusWatch(hub.port, legit, **ops) as watch:
        watch.wait_for("running", revision=publish(hub.port, legit, web("ops"), **ops))
    legit_containers = containers(docker_client, legit_project)

    with MosquittoSub(hub.port, "headwater/deploy/#", qos=1, **ops) as everything:
        # mallory's publishes are acknowledged (MQTT 3.1.1 has no way to say no) and dropped.
        publish(hub.port, sneaky, web("mallory"), **mallory)
        publish(hub.port, legit, b"", **mallory)
        # mallory reads nothing: the subscription is refused, retained statuses included.
        with MosquittoSub(hub.port, "headwater/deploy/#", "sensors/#", qos=1, **mallory) as spy:
            assert spy.granted_qos == (128, 1)
            time.sleep(QUIET)
            assert spy.messages == []
        with MosquittoSub(hub.port, f"headwater/deploy/{legit}/status", "sensors/#", qos=1, **mallory) as spy:
            assert spy.granted_qos == (128, 1)
            time.sleep(QUIET)
            assert spy.messages == []
        assert everything.messages[0].topic.startswith("headwater/deploy/")  # retained replays
        assert all(
            not message.topic.startswith(f"headwater/deploy/{sneaky}") for message in everything.messages
        )
        assert all(message.retain for message in everything.messages)  # nothing new happened
    assert containers(docker_client, sneaky_project) == {}
    assert containers(docker_client, legit_project) == legit_containers
    assert plugin_of(hub).statistics().apps == 1


# --- AWS: S3 compose files, registry credentials ------------------------------------------


@pytest.mark.aws
def test_compose_file_from_s3(
    headwater_factory: BrokerFactory,
    aws_clients: Any,
    deployed_projects: Callable[[str], str],
    busybox_image: str,
) -> None:
    del busybox_image
    s3 = aws_clients.s3()
    s3.create_bucket(Bucket="gateway-apps")
    s3.put_object(Bucket="gateway-apps", Key="web/compose.yaml", Body=web("from-s3").encode())
    hub = start_hub(headwater_factory, aws={"endpoint_url": aws_clients.endpoint_url})
    app = unique_app()
    deployed_projects(app)
    with StatusWatch(hub.port, app) as watch:
        envelope = {"compose_s3": {"bucket": "gateway-apps", "key": "web/compose.yaml"}}
        running = watch.wait_for("running", revision=publish(hub.port, app, json.dumps(envelope)))
        assert http_get(host_port(running)).strip() == "from-s3"
        missing = {"compose_s3": {"bucket": "gateway-apps", "key": "nope.yaml"}}
        failed = watch.wait_for("failed", revision=publish(hub.port, app, json.dumps(missing)))
    assert "cannot fetch the compose file s3://gateway-apps/nope.yaml" in failed["error"]
    assert failed["services"][0]["state"] == "running"  # the previous version still runs


@pytest.fixture
def tagged_images(docker_client: Any, busybox_image: str) -> Iterator[Callable[[str], str]]:
    """``tag(reference)``: the busybox image under another name (as if pulled from a registry)."""
    tags: list[str] = []

    def tag(reference: str) -> str:
        repository, _, version = reference.rpartition(":")
        docker_client.images.get(busybox_image).tag(repository, version)
        tags.append(reference)
        return reference

    yield tag
    for reference in tags:
        docker_client.images.remove(reference)


def compose_v2_binary() -> Path:
    """The docker compose v2 binary itself (the CLI plugin, or a standalone docker-compose)."""
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    standalone = shutil.which("docker-compose")
    if plugin.exists():
        return plugin
    if standalone:
        return Path(standalone)
    pytest.fail("no docker compose v2 binary (scripts/test installs one)", pytrace=False)


@pytest.mark.aws
def test_registry_credentials_reach_compose_only_through_a_temporary_docker_config(
    *,
    headwater_factory: BrokerFactory,
    aws_clients: Any,
    deployed_projects: Callable[[str], str],
    tagged_images: Callable[[str], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    aws_clients.client("secretsmanager").create_secret(
        Name="gateway/registry", SecretString=json.dumps({"username": "robot", "password": secret})
    )
    private = tagged_images("registry.example.com:5000/hw/web:1")
    ecr_host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    ecr = tagged_images(f"{ecr_host}/hw/web:1")
    # docker compose itself, behind a script that records the DOCKER_CONFIG it was given.
    records = tmp_path / "records"
    records.mkdir()
    compose_binary = compose_v2_binary()
    script = tmp_path / "recording-compose"
    script.write_text(
        "#!/bin/sh\n"
        'if [ -n "${DOCKER_CONFIG:-}" ]; then\n'
        f'  echo "$DOCKER_CONFIG" >> {records}/dirs\n'
        f'  cp "$DOCKER_CONFIG/config.json" {records}/config-$$.json\n'
        "fi\n"
        f'exec {compose_binary} "$@"\n'
    )
    script.chmod(0o700)
    hub = start_hub(
        headwater_factory,
        {
            "compose_command": [str(script)],
            "registries": {
                "private": {"server": "registry.example.com:5000", "secret_id": "gateway/registry"}
            },
        },
        aws={"endpoint_url": aws_clients.endpoint_url},
    )
    app = unique_app()
    deployed_projects(app)
    compose = (
        web("x").replace("headwater-test/busybox:1", private)
        + f"""
  worker:
    image: {ecr}
    command: ["sleep", "3600"]
    init: true
"""
    )
    caplog.set_level("DEBUG")
    with StatusWatch(hub.port, app) as watch:
        envelope = json.dumps({"compose": compose, "registry_auth": ["private"]})
        running = watch.wait_for("running", revision=publish(hub.port, app, envelope))
        unknown = json.dumps({"compose": compose, "registry_auth": ["nobody"]})
        refused = watch.wait_for("failed", revision=publish(hub.port, app, unknown))
    assert "registry_auth: no registry credential named 'nobody'" in refused["error"]
    configs = [json.loads(path.read_text()) for path in sorted(records.glob("config-*.json"))]
    assert configs, "docker compose never saw a DOCKER_CONFIG"
    auths = configs[0]["auths"]
    assert base64.b64decode(auths["registry.example.com:5000"]["auth"]).decode() == f"robot:{secret}"
    assert base64.b64decode(auths[ecr_host]["auth"]).decode().startswith("AWS:")
    for directory in (records / "dirs").read_text().split():
        assert not Path(directory).exists(), "the temporary DOCKER_CONFIG was not deleted"
    # The password is nowhere but there: not in statuses, logs, or under data_dir.
    assert secret not in json.dumps(running)
    assert secret not in caplog.text
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_up_status_down(
    hub: InProcessBroker, deployed_projects: Callable[[str], str], tmp_path: Path, run_cli: Callable[..., Any]
) -> None:
    app = unique_app()
    deployed_projects(app)
    url = f"mqtt://127.0.0.1:{hub.port}"
    compose = tmp_path / "compose.yml"
    compose.write_text(web("cli"))

    up = run_cli("deploy", "up", app, "-f", str(compose), "--url", url)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0].startswith(f"{app}: published revision {revision_of(compose.read_bytes())}")
    assert any(f"  {app}  deploying  " in line for line in lines)
    assert any(f"  {app}  running  " in line and "web=running" in line for line in lines)

    status = run_cli("deploy", "status", app, "--json", "--url", url)
    assert status.returncode == 0, status.stderr
    [document] = [json.loads(line) for line in status.stdout.splitlines()]
    assert (document["app"], document["state"]) == (app, "running")
    assert http_get(host_port(document)).strip() == "cli"
    table = run_cli("deploy", "status", "--url", url)
    assert table.stdout.splitlines()[0].startswith("deploy: ready (Docker ")
    assert any(line.startswith(app) and " running " in line for line in table.stdout.splitlines())

    compose.write_text(web("cli", extra="    privileged: true\n"))
    refused = run_cli("deploy", "up", app, "-f", str(compose), "--pull", "never", "--url", url)
    assert refused.returncode == 1
    assert "failed: services.web.privileged: a privileged container is not allowed" in refused.stderr

    down = run_cli("deploy", "down", app, "--url", url)
    assert down.returncode == 0, down.stderr
    assert any(f"  {app}  removed" in line for line in down.stdout.splitlines())
    gone = run_cli("deploy", "status", app, "--url", url)
    assert gone.returncode == 3, gone.stdout  # a removed app's status is cleared
    assert gone.stdout == f"{app}: no status (not deployed here, removed, or you may not read it)\n"


def test_cli_deploy_errors(
    run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HEADWATER_URL", "mqtt://op:pw@127.0.0.1:1999")
    unreachable = run_cli("deploy", "status")
    assert unreachable.returncode == 1
    assert "cannot connect to mqtt://op@127.0.0.1:1999" in unreachable.stderr  # from $HEADWATER_URL
    assert "pw" not in unreachable.stderr.replace("op@", "")
    bad_url = run_cli("deploy", "status", "--url", "http://x")
    assert bad_url.returncode == 2
    assert "--url: unsupported URL scheme 'http'" in bad_url.stderr
    compose = tmp_path / "c.yml"
    compose.write_text(web("x"))
    bad_name = run_cli("deploy", "up", "../etc", "-f", str(compose))
    assert bad_name.returncode == 2
    assert "invalid app name '../etc'" in bad_name.stderr
    missing = run_cli("deploy", "up", "web", "-f", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2  # an input file that cannot be read is a usage error
    assert "No such file or directory" in missing.stderr
    helped = run_cli("deploy", "--help")
    assert "mosquitto_pub -r -t headwater/deploy/web -f compose.yml" in helped.stdout


# --- the example ---------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "visit-counter" / "compose.yaml"


def test_visit_counter_example(
    hub: InProcessBroker,
    deployed_projects: Callable[[str], str],
    visit_counter_image: str,
) -> None:
    del visit_counter_image
    free_tcp_port = free_port()
    app = unique_app()
    deployed_projects(app)
    compose = EXAMPLE.read_text()
    with StatusWatch(hub.port, app) as watch:
        envelope = {"compose": compose, "env": {"VISIT_COUNTER_PORT": str(free_tcp_port)}}
        running = watch.wait_for("running", revision=publish(hub.port, app, json.dumps(envelope)))
        assert running["services"][0]["health"] == "healthy"
        pages = [http_get(free_tcp_port) for _ in range(3)]
        assert [page.splitlines()[0] for page in pages] == [
            f"Hello from Headwater! This page has been visited {n} times." for n in (1, 2, 3)
        ]
        assert pages[-1].splitlines()[1] == "version: 1"
        envelope["env"]["APP_VERSION"] = "2"
        watch.wait_for("running", revision=publish(hub.port, app, json.dumps(envelope)))
    page = http_get(free_tcp_port)
    assert page.splitlines() == ["Hello from Headwater! This page has been visited 4 times.", "version: 2"]


# --- the Python client ---------------------------------------------------------------------------


def test_deploy_client(hub: InProcessBroker, deployed_projects: Callable[[str], str]) -> None:
    app = unique_app()
    deployed_projects(app)
    seen: list[str] = []
    with DeployClient.connect(f"mqtt://127.0.0.1:{hub.port}") as client:
        revision = client.deploy(app, web("client"), pull="never", env={"UNUSED": "1"})
        final = client.wait(app, revision=revision, on_status=lambda status: seen.append(status.state))
        assert final.state == "running"
        assert seen[-1] == "running"
        assert "deploying" in seen
        assert http_get(int(final.services[0].ports[0].split("->")[0].rsplit(":", 1)[1])).strip() == "client"
        statuses, plugin = client.statuses()
        assert statuses[app].revision == revision
        assert plugin is not None
        assert plugin["state"] == "ready"

        ticks: list[float] = []
        with pytest.raises(DeployTimeoutError, match=r"revision nope did not finish within 1s") as info:
            client.wait(
                app, revision="nope", timeout=1, on_quiet=lambda s, _: ticks.append(s), quiet_every=0.3
            )
        assert info.value.last is None
        assert len(ticks) >= 2

        client.remove(app)
        assert client.wait(app, revision=None).state == "removed"
        with pytest.raises(InvalidDeployRequestError, match="invalid app name"):
            client.deploy("../x", web("x"))
