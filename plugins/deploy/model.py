"""The deploy plugin's own vocabulary: compose projects, container states, desired-state parsing.

The shapes that cross the wire (the deploy message, revisions, status objects, app names) are
declared once in :mod:`headwater.wire.deploy`; this module adds what only the plugin needs:
the compose project of an app, what Docker reports of a container, how a service's containers
sum up into the status, and the translation of a malformed deploy message into
:class:`~headwater.plugins.deploy.errors.InvalidDeploymentError`. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from headwater.plugins.deploy.errors import InvalidDeploymentError
from headwater.wire.deploy import (
    DesiredState,
    ServiceStatus,
    WireFormatError,
    app_name_problem,
    parse_deploy_message,
    status_topic,
)

__all__ = [
    "PROJECT_PREFIX",
    "ContainerState",
    "check_app_name",
    "deploy_reserved_topics",
    "parse_desired",
    "project_name",
    "service_problems",
    "summarize_services",
]

#: Compose project of an app: a fixed prefix, so Headwater's projects are told apart at a glance.
PROJECT_PREFIX: Final = "headwater-"


def deploy_reserved_topics(prefix: str) -> tuple[str, ...]:
    """The topics only Headwater publishes to for deployments: every app's status topic."""
    return (status_topic(prefix, "+"),)


def check_app_name(name: str) -> str:
    """Return ``name`` if it is a valid app name, else raise :class:`InvalidDeploymentError`."""
    problem = app_name_problem(name)
    if problem is not None:
        raise InvalidDeploymentError(problem)
    return name


def project_name(app: str) -> str:
    """The compose project of ``app`` (a valid app name): ``headwater-<app>``."""
    return PROJECT_PREFIX + check_app_name(app)


def parse_desired(payload: bytes, *, max_size: int | None = None) -> DesiredState:
    """:func:`~headwater.wire.deploy.parse_deploy_message`, refusals as :class:`InvalidDeploymentError`."""
    try:
        return parse_deploy_message(payload, max_size=max_size)
    except WireFormatError as exc:
        raise InvalidDeploymentError(str(exc)) from exc


# --- what Docker runs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerState:
    """One container of a compose project, as the Docker API describes it."""

    service: str
    container_id: str
    state: str  # created, running, restarting, exited, paused, dead, removing
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    image: str
    restarts: int
    started_at: str
    exit_code: int = 0
    ports: tuple[str, ...] = ()  # "127.0.0.1:49153->8080/tcp"


# Worst first: the state a service shows when its containers disagree.
_STATE_ORDER: Final = ("dead", "exited", "removing", "restarting", "paused", "created", "running")


def _worst(states: Sequence[str]) -> str:
    return min(states, key=lambda state: _STATE_ORDER.index(state) if state in _STATE_ORDER else -1)


def _worst_health(healths: Sequence[str | None]) -> str | None:
    for health in ("unhealthy", "starting", "healthy"):
        if health in healths:
            return health
    return None


def summarize_services(
    expected: Sequence[str], containers: Sequence[ContainerState]
) -> tuple[ServiceStatus, ...]:
    """Per service (``expected`` ones first, in order, then any other found), its containers summed up."""
    by_service: dict[str, list[ContainerState]] = {name: [] for name in expected}
    for container in containers:
        by_service.setdefault(container.service, []).append(container)
    services = []
    for name, found in by_service.items():
        if not found:
            services.append(
                ServiceStatus(name=name, state="missing", health=None, image=None, restarts=0, containers=0)
            )
            continue
        ordered = sorted(found, key=lambda container: container.container_id)
        services.append(
            ServiceStatus(
                name=name,
                state=_worst([container.state for container in ordered]),
                health=_worst_health([container.health for container in ordered]),
                image=ordered[0].image,
                restarts=sum(container.restarts for container in ordered),
                containers=len(ordered),
                ports=tuple(port for container in ordered for port in container.ports),
            )
        )
    return tuple(services)


def service_problems(services: Sequence[ServiceStatus]) -> str | None:
    """Why a deployed app is ``degraded`` (``web: exited; db: unhealthy``), or None if it is fine."""
    problems = []
    for service in services:
        if service.ok:
            continue
        what = service.health if service.state == "running" else service.state
        problems.append(f"{service.name}: {what}")
    return "; ".join(problems) or None
