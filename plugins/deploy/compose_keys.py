"""What the deploy policy says about every key of the compose specification: one table.

Pure data, the single place of truth for :mod:`.validate` (which walks a compose model through
it) and for the table in docs/deploy.md (a test checks that the two agree, and another that
every key of the compose specification has a row here).

The policy is an **allow-list**. Every key of every section is one of:

``allowed``
    any value is fine.
``checked``
    allowed, but its value is checked (``why`` says what; the checks live in :mod:`.validate`).
``switch``
    allowed only when the named ``deploy.policy`` switch is on (``why`` says what it gives).
``refused``
    refused whatever the policy (``why`` says why).

A key that is in no table is refused ("unknown key"), so a key added by a future compose
release is refused until someone classifies it. Extension keys (``x-...``) are allowed
anywhere: compose ignores them.

Sections are named as in the compose specification's key list (tests/data/compose-spec-keys.txt):
``top-level``, ``service``, ``network``, ``volume``, ``secret``, ``config``,
``service.deploy``, ``service.post_start/pre_stop item`` and ``service.develop``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "HOOK",
    "POLICY_SWITCHES",
    "SECTIONS",
    "KeyRule",
    "Nesting",
    "Verdict",
    "policy_markdown",
]

Verdict: TypeAlias = Literal["allowed", "checked", "switch", "refused"]
#: How a key's value holds keys of another section: one definition (``deploy``), a mapping of
#: named definitions (``services``), or a list of definitions (``post_start``).
Nesting: TypeAlias = Literal["one", "named", "list"]

#: The ``deploy.policy`` switches a ``switch`` rule may name (booleans in DeployPolicy).
POLICY_SWITCHES: Final = (
    "allow_privileged",
    "allow_host_network",
    "allow_external_volumes",
    "allow_external_networks",
    "allow_kernel_tuning",
)

HOOK: Final = "service.post_start/pre_stop item"


@dataclass(frozen=True, slots=True)
class KeyRule:
    """The policy for one key of one section."""

    verdict: Verdict
    why: str = ""  # refused: the reason; switch: what it gives; checked: what is checked
    switch: str | None = None  # the deploy.policy switch of a ``switch`` rule
    section: str | None = None  # the section that classifies the keys inside the value
    nesting: Nesting = "one"


def _allowed(why: str = "") -> KeyRule:
    return KeyRule("allowed", why)


def _checked(why: str, *, section: str | None = None, nesting: Nesting = "one") -> KeyRule:
    return KeyRule("checked", why, section=section, nesting=nesting)


def _switch(switch: str, why: str) -> KeyRule:
    return KeyRule("switch", why, switch=switch)


def _refused(why: str) -> KeyRule:
    return KeyRule("refused", why)


_PRIVILEGED: Final = "allow_privileged"
_HOST_NETWORK: Final = "allow_host_network"
_EXTERNAL_VOLUMES: Final = "allow_external_volumes"
_EXTERNAL_NETWORKS: Final = "allow_external_networks"
_KERNEL: Final = "allow_kernel_tuning"

_READS_HOST_FILES: Final = "it reads files of the gateway"
_SWARM_ONLY: Final = "Docker swarm only"

SECTIONS: Final[Mapping[str, Mapping[str, KeyRule]]] = {
    "top-level": {
        "configs": _checked("each config's keys", section="config", nesting="named"),
        "include": _refused("it reads other compose files of the gateway"),
        "models": _refused("AI models run by Docker Model Runner on the host"),
        "name": _allowed("Headwater sets the project name (headwater-<app>) itself"),
        "networks": _checked("each network's keys", section="network", nesting="named"),
        "secrets": _checked("each secret's keys", section="secret", nesting="named"),
        "services": _checked("each service's keys", section="service", nesting="named"),
        "version": _allowed("ignored by compose"),
        "volumes": _checked("each volume's keys", section="volume", nesting="named"),
    },
    "service": {
        "annotations": _switch(_PRIVILEGED, "OCI annotations (some runtimes read them as settings)"),
        "attach": _allowed(),
        "blkio_config": _allowed("I/O limits"),
        "build": _refused("building images on the gateway is not supported: build elsewhere and give image"),
        "cap_add": _switch(_PRIVILEGED, "adding capabilities"),
        "cap_drop": _allowed(),
        "cgroup": _checked("`host` needs allow_privileged"),
        "cgroup_parent": _switch(_PRIVILEGED, "another cgroup parent"),
        "command": _allowed(),
        "configs": _allowed("references to top-level configs"),
        "container_name": _allowed(),
        "cpu_count": _allowed("CPU limits"),
        "cpu_percent": _allowed("CPU limits"),
        "cpu_period": _allowed("CPU limits"),
        "cpu_quota": _allowed("CPU limits"),
        "cpu_rt_period": _switch(_KERNEL, "real-time CPU scheduling"),
        "cpu_rt_runtime": _switch(_KERNEL, "real-time CPU scheduling"),
        "cpu_shares": _allowed("CPU limits"),
        "cpus": _allowed("CPU limits"),
        "cpuset": _allowed("CPU limits"),
        "credential_spec": _refused("Windows credential specs read files or the registry of the host"),
        "depends_on": _allowed(),
        "deploy": _checked("its keys", section="service.deploy"),
        "develop": _refused("develop.watch copies files of the gateway (and Headwater never runs watch)"),
        "device_cgroup_rules": _switch(_PRIVILEGED, "device cgroup rules"),
        "devices": _checked(
            "the host path is (below) one of allowed_bind_mounts (any with allow_privileged), "
            "never the Docker engine's paths"
        ),
        "dns": _allowed(),
        "dns_opt": _allowed(),
        "dns_search": _allowed(),
        "domainname": _allowed(),
        "entrypoint": _allowed(),
        "env_file": _refused(f"{_READS_HOST_FILES}: use environment"),
        "environment": _allowed(),
        "expose": _allowed(),
        "extends": _checked("only services of the same file (no `file`)"),
        "external_links": _refused("it links to containers of other apps"),
        "extra_hosts": _allowed(),
        "gpus": _switch(_PRIVILEGED, "GPUs"),
        "group_add": _allowed(),
        "healthcheck": _allowed(),
        "hostname": _allowed(),
        "image": _allowed("required"),
        "init": _allowed(),
        "ipc": _checked("`host` or `container:...` needs allow_privileged"),
        "isolation": _refused("Windows only"),
        "label_file": _refused(f"{_READS_HOST_FILES}: use labels"),
        "labels": _allowed("Headwater's own labels are applied last and win"),
        "links": _allowed("services of the same app"),
        "logging": _allowed(),
        "mac_address": _allowed(),
        "mem_limit": _allowed("memory limits"),
        "mem_reservation": _allowed("memory limits"),
        "mem_swappiness": _allowed("memory limits"),
        "memswap_limit": _allowed("memory limits"),
        "models": _refused("AI models run by Docker Model Runner on the host"),
        "network_mode": _checked("`host` needs allow_host_network, `container:...` needs allow_privileged"),
        "networks": _allowed("references to top-level networks"),
        "oom_kill_disable": _switch(_KERNEL, "disabling the OOM killer"),
        "oom_score_adj": _checked("below 0 needs allow_kernel_tuning"),
        "pid": _checked("`host` or `container:...` needs allow_privileged"),
        "pids_limit": _allowed("-1 (no limit) is Docker's default anyway"),
        "platform": _allowed(),
        "ports": _allowed(),
        "post_start": _checked("each hook's keys", section=HOOK, nesting="list"),
        "pre_stop": _checked("each hook's keys", section=HOOK, nesting="list"),
        "privileged": _switch(_PRIVILEGED, "a privileged container"),
        "profiles": _allowed(),
        "provider": _refused("it runs a provider program on the host"),
        "pull_policy": _allowed(),
        "pull_refresh_after": _allowed(),
        "read_only": _allowed(),
        "restart": _allowed(),
        "runtime": _checked("a runtime other than runc needs allow_privileged"),
        "scale": _allowed(),
        "secrets": _allowed("references to top-level secrets"),
        "security_opt": _checked("anything but no-new-privileges needs allow_privileged"),
        "shm_size": _allowed(),
        "stdin_open": _allowed(),
        "stop_grace_period": _allowed(),
        "stop_signal": _allowed(),
        "storage_opt": _allowed(),
        "sysctls": _switch(_KERNEL, "kernel parameters (sysctls)"),
        "tmpfs": _allowed(),
        "tty": _allowed(),
        "ulimits": _checked("memlock, rtprio, rttime and nice need allow_kernel_tuning"),
        "use_api_socket": _refused("gives the container the Docker API, i.e. root on the host"),
        "user": _allowed("root in the container is fine, privileges are what matter"),
        "userns_mode": _checked("`host` needs allow_privileged"),
        "uts": _checked("`host` needs allow_privileged"),
        "volumes": _checked(
            "bind mounts: the host path is (below) one of allowed_bind_mounts, never the Docker "
            "engine's paths (named volumes and tmpfs are fine)"
        ),
        "volumes_from": _checked(
            "`container:...` needs allow_external_volumes, services of the app are fine"
        ),
        "working_dir": _allowed(),
    },
    "network": {
        "attachable": _allowed(),
        "driver": _checked(
            "bridge is fine, any other driver (host, macvlan, ipvlan, ...) needs allow_host_network"
        ),
        "driver_opts": _switch(_HOST_NETWORK, "network driver options (a bridge of the host, ...)"),
        "enable_ipv4": _allowed(),
        "enable_ipv6": _allowed(),
        "external": _switch(_EXTERNAL_NETWORKS, "a network outside this app (external)"),
        "internal": _allowed(),
        "ipam": _switch(_HOST_NETWORK, "choosing subnets (they may shadow the gateway's own networks)"),
        "labels": _allowed(),
        "name": _checked(
            "a name other than the app's own (headwater-<app>_<network>) needs allow_external_networks, "
            "`host` needs allow_host_network"
        ),
    },
    "volume": {
        "driver": _checked("local is fine, any other driver needs allow_external_volumes"),
        "driver_opts": _checked(
            "`device` is a host path as for bind mounts, a `type` other than none or tmpfs "
            "(nfs, cifs, a disk) needs allow_external_volumes"
        ),
        "external": _switch(_EXTERNAL_VOLUMES, "a volume outside this app (external)"),
        "labels": _allowed(),
        "name": _checked(
            "a name other than the app's own (headwater-<app>_<volume>) needs allow_external_volumes"
        ),
    },
    "secret": {
        "driver": _refused(_SWARM_ONLY),
        "driver_opts": _refused(_SWARM_ONLY),
        "environment": _refused("it reads the environment of Headwater's docker compose"),
        "external": _refused(f"{_SWARM_ONLY} (a secret of another owner)"),
        "file": _checked(
            "the host path is (below) one of allowed_bind_mounts, never the Docker engine's paths"
        ),
        "labels": _allowed(),
        "name": _allowed(),
        "template_driver": _refused(_SWARM_ONLY),
    },
    "config": {
        "content": _allowed("inline content"),
        "environment": _refused("it reads the environment of Headwater's docker compose"),
        "external": _refused(f"{_SWARM_ONLY} (a config of another owner)"),
        "file": _checked(
            "the host path is (below) one of allowed_bind_mounts, never the Docker engine's paths"
        ),
        "labels": _allowed(),
        "name": _allowed(),
        "template_driver": _refused(_SWARM_ONLY),
    },
    "service.deploy": {
        "endpoint_mode": _allowed(),
        "labels": _allowed(),
        "mode": _allowed(),
        "placement": _allowed(),
        "replicas": _allowed(),
        "resources": _checked("reserving devices (GPUs) needs allow_privileged, limits are fine"),
        "restart_policy": _allowed(),
        "rollback_config": _allowed(),
        "update_config": _allowed(),
    },
    HOOK: {
        "command": _allowed(),
        "environment": _allowed(),
        "privileged": _switch(_PRIVILEGED, "a privileged hook"),
        "user": _allowed("root in the container is fine, privileges are what matter"),
        "working_dir": _allowed(),
    },
    "service.develop": {
        "watch": _refused("it copies files of the gateway into the container"),
    },
}


_VERDICT_TEXT: Final = {"checked": "checked", "switch": "needs `{switch}`", "refused": "**refused**"}


def policy_markdown() -> str:
    """The tables of docs/deploy.md, generated from :data:`SECTIONS` (a test compares them)."""
    lines: list[str] = []
    for section, rules in SECTIONS.items():
        lines += [f"**`{section}`**", "", "| key | rule | why |", "|---|---|---|"]
        allowed = []
        for key, rule in rules.items():
            if rule.verdict == "allowed":
                allowed.append(f"`{key}`")
                continue
            verdict = _VERDICT_TEXT[rule.verdict].format(switch=rule.switch)
            lines.append(f"| `{key}` | {verdict} | {rule.why} |")
        if allowed:
            lines.append(f"| {', '.join(allowed)} | allowed | |")
        lines.append("")
    return "\n".join(lines)
