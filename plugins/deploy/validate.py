"""Compose checks before anything runs: YAML, a model that makes sense, and the deployment policy.

Pure functions over text and plain dicts: no Docker, no files, no clock. The plugin runs them
twice: :func:`parse_compose` and :func:`check_compose_model` on the file as received (so that a
broken or hostile file is refused before it is written anywhere or handed to docker compose),
then :func:`check_compose_model` and :func:`check_policy` on the model that ``docker compose
config --format json`` resolved (interpolated ``${VAR}``, merged, relative paths made absolute),
which is exactly what ``up`` will run.

Every refusal raises :class:`~headwater.plugins.deploy.errors.InvalidDeploymentError` with one
line naming the key path (``services.web.privileged``) and the reason; several violations are
reported at once, separated by ``; ``.

Bounded work: :func:`parse_compose` composes the YAML node graph (linear in the text) and
counts the nodes the document would have with every alias expanded, memoized per node, without
expanding anything; a document that would grow past :data:`MAX_EXPANDED_NODES` nodes or past
``max_size`` bytes of scalars (a "billion laughs" document) is refused before any parser that
expands aliases (docker compose's) sees it.

The policy is an allow-list: :data:`~headwater.plugins.deploy.compose_keys.SECTIONS` classifies
every key of every section; :func:`check_compose_model` refuses unknown and refused keys (no
values needed), :func:`check_policy` also applies the ``switch`` rules and the value checks of
the ``checked`` rules (:data:`VALUE_CHECKS`, one function per checked key).

Host paths (bind mounts, ``devices``, ``file:`` secrets and configs, volumes on a ``device``)
are compared after normalization (``/srv/../etc`` is ``/etc``), component by component
(``/srv/apps`` allows ``/srv/apps/x``, not ``/srv/apps2``). A path that is, is below, or
contains one of :data:`HOST_CONTROL_PATHS` (the Docker engine's socket and state, containerd,
 the kernel's ``/proc``, ``/sys/kernel`` and ``/sys/fs/cgroup``) or one of the
caller's ``protected_paths`` is refused whatever ``allowed_bind_mounts`` says: ``/`` and
``/var`` contain the engine. Symbolic links on the host are not resolved: an allowed directory
must not be writable by the apps that mount it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import yaml

from headwater.plugins.deploy.compose_keys import SECTIONS, KeyRule
from headwater.plugins.deploy.errors import InvalidDeploymentError

if TYPE_CHECKING:
    from headwater.core.config import DeployPolicy

__all__ = [
    "HOST_CONTROL_PATHS",
    "MAX_EXPANDED_NODES",
    "VALUE_CHECKS",
    "check_compose_model",
    "check_policy",
    "ecr_registry",
    "images_of",
    "parse_compose",
    "registry_of",
]


_MAX_ALIASES: Final = 100
_MAX_DEPTH: Final = 64
#: The most YAML nodes a compose document may have with its aliases expanded (a document with
#: no alias is never refused by this: its node count is what it is).
MAX_EXPANDED_NODES: Final = 100_000
_SERVICE_NAME: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_ECR_HOST: Final = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
)
#: Host paths that give control of the host: refused as (parents of) bind mounts, devices,
#: files and volume devices, whatever ``allowed_bind_mounts`` says.
HOST_CONTROL_PATHS: Final = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/docker",
    "/run/docker",
    "/var/lib/docker",
    "/var/run/containerd",
    "/run/containerd",
    "/var/lib/containerd",
    "/var/run/podman",
    "/run/podman",
    "/proc",
    "/sys/kernel",
    "/sys/fs/cgroup",
)
_HARMLESS_SECURITY_OPTS: Final = ("no-new-privileges",)
_KERNEL_ULIMITS: Final = ("memlock", "rtprio", "rttime", "nice")
_LOCAL_VOLUME_TYPES: Final = (None, "none", "tmpfs")


def _refuse(path: str, reason: str) -> InvalidDeploymentError:
    return InvalidDeploymentError(f"{path}: {reason}")


# --- YAML ------------------------------------------------------------------------------------


def parse_compose(text: str, *, max_size: int | None = None) -> dict[str, Any]:
    """Parse one compose document (YAML or JSON) into plain Python objects.

    Refuses several documents, more than a hundred aliases, nesting deeper than 64, a document
    whose aliases would expand to more than :data:`MAX_EXPANDED_NODES` nodes or (when given)
    more than ``max_size`` bytes of scalars, recursive aliases, and anything that is not a
    mapping at the top. Nothing is expanded to find out (see the module docstring).
    """
    try:
        aliases = depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
            elif isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:  # PyYAML's composer recurses: stop long before Python's limit
                    raise InvalidDeploymentError(f"compose file: YAML nested deeper than {_MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        if aliases > _MAX_ALIASES:
            raise InvalidDeploymentError(f"compose file: {aliases} YAML aliases (at most {_MAX_ALIASES})")
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        if len(nodes) != 1:
            raise InvalidDeploymentError(
                f"expected one YAML document in the compose file, found {len(nodes)}"
            )
        _check_expansion(nodes[0], max_size)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidDeploymentError(_yaml_problem(exc)) from exc
    if not isinstance(document, dict):
        raise InvalidDeploymentError(
            f"the compose file must be a mapping with services, got {_kind(document)}"
        )
    return document


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_expansion(root: yaml.Node | None, max_size: int | None) -> None:
    """Refuse a node graph whose aliases expand too far; linear in the number of distinct nodes.

    An alias is the same node object in several places of the composed graph: the expanded
    count of a node is memoized (``counted``), so a chain of anchors costs one visit each. The
    walk is iterative (no recursion limit) and refuses a node that contains itself.
    """
    if root is None:
        return
    counted: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, scalar bytes) expanded
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, list[yaml.Node]]] = [(root, _children(root))]
    visiting.add(id(root))
    while stack:
        node, pending = stack[-1]
        if pending:
            child = pending.pop()
            if id(child) in visiting:
                raise InvalidDeploymentError("compose file: a YAML alias refers to a node that contains it")
            if id(child) not in counted:
                visiting.add(id(child))
                stack.append((child, _children(child)))
            continue
        stack.pop()
        visiting.discard(id(node))
        nodes = 1
        size = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
        for child in _children(node):
            child_nodes, child_size = counted[id(child)]
            nodes += child_nodes
            size += child_size
        counted[id(node)] = (nodes, size)
    nodes, size = counted[id(root)]
    if nodes > max(MAX_EXPANDED_NODES, len(counted)):
        raise InvalidDeploymentError(
            f"compose file: YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes "
            f'({nodes}: a "billion laughs" document)'
        )
    if max_size is not None and size > max_size:
        raise InvalidDeploymentError(
            f"compose file: YAML aliases expand to {size} bytes, more than "
            f"deploy.max_compose_size ({max_size})"
        )


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

    Every key must be known and not refused (the allow-list, without looking at values, so it
    works on the file as received); every service needs an ``image``.
    """
    checker = _Checker(None, "/", ())
    _walk(checker, "top-level", model, "", "")
    if checker.violations:
        raise InvalidDeploymentError("; ".join(checker.violations))
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
    image = service.get("image")
    if not isinstance(image, str) or not image.strip():
        raise _refuse(f"{path}.image", "every service needs an image")


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


