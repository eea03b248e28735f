"""The ``deploy`` section of the config: defaults, every key, and the exact one-line errors."""

from __future__ import annotations

from typing import Any

import pytest

from headwater.core.config import ConfigError, DeployConfig, DeployPolicy, RegistryCredential, parse_config


def deploy_of(section: dict[str, Any]) -> DeployConfig:
    return parse_config({"deploy": section}, source="t.yaml").deploy


def error_of(section: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"deploy": section}, source="t.yaml")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults() -> None:
    deploy = deploy_of({})
    assert deploy == DeployConfig()
    assert deploy.status_interval == 30.0
    assert deploy.timeout == 600.0
    assert deploy.docker_host is None
    assert deploy.compose_command is None
    assert deploy.max_compose_size == 256 * 1024
    assert deploy.compose_memory_limit == 512 * 1024 * 1024
    assert deploy.registries == {}
    assert deploy.policy == DeployPolicy()
    assert not any(
        getattr(deploy.policy, switch)
        for switch in (
            "allow_privileged",
            "allow_host_network",
            "allow_external_volumes",
            "allow_external_networks",
            "allow_kernel_tuning",
        )
    )


def test_every_key() -> None:
    deploy = deploy_of(
        {
            "status_interval": "500ms",
            "timeout": "15m",
            "docker_host": "tcp://10.0.0.2:2375",
            "compose_command": ["/usr/local/bin/docker-compose"],
            "max_compose_size": "1MiB",
            "compose_memory_limit": "1GiB",
            "policy": {
                "allow_privileged": True,
                "allow_host_network": True,
                "allow_external_volumes": True,
                "allow_external_networks": True,
                "allow_kernel_tuning": True,
                "allowed_bind_mounts": ["/srv/apps", "/dev/ttyUSB0"],
            },
            "registries": {
                "ghcr": {"server": "ghcr.io", "secret_id": "gateway/ghcr"},
                "lan": {
                    "server": "registry.lan:5000",
                    "secret_id": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:lan-AbCdEf",
                },
            },
        }
    )
    assert deploy.status_interval == 0.5
    assert deploy.timeout == 900.0
    assert deploy.docker_host == "tcp://10.0.0.2:2375"
    assert deploy.compose_command == ("/usr/local/bin/docker-compose",)
    assert deploy.max_compose_size == 1024 * 1024
    assert deploy.compose_memory_limit == 1024**3
    assert deploy.policy == DeployPolicy(
        allow_privileged=True,
        allow_host_network=True,
        allow_external_volumes=True,
        allow_external_networks=True,
        allow_kernel_tuning=True,
        allowed_bind_mounts=("/srv/apps", "/dev/ttyUSB0"),
    )
    assert deploy.registries["ghcr"] == RegistryCredential(
        name="ghcr", server="ghcr.io", secret_id="gateway/ghcr"
    )
    assert deploy.registries["lan"].server == "registry.lan:5000"


