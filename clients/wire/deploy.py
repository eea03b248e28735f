"""Deployments on the wire: topics, the deploy message, its revision and the status objects.

Owns the shapes that cross the wire, declared once: the deploy plugin decodes deploy messages
and encodes statuses with them, :class:`~headwater.clients.deploy.DeployClient` encodes deploy
messages and decodes statuses with them, and both compute revisions with :func:`revision_of`.
docs/deploy.md is the user's side of the same contract. Stdlib only, no I/O, no clock (callers
pass times in). The shapes are frozen dataclasses with their own codecs rather than msgspec
models: the client distribution depends on paho-mqtt alone (see :mod:`headwater.wire.streams`).

Topics (``<prefix>`` is ``topic_prefix``)::

    <prefix>/deploy/<app>               retained deploy message: the app's desired state
    <prefix>/deploy/<app>/status        retained status JSON, published by Headwater
    <prefix>/deploy/_plugin/status      the deploy plugin's own status

Deploy message
--------------

The retained payload of ``<prefix>/deploy/<app>`` is either

* the compose file itself (YAML or JSON), or
* a JSON object with exactly one of ``compose`` (the YAML as a string) and ``compose_s3``
  (``{"bucket", "key", "version"?}``), plus optional ``pull`` (``always`` | ``missing`` |
  ``never``; default ``deploy.pull``), ``force`` (true: recreate even if the revision did not
  change; only honoured when the message arrives, never on a restart), ``env`` (variables for
  compose's ``${VAR}`` interpolation) and ``registry_auth`` (names of ``deploy.registries``).

A JSON object is an envelope when it has a ``compose`` or ``compose_s3`` key; a compose file
has neither. An empty payload removes the app. :func:`encode_deploy_message` builds one,
:func:`parse_deploy_message` reads one (raising :class:`WireFormatError`).

Revision
--------

:func:`revision_of` is the first 16 hex digits of the SHA-256 of the canonical desired state:
the compose text (or the S3 reference), the ``pull`` given in the message, ``env`` and
``registry_auth``, as sorted compact JSON. ``force`` is not part of it. So the same compose
file published raw or as ``{"compose": ...}`` has the same revision, and a client computes the
revision of what it publishes without asking Headwater. A payload that is not a valid deploy
message still has a revision (of its bytes), so its ``failed`` status can be matched too.

Status JSON
-----------

``{"app", "state", "revision", "services": [{"name", "state", "health", "image", "restarts",
"containers", "ports"}], "error", "output", "deployed_at", "updated_at"}``; times are ISO 8601
UTC with milliseconds (``2026-11-30T10:15:00.123Z``). ``updated_at`` is when the status last
changed, ``deployed_at`` when docker compose last brought this revision up (``null`` before).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from headwater.wire._fields import WireFormatError, optional_str

__all__ = [
    "APP_NAME",
    "APP_NAME_RULE",
    "FINAL_STATES",
    "PLUGIN_STATUS_NAME",
    "PULL_POLICIES",
    "DeployState",
    "DeploymentStatus",
    "DesiredState",
    "PluginStatus",
    "PullPolicy",
    "S3Reference",
    "ServiceStatus",
    "WireFormatError",
    "app_name_problem",
    "deploy_topic",
    "encode_deploy_message",
    "format_time",
    "parse_deploy_message",
    "revision_of",
    "status_topic",
]

PullPolicy: TypeAlias = Literal["always", "missing", "never"]
DeployState: TypeAlias = Literal[
    "pending", "deploying", "running", "degraded", "failed", "removing", "removed"
]

#: States in which nothing more happens until the desired state changes (or Docker does).
FINAL_STATES: Final[frozenset[str]] = frozenset({"running", "degraded", "failed", "removed"})

APP_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
APP_NAME_RULE: Final = "1-63 characters of a-z 0-9 _ -, starting with a letter or digit"
#: ``<prefix>/deploy/_plugin/status`` carries the plugin's own status (no app name starts with _).
PLUGIN_STATUS_NAME: Final = "_plugin"

PULL_POLICIES: Final[tuple[PullPolicy, ...]] = ("always", "missing", "never")
_ENVELOPE_KEYS: Final = ("compose", "compose_s3", "pull", "force", "env", "registry_auth")
_S3_KEYS: Final = ("bucket", "key", "version")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Variables that would change what compose does or where it goes, rather than fill in ${VAR}.
_RESERVED_ENV_PREFIXES: Final = ("DOCKER_", "COMPOSE_", "BUILDKIT_", "XDG_", "LD_")
_RESERVED_ENV_NAMES: Final = frozenset({"PATH", "HOME", "TMPDIR", "SHELL", "USER", "PWD"})
_REVISION_DIGITS: Final = 16


def deploy_topic(prefix: str, app: str) -> str:
    """``<prefix>/deploy/<app>``: the retained desired state of ``app``."""
    return f"{prefix}/deploy/{app}"


def status_topic(prefix: str, app: str) -> str:
    """``<prefix>/deploy/<app>/status`` (``+`` for the filter of every app's status)."""
    return f"{prefix}/deploy/{app}/status"


def app_name_problem(name: str) -> str | None:
    """Why ``name`` is no valid app name, or None."""
    if APP_NAME.fullmatch(name):
        return None
    shown = name if len(name) <= 80 else name[:77] + "..."  # noqa: PLR2004 - keep the message one short line
    return f"invalid app name {shown!r} (expected {APP_NAME_RULE})"


@dataclass(frozen=True, slots=True)
class S3Reference:
    """Where a compose file lives in S3."""

    bucket: str
    key: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """One app's desired state, as parsed from its deploy message (not yet validated as compose)."""

    compose: str | None = None  # the compose file's text, or None when it is in S3
    compose_s3: S3Reference | None = None
    pull: PullPolicy | None = None  # None: deploy.pull
    force: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    registry_auth: tuple[str, ...] = ()

    def canonical(self) -> dict[str, object]:
        """The JSON object the revision is computed from (``force`` is left out)."""
        source: dict[str, object]
        if self.compose_s3 is not None:
            s3 = self.compose_s3
            source = {"compose_s3": {"bucket": s3.bucket, "key": s3.key, "version": s3.version}}
        else:
            source = {"compose": self.compose}
        return {
            **source,
            "pull": self.pull,
            "env": dict(sorted(self.env.items())),
            "registry_auth": sorted(self.registry_auth),
        }

    @property
    def revision(self) -> str:
        """See the module docstring."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:_REVISION_DIGITS]


def _envelope_error(key: str, reason: str) -> WireFormatError:
    return WireFormatError(f"deploy message: {key}: {reason}")


def _string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _envelope_error(key, f"expected a non-empty string, got {json.dumps(value)[:60]}")
    return value


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _envelope_error("env", "expected an object of NAME: value strings")
    env: dict[str, str] = {}
    for name, item in value.items():
        if not _ENV_NAME.fullmatch(name):
            raise _envelope_error(
                f"env.{name[:60]}", "invalid variable name (expected [A-Za-z_][A-Za-z0-9_]*)"
            )
        if name in _RESERVED_ENV_NAMES or name.startswith(_RESERVED_ENV_PREFIXES):
            raise _envelope_error(
                f"env.{name}", "reserved: Headwater sets the environment of docker compose itself"
            )
        if not isinstance(item, str):
            raise _envelope_error(f"env.{name}", "expected a string value")
        env[name] = item
    return env


def _s3_reference(value: object) -> S3Reference:
    if not isinstance(value, dict):
        raise _envelope_error("compose_s3", 'expected {"bucket": ..., "key": ..., "version"?: ...}')
    for key in value:
        if key not in _S3_KEYS:
            raise _envelope_error(f"compose_s3.{key}", "unknown key (expected one of: bucket, key, version)")
    version = value.get("version")
    return S3Reference(
        bucket=_string(value.get("bucket"), "compose_s3.bucket"),
        key=_string(value.get("key"), "compose_s3.key"),
        version=None if version is None else _string(version, "compose_s3.version"),
    )


def _envelope(document: dict[str, Any]) -> DesiredState:
    for key in document:
        if key not in _ENVELOPE_KEYS:
            raise _envelope_error(
                key, "unknown key (expected one of: " + ", ".join(sorted(_ENVELOPE_KEYS)) + ")"
            )
    if ("compose" in document) == ("compose_s3" in document):
        raise WireFormatError("deploy message: give exactly one of compose and compose_s3")
    pull = document.get("pull")
    if pull is not None and pull not in PULL_POLICIES:
        raise _envelope_error("pull", f"expected one of always, missing, never, got {json.dumps(pull)[:40]}")
    force = document.get("force", False)
    if not isinstance(force, bool):
        raise _envelope_error("force", "expected true or false")
    registry_auth = document.get("registry_auth", [])
    if not isinstance(registry_auth, list) or not all(isinstance(name, str) for name in registry_auth):
        raise _envelope_error("registry_auth", "expected a list of configured registry names")
    return DesiredState(
        compose=_string(document["compose"], "compose") if "compose" in document else None,
        compose_s3=_s3_reference(document["compose_s3"]) if "compose_s3" in document else None,
        pull=pull,
        force=force,
        env=_env(document.get("env", {})),
        registry_auth=tuple(dict.fromkeys(registry_auth)),
    )


def parse_deploy_message(payload: bytes, *, max_size: int | None = None) -> DesiredState:
    """Parse a non-empty deploy message (see the module docstring).

    Checks the size, the encoding and the envelope; the compose text itself is checked by the
    deploy plugin. Raises :class:`WireFormatError`.
    """
    if not payload:
        raise WireFormatError("an empty deploy message removes the app; there is nothing to parse")
    if max_size is not None and len(payload) > max_size:
        raise WireFormatError(
            f"the deploy message has {len(payload)} bytes, more than deploy.max_compose_size ({max_size})"
        )
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"the deploy message is not UTF-8 text (byte {exc.start})") from exc
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None  # a YAML flow mapping, not JSON: a compose file
        if isinstance(document, dict) and ("compose" in document or "compose_s3" in document):
            return _envelope(document)
    if not text.strip():
        raise WireFormatError("the compose file is blank")
    return DesiredState(compose=text)


def revision_of(payload: bytes) -> str | None:
    """The revision of a deploy message; None for the empty (remove) message."""
    if not payload:
        return None
    try:
        return parse_deploy_message(payload).revision
    except WireFormatError:
        return hashlib.sha256(payload).hexdigest()[:_REVISION_DIGITS]


def encode_deploy_message(
    compose: str | None = None,
    *,
    compose_s3: S3Reference | None = None,
    pull: PullPolicy | None = None,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    registry_auth: Sequence[str] = (),
) -> bytes:
    """A deploy message: the compose file as it is when no option is given, else the envelope.

    Raises :class:`WireFormatError` for what :func:`parse_deploy_message` would refuse at once:
    neither or both of ``compose`` and ``compose_s3``, an unknown ``pull``, a blank compose file.
    """
    if (compose is None) == (compose_s3 is None):
        msg = "give exactly one of compose and compose_s3"
        raise WireFormatError(msg)
    if pull is not None and pull not in PULL_POLICIES:
        msg = f"pull must be always, missing or never, got {pull!r}"
        raise WireFormatError(msg)
    if compose is not None and not compose.strip():
        msg = "the compose file is empty (an empty deploy message removes the app)"
        raise WireFormatError(msg)
    options: dict[str, object] = {
        "pull": pull,
        "force": force or None,
        "env": dict(env) if env else None,
        "registry_auth": list(registry_auth) or None,
    }
    options = {key: value for key, value in options.items() if value is not None}
    if compose is not None and not options:
        return compose.encode()
    source: dict[str, object]
    if compose_s3 is not None:
        reference = {"bucket": compose_s3.bucket, "key": compose_s3.key, "version": compose_s3.version}
        source = {"compose_s3": {key: value for key, value in reference.items() if value is not None}}
    else:
        source = {"compose": compose}
    return json.dumps({**source, **options}).encode()


def format_time(epoch_seconds: float) -> str:
    """``2026-11-30T10:15:00.123Z``: the times of the status JSON."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service of an app in a status message (its containers summed up)."""

    name: str
    state: str  # the worst container state, or "missing" when no container exists
    health: str | None
    image: str | None
    restarts: int
    containers: int
    ports: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Running, and healthy if it has a healthcheck."""
        return self.state == "running" and self.health in {None, "healthy"}

    @property
    def settling(self) -> bool:
        """Still on its way: created, restarting, or its healthcheck has not decided yet."""
        return self.state in {"created", "restarting"} or (
            self.state == "running" and self.health == "starting"
        )

    def to_json_dict(self) -> dict[str, object]:
        """The ``services[]`` entry of the status JSON."""
        return {
            "name": self.name,
            "state": self.state,
            "health": self.health,
            "image": self.image,
            "restarts": self.restarts,
            "containers": self.containers,
            "ports": list(self.ports),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ServiceStatus:
        """Parse a ``services[]`` entry; tolerant of missing fields."""
        health = data.get("health")
        image = data.get("image")
        restarts = data.get("restarts")
        containers = data.get("containers")
        ports = data.get("ports")
        return cls(
            name=str(data.get("name", "?")),
            state=str(data.get("state", "unknown")),
            health=health if isinstance(health, str) else None,
            image=image if isinstance(image, str) else None,
            restarts=restarts if isinstance(restarts, int) else 0,
            containers=containers if isinstance(containers, int) else 0,
            ports=tuple(str(port) for port in ports) if isinstance(ports, list) else (),
        )


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    """The status of one app (``<prefix>/deploy/<app>/status``); see the module docstring."""

    app: str
    state: DeployState
    revision: str | None = None
    services: tuple[ServiceStatus, ...] = ()
    error: str | None = None
    output: tuple[str, ...] = ()  # the last lines of docker compose when it failed
    deployed_at: str | None = None
    updated_at: str = ""

    def same_as(self, other: DeploymentStatus | None) -> bool:
        """Equal apart from ``updated_at`` (a refresh that changed nothing is not published)."""
        return other is not None and self.to_json_dict(with_time=False) == other.to_json_dict(with_time=False)

    def to_json_dict(self, *, with_time: bool = True) -> dict[str, object]:
        """The status JSON (without ``updated_at`` when ``with_time`` is false)."""
        data: dict[str, object] = {
            "app": self.app,
            "state": self.state,
            "revision": self.revision,
            "services": [service.to_json_dict() for service in self.services],
            "error": self.error,
            "output": list(self.output),
            "deployed_at": self.deployed_at,
        }
        if with_time:
            data["updated_at"] = self.updated_at
        return data

    def to_payload(self) -> bytes:
        """The status topic's payload."""
        return json.dumps(self.to_json_dict(), ensure_ascii=False).encode()

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> DeploymentStatus:
        """Parse a status object; tolerant of missing fields (raises ValueError without a state)."""
        state = data.get("state")
        if not isinstance(state, str):
            msg = "a deploy status without a state"
            raise ValueError(msg)  # noqa: TRY004 - a malformed document, not a wrong Python type
        services = data.get("services")
        output = data.get("output")
        return cls(
            app=str(data.get("app", "")),
            state=state,  # type: ignore[arg-type]  # a newer Headwater may add states: shown as they are
            revision=optional_str(data.get("revision")),
            services=tuple(
                ServiceStatus.from_json_dict(service) for service in services if isinstance(service, dict)
            )
            if isinstance(services, list)
            else (),
            error=optional_str(data.get("error")),
            output=tuple(str(line) for line in output) if isinstance(output, list) else (),
            deployed_at=optional_str(data.get("deployed_at")),
            updated_at=str(data.get("updated_at", "")),
        )


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """The deploy plugin's own status (``<prefix>/deploy/_plugin/status``).

    ``state`` is ``starting`` until the first reconcile is done, ``ready`` while the Docker
    engine and docker compose answer, ``pending`` (with ``error``) while they do not.
    ``started_at`` tells one Headwater process from the next.
    """

    state: Literal["starting", "ready", "pending"]
    docker_host: str
    started_at: str
    error: str | None = None
    engine_version: str | None = None
    compose: str | None = None
    updated_at: str = ""

    def to_json_dict(self, *, with_time: bool = True) -> dict[str, object]:
        """The plugin status JSON (without ``updated_at`` when ``with_time`` is false)."""
        data: dict[str, object] = {
            "state": self.state,
            "error": self.error,
            "docker_host": self.docker_host,
            "engine_version": self.engine_version,
            "compose": self.compose,
            "started_at": self.started_at,
        }
        if with_time:
            data["updated_at"] = self.updated_at
        return data

    def to_payload(self) -> bytes:
        """The plugin status topic's payload."""
        return json.dumps(self.to_json_dict(), ensure_ascii=False).encode()
