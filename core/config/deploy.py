"""The ``deploy`` section: how compose files are run and what their policy lets them ask for.

Owns: the pull policy, the docker host and compose command, the size and memory limits, the
policy switches and allowed bind mounts, and the registry credentials (Secrets Manager
references only; plain-text credentials are refused). It must never read a compose file nor
decide whether one is allowed: headwater.plugins.deploy applies the policy built here.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from headwater.core.config.errors import ConfigError
from headwater.core.config.reader import (
    _NAME,
    _bool,
    _duration,
    _expected,
    _list_of,
    _matching,
    _nonempty_str,
    _one_of,
    _Section,
    _size,
    _str,
)
from headwater.core.config.schema import DeployConfig, DeployPolicy, RegistryCredential
from headwater.core.config.units import _KiB, _MiB


def _absolute_path(value: object, path: str) -> str:
    mount = _nonempty_str(value, path)
    if not mount.startswith("/"):
        raise ConfigError(path, f"must be an absolute path, got {mount!r}")
    return mount


_PULL_POLICIES: Final[tuple[Literal["always", "missing", "never"], ...]] = (
    "always",
    "missing",
    "never",
)


_DEPLOY_KEYS: Final = (
    "enabled",
    "pull",
    "policy",
    "status_interval",
    "timeout",
    "docker_host",
    "compose_command",
    "max_compose_size",
    "compose_memory_limit",
    "registries",
)
_DEPLOY_POLICY_SWITCHES: Final = (
    "allow_privileged",
    "allow_host_network",
    "allow_external_volumes",
    "allow_external_networks",
    "allow_kernel_tuning",
)
_DOCKER_HOST: Final = re.compile(
    r"unix:///[^\0]+|tcp://[A-Za-z0-9.-]+:[0-9]{1,5}|tcp://\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}"
)
_REGISTRY_SERVER: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?"
)
# Keys people write when they mean to put a password in the config: refused with a pointer to
# Secrets Manager rather than "unknown key".
_PLAIN_SECRET_KEYS: Final = ("username", "password", "auth", "token", "identitytoken", "registrytoken")


def _docker_host(value: object, path: str) -> str:
    text = _str(value, path)
    if not _DOCKER_HOST.fullmatch(text):
        raise _expected(path, "unix:///path/to/docker.sock or tcp://host:port", value)
    return text


def _command(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _expected(path, 'a list such as ["docker", "compose"]', value)
    if not value:
        raise ConfigError(path, 'must name a program, e.g. ["docker", "compose"]')
    return tuple(_nonempty_str(item, f"{path}[{index}]") for index, item in enumerate(value))


def _registry(name: str, value: object, path: str) -> RegistryCredential:
    registry = _Section(value, path, keys=None)
    for key in _PLAIN_SECRET_KEYS:
        if key in registry:
            raise ConfigError(
                registry.at(key),
                "plain-text credentials are not accepted: store "
                '{"username": ..., "password": ...} in AWS Secrets Manager and give its secret_id',
            )
    registry.refuse_unknown(("server", "secret_id"))
    server = registry.require("server", _str)
    if not _REGISTRY_SERVER.fullmatch(server):
        raise ConfigError(
            registry.at("server"),
            f"expected a registry host[:port] such as ghcr.io (no scheme), got {server!r}",
        )
    return RegistryCredential(
        name=name,
        server=server,
        secret_id=registry.require(
            "secret_id",
            _matching(r"[A-Za-z0-9/_+=.@:-]{1,2048}", "Secrets Manager secret id", "a secret name or ARN"),
        ),
    )


def _deploy(top: _Section) -> DeployConfig:
    deploy = top.section("deploy", _DEPLOY_KEYS)
    policy = deploy.section("policy", (*_DEPLOY_POLICY_SWITCHES, "allowed_bind_mounts"))
    return DeployConfig(
        enabled=deploy.get("enabled", _bool, default=True),
        pull=deploy.get("pull", _one_of(_PULL_POLICIES), "missing"),
        policy=DeployPolicy(
            allow_privileged=policy.get("allow_privileged", _bool, default=False),
            allow_host_network=policy.get("allow_host_network", _bool, default=False),
            allow_external_volumes=policy.get("allow_external_volumes", _bool, default=False),
            allow_external_networks=policy.get("allow_external_networks", _bool, default=False),
            allow_kernel_tuning=policy.get("allow_kernel_tuning", _bool, default=False),
            allowed_bind_mounts=policy.get("allowed_bind_mounts", _list_of(_absolute_path), ()),
        ),
        status_interval=deploy.get("status_interval", _duration(positive=True), 30.0),
        timeout=deploy.get("timeout", _duration(positive=True), 600.0),
        docker_host=deploy.optional("docker_host", _docker_host),
        compose_command=deploy.optional("compose_command", _command),
        max_compose_size=deploy.get(
            "max_compose_size",
            _size(_KiB, 16 * _MiB, why_maximum=" (a compose file, not an image)"),
            256 * _KiB,
        ),
        compose_memory_limit=deploy.get(
            "compose_memory_limit",
            _size(64 * _MiB),
            512 * _MiB,
        ),
        registries={
            name: _registry(name, value, path)
            for name, value, path in deploy.named("registries", what="registry", pattern=_NAME)
        },
    )