@pytest.mark.parametrize(
    "host", ["unix:///var/run/docker.sock", "unix:///run/user/1000/docker.sock", "tcp://[::1]:2375"]
)
def test_docker_hosts(host: str) -> None:
    assert deploy_of({"docker_host": host}).docker_host == host


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"docker_host": "/var/run/docker.sock"},
            (
                "deploy.docker_host: expected unix:///path/to/docker.sock or tcp://host:port, "
                "got '/var/run/docker.sock'"
            ),
        ),
        (
            {"docker_host": "ssh://gateway"},
            "deploy.docker_host: expected unix:///path/to/docker.sock or tcp://host:port, got 'ssh://gateway'",
        ),
        (
            {"compose_command": "docker compose"},
            'deploy.compose_command: expected a list such as ["docker", "compose"], got \'docker compose\'',
        ),
        ({"compose_command": []}, 'deploy.compose_command: must name a program, e.g. ["docker", "compose"]'),
        ({"compose_command": ["docker", ""]}, "deploy.compose_command[1]: must not be empty"),
        ({"status_interval": 0}, "deploy.status_interval: must be greater than zero, got 0"),
        ({"status_interval": "soon"}, "deploy.status_interval: expected a duration such as 30s, got 'soon'"),
        ({"timeout": "-1s"}, "deploy.timeout: must not be negative, got '-1s'"),
        ({"max_compose_size": "100B"}, "deploy.max_compose_size: must be at least 1KiB"),
        ({"compose_memory_limit": "1MiB"}, "deploy.compose_memory_limit: must be at least 64MiB"),
        (
            {"compose_memory_limit": True},
            "deploy.compose_memory_limit: expected a size such as 256MiB, got true",
        ),
        (
            {"policy": {"allow_external_volumes": "yes"}},
            "deploy.policy.allow_external_volumes: expected a boolean, got 'yes'",
        ),
        (
            {"policy": {"allow_kernel_tuning": 1}},
            "deploy.policy.allow_kernel_tuning: expected a boolean, got 1",
        ),
        (
            {"policy": {"allow_docker_socket": True}},
            (
                "deploy.policy.allow_docker_socket: unknown key (expected one of: allow_external_networks, "
                "allow_external_volumes, allow_host_network, allow_kernel_tuning, allow_privileged, "
                "allowed_bind_mounts)"
            ),
        ),
        (
            {"policy": {"allowed_bind_mounts": ["var/run"]}},
            "deploy.policy.allowed_bind_mounts[0]: must be an absolute path, got 'var/run'",
        ),
        (
            {"max_compose_size": "1GiB"},
            "deploy.max_compose_size: must be at most 16MiB (a compose file, not an image)",
        ),
        (
            {"registries": {"lan": {"server": "registry.lan", "password": "hunter2"}}},
            (
                "deploy.registries.lan.password: plain-text credentials are not accepted: store "
                '{"username": ..., "password": ...} in AWS Secrets Manager and give its secret_id'
            ),
        ),
        (
            {"registries": {"lan": {"server": "registry.lan", "auth": "dXNlcjpwYXNz"}}},
            (
                "deploy.registries.lan.auth: plain-text credentials are not accepted: store "
                '{"username": ..., "password": ...} in AWS Secrets Manager and give its secret_id'
            ),
        ),
        (
            {"registries": {"lan": {"server": "registry.lan"}}},
            "deploy.registries.lan.secret_id: required",
        ),
        (
            {"registries": {"lan": {"server": "https://registry.lan", "secret_id": "x"}}},
            (
                "deploy.registries.lan.server: expected a registry host[:port] such as ghcr.io (no scheme), "
                "got 'https://registry.lan'"
            ),
        ),
        (
            {"registries": {"lan": {"server": "registry.lan", "secret_id": "x", "region": "eu-west-1"}}},
            "deploy.registries.lan.region: unknown key (expected one of: secret_id, server)",
        ),
        (
            {"registries": {"no good": {"server": "registry.lan", "secret_id": "x"}}},
            (
                "deploy.registries.no good: invalid registry name 'no good' "
                "(expected 1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
            ),
        ),
        (
            {"registries": {"lan": {"server": "registry.lan", "secret_id": "has space"}}},
            (
                "deploy.registries.lan.secret_id: invalid Secrets Manager secret id 'has space' "
                "(expected a secret name or ARN)"
            ),
        ),
        (
            {"registry": {}},
            (
                "deploy.registry: unknown key (expected one of: compose_command, compose_memory_limit, "
                "docker_host, enabled, max_compose_size, policy, pull, registries, status_interval, timeout)"
            ),
        ),
    ],
)
def test_errors(section: dict[str, Any], message: str) -> None:
    assert error_of(section) == message


def test_the_full_example_has_a_deploy_section_that_loads() -> None:
    from pathlib import Path  # noqa: PLC0415

    from headwater.core.config import load_config  # noqa: PLC0415

    config = load_config(Path(__file__).resolve().parents[2] / "config" / "examples" / "full.yaml")
    assert config.deploy.registries
    assert config.deploy.status_interval == 30.0
