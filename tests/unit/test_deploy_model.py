"""The deploy vocabulary: app names, deploy messages, revisions, status objects (no I/O)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.clients.deploy import InvalidDeployRequestError, build_payload
from headwater.plugins.deploy.errors import InvalidDeploymentError
from headwater.plugins.deploy.model import (
    ContainerState,
    parse_desired,
    project_name,
    service_problems,
    summarize_services,
)
from headwater.wire.deploy import (
    DeploymentStatus,
    DesiredState,
    S3Reference,
    ServiceStatus,
    app_name_problem,
    format_time,
    revision_of,
)

COMPOSE = "services:\n  web:\n    image: busybox\n"


# --- app names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "a", "0", "visit-counter", "my_app-2", "a" * 63])
def test_valid_app_names(name: str) -> None:
    assert app_name_problem(name) is None
    assert project_name(name) == f"headwater-{name}"


@pytest.mark.parametrize(
    "name",
    ["", "Web", "-web", "_plugin", "a" * 64, "../x", "..", ".", "a/b", "a b", "a.b", "é", "web\n", "a\x00"],
)
def test_invalid_app_names(name: str) -> None:
    problem = app_name_problem(name)
    assert problem is not None
    assert problem.startswith("invalid app name ")
    assert "\n" not in problem.replace(repr(name), "")
    with pytest.raises(InvalidDeploymentError):
        project_name(name)


# --- deploy messages -------------------------------------------------------------------------------


def test_raw_yaml_is_the_compose_file() -> None:
    assert parse_desired(COMPOSE.encode()) == DesiredState(compose=COMPOSE)


def test_a_json_compose_file_is_not_an_envelope() -> None:
    text = json.dumps({"services": {"web": {"image": "busybox"}}})
    assert parse_desired(text.encode()).compose == text


def test_a_yaml_flow_mapping_is_a_compose_file() -> None:
    text = "{services: {web: {image: busybox}}}"
    assert parse_desired(text.encode()).compose == text


def test_the_full_envelope() -> None:
    envelope = {
        "compose": COMPOSE,
        "pull": "never",
        "force": True,
        "env": {"TAG": "2", "_X": ""},
        "registry_auth": ["ghcr", "lan", "ghcr"],
    }
    desired = parse_desired(json.dumps(envelope).encode())
    assert desired == DesiredState(
        compose=COMPOSE, pull="never", force=True, env={"TAG": "2", "_X": ""}, registry_auth=("ghcr", "lan")
    )


def test_an_s3_envelope() -> None:
    envelope = {"compose_s3": {"bucket": "apps", "key": "web.yaml", "version": "v7"}}
    assert parse_desired(json.dumps(envelope).encode()).compose_s3 == S3Reference("apps", "web.yaml", "v7")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"   \n", "the compose file is blank"),
        (b"\xff\xfe", "the deploy message is not UTF-8 text (byte 0)"),
        (
            json.dumps({"compose": COMPOSE, "extra": 1}),
            "deploy message: extra: unknown key (expected one of:",
        ),
        (json.dumps({"compose": COMPOSE, "compose_s3": {}}), "give exactly one of compose and compose_s3"),
        (json.dumps({"compose": ""}), "deploy message: compose: expected a non-empty string"),
        (json.dumps({"compose": COMPOSE, "pull": "often"}), "deploy message: pull: expected one of always"),
        (json.dumps({"compose": COMPOSE, "force": "yes"}), "deploy message: force: expected true or false"),
        (json.dumps({"compose": COMPOSE, "env": []}), "deploy message: env: expected an object"),
        (
            json.dumps({"compose": COMPOSE, "env": {"1X": "a"}}),
            "deploy message: env.1X: invalid variable name",
        ),
        (json.dumps({"compose": COMPOSE, "env": {"X": 1}}), "deploy message: env.X: expected a string value"),
        (
            json.dumps({"compose": COMPOSE, "env": {"DOCKER_HOST": "tcp://evil:2375"}}),
            "env.DOCKER_HOST: reserved",
        ),
        (json.dumps({"compose": COMPOSE, "env": {"COMPOSE_FILE": "/etc/x"}}), "env.COMPOSE_FILE: reserved"),
        (json.dumps({"compose": COMPOSE, "env": {"PATH": "/opt/evil"}}), "env.PATH: reserved"),
        (json.dumps({"compose": COMPOSE, "registry_auth": "ghcr"}), "registry_auth: expected a list"),
        (
            json.dumps({"compose_s3": {"bucket": "b"}}),
            "deploy message: compose_s3.key: expected a non-empty string",
        ),
        (json.dumps({"compose_s3": {"bucket": "b", "key": "k", "acl": 1}}), "compose_s3.acl: unknown key"),
    ],
)
def test_refused_messages(payload: str | bytes, message: str) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    with pytest.raises(InvalidDeploymentError) as info:
        parse_desired(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_size_limit() -> None:
    assert parse_desired(COMPOSE.encode(), max_size=len(COMPOSE)).compose == COMPOSE
    with pytest.raises(
        InvalidDeploymentError, match=r"has 36 bytes, more than deploy.max_compose_size \(35\)"
    ):
        parse_desired(COMPOSE.encode(), max_size=len(COMPOSE) - 1)


# --- revisions ---------------------------------------------------------------------------------------


def test_revision_is_the_same_raw_or_in_an_envelope_and_ignores_force() -> None:
    raw = revision_of(COMPOSE.encode())
    assert raw is not None
    assert len(raw) == 16
    assert revision_of(json.dumps({"compose": COMPOSE}).encode()) == raw
    assert revision_of(json.dumps({"compose": COMPOSE, "force": True}).encode()) == raw
    assert revision_of(json.dumps({"compose": COMPOSE, "pull": "never"}).encode()) != raw
    assert revision_of(json.dumps({"compose": COMPOSE + "\n"}).encode()) != raw
    assert revision_of(b"") is None


def test_an_invalid_message_still_has_a_revision() -> None:
    bad = json.dumps({"compose": COMPOSE, "pull": "often"}).encode()
    assert revision_of(bad) == revision_of(bad)
    assert revision_of(bad) != revision_of(COMPOSE.encode())


@given(
    st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True), st.text(max_size=5), max_size=6)
)
def test_revision_does_not_depend_on_key_order(env: dict[str, str]) -> None:
    forward = json.dumps({"compose": COMPOSE, "env": env, "registry_auth": ["a", "b"]})
    backward = json.dumps(
        {"registry_auth": ["b", "a"], "env": dict(reversed(list(env.items()))), "compose": COMPOSE}
    )
    assert revision_of(forward.encode()) == revision_of(backward.encode())


def test_the_client_builds_what_the_plugin_parses() -> None:
    assert build_payload(COMPOSE) == COMPOSE.encode()
    payload = build_payload(COMPOSE, pull="never", force=True, env={"A": "1"}, registry_auth=["ghcr"])
    assert parse_desired(payload) == DesiredState(
        compose=COMPOSE, pull="never", force=True, env={"A": "1"}, registry_auth=("ghcr",)
    )
    s3 = build_payload(compose_s3=S3Reference("apps", "web.yaml"))
    assert json.loads(s3) == {"compose_s3": {"bucket": "apps", "key": "web.yaml"}}
    with pytest.raises(InvalidDeployRequestError):
        build_payload("  ")
    with pytest.raises(InvalidDeployRequestError):
        build_payload(COMPOSE, compose_s3=S3Reference("a", "b"))


# --- statuses ----------------------------------------------------------------------------------------


def container(
    service: str, state: str = "running", *, health: str | None = None, cid: str = "a"
) -> ContainerState:
    return ContainerState(
        service=service,
        container_id=cid,
        state=state,
        health=health,
        image="img:1",
        restarts=1,
        started_at="",
    )


def test_summarize_services() -> None:
    services = summarize_services(
        ("web", "db", "cache"),
        [
            container("web", cid="1"),
            container("web", "restarting", cid="2"),
            container("db", health="unhealthy"),
            container("extra", "exited"),
        ],
    )
    assert [(s.name, s.state, s.health, s.containers, s.restarts) for s in services] == [
        ("web", "restarting", None, 2, 2),
        ("db", "running", "unhealthy", 1, 1),
        ("cache", "missing", None, 0, 0),
        ("extra", "exited", None, 1, 1),
    ]
    assert service_problems(services) == "web: restarting; db: unhealthy; cache: missing; extra: exited"
    assert [s.settling for s in services] == [True, False, False, False]
    healthy = summarize_services(("web",), [container("web", health="healthy")])
    assert service_problems(healthy) is None


def test_status_json_round_trip() -> None:
    status = DeploymentStatus(
        app="web",
        state="failed",
        revision="0123456789abcdef",
        services=(ServiceStatus("web", "running", "healthy", "img:1", 0, 1, ("127.0.0.1:1->80/tcp",)),),
        error="boom",
        output=("line 1", "line 2"),
        deployed_at="2026-11-30T10:00:00.000Z",
        updated_at="2026-11-30T10:00:01.000Z",
    )
    document = json.loads(status.to_payload())
    assert set(document) == {
        "app", "state", "revision", "services", "error", "output", "deployed_at", "updated_at"
    }  # fmt: skip
    assert DeploymentStatus.from_json_dict(document) == status
    assert status.same_as(DeploymentStatus.from_json_dict({**document, "updated_at": "later"}))
    with pytest.raises(ValueError, match="without a state"):
        DeploymentStatus.from_json_dict({"app": "web"})


def test_format_time() -> None:
    assert format_time(1_796_000_000.1234) == "2026-11-30T00:53:20.123Z"
