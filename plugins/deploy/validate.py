"""Compose checks before anything runs: YAML, a model that makes sense, and the deployment policy.

Pure functions over text and plain dicts: no Docker, no files, no clock. The plugin runs them
twice: :func:`parse_compose` and :func:`check_compose_model` on the file as received (so that a
broken or hostile file is refused before it is written anywhere or handed to docker compose),
then :func:`check_compose_model` and :func:`check_policy` on the model that ``docker compose
config --format json`` resolved (interpolated ``${VAR}``, merged, relative paths made absolute),
which is exactly what ``up`` will run.

Every refusal raises :class:`~headwater.plugins.deploy.errors.InvalidDeploymentError` with one
line naming the key path (``services.web.privileged``) and the reason; :func:`check_policy`
reports every violation it finds, separated by ``; ``.

Policy (``deploy.policy``), in one place:

=================================================  ==========================================
the compose file asks for                          refused unless
=================================================  ==========================================
``privileged: true``                               ``allow_privileged``
``cap_add``, ``security_opt`` (other than          ``allow_privileged``
``no-new-privileges``), ``device_cgroup_rules``,
``cgroup_parent``, ``gpus``, device reservations,
a ``runtime`` other than runc
``pid`` / ``ipc`` / ``uts`` / ``userns_mode`` /    ``allow_privileged``
``cgroup``: ``host``; ``pid`` / ``ipc`` /
``network_mode`` / ``volumes_from``:
``container:...`` (another app's namespaces)
``network_mode: host``, a network with driver or   ``allow_host_network``
name ``host``
a bind mount, a ``devices`` entry, a ``file:``     its host path is (below) one of
secret or config, a local volume with a            ``allowed_bind_mounts``
``device`` option
=================================================  ==========================================

Refused whatever the policy: ``build`` (images are built elsewhere and loaded or pulled),
``env_file`` and ``label_file`` (they read host files into the container), ``extends`` with a
``file`` and top-level ``include`` (they read other host files), ``npipe`` mounts.

Paths are compared after normalization (``/srv/../etc`` is ``/etc``), component by component
(``/srv/apps`` allows ``/srv/apps/x``, not ``/srv/apps2``). Symbolic links on the host are not
resolved: an allowed directory must not be writable by the apps that mount it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import yaml

from headwater.plugins.deploy.errors import InvalidDeploymentError

if TYPE_CHECKING:
    from headwater.broker.config import DeployPolicy

__all__ = [
    "check_compose_model",
    "check_policy",
    "ecr_registry",
    "images_of",
    "parse_compose",
    "registry_of",
]

_MAX_ALIASES: Final = 100
_SERVICE_NAME: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_ECR_HOST: Final = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
)
_HOST_NAMESPACE_KEYS: Final = ("pid", "ipc", "uts", "userns_mode", "cgroup")
_HARMLESS_SECURITY_OPTS: Final = ("no-new-privileges",)


def _refuse(path: str, reason: str) -> InvalidDeploymentError:
    return InvalidDeploymentError(f"{path}: {reason}")


# --- YAML ------------------------------------------------------------------------------------


def parse_compose(text: str) -> dict[str, Any]:
    """Parse one compose document (YAML or JSON) into plain Python objects.

    Refuses several documents, more than a hundred aliases (an "entity expansion" bomb would
    otherwise be walked exponentially) and anything that is not a mapping at the top.
    """
    try:
        aliases = sum(
            1 for event in yaml.parse(text, Loader=yaml.SafeLoader) if isinstance(event, yaml.AliasEvent)
        )
        if aliases > _MAX_ALIASES:
            raise InvalidDeploymentError(
                f"the compose file uses {aliases} YAML aliases (at most {_MAX_ALIASES})"
            )
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise InvalidDeploymentError(_yaml_problem(exc)) from exc
    if len(documents) != 1:
        raise InvalidDeploymentError(
            f"expected one YAML document in the compose file, found {len(documents)}"
        )
    document = documents[0]
    if not isinstance(document, dict):
        raise InvalidDeploymentError(
            f"the compose file must be a mapping with services, got {_kind(document)}"
        )
    return document


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return " ".join(f"invalid YAML in the compose file{where}: {problem}".split())
    return " ".join(f"invalid YAML in the compose file: {exc}".split())


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# --- the model ------------------------------------------------------------------------------


def check_compose_model(model: Mapping[str, Any]) -> tuple[str, ...]:
    """Check that ``model`` is a compose project Headwater can run; return its service names.

    Every service needs an ``image``; the keys that read host files or build images are refused
    (see the module docstring).
    """
    if "include" in model:
        raise _refuse("include", "not supported: put every service in the one compose file")
    services = model.get("services")
    if not isinstance(services, dict) or not services:
        raise _refuse("services", f"expected a mapping of at least one service, got {_kind(services)}")
    for name, service in services.items():
        _check_service_model(f"services.{name}", name, service)
    return tuple(services)


def _check_service_model(path: str, name: object, service: object) -> None:
    if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
        raise _refuse(path, "invalid service name (expected letters, digits, _ . -)")
    if not isinstance(service, dict):
        raise _refuse(path, f"expected a mapping, got {_kind(service)}")
    if service.get("build") is not None:
        raise _refuse(
            f"{path}.build", "building images on the gateway is not supported: build elsewhere and give image"
        )
    image = service.get("image")
    if not isinstance(image, str) or not image.strip():
        raise _refuse(f"{path}.image", "every service needs an image")
    for key in ("env_file", "label_file"):
        if service.get(key) is not None:
            raise _refuse(f"{path}.{key}", "not allowed (it reads files of the gateway); use environment")
    extends = service.get("extends")
    if isinstance(extends, dict) and extends.get("file") is not None:
        raise _refuse(f"{path}.extends.file", "not allowed: extend services of the same file only")


def images_of(model: Mapping[str, Any]) -> tuple[str, ...]:
    """The distinct images of a checked model, in service order."""
    services = model.get("services") or {}
    return tuple(dict.fromkeys(str(service["image"]) for service in services.values()))


def registry_of(image: str) -> str:
    """The registry host of an image reference (``docker.io`` for Docker Hub's short names)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def ecr_registry(host: str) -> tuple[str, str] | None:
    """``(account, region)`` when ``host`` is an Amazon ECR registry, else None."""
    match = _ECR_HOST.fullmatch(host)
    return (match["account"], match["region"]) if match else None


# --- the policy -----------------------------------------------------------------------------


def _normal(path: str, project_dir: str) -> str:
    if path.startswith("~"):
        return path  # compose expands it against *its* HOME: never under an allowed path
    return posixpath.normpath(posixpath.join(project_dir, path))


def _under(path: str, allowed: Sequence[str]) -> bool:
    if not path.startswith("/"):
        return False
    for allowed_path in allowed:
        root = posixpath.normpath(allowed_path)
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return True
    return False


class _Checker:
    """Collects policy violations for :func:`check_policy`."""

    def __init__(self, policy: DeployPolicy, project_dir: str) -> None:
        self.policy = policy
        self.project_dir = project_dir
        self.violations: list[str] = []

    def privileged(self, path: str, what: str) -> None:
        if not self.policy.allow_privileged:
            self.violations.append(f"{path}: {what} is not allowed (deploy.policy.allow_privileged)")

    def host_network(self, path: str, what: str) -> None:
        if not self.policy.allow_host_network:
            self.violations.append(f"{path}: {what} is not allowed (deploy.policy.allow_host_network)")

    def host_path(self, path: str, source: object, what: str) -> None:
        if not isinstance(source, str) or not source:
            self.violations.append(f"{path}: {what} without a host path")
            return
        normal = _normal(source, self.project_dir)
        if not _under(normal, self.policy.allowed_bind_mounts):
            self.violations.append(
                f"{path}: {what} of {normal} is outside deploy.policy.allowed_bind_mounts"
                + (
                    f" ({', '.join(self.policy.allowed_bind_mounts)})"
                    if self.policy.allowed_bind_mounts
                    else " (none)"
                )
            )


def check_policy(model: Mapping[str, Any], policy: DeployPolicy, *, project_dir: str = "/") -> None:
    """Refuse what ``policy`` does not allow (see the module docstring); all violations at once.

    ``model`` is a checked compose model, preferably the one ``docker compose config`` resolved;
    relative host paths are taken relative to ``project_dir``. Raises
    :class:`InvalidDeploymentError`.
    """
    checker = _Checker(policy, project_dir)
    top_volumes = model.get("volumes") or {}
    for name, service in (model.get("services") or {}).items():
        _check_service(checker, f"services.{name}", service)
    for kind in ("secrets", "configs"):
        for name, definition in (model.get(kind) or {}).items():
            if isinstance(definition, dict) and definition.get("file") is not None:
                checker.host_path(f"{kind}.{name}.file", definition["file"], "a file")
    for name, volume in top_volumes.items():
        options = volume.get("driver_opts") if isinstance(volume, dict) else None
        if isinstance(options, dict) and options.get("device") is not None:
            checker.host_path(
                f"volumes.{name}.driver_opts.device", options["device"], "a volume on a host path"
            )
    for name, network in (model.get("networks") or {}).items():
        if isinstance(network, dict) and "host" in (network.get("driver"), network.get("name")):
            checker.host_network(f"networks.{name}", "the host's network")
    if checker.violations:
        raise InvalidDeploymentError("; ".join(checker.violations))


# Service keys whose mere presence (a non-empty value) needs allow_privileged.
_PRIVILEGED_WHEN_SET: Final = {
    "cap_add": "adding capabilities",
    "device_cgroup_rules": "device cgroup rules",
    "cgroup_parent": "another cgroup parent",
    "gpus": "GPUs",
}


def _check_service(checker: _Checker, path: str, service: Mapping[str, Any]) -> None:
    privileged = service.get("privileged")
    if privileged is True:
        checker.privileged(f"{path}.privileged", "a privileged container")
    elif privileged not in {None, False}:
        checker.violations.append(f"{path}.privileged: expected true or false")
    for key, what in _PRIVILEGED_WHEN_SET.items():
        if service.get(key):
            shown = ", ".join(map(str, service[key])) if isinstance(service[key], list) else str(service[key])
            checker.privileged(f"{path}.{key}", f"{what} ({shown})")
    for option in service.get("security_opt") or ():
        if not str(option).startswith(_HARMLESS_SECURITY_OPTS):
            checker.privileged(f"{path}.security_opt", f"security option {option!r}")
    runtime = service.get("runtime")
    if runtime not in {None, "runc"}:
        checker.privileged(f"{path}.runtime", f"runtime {runtime!r}")
    _check_namespaces(checker, path, service)
    _check_devices(checker, path, service)
    for index, volume in enumerate(service.get("volumes") or ()):
        _check_volume(checker, f"{path}.volumes[{index}]", volume)


def _check_devices(checker: _Checker, path: str, service: Mapping[str, Any]) -> None:
    reservations = ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    if reservations.get("devices"):
        checker.privileged(f"{path}.deploy.resources.reservations.devices", "reserving devices")
    if checker.policy.allow_privileged:
        return  # a privileged container sees every device anyway
    for index, device in enumerate(service.get("devices") or ()):
        source = device.get("source") if isinstance(device, dict) else str(device).split(":", 1)[0]
        checker.host_path(f"{path}.devices[{index}]", source, "the device")


def _check_namespaces(checker: _Checker, path: str, service: Mapping[str, Any]) -> None:
    for key in _HOST_NAMESPACE_KEYS:
        value = service.get(key)
        if value == "host":
            checker.privileged(f"{path}.{key}", f"the host's {key.removesuffix('_mode')} namespace")
        elif isinstance(value, str) and value.startswith("container:"):
            checker.privileged(f"{path}.{key}", f"joining {value}")
    network_mode = service.get("network_mode")
    if network_mode == "host":
        checker.host_network(f"{path}.network_mode", "the host's network")
    elif isinstance(network_mode, str) and network_mode.startswith("container:"):
        checker.privileged(f"{path}.network_mode", f"joining {network_mode}")
    for index, source in enumerate(service.get("volumes_from") or ()):
        if str(source).startswith("container:"):
            checker.privileged(f"{path}.volumes_from[{index}]", f"volumes of {source}")


def _check_volume(checker: _Checker, path: str, volume: object) -> None:
    source: object
    if isinstance(volume, str):
        parts = volume.split(":")
        if len(parts) == 1:
            return  # an anonymous volume
        source = parts[0]
        kind = "bind" if parts[0].startswith(("/", ".", "~")) else "volume"
    elif isinstance(volume, dict):
        source = volume.get("source")
        kind = str(volume.get("type", "volume"))
    else:
        checker.violations.append(f"{path}: expected a mount, got {_kind(volume)}")
        return
    if kind == "bind":
        checker.host_path(path, source, "a bind mount")
    elif kind not in {"volume", "tmpfs"}:  # named volumes are checked where they are defined
        checker.violations.append(f"{path}: mounts of type {kind!r} are not supported")
