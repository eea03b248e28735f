"""Compose checks before anything runs: YAML, the model, the deployment policy (pure functions)."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from headwater.core.config import DeployPolicy
from headwater.plugins.deploy.compose_keys import POLICY_SWITCHES, SECTIONS, policy_markdown
from headwater.plugins.deploy.errors import InvalidDeploymentError
from headwater.plugins.deploy.validate import (
    MAX_EXPANDED_NODES,
    VALUE_CHECKS,
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


def test_many_aliases_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 12)]
    with pytest.raises(InvalidDeploymentError, match="compose file: 110 YAML aliases"):
        parse_compose("\n".join(lines))


def alias_bomb(*, key: str = "x") -> str:
    """The 386-byte document of the attacker review (72 aliases, 43 million nodes expanded).

    8 levels, each list repeating the previous anchor nine times.
    """
    lines = ["services:", "  web:", "    image: busybox", f"{key}0: &a0 [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{key}{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 8)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", ["x", "x-"])
def test_the_386_byte_alias_bomb_is_refused_without_expanding_it(key: str) -> None:
    bomb = alias_bomb(key=key)
    if key == "x":
        assert len(bomb.encode()) == 386
    with pytest.raises(InvalidDeploymentError) as info:
        parse_compose(bomb, max_size=256 * 1024)
    match = re.fullmatch(
        rf"compose file: YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes "
        r'\((\d+): a "billion laughs" document\)',
        str(info.value),
    )
    assert match is not None, str(info.value)
    assert int(match[1]) > 9**8


def test_aliases_that_expand_past_the_size_limit_are_refused() -> None:
    # Few nodes, long scalars: 4 levels of 4 make 256 copies of a 1 KiB string.
    lines = ['a0: &a0 "' + "y" * 1024 + '"']
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 4) + "]" for n in range(1, 5)]
    lines += ["services: {web: {image: busybox}}"]
    text = "\n".join(lines)
    with pytest.raises(
        InvalidDeploymentError,
        match=r"aliases expand to \d+ bytes, more than deploy.max_compose_size \(100000\)",
    ):
        parse_compose(text, max_size=100_000)
    assert parse_compose(text, max_size=1_000_000)["services"]


def test_ordinary_anchors_and_merge_keys_pass() -> None:
    text = (
        "x-common: &common {image: busybox, restart: always}\n"
        "services:\n  a: {<<: *common}\n  b:\n    <<: *common\n    command: [sleep, '1']\n"
    )
    assert parse_compose(text, max_size=1024)["services"]["b"]["image"] == "busybox"


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(InvalidDeploymentError, match="alias refers to a node that contains it"):
        parse_compose("services: &s {web: *s}\n")


def test_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(InvalidDeploymentError, match="compose file: YAML nested deeper than 64 levels"):
        parse_compose("services: " + "[" * 5000 + "]" * 5000 + "\n")


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
            "services.web.build: refused (building images on the gateway is not supported",
        ),
        (
            {"services": {"web": {"image": "x", "env_file": "/etc/shadow"}}},
            "services.web.env_file: refused (it reads files of the gateway: use environment)",
        ),
        (
            {"services": {"web": {"image": "x", "label_file": "l"}}},
            "services.web.label_file: refused (it reads files of the gateway",
        ),
        (
            {"services": {"web": {"image": "x", "extends": {"file": "/etc/other.yml", "service": "a"}}}},
            "services.web.extends.file: refused (it reads other files of the gateway",
        ),
        (
            {"include": ["other.yml"], "services": {"web": {"image": "x"}}},
            "include: refused (it reads other compose files of the gateway)",
        ),
        (
            {"services": {"web": {"image": "x", "use_api_socket": True}}},
            (
                "services.web.use_api_socket: refused (gives the container the Docker API, i.e. root "
                "on the host)"
            ),
        ),
        (
            {"services": {"web": {"image": "x", "frobnicate": 1}}},
            "services.web.frobnicate: refused (unknown key in a service section",
        ),
    ],
)
def test_refused_models(model: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidDeploymentError) as info:
        check_compose_model(model)
    assert str(info.value).startswith(message)


def test_extending_a_service_of_the_same_file_is_fine() -> None:
    model = {"services": {"base": {"image": "x"}, "web": {"image": "x", "extends": {"service": "base"}}}}
    assert check_compose_model(model) == ("base", "web")


def test_the_file_as_received_is_checked_for_keys_not_values() -> None:
    # ${VAR} values are only known after docker compose config: switches and paths wait for it.
    model = service(privileged="${PRIVILEGED}", volumes=["${DIR}:/x"], use_api_socket=False)
    model["x-anything"] = {"frobnicate": True}
    model["services"]["web"]["x-extension"] = {"use_api_socket": True}
    assert check_compose_model(model) == ("web",)


# --- the classification table ------------------------------------------------------------------

SPEC_KEYS = Path(__file__).resolve().parents[1] / "data" / "compose-spec-keys.txt"


def spec_keys() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in SPEC_KEYS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def test_every_key_of_the_compose_specification_is_classified() -> None:
    spec = spec_keys()
    assert sum(len(keys) for keys in spec.values()) > 140  # the file was read
    unclassified = [
        f"{section}.{key}"
        for section, keys in spec.items()
        for key in keys
        if key not in SECTIONS.get(section, {})
    ]
    assert unclassified == []
    # ... and the table classifies nothing that is not in the specification (no stale rows).
    assert {section: sorted(rules) for section, rules in SECTIONS.items()} == {
        section: sorted(keys) for section, keys in spec.items()
    }


def test_every_rule_is_complete() -> None:
    policy_fields = {field.name for field in dataclasses.fields(DeployPolicy)}
    checked = set()
    for section, rules in SECTIONS.items():
        for key, rule in rules.items():
            if rule.verdict == "switch":
                assert rule.switch in POLICY_SWITCHES, (section, key)
            if rule.verdict in {"switch", "refused", "checked"}:
                assert rule.why, (section, key)
            assert "; " not in rule.why  # violations are joined with "; "
            if rule.verdict == "checked":
                checked.add((section, key))
            if rule.section is not None:
                assert rule.section in SECTIONS
    assert set(POLICY_SWITCHES) <= policy_fields
    assert checked == set(VALUE_CHECKS)


def test_the_docs_show_the_table_of_the_code() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    assert policy_markdown() in docs


# --- the policy ------------------------------------------------------------------------------------


def test_every_violation_of_the_resolved_model_is_reported() -> None:
    assert violations(RESOLVED) == [
        (
            "services.web.cap_add: adding capabilities (NET_ADMIN) is not allowed "
            "(deploy.policy.allow_privileged)"
        ),
        (
            "services.web.devices[0]: the device of /dev/ttyUSB0 is outside "
            "deploy.policy.allowed_bind_mounts (none)"
        ),
        "services.web.network_mode: the host's network is not allowed (deploy.policy.allow_host_network)",
        "services.web.pid: the host's pid namespace is not allowed (deploy.policy.allow_privileged)",
        "services.web.privileged: a privileged container is not allowed (deploy.policy.allow_privileged)",
        (
            "services.web.security_opt: security option 'seccomp=unconfined' is not allowed "
            "(deploy.policy.allow_privileged)"
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


EVERYTHING = DeployPolicy(
    allow_privileged=True,
    allow_host_network=True,
    allow_external_volumes=True,
    allow_external_networks=True,
    allow_kernel_tuning=True,
    allowed_bind_mounts=("/",),
)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"privileged": False}, []),
        ({"privileged": "yes"}, ["services.web.privileged: a privileged container (yes) is not allowed"]),
        ({"security_opt": ["no-new-privileges:true"]}, []),
        ({"security_opt": ["apparmor=unconfined"]}, ["services.web.security_opt: security option"]),
        ({"ipc": "host"}, ["services.web.ipc: the host's ipc namespace"]),
        ({"uts": "host"}, ["services.web.uts: the host's uts namespace"]),
        ({"userns_mode": "host"}, ["services.web.userns_mode: the host's userns namespace"]),
        ({"cgroup": "host"}, ["services.web.cgroup: the host's cgroup namespace"]),
        ({"cgroup": "private"}, []),
        ({"ipc": "shareable"}, []),
        ({"pid": "container:other-app-db-1"}, ["services.web.pid: joining container:other-app-db-1"]),
        ({"network_mode": "container:x"}, ["services.web.network_mode: joining container:x"]),
        ({"network_mode": "service:db"}, []),
        ({"network_mode": "none"}, []),
        (
            {"volumes_from": ["container:x"]},
            [
                (
                    "services.web.volumes_from[0]: volumes of container:x is not allowed "
                    "(deploy.policy.allow_external_volumes)"
                )
            ],
        ),
        ({"volumes_from": ["db"]}, []),
        ({"device_cgroup_rules": ["c 1:3 mr"]}, ["services.web.device_cgroup_rules: device cgroup rules"]),
        ({"cgroup_parent": "/system"}, ["services.web.cgroup_parent: another cgroup parent"]),
        ({"gpus": "all"}, ["services.web.gpus: GPUs (all)"]),
        ({"annotations": {"run.oci.x": "1"}}, ["services.web.annotations: OCI annotations"]),
        ({"runtime": "runc"}, []),
        ({"runtime": "nvidia"}, ["services.web.runtime: runtime 'nvidia'"]),
        (
            {"deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}},
            ["services.web.deploy.resources.reservations.devices: reserving devices"],
        ),
        ({"deploy": {"resources": {"limits": {"memory": "10485760", "pids": 100}}, "replicas": 2}}, []),
        ({"devices": ["/dev/ttyUSB0:/dev/ttyUSB0"]}, ["services.web.devices[0]: the device of /dev/ttyUSB0"]),
        ({"volumes": ["data:/data", "/cache"]}, []),
        ({"volumes": [{"type": "tmpfs", "target": "/run"}]}, []),
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
        # Kernel and cgroup knobs.
        (
            {"sysctls": {"net.ipv4.ip_forward": 1}},
            [
                (
                    "services.web.sysctls: kernel parameters (sysctls) (net.ipv4.ip_forward) is not allowed "
                    "(deploy.policy.allow_kernel_tuning)"
                )
            ],
        ),
        (
            {"oom_kill_disable": True},
            [
                (
                    "services.web.oom_kill_disable: disabling the OOM killer is not allowed "
                    "(deploy.policy.allow_kernel_tuning)"
                )
            ],
        ),
        ({"oom_kill_disable": False}, []),
        (
            {"oom_score_adj": -500},
            ["services.web.oom_score_adj: protecting the container from the OOM killer (-500)"],
        ),
        ({"oom_score_adj": 500}, []),
        ({"cpu_rt_runtime": 95000}, ["services.web.cpu_rt_runtime: real-time CPU scheduling"]),
        ({"ulimits": {"nofile": {"soft": 65536, "hard": 65536}, "nproc": 100}}, []),
        (
            {"ulimits": {"memlock": -1}},
            [
                (
                    "services.web.ulimits.memlock: the memlock limit is not allowed "
                    "(deploy.policy.allow_kernel_tuning)"
                )
            ],
        ),
        ({"pids_limit": -1, "cpus": 0.5, "mem_limit": "64m", "blkio_config": {"weight": 10}}, []),
        # Harmless.
        ({"extra_hosts": ["gw:10.0.0.1"], "dns": ["1.1.1.1"], "user": "root", "links": ["db"]}, []),
        # Hooks follow the service rules.
        ({"post_start": [{"command": ["id"], "user": "root"}]}, []),
        (
            {"post_start": [{"command": ["id"], "privileged": True}]},
            [
                (
                    "services.web.post_start[0].privileged: a privileged hook is not allowed "
                    "(deploy.policy.allow_privileged)"
                )
            ],
        ),
        (
            {"pre_stop": [{"command": ["id"]}, {"command": ["id"], "privileged": True}]},
            ["services.web.pre_stop[1].privileged: a privileged hook is not allowed"],
        ),
        (
            {"post_start": [{"command": ["id"], "use_api_socket": True}]},
            [
                (
                    "services.web.post_start[0].use_api_socket: refused (unknown key in a "
                    "service.post_start/pre_stop item section"
                )
            ],
        ),
        # Refused whatever the policy.
        (
            {"use_api_socket": True},
            [
                (
                    "services.web.use_api_socket: refused (gives the container the Docker API, i.e. root "
                    "on the host)"
                )
            ],
        ),
        ({"use_api_socket": False}, []),
        (
            {"provider": {"type": "model"}},
            ["services.web.provider: refused (it runs a provider program on the host)"],
        ),
        (
            {"external_links": ["other-app-db-1:db"]},
            ["services.web.external_links: refused (it links to containers of other apps)"],
        ),
        ({"credential_spec": {"file": "x.json"}}, ["services.web.credential_spec: refused"]),
        (
            {"develop": {"watch": [{"path": "/", "action": "sync", "target": "/host"}]}},
            ["services.web.develop: refused"],
        ),
        ({"models": ["llm"]}, ["services.web.models: refused"]),
        ({"isolation": "process"}, ["services.web.isolation: refused"]),
    ],
)
def test_service_keys(keys: dict[str, Any], expected: list[str]) -> None:
    found = violations(service(**keys))
    assert len(found) == len(expected), found
    for violation, start in zip(found, expected, strict=True):
        assert start in violation
    permanent = ("refused", "expected a mount", "not supported", "without a host path", "~/")
    if not any(marker in line for line in expected for marker in permanent):
        # Every switch-family refusal goes away with every switch on.
        assert violations(service(**keys), EVERYTHING) == []


@pytest.mark.parametrize(
    "mount",
    [
        "/var/run/docker.sock:/var/run/docker.sock",
        "/run/docker.sock:/d.sock",
        "/var/run/docker.sock/../docker.sock:/d.sock",
        "/run/containerd/containerd.sock:/c.sock",
        "/var/lib/docker:/engine",
        "/var/lib/docker/volumes/other_app_data/_data:/steal",
        "/:/host",
        "/var:/host-var",
        "/run:/host-run",
        "/proc:/host-proc",
        "/srv/headwater/data:/x",  # a protected path passed by the caller
    ],
)
def test_the_engine_is_never_reachable_whatever_the_allowed_mounts(mount: str) -> None:
    source = mount.rsplit(":", 1)[0]
    for model in (
        service(volumes=[mount]),
        service(volumes=[{"type": "bind", "source": source, "target": "/x"}]),
        service(devices=[f"{source}:/dev/x"]),
        {**service(), "secrets": {"s": {"file": source}}},
        {**service(), "configs": {"c": {"file": source}}},
        {**service(), "volumes": {"v": {"driver_opts": {"type": "none", "o": "bind", "device": source}}}},
    ):
        with pytest.raises(InvalidDeploymentError) as info:
            check_policy(model, EVERYTHING, project_dir="/app", protected_paths=("/srv/headwater",))
        assert "which controls the host, whatever deploy.policy.allowed_bind_mounts says" in str(info.value)
        assert ": refused (" in str(info.value)


def test_paths_beside_the_engine_are_fine() -> None:
    model = service(volumes=["/var/lib/dockerish:/x", "/srv/apps:/y", "/run/user/1000/app:/z"])
    # Compared by component: /var/lib/dockerish is not /var/lib/docker.
    assert violations(model, DeployPolicy(allowed_bind_mounts=("/",))) == []


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
        "configs": {"conf": {"file": "./conf.txt"}, "text": {"content": "hello"}},
        "volumes": {
            "sneaky": {"driver_opts": {"type": "none", "o": "bind", "device": "/etc"}},
            "plain": {},
        },
        "networks": {"outside": {"name": "host", "external": True}, "lan": {"driver": "bridge"}},
    }
    assert violations(model) == [
        "secrets.token.file: a file of /etc/shadow is outside deploy.policy.allowed_bind_mounts (none)",
        "secrets.inline.environment: refused (it reads the environment of Headwater's docker compose)",
        "configs.conf.file: a file of /app/conf.txt is outside deploy.policy.allowed_bind_mounts (none)",
        (
            "volumes.sneaky.driver_opts.device: a volume on a host path of /etc is outside "
            "deploy.policy.allowed_bind_mounts (none)"
        ),
        "networks.outside.name: the host's network is not allowed (deploy.policy.allow_host_network)",
        (
            "networks.outside.external: a network outside this app (external) is not allowed "
            "(deploy.policy.allow_external_networks)"
        ),
    ]
    del model["secrets"]["inline"]
    permissive = DeployPolicy(
        allow_host_network=True, allow_external_networks=True, allowed_bind_mounts=("/etc", "/app")
    )
    assert violations(model, permissive) == []


# What `docker compose config --format json` (2.40) prints for volumes and networks of the
# project "headwater-web": each has its own name, prefixed with the project.
OWN = {
    "name": "headwater-web",
    **service(
        volumes=[{"type": "volume", "source": "data", "target": "/d", "volume": {}}], networks={"lan": None}
    ),
    "volumes": {"data": {"name": "headwater-web_data"}},
    "networks": {
        "lan": {"name": "headwater-web_lan", "ipam": {}},
        "default": {"name": "headwater-web_default", "ipam": {}},
    },
}


def with_top(kind: str, name: str, definition: dict[str, Any]) -> dict[str, Any]:
    model = copy.deepcopy(OWN)
    model.setdefault(kind, {})[name] = definition
    return model


@pytest.mark.parametrize(
    ("model", "expected", "switch"),
    [
        (OWN, [], None),
        (
            with_top("volumes", "theirs", {"name": "other-app_data", "external": True}),
            [
                (
                    "volumes.theirs.name: the volume 'other-app_data' (not this app's own) is not allowed "
                    "(deploy.policy.allow_external_volumes)"
                ),
                (
                    "volumes.theirs.external: a volume outside this app (external) is not allowed "
                    "(deploy.policy.allow_external_volumes)"
                ),
            ],
            "allow_external_volumes",
        ),
        (
            with_top("volumes", "named", {"name": "headwater-other_data"}),
            ["volumes.named.name: the volume 'headwater-other_data' (not this app's own)"],
            "allow_external_volumes",
        ),
        (
            with_top(
                "volumes",
                "nfs",
                {
                    "name": "headwater-web_nfs",
                    "driver_opts": {"type": "nfs", "o": "addr=10.0.0.5", "device": ":/export"},
                },
            ),
            [
                (
                    "volumes.nfs.driver_opts.type: mounting a 'nfs' file system is not allowed "
                    "(deploy.policy.allow_external_volumes)"
                )
            ],
            "allow_external_volumes",
        ),
        (
            with_top("volumes", "plugin", {"name": "headwater-web_plugin", "driver": "rexray/ebs"}),
            ["volumes.plugin.driver: the volume driver 'rexray/ebs'"],
            "allow_external_volumes",
        ),
        (
            with_top("networks", "theirs", {"name": "headwater-other_default", "external": True}),
            [
                (
                    "networks.theirs.name: the network 'headwater-other_default' (not this app's own) "
                    "is not allowed "
                    "(deploy.policy.allow_external_networks)"
                ),
                "networks.theirs.external: a network outside this app (external)",
            ],
            "allow_external_networks",
        ),
        (
            with_top(
                "networks",
                "lan2",
                {"name": "headwater-web_lan2", "driver": "macvlan", "driver_opts": {"parent": "eth0"}},
            ),
            [
                (
                    "networks.lan2.driver: the network driver 'macvlan' is not allowed "
                    "(deploy.policy.allow_host_network)"
                ),
                (
                    "networks.lan2.driver_opts: network driver options (a bridge of the host, ...) (parent) "
                    "is not allowed "
                    "(deploy.policy.allow_host_network)"
                ),
            ],
            "allow_host_network",
        ),
        (
            with_top(
                "networks",
                "wide",
                {"name": "headwater-web_wide", "ipam": {"config": [{"subnet": "10.0.0.0/8"}]}},
            ),
            ["networks.wide.ipam: choosing subnets"],
            "allow_host_network",
        ),
        (
            with_top("secrets", "aws", {"name": "headwater-web_aws", "environment": "AWS_SECRET_ACCESS_KEY"}),
            ["secrets.aws.environment: refused (it reads the environment of Headwater's docker compose)"],
            None,
        ),
        (
            with_top("configs", "swarm", {"external": True}),
            ["configs.swarm.external: refused (Docker swarm only (a config of another owner))"],
            None,
        ),
        (
            {**OWN, "models": {"llm": {"model": "ai/smollm2"}}},
            ["models: refused (AI models run by Docker Model Runner on the host)"],
            None,
        ),
        (
            with_top("volumes", "odd", {"name": "headwater-web_odd", "frobnicate": True}),
            [
                (
                    "volumes.odd.frobnicate: refused (unknown key in a volume section: the policy does "
                    "not know it)"
                )
            ],
            None,
        ),
        ({**OWN, "frobnicate": {}}, ["frobnicate: refused (unknown key in a top-level section"], None),
    ],
)
def test_volumes_networks_secrets_and_configs_of_others(
    model: dict[str, Any], expected: list[str], switch: str | None
) -> None:
    found = violations(model)
    assert len(found) == len(expected), found
    for violation, start in zip(found, expected, strict=True):
        assert violation.startswith(start), violation
    if switch is not None:
        assert violations(model, DeployPolicy(**{switch: True})) == []


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
