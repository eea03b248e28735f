"""``DockerEngine``: what the deploy plugin reads from the Docker Engine API.

Owns the connection to ``deploy.docker_host`` (``unix:///path`` or ``tcp://host:port``) and
the few read-only requests the plugin needs: is the engine there (``GET /version``), which
containers a compose project has and their state, health, restarts, image and ports
(``GET /containers/json`` then ``GET /containers/<id>/json``), which containers this Headwater
deployed (its labels), and whether images exist locally (``GET /images/<name>/json``). It never
changes anything: every change goes through docker compose (:mod:`.runner`).

Why not the docker SDK: docker 7.x's unix-socket connection does not close its socket when the
engine refuses the connection, so every probe of an absent engine leaks a socket (a
``ResourceWarning``, an error under the test suite's warning policy) — and the SDK's
``version="auto"`` does the same at construction. Four GET requests over ``http.client`` are
simpler than working around that. Unversioned paths are used: the engine answers with its own
API version, and these response fields have been stable since API 1.24.

Each request opens a connection, reads the JSON answer and closes it; it runs in a worker
thread (``asyncio.to_thread``). No answer (refused, reset, timeout) raises
:class:`~headwater.plugins.deploy.errors.DockerUnavailableError`; an error answer raises
:class:`~headwater.plugins.deploy.errors.EngineError`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from headwater.plugins.deploy.errors import DockerUnavailableError, EngineError
from headwater.plugins.deploy.model import ContainerState

__all__ = ["APP_LABEL", "INSTANCE_LABEL", "DockerEngine"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The labels Headwater puts on every container it deploys: the app, and which Headwater.
APP_LABEL: Final = "io.headwater.app"
INSTANCE_LABEL: Final = "io.headwater.instance"
_PROJECT_LABEL: Final = "com.docker.compose.project"
_SERVICE_LABEL: Final = "com.docker.compose.service"
_NOT_FOUND: Final = 404
_FIRST_ERROR: Final = 400


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket that closes the socket when connecting fails."""

    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _NotFoundError(Exception):
    """The engine answered 404 (internal to this module)."""


class DockerEngine:
    """The Docker Engine API at ``base_url`` (see the module docstring)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self._unix_path = parts.path if parts.scheme == "unix" and parts.path else None
        self._tcp = (parts.hostname or "", parts.port or 0) if parts.scheme == "tcp" else None
        # An unusable DOCKER_HOST (ssh://, npipe://) is reported like an absent engine: the
        # plugin says so on its status topic instead of refusing to start.
        self._problem = (
            None
            if self._unix_path is not None or (self._tcp is not None and all(self._tcp))
            else f"unsupported Docker host {base_url!r} (expected unix:///path or tcp://host:port)"
        )
        self.base_url = base_url
        self._timeout = timeout
        self.version: str | None = None

    async def connect(self) -> str:
        """Make sure the engine answers; return its version. Raises DockerUnavailableError."""
        answer = await self._call(lambda: self._get("/version"))
        self.version = str(answer.get("Version", "?")) if isinstance(answer, dict) else "?"
        return self.version

    async def containers(self, project: str) -> list[ContainerState]:
        """Every container of compose project ``project`` (stopped ones too)."""
        return await self._call(lambda: self._containers([f"{_PROJECT_LABEL}={project}"]))

    async def apps(self, instance: str) -> dict[str, list[ContainerState]]:
        """Containers Headwater ``instance`` deployed, by app name (the ``io.headwater.app`` label)."""

        def read() -> dict[str, list[ContainerState]]:
            found: dict[str, list[ContainerState]] = {}
            for attrs in self._inspect_all([APP_LABEL, f"{INSTANCE_LABEL}={instance}"]):
                app = str(((attrs.get("Config") or {}).get("Labels") or {}).get(APP_LABEL, ""))
                found.setdefault(app, []).append(_container_state(attrs))
            return found

        return await self._call(read)

    async def missing_images(self, images: tuple[str, ...]) -> list[str]:
        """Those of ``images`` that are not in the engine's image store."""

        def read() -> list[str]:
            missing = []
            for image in images:
                try:
                    self._get(f"/images/{quote(image, safe='/:@')}/json")
                except _NotFoundError:
                    missing.append(image)
            return missing

        return await self._call(read)

    async def aclose(self) -> None:
        """Nothing stays open between requests; here for symmetry with the other I/O objects."""

    # --- in worker threads ----------------------------------------------------------------

    async def _call(self, function: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(function)
        except _NotFoundError as exc:
            raise EngineError(f"Docker: {exc}") from exc

    def _connection(self) -> http.client.HTTPConnection:
        if self._unix_path is not None:
            return _UnixConnection(self._unix_path, timeout=self._timeout)
        if self._tcp is None or self._problem is not None:
            raise DockerUnavailableError(self._problem or "no Docker host")
        return http.client.HTTPConnection(*self._tcp, timeout=self._timeout)

    def _get(self, path: str, query: dict[str, str] | None = None) -> Any:
        target = path + (f"?{urlencode(query)}" if query else "")
        connection = self._connection()
        try:
            connection.request("GET", target, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            )
            raise DockerUnavailableError(
                f"the Docker engine at {self.base_url} does not answer ({reason})"
            ) from exc
        finally:
            connection.close()
        try:
            document = json.loads(body) if body else None
        except ValueError as exc:
            raise EngineError(f"Docker answered {path} with something that is not JSON") from exc
        if response.status == _NOT_FOUND:
            raise _NotFoundError(_message(document) or f"{path} not found")
        if response.status >= _FIRST_ERROR:
            raise EngineError(f"Docker answered {response.status}: {_message(document) or response.reason}")
        return document

    def _inspect_all(self, labels: list[str]) -> list[dict[str, Any]]:
        summaries = self._get("/containers/json", {"all": "1", "filters": json.dumps({"label": labels})})
        found = []
        for summary in summaries if isinstance(summaries, list) else ():
            try:
                attrs = self._get(f"/containers/{quote(str(summary.get('Id', '')), safe='')}/json")
            except _NotFoundError:
                continue  # removed between the list and the inspect
            if isinstance(attrs, dict):
                found.append(attrs)
        return found

    def _containers(self, labels: list[str]) -> list[ContainerState]:
        return [_container_state(attrs) for attrs in self._inspect_all(labels)]


def _message(document: object) -> str | None:
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return str(document["message"])
    return None


def _container_state(attrs: dict[str, Any]) -> ContainerState:
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    state = attrs.get("State") or {}
    health = state.get("Health") or {}
    ports = [
        f"{binding.get('HostIp', '')}:{binding.get('HostPort', '')}->{private}"
        for private, bindings in sorted(((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items())
        for binding in bindings or ()
    ]
    return ContainerState(
        service=str(labels.get(_SERVICE_LABEL, "?")),
        container_id=str(attrs.get("Id", "")),
        state=str(state.get("Status", "unknown")),
        health=health.get("Status") or None,
        image=str(config.get("Image", "")),
        restarts=int(attrs.get("RestartCount") or 0),
        started_at=str(state.get("StartedAt", "")),
        exit_code=int(state.get("ExitCode") or 0),
        ports=tuple(ports),
    )
