"""Compose checks before anything runs: YAML, the model, the deployment policy (pure functions)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from headwater.broker.config import DeployPolicy
from headwater.plugins.deploy.errors import InvalidDeploymentError
from headwater.plugins.deploy.validate import (
    check_compose_model,
    check_policy,
    ecr_registry,
    images_of,
    parse_compose,
    registry_of,
)

STRICT = DeployPolicy()
# What `docker compose config --format json` (2.40) prints for a service with most risky keys.
RESOLVED: dict[str, Any] = {
    "name": "headwater-web",
    "services": {
        "web": {
            "cap_add": ["NET_ADMIN"],
            "devices": [{"source": "/dev/ttyUSB0", "target": "/dev/ttyUSB0", "permissions": "rwm"}],
            "image": "busybox",
            "network_mode": "host",
            "pid": "host",
            "privileged": True,
            "security_opt": ["seccomp=unconfined"],
            "volumes": [
                {
                    "type": "bind",
                    "source": "/srv/apps/web/data",
                    "target": "/data",
                    "bind": {"create_host_path": True},
                },
                {"type": "bind", "source": "/etc", "target": "/hostetc", "read_only": True},
                {"type": "volume", "source": "named", "target": "/n", "volume": {}},
            ],
        }
    },
    "volumes": {"named": {"name": "headwater-web_named"}},
}


def violations(model: dict[str, Any], policy: DeployPolicy = STRICT, project_dir: str = "/app") -> list[str]:
    try:
        check_policy(model, policy, project_dir=project_dir)
    except InvalidDeploymentError as exc:
        message = str(exc)
    else:
        return []
    assert "\n" not in message
    return message.split("; ")


def service(**keys: Any) -> dict[str, Any]:
    return {"services": {"web": {"image": "busybox", **keys}}}


# --- YAML --------------------------------------------------------------------------------------


def test_parse_compose() -> None:
    assert parse_compose("services:\n  web: {image: busybox}\n") == {
        "services": {"web": {"image": "busybox"}}
    }
    assert (
        parse_compose('{"services": {"web": {"image": "busybox"}}}')["services"]["web"]["image"] == "busybox"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  web: [image: x\n", "invalid YAML in the compose file at line 3, column 1:"),
        ("services: {\n", "invalid YAML in the compose file at line 2, column 1:"),
        ("a: 1\n---\nb: 2\n", "expected one YAML document in the compose file, found 2"),
        ("", "expected one YAML document in the compose file, found 0"),
        ("- web\n", "the compose file must be a mapping with services, got a list"),
        ("just text", "the compose file must be a mapping with services, got a str"),
        ("x: !!python/object:os.system ls\n", "invalid YAML in the compose file"),
    ],
)
def test_refused_yaml(text: str, message: str) -> None:
    with pytest.raises(InvalidDeploymentError) as info:
        parse_compose(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_alias_bomb_is_refused_before_it_is_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 12)]
    with pytest.raises(InvalidDeploymentError, match="YAML aliases"):
        parse_compose("\n".join(lines))


# --- the model -------------------------------------------------------------------------------------


def test_a_good_model() -> None:
    model = {"services": {"web": {"image": "busybox"}, "db": {"image": "postgres:16"}}}
    assert check_compose_model(model) == ("web", "db")
    assert images_of(model) == ("busybox", "postgres:16")
    assert check_compose_model(RESOLVED) == ("web",)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({}, "services: expected a mapping of at least one service, got nothing"),
        ({"services": {}}, "services: expected a mapping of at least one service, got a mapping"),
        ({"services": []}, "services: expected a mapping of at least one service, got a list"),
        ({"services": {"web": None}}, "services.web: expected a mapping, got nothing"),
        ({"services": {"web": {}}}, "services.web.image: every service needs an image"),
        ({"services": {"web": {"image": " "}}}, "services.web.image: every service needs an image"),
        ({"services": {"-web": {"image": "x"}}}, "services.-web: invalid service name"),
        (
            {"services": {"web": {"build": "."}}},
            "services.web.build: building images on the gateway is not supported",
        ),
        (
            {"services": {"web": {"image": "x", "env_file": "/etc/shadow"}}},
            "services.web.env_file: not allowed (it reads files of the gateway); use environment",
        ),
        ({"services": {"web": {"image": "x", "label_file": "l"}}}, "services.web.label_file: not allowed"),
        (
            {"services": {"web": {"image": "x", "extends": {"file": "/etc/other.yml", "service": "a"}}}},
            "services.web.extends.file: not allowed",
        ),
        ({"include": ["other.yml"], "services": {"web": {"image": "x"}}}, "include: not supported"),
    ],
)
def test_refused_models(model: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidDeploymentError) as info:
        check_compose_model(model)
    assert str(info.value).startswith(message)


def test_extending_a_service_of_the_same_file_is_fine() -> None:
    model = {"services": {"base": {"image": "x"}, "web": {"image": "x", "extends": {"service": "base"}}}}
    assert check_compose_model(model) == ("base", "web")


# --- the policy ------------------------------------------------------------------------------------


def test_every_violation_of_the_resolved_model_is_reported() -> None:
    assert violations(RESOLVED) == [
        "services.web.privileged: a privileged container is not allowed (deploy.policy.allow_privileged)",
        (
            "services.web.cap_add: adding capabilities (NET_ADMIN) is not allowed "
            "(deploy.policy.allow_privileged)"
        ),
        (
            "services.web.security_opt: security option 'seccomp=unconfined' is not allowed "
            "(deploy.policy.allow_privileged)"
        ),
        "services.web.pid: the host's pid namespace is not allowed (deploy.policy.allow_privileged)",
        "services.web.network_mode: the host's network is not allowed (deploy.policy.allow_host_network)",
        (
            "services.web.devices[0]: the device of /dev/ttyUSB0 is outside "
            "deploy.policy.allowed_bind_mounts (none)"
        ),
        (
            "services.web.volumes[0]: a bind mount of /srv/apps/web/data is outside "
            "deploy.policy.allowed_bind_mounts (none)"
        ),
        "services.web.volumes[1]: a bind mount of /etc is outside deploy.policy.allowed_bind_mounts (none)",
    ]


def test_a_permissive_policy_allows_what_it_says() -> None:
    policy = DeployPolicy(
        allow_privileged=True, allow_host_network=True, allowed_bind_mounts=("/srv/apps", "/etc")
    )
    assert violations(RESOLVED, policy) == []
    # Devices are allowed by path too, without privileges.
    devices_only = copy.deepcopy(RESOLVED)
    web = devices_only["services"]["web"]
    for key in ("privileged", "cap_add", "security_opt", "pid", "network_mode"):
        del web[key]
    assert (
        violations(devices_only, DeployPolicy(allowed_bind_mounts=("/dev/ttyUSB0", "/srv/apps", "/etc")))
        == []
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"privileged": False}, []),
        ({"privileged": "yes"}, ["services.web.privileged: expected true or false"]),
        ({"security_opt": ["no-new-privileges:true"]}, []),
        ({"security_opt": ["apparmor=unconfined"]}, ["services.web.security_opt: security option"]),
        ({"ipc": "host"}, ["services.web.ipc: the host's ipc namespace"]),
        ({"uts": "host"}, ["services.web.uts: the host's uts namespace"]),
        ({"userns_mode": "host"}, ["services.web.userns_mode: the host's userns namespace"]),
        ({"cgroup": "host"}, ["services.web.cgroup: the host's cgroup namespace"]),
        ({"ipc": "shareable"}, []),
        ({"pid": "container:other-app-db-1"}, ["services.web.pid: joining container:other-app-db-1"]),
        ({"network_mode": "container:x"}, ["services.web.network_mode: joining container:x"]),
        ({"network_mode": "service:db"}, []),
        ({"network_mode": "none"}, []),
        ({"volumes_from": ["container:x"]}, ["services.web.volumes_from[0]: volumes of container:x"]),
        ({"volumes_from": ["db"]}, []),
        ({"device_cgroup_rules": ["c 1:3 mr"]}, ["services.web.device_cgroup_rules: device cgroup rules"]),
        ({"cgroup_parent": "/system"}, ["services.web.cgroup_parent: another cgroup parent"]),
        ({"gpus": "all"}, ["services.web.gpus: GPUs (all)"]),
        ({"runtime": "runc"}, []),
        ({"runtime": "nvidia"}, ["services.web.runtime: runtime 'nvidia'"]),
        (
            {"deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}},
            ["services.web.deploy.resources.reservations.devices: reserving devices"],
        ),
        ({"devices": ["/dev/ttyUSB0:/dev/ttyUSB0"]}, ["services.web.devices[0]: the device of /dev/ttyUSB0"]),
        ({"volumes": ["data:/data", "/cache"]}, []),
        ({"volumes": [{"type": "tmpfs", "target": "/run"}]}, []),
        (
            {"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]},
            ["a bind mount of /var/run/docker.sock"],
        ),
        ({"volumes": ["./data:/data"]}, ["a bind mount of /app/data is outside"]),
        ({"volumes": ["../../etc:/x"]}, ["a bind mount of /etc is outside"]),
        ({"volumes": ["~/.ssh:/x"]}, ["a bind mount of ~/.ssh is outside"]),
        (
            {"volumes": [{"type": "npipe", "source": "x", "target": "y"}]},
            ["mounts of type 'npipe' are not supported"],
        ),
        (
            {"volumes": [{"type": "bind", "target": "/x"}]},
            ["services.web.volumes[0]: a bind mount without a host path"],
        ),
        ({"volumes": [42]}, ["services.web.volumes[0]: expected a mount, got a int"]),
    ],
)
def test_service_keys(keys: dict[str, Any], expected: list[str]) -> None:
    found = violations(service(**keys))
    assert len(found) == len(expected), found
    for violation, start in zip(found, expected, strict=True):
        assert start in violation


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("/srv/apps", True),
        ("/srv/apps/web/data", True),
        ("/srv/apps/../../etc", False),
        ("/srv/apps2", False),
        ("/srv", False),
        ("/srv/apps/./x", True),
        ("/srv//apps/x", True),
    ],
)
def test_bind_mount_paths_are_compared_normalized_and_by_component(source: str, allowed: bool) -> None:
    model = service(volumes=[{"type": "bind", "source": source, "target": "/x"}])
    assert (violations(model, DeployPolicy(allowed_bind_mounts=("/srv/apps/",))) == []) is allowed


def test_relative_bind_mounts_resolve_against_the_project_folder() -> None:
    model = service(volumes=["./data:/data"])
    assert (
        violations(
            model, DeployPolicy(allowed_bind_mounts=("/srv/headwater",)), project_dir="/srv/headwater/x"
        )
        == []
    )


def test_files_and_volumes_on_host_paths_at_the_top_level() -> None:
    model = {
        **service(),
        "secrets": {"token": {"file": "/etc/shadow"}, "inline": {"environment": "TOKEN"}},
        "configs": {"conf": {"file": "./conf.txt"}},
        "volumes": {
            "sneaky": {"driver_opts": {"type": "none", "o": "bind", "device": "/etc"}},
            "plain": {},
        },
        "networks": {"outside": {"name": "host", "external": True}, "lan": {"driver": "bridge"}},
    }
    assert violations(model) == [
        "secrets.token.file: a file of /etc/shadow is outside deploy.policy.allowed_bind_mounts (none)",
        "configs.conf.file: a file of /app/conf.txt is outside deploy.policy.allowed_bind_mounts (none)",
        (
            "volumes.sneaky.driver_opts.device: a volume on a host path of /etc is outside "
            "deploy.policy.allowed_bind_mounts (none)"
        ),
        "networks.outside: the host's network is not allowed (deploy.policy.allow_host_network)",
    ]
    assert (
        violations(model, DeployPolicy(allow_host_network=True, allowed_bind_mounts=("/etc", "/app"))) == []
    )


# --- images and registries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("ghcr.io/acme/web:2", "ghcr.io"),
        ("registry.lan:5000/web", "registry.lan:5000"),
        ("localhost/web", "localhost"),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web@sha256:abc",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        ),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert registry_of(image) == registry


def test_ecr_registry() -> None:
    assert ecr_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com") == ("123456789012", "eu-west-1")
    assert ecr_registry("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com") == ("123456789012", "us-east-1")
    assert ecr_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn") == ("123456789012", "cn-north-1")
    assert ecr_registry("ghcr.io") is None
    assert ecr_registry("12345.dkr.ecr.eu-west-1.amazonaws.com") is None
    assert ecr_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.io") is None