def _within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both normalized)."""
    root = posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _under(path: str, allowed: Sequence[str]) -> bool:
    return path.startswith("/") and any(_within(path, root) for root in allowed)


def _is_set(value: object) -> bool:
    """Asks for something: not null, false or empty."""
    if value is None or value is False:
        return False
    return not (isinstance(value, str | list | dict) and not value)


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(map(str, value))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


class _Checker:
    """Collects violations while :func:`_walk` goes through a model."""

    def __init__(self, policy: DeployPolicy | None, project_dir: str, protected: Sequence[str]) -> None:
        self.policy = policy  # None: keys only (the file as received), no values
        self.project_dir = project_dir
        self.protected = (*HOST_CONTROL_PATHS, *protected)
        self.project = ""  # the model's project name (set by check_policy)
        self.violations: list[str] = []

    def needs(self, switch: str, path: str, what: str) -> None:
        """``what`` at ``path`` is allowed only with ``deploy.policy.<switch>``."""
        if self.policy is not None and not getattr(self.policy, switch):
            self.violations.append(f"{path}: {what} is not allowed (deploy.policy.{switch})")

    def refused(self, path: str, why: str) -> None:
        self.violations.append(f"{path}: refused ({why})")

    def host_path(self, path: str, source: object, what: str, *, any_allowed: bool = False) -> None:
        """A host path: never a control path; else (below) one of allowed_bind_mounts."""
        if not isinstance(source, str) or not source:
            self.violations.append(f"{path}: {what} without a host path")
            return
        normal = _normal(source, self.project_dir)
        if normal.startswith("/"):
            for control in self.protected:
                if _within(normal, control) or _within(control, normal):
                    self.refused(
                        path,
                        f"{what} of {normal} reaches {control}, which controls the host, "
                        "whatever deploy.policy.allowed_bind_mounts says",
                    )
                    return
        allowed = () if self.policy is None else self.policy.allowed_bind_mounts
        if any_allowed or _under(normal, allowed):
            return
        self.violations.append(
            f"{path}: {what} of {normal} is outside deploy.policy.allowed_bind_mounts"
            + (f" ({', '.join(allowed)})" if allowed else " (none)")
        )


def check_policy(
    model: Mapping[str, Any],
    policy: DeployPolicy,
    *,
    project_dir: str = "/",
    protected_paths: Sequence[str] = (),
) -> None:
    """Refuse what ``policy`` does not allow (see the module docstring); all violations at once.

    ``model`` is a checked compose model, preferably the one ``docker compose config`` resolved
    (its ``name`` is the project, which names the app's own volumes and networks); relative
    host paths are taken relative to ``project_dir``. ``protected_paths`` are refused like
    :data:`HOST_CONTROL_PATHS` (the plugin passes the engine's socket and its own files).
    Raises :class:`InvalidDeploymentError`.
    """
    checker = _Checker(policy, project_dir, protected_paths)
    checker.project = str(model.get("name") or "")
    _walk(checker, "top-level", model, "", "")
    if checker.violations:
        raise InvalidDeploymentError("; ".join(checker.violations))


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _walk(checker: _Checker, section: str, definition: Mapping[Any, Any], path: str, name: str) -> None:
    """Classify every key of ``definition`` (a ``section``), then descend into nested sections."""
    rules = SECTIONS[section]
    for key, value in definition.items():
        key_path = _join(path, key)
        if isinstance(key, str) and key.startswith("x-"):
            continue  # extensions: compose ignores them
        rule = rules.get(key) if isinstance(key, str) else None
        if rule is None:
            checker.refused(key_path, f"unknown key in a {section} section: the policy does not know it")
            continue
        if not _is_set(value) and rule.verdict != "checked":
            continue
        if rule.verdict == "refused":
            checker.refused(key_path, rule.why)
            continue
        if checker.policy is not None:
            if rule.verdict == "switch" and rule.switch is not None:
                shown = "" if value is True else f" ({_shown(value)})"
                checker.needs(rule.switch, key_path, f"{rule.why}{shown}")
            elif rule.verdict == "checked" and value is not None:
                VALUE_CHECKS[(section, key)](checker, key_path, value, name)
        elif (section, key) == ("service", "extends"):
            _check_extends(checker, key_path, value, name)
        _descend(checker, rule, value, key_path)


def _descend(checker: _Checker, rule: KeyRule, value: object, path: str) -> None:
    if rule.section is None:
        return
    if rule.nesting == "one" and isinstance(value, Mapping):
        _walk(checker, rule.section, value, path, "")
    elif rule.nesting == "named" and isinstance(value, Mapping):
        for name, item in value.items():
            if isinstance(item, Mapping):
                _walk(checker, rule.section, item, _join(path, name), str(name))
    elif rule.nesting == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                _walk(checker, rule.section, item, f"{path}[{index}]", "")


# --- value checks (one per ``checked`` rule) ---------------------------------------------------

ValueCheck = Callable[[_Checker, str, Any, str], None]


def _nested(checker: _Checker, path: str, value: object, name: str) -> None:
    """A section whose keys :func:`_walk` classifies in turn: nothing more to check here."""
    del checker, path, value, name


def _check_extends(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    if isinstance(value, dict) and value.get("file") is not None:
        checker.refused(
            f"{path}.file", "it reads other files of the gateway: extend services of the same file only"
        )


def _host_namespace(privileged_values: tuple[str, ...]) -> ValueCheck:
    def check(checker: _Checker, path: str, value: object, name: str) -> None:
        del name
        key = path.rsplit(".", 1)[-1]
        if value == "host" and "host" in privileged_values:
            checker.needs("allow_privileged", path, f"the host's {key.removesuffix('_mode')} namespace")
        elif isinstance(value, str) and value.startswith("container:") and "container:" in privileged_values:
            checker.needs("allow_privileged", path, f"joining {value}")

    return check


def _check_network_mode(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    if value == "host":
        checker.needs("allow_host_network", path, "the host's network")
    elif isinstance(value, str) and value.startswith("container:"):
        checker.needs("allow_privileged", path, f"joining {value}")


def _check_devices(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    privileged = checker.policy is not None and checker.policy.allow_privileged
    for index, device in enumerate(value if isinstance(value, list) else ()):
        source = device.get("source") if isinstance(device, dict) else str(device).split(":", 1)[0]
        # A privileged container sees every device anyway; the engine's paths stay refused.
        checker.host_path(f"{path}[{index}]", source, "the device", any_allowed=privileged)


def _check_volumes(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    for index, volume in enumerate(value if isinstance(value, list) else ()):
        _check_mount(checker, f"{path}[{index}]", volume)


def _check_mount(checker: _Checker, path: str, volume: object) -> None:
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


def _check_volumes_from(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    for index, source in enumerate(value if isinstance(value, list) else ()):
        if str(source).startswith("container:"):
            checker.needs("allow_external_volumes", f"{path}[{index}]", f"volumes of {source}")


def _check_security_opt(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    for option in value if isinstance(value, list) else (value,):
        if not str(option).startswith(_HARMLESS_SECURITY_OPTS):
            checker.needs("allow_privileged", path, f"security option {option!r}")


def _check_runtime(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    if value != "runc":
        checker.needs("allow_privileged", path, f"runtime {value!r}")


def _check_oom_score_adj(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    try:
        adjustment = int(str(value))
    except ValueError:
        checker.violations.append(f"{path}: expected an integer")
        return
    if adjustment < 0:
        checker.needs(
            "allow_kernel_tuning", path, f"protecting the container from the OOM killer ({adjustment})"
        )


def _check_ulimits(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    for limit in value if isinstance(value, dict) else ():
        if limit in _KERNEL_ULIMITS:
            checker.needs("allow_kernel_tuning", f"{path}.{limit}", f"the {limit} limit")


def _check_resources(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    reservations = value.get("reservations") if isinstance(value, dict) else None
    if isinstance(reservations, dict) and reservations.get("devices"):
        checker.needs("allow_privileged", f"{path}.reservations.devices", "reserving devices")


def _check_network_driver(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    if value != "bridge":
        checker.needs("allow_host_network", path, f"the network driver {value!r}")


def _own_name(checker: _Checker, name: str) -> str:
    return f"{checker.project}_{name}"


def _check_network_name(checker: _Checker, path: str, value: object, name: str) -> None:
    if value == "host":
        checker.needs("allow_host_network", path, "the host's network")
    elif value != _own_name(checker, name):
        checker.needs("allow_external_networks", path, f"the network {value!r} (not this app's own)")


def _check_volume_name(checker: _Checker, path: str, value: object, name: str) -> None:
    if value != _own_name(checker, name):
        checker.needs("allow_external_volumes", path, f"the volume {value!r} (not this app's own)")


def _check_volume_driver(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    if value != "local":
        checker.needs("allow_external_volumes", path, f"the volume driver {value!r}")


def _check_volume_options(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    if not isinstance(value, dict):
        return
    if value.get("type") not in _LOCAL_VOLUME_TYPES:
        checker.needs("allow_external_volumes", f"{path}.type", f"mounting a {value['type']!r} file system")
    if value.get("device") is not None and value.get("type") in _LOCAL_VOLUME_TYPES:
        checker.host_path(f"{path}.device", value["device"], "a volume on a host path")


def _check_file(checker: _Checker, path: str, value: object, name: str) -> None:
    del name
    checker.host_path(path, value, "a file")


#: The value check of every ``checked`` rule of :data:`SECTIONS`, by (section, key).
VALUE_CHECKS: Final[Mapping[tuple[str, str], ValueCheck]] = {
    ("top-level", "configs"): _nested,
    ("top-level", "networks"): _nested,
    ("top-level", "secrets"): _nested,
    ("top-level", "services"): _nested,
    ("top-level", "volumes"): _nested,
    ("service", "cgroup"): _host_namespace(("host",)),
    ("service", "deploy"): _nested,
    ("service", "devices"): _check_devices,
    ("service", "extends"): _check_extends,
    ("service", "ipc"): _host_namespace(("host", "container:")),
    ("service", "network_mode"): _check_network_mode,
    ("service", "oom_score_adj"): _check_oom_score_adj,
    ("service", "pid"): _host_namespace(("host", "container:")),
    ("service", "post_start"): _nested,
    ("service", "pre_stop"): _nested,
    ("service", "runtime"): _check_runtime,
    ("service", "security_opt"): _check_security_opt,
    ("service", "ulimits"): _check_ulimits,
    ("service", "userns_mode"): _host_namespace(("host",)),
    ("service", "uts"): _host_namespace(("host",)),
    ("service", "volumes"): _check_volumes,
    ("service", "volumes_from"): _check_volumes_from,
    ("network", "driver"): _check_network_driver,
    ("network", "name"): _check_network_name,
    ("volume", "driver"): _check_volume_driver,
    ("volume", "driver_opts"): _check_volume_options,
    ("volume", "name"): _check_volume_name,
    ("secret", "file"): _check_file,
    ("config", "file"): _check_file,
    ("service.deploy", "resources"): _check_resources,
}
