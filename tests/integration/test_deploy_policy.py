"""The deploy policy end to end: what the attacker review got through is refused, and stays so.

Real broker, real dockerd, real docker compose v2 (behind a script that records every run, so a
test can say "docker compose never ran for this app"), real mosquitto clients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.integration.test_deploy import (
    StatusWatch,
    compose_v2_binary,
    containers,
    deploy_root,
    networks,
    publish,
    start_hub,
    unique_app,
    web,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def compose_runs(tmp_path: Path) -> tuple[Path, Callable[[str], list[str]]]:
    """``(program, runs_of)``: docker compose behind a script that logs its arguments."""
    log = tmp_path / "compose-runs"
    log.touch()
    script = tmp_path / "recording-compose"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {compose_v2_binary()} "$@"\n')
    script.chmod(0o700)

    def runs_of(app: str) -> list[str]:
        return [line for line in log.read_text().splitlines() if f"--project-name headwater-{app} " in line]

    return script, runs_of


@pytest.fixture
def hub(
    headwater_factory: BrokerFactory, busybox_image: str, compose_runs: tuple[Path, Any]
) -> InProcessBroker:
    """A Headwater whose policy allows bind mounts of anything: the engine must stay out anyway."""
    del busybox_image
    program, _ = compose_runs
    return start_hub(
        headwater_factory, {"compose_command": [str(program)], "policy": {"allowed_bind_mounts": ["/"]}}
    )


def with_service_keys(lines: str) -> str:
    return web("x", extra=lines)


# The attacker review's bomb, with extension keys (x-0 ... x-7): compose ignores them, so only
# the alias budget stands between this file and docker compose config.
ALIAS_BOMB = "\n".join(
    ["services:", "  web:", "    image: headwater-test/busybox:1", "x-0: &a0 [x,x,x,x,x,x,x,x,x]"]
    + [f"x-{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 8)]
)

REFUSED: dict[str, tuple[str, str]] = {
    "use-api-socket": (
        with_service_keys("    use_api_socket: true\n"),
        "services.web.use_api_socket: refused (gives the container the Docker API, i.e. root on the host)",
    ),
    "privileged-hook": (
        with_service_keys("    post_start:\n      - command: ['id']\n        privileged: true\n"),
        (
            "services.web.post_start[0].privileged: a privileged hook is not allowed "
            "(deploy.policy.allow_privileged)"
        ),
    ),
    "external-volume": (
        (
            with_service_keys("    volumes: ['shared:/data']\n")
            + "volumes:\n  shared: {external: true, name: other-app_data}\n"
        ),
        (
            "volumes.shared.external: a volume outside this app (external) is not allowed "
            "(deploy.policy.allow_external_volumes)"
        ),
    ),
    "docker-socket-bind": (
        with_service_keys("    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n"),
        (
            "services.web.volumes[0]: refused (a bind mount of /var/run/docker.sock reaches "
            "/var/run/docker.sock, which controls the host, whatever deploy.policy.allowed_bind_mounts says)"
        ),
    ),
    "root-bind": (
        with_service_keys("    volumes: ['/:/host']\n"),
        "services.web.volumes[0]: refused (a bind mount of / reaches /var/run/docker.sock",
    ),
    "alias-bomb": (ALIAS_BOMB, "compose file: YAML aliases expand to more than 100000 nodes"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_attacker_review_got_through_is_refused(
    case: str,
    hub: InProcessBroker,
    deployed_projects: Callable[[str], str],
    docker_client: Any,
    tmp_path: Path,
) -> None:
    payload, expected = REFUSED[case]
    app = unique_app()
    project = deployed_projects(app)
    volumes_before = {volume.name for volume in docker_client.volumes.list()}
    with StatusWatch(hub.port, app) as watch:
        revision = publish(hub.port, app, payload)
        failed = watch.wait_for("failed", revision=revision)
    assert expected in failed["error"], failed["error"]
    assert "\n" not in failed["error"]
    assert containers(docker_client, project) == {}
    assert networks(docker_client, project) == []
    assert {volume.name for volume in docker_client.volumes.list()} <= volumes_before
    assert not (deploy_root(tmp_path) / f"app-{app}").exists()


def test_the_alias_bomb_never_reaches_docker_compose(
    hub: InProcessBroker, deployed_projects: Callable[[str], str], compose_runs: tuple[Path, Any]
) -> None:
    _, runs_of = compose_runs
    app = unique_app()
    deployed_projects(app)
    with StatusWatch(hub.port, app) as watch:
        failed = watch.wait_for("failed", revision=publish(hub.port, app, ALIAS_BOMB))
    assert failed["error"].endswith(': a "billion laughs" document)')
    assert runs_of(app) == []  # not config, not even a down to clean up


def test_refused_deployments_are_not_tried_again_after_a_restart(
    headwater_process: Callable[..., Any],
    deployed_projects: Callable[[str], str],
    compose_runs: tuple[Path, Callable[[str], list[str]]],
    busybox_image: str,
) -> None:
    del busybox_image
    program, runs_of = compose_runs
    process = headwater_process({"deploy": {"status_interval": "2s", "compose_command": [str(program)]}})
    bomb, host_network = unique_app(), unique_app()
    for app in (bomb, host_network):
        deployed_projects(app)
    # Refused only once docker compose config has resolved ${MODE}: compose runs once for it.
    resolved_later = json.dumps(
        {"compose": with_service_keys("    network_mode: ${MODE}\n"), "env": {"MODE": "host"}}
    )
    payloads = {bomb: ALIAS_BOMB, host_network: resolved_later}
    first: dict[str, dict[str, Any]] = {}
    for app, payload in payloads.items():
        with StatusWatch(process.port, app) as watch:
            first[app] = watch.wait_for("failed", revision=publish(process.port, app, payload))
    assert "billion laughs" in first[bomb]["error"]
    assert first[host_network]["error"].startswith(
        "services.web.network_mode: the host's network is not allowed (deploy.policy.allow_host_network)"
    )
    assert runs_of(bomb) == []
    assert [run.split()[-3:] for run in runs_of(host_network)] == [["config", "--format", "json"]]

    process.restart()  # kill -9 and start: the retained messages are read again
    after_restart: dict[str, dict[str, Any]] = {}
    for app in payloads:
        with StatusWatch(process.port, app) as watch:
            again = watch.wait_for(
                "failed", where=lambda s, before=first[app]: s["updated_at"] != before["updated_at"]
            )
        assert (again["revision"], again["error"]) == (first[app]["revision"], first[app]["error"])
        after_restart[app] = again
    assert runs_of(bomb) == []
    assert len(runs_of(host_network)) == 1  # still the first one only
    log = process.log_text()
    for app, status in first.items():
        assert f"deploy: {app} revision {status['revision']} was refused: not tried again" in log

    # The same message with force tries again (and is refused again, by the same check).
    forced = json.dumps({**json.loads(resolved_later), "force": True})
    with StatusWatch(process.port, host_network) as watch:
        revision = publish(process.port, host_network, forced)
        watch.wait_for(
            "failed",
            revision=revision,
            where=lambda s: (
                s["updated_at"]
                not in {first[host_network]["updated_at"], after_restart[host_network]["updated_at"]}
            ),
        )
    assert len(runs_of(host_network)) == 2
