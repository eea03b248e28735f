"""The deploy plugin: retained ``<prefix>/deploy/<app>`` messages drive docker compose.

Owns the desired state of every app, the order in which work happens, and the status topics. It
decides; the I/O is elsewhere: :mod:`.runner` runs docker compose, :mod:`.engine` reads the
Docker API, :mod:`.aws` talks to S3 / ECR / Secrets Manager, :mod:`.workspace` owns the files
under ``<data_dir>/deploy``, :mod:`.model` and :mod:`.validate` hold the pure decisions.

Desired state
-------------

The retained message of ``<prefix>/deploy/<app>`` *is* the desired state of ``<app>`` (see
:mod:`.model` for the payload); an empty retained message means "removed". The plugin reads
the retained messages restored from disk at start, then sees every accepted retained publish
through a publish interceptor (so the ACL has already said yes). A non-retained publish there is
ignored: it would not survive a restart. An app name outside ``[a-z0-9][a-z0-9_-]{0,62}`` is
refused with a ``failed`` status on ``<prefix>/deploy/<name>/status`` and never reaches the
file system; clearing its message (the empty retained message) publishes ``removed`` there, then
clears that status too. Names starting with ``_`` are Headwater's (``_plugin``).

Per app, one worker task (``headwater-deploy-app-<app>``) does one thing at a time; a message
that arrives meanwhile replaces any message still waiting, so the latest desired state wins and
intermediate ones are skipped. Applying a desired state:

1. parse the message; the same revision as the one that runs (``state.json``), with every
   service running, is left untouched — unless the message just arrived with ``force``;
2. ``deploying``: fetch the file from S3 if needed, check YAML and model, write it under
   ``data_dir``, let ``docker compose config`` resolve it, check the policy on the result, check
   that images exist when ``pull: never``, fetch registry credentials, ``up``;
3. wait (up to ``settle_timeout``) until no container is starting or restarting and no
   healthcheck is undecided, then ``running`` (every service runs, healthy if it has a check) or
   ``degraded``;
4. any refusal or failure ends in ``failed`` with the error and compose's last lines; a new app
   that failed leaves nothing behind (``down`` if ``up`` ran, files removed); a failed update
   leaves the previous version as it was.

Refused revisions are not tried again: a desired state refused before anything ran
(:class:`~.errors.InvalidDeploymentError`: envelope, YAML, alias budget, keys, policy, a file
docker compose config refused) is remembered with its revision and a fingerprint of the deploy
config (``refused.json``, :mod:`.workspace`). At a restart, a reconcile, or when the same message
comes again, that revision gets its ``failed`` status back without any work — no docker compose
run — until the message changes (a new revision), it arrives with ``force``, or the deploy
config changes (a policy switch turned on). Missing images with ``pull: never``
(:class:`~.errors.ImagesMissingError`) are not remembered: loading the image and restarting
is enough.

Removal: ``removing``, ``docker compose down`` (named volumes are kept), files removed,
``removed``, then the status itself is cleared (an empty retained message): a removed app is
not listed any more. At start, statuses left without a desired state that say ``removed`` (the
process died before clearing them) or belong to an invalid name are cleared the same way.

Docker
------

A task (``headwater-deploy-engine``) finds docker compose and pings the engine; while either is
missing, apps that have work wait in state ``pending`` with the reason, retried with backoff
(1 s doubling to 30 s). At start, and whenever the engine comes back, it *reconciles*: apps
whose containers Docker runs with this Headwater's labels (``io.headwater.app`` and
``io.headwater.instance``, see :mod:`.workspace`) but that have no desired state are removed,
stale folders are deleted, and every app is compared with Docker as in step 1 above — those
that match are not touched. While the engine answers it is pinged every
``status_interval``; every app's status is refreshed from the Docker API as often and published
when it changed.

Statuses go to ``<prefix>/deploy/<app>/status`` (retained, QoS 1; clients can't publish there)
and the plugin's own to ``<prefix>/deploy/_plugin/status``. A message that arrives while the
plugin runs gets at least one fresh status once it was handled, even if nothing changed, so a
client waiting for it always gets an answer.

``stop`` unregisters the interceptor and cancels every task; a docker compose run in progress is
stopped (SIGTERM) and the next start reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Literal

from headwater.core.store import StorageError
from headwater.plugins.deploy.aws import DeployAws
from headwater.plugins.deploy.engine import DockerEngine
from headwater.plugins.deploy.errors import (
    ComposeFailedError,
    ComposeUnavailableError,
    DeployError,
    DockerUnavailableError,
    EngineError,
    ImagesMissingError,
    InvalidDeploymentError,
)
from headwater.plugins.deploy.model import (
    deploy_reserved_topics,
    parse_desired,
    project_name,
    service_problems,
    summarize_services,
)
from headwater.plugins.deploy.runner import ComposeProject, ComposeRunner, temporary_docker_config
from headwater.plugins.deploy.validate import (
    check_compose_model,
    check_policy,
    ecr_registry,
    images_of,
    parse_compose,
    registry_of,
)
from headwater.plugins.deploy.workspace import AppState, DeployWorkspace, Refusal
from headwater.wire.deploy import (
    PLUGIN_STATUS_NAME,
    DeploymentStatus,
    DesiredState,
    PluginStatus,
    ServiceStatus,
    app_name_problem,
    format_time,
    revision_of,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from headwater.core.config import DeployConfig, RegistryCredential
    from headwater.core.plugin_host import PluginHost
    from headwater.core.publish import IncomingPublish

__all__ = ["DEFAULT_DOCKER_HOST", "PLUGIN_STATUS_NAME", "DeployPlugin", "DeployStatistics"]

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"
_OUTPUT_LINES: Final = 20


@dataclass(frozen=True, slots=True)
class DeployStatistics:
    """A snapshot of the deploy plugin's counters (since start)."""

    apps: int  # apps with a desired state or work in progress
    deployments: int  # successful docker compose up runs
    unchanged: int  # desired states found running already (no compose run)
    removals: int  # successful docker compose down runs
    failures: int  # desired states that ended in failed
    refused_names: int  # messages on topics whose app name is invalid
    statuses_published: int


@dataclass(eq=False)
class _App:
    """One app's worker state (only its worker and the interceptor touch it)."""

    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: bytes | None = None  # the newest message not yet taken (b"" = remove)
    pending_live: bool = False  # it arrived while running (honour force, answer with a status)
    reconcile: bool = False  # compare current with Docker again
    current: bytes | None = None  # the message being applied or last applied
    status: DeploymentStatus | None = None  # the last status published
    task: asyncio.Task[None] | None = None


class DeployPlugin:
    """The deploy plugin (a ``HeadwaterPlugin`` and ``PublishInterceptor``); see the module docstring.

    The keyword arguments tune timing (tests shorten them): ``settle_timeout`` bounds the wait
    for containers to settle after ``up``, ``retry_delays`` the backoff while Docker is away,
    ``max_parallel`` how many docker compose runs happen at once (across apps).
    """

    name = "deploy"

    def __init__(
        self,
        *,
        settle_timeout: float = 60.0,
        settle_poll: float = 0.5,
        retry_delays: tuple[float, float] = (1.0, 30.0),
        max_parallel: int = 4,
    ) -> None:
        self._settle_timeout = settle_timeout
        self._settle_poll = settle_poll
        self._retry_delays = retry_delays
        self._max_parallel = max_parallel
        self._host: PluginHost | None = None
        self._apps: dict[str, _App] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._ready = asyncio.Event()  # the engine and compose answer, and the reconcile is done
        self._suspect = asyncio.Event()  # a worker saw the engine fail: check it now
        self._unready_reason = "starting: looking for the Docker engine and docker compose"
        self._refusals: dict[str, tuple[bytes, ...]] = {}  # status payloads to publish, in order
        self._refusals_wanted = asyncio.Event()
        self._started_at = 0.0
        self._deployments = self._unchanged = self._removals = self._failures = 0
        self._refused_names = self._statuses_published = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def reserved_topics(self, prefix: str) -> tuple[str, ...]:
        """Every app's status topic (and the plugin's own): only Headwater publishes there."""
        return deploy_reserved_topics(prefix)

    async def start(self, host: PluginHost) -> None:
        """Read the retained desired states, intercept new ones, start the engine watcher."""
        self._host = host
        config = host.config.deploy
        self._config: DeployConfig = config
        self._topic_prefix = f"{host.config.topic_prefix}/deploy/"
        self.docker_host = config.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        self._engine = DockerEngine(self.docker_host)
        self._runner = ComposeRunner(
            docker_host=self.docker_host,
            timeout=config.timeout,
            command=config.compose_command,
            memory_limit=config.compose_memory_limit,
        )
        self._aws = DeployAws(host.config.aws)
        self._workspace = DeployWorkspace(host.config.data_dir)
        self._instance = self._workspace.prepare()
        self._refused = self._workspace.read_refusals()
        self._config_key = _config_fingerprint(config, self.docker_host)
        self._semaphore = asyncio.Semaphore(self._max_parallel)
        self._started_at = time.time()
        desired: set[str] = set()
        statuses: dict[str, bytes] = {}
        for message in host.retained(self._topic_prefix):
            name = self._app_of(message.topic)
            if name is not None and message.payload:
                desired.add(name)
                self._accept(name, message.payload, live=False)
            elif (status_of := self._status_app_of(message.topic)) is not None:
                statuses[status_of] = message.payload
        for name in _stale_statuses(desired, statuses):
            self._refusals[name] = (b"",)
            self._refusals_wanted.set()
        host.gate.add_interceptor(self, retained_only=True)
        await self._publish_plugin_status("starting", self._unready_reason)
        self._tasks += [
            host.spawn(self._watch_engine(), name="headwater-deploy-engine"),
            host.spawn(self._publish_refusals(), name="headwater-deploy-refusals"),
        ]
        logger.info("deploy: %d app(s) in retained messages; Docker at %s", len(self._apps), self.docker_host)

    async def stop(self) -> None:
        """Stop intercepting, cancel every task (a compose run is stopped), close the Docker client."""
        host = self._host
        if host is None or self._closing:
            return
        self._closing = True
        with contextlib.suppress(ValueError):
            host.gate.remove_interceptor(self)
        tasks = self._tasks + [app.task for app in self._apps.values() if app.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._engine.aclose()
        await self._aws.aclose()

    def statistics(self) -> DeployStatistics:
        """Counters for monitoring and tests."""
        return DeployStatistics(
            apps=len(self._apps),
            deployments=self._deployments,
            unchanged=self._unchanged,
            removals=self._removals,
            failures=self._failures,
            refused_names=self._refused_names,
            statuses_published=self._statuses_published,
        )

    # --- desired states ----------------------------------------------------------------------

    def intercept(self, message: IncomingPublish) -> None:
        """See every accepted retained publish; take those on ``<prefix>/deploy/<app>``."""
        name = self._app_of(message.topic)
        if name is not None and not self._closing:
            self._accept(name, message.payload, live=True)

    def _app_of(self, topic: str) -> str | None:
        """The app name a deploy topic names (maybe invalid), None for other topics."""
        if not topic.startswith(self._topic_prefix):
            return None
        name = topic[len(self._topic_prefix) :]
        if not name or name.endswith("/status"):
            return None  # status topics are Headwater's
        return name

    def _status_app_of(self, topic: str) -> str | None:
        """The app whose status ``topic`` is (maybe an invalid name), None for other topics."""
        if not topic.startswith(self._topic_prefix) or not topic.endswith("/status"):
            return None
        name = topic[len(self._topic_prefix) : -len("/status")]
        return name if name and name != PLUGIN_STATUS_NAME else None

    def _accept(self, name: str, payload: bytes, *, live: bool) -> None:
        problem = app_name_problem(name)
        if problem is not None:
            self._refuse(name, payload, problem)
            return
        app = self._apps.get(name)
        if app is None:
            app = self._apps[name] = _App(name)
            assert self._host is not None  # noqa: S101 - started
            app.task = self._host.spawn(self._run_app(app), name=f"headwater-deploy-app-{name}")
        app.pending = payload
        app.pending_live = live
        app.wake.set()

    def _refuse(self, name: str, payload: bytes, problem: str) -> None:
        if name.startswith("_") and "/" not in name:
            logger.warning(
                "deploy: ignored a message on %s%s: names starting with _ are Headwater's",
                self._topic_prefix,
                name,
            )
            return
        self._refused_names += 1
        now = format_time(time.time())
        if not payload:
            # Its message was cleared: nothing ran, so it is removed at once. Say so once (a
            # `deploy down` waits for it), then clear the refusal's status as for any removed app.
            logger.info("deploy: cleared %s%s (an invalid app name)", self._topic_prefix, name)
            removed = DeploymentStatus(app=name, state="removed", updated_at=now)
            self._refusals[name] = (removed.to_payload(), b"")
        else:
            logger.warning("deploy: refused %s%s: %s", self._topic_prefix, name, problem)
            status = DeploymentStatus(
                app=name, state="failed", revision=revision_of(payload), error=problem, updated_at=now
            )
            self._refusals[name] = (status.to_payload(),)
        self._refusals_wanted.set()

    async def _publish_refusals(self) -> None:
        while True:
            await self._refusals_wanted.wait()
            self._refusals_wanted.clear()
            while self._refusals:
                name = next(iter(self._refusals))
                for payload in self._refusals.pop(name):
                    if not payload and name in self._apps:
                        continue  # a stale status whose app got a message meanwhile: its worker owns it
                    await self._publish_topic(self._status_topic(name), payload)

    # --- the worker of one app ---------------------------------------------------------------

    async def _run_app(self, app: _App) -> None:
        while True:
            if not app.wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.status_interval):
                        await app.wake.wait()
            app.wake.clear()
            if (
                app.pending is None
                and not (app.reconcile and app.current is not None)
                and not self._deployed(app)
            ):
                continue  # nothing to do, nothing to refresh
            # Waiting first: what arrives meanwhile (a newer message, the reconcile) is done once.
            await self._wait_ready(app, app.current if app.pending is None else app.pending)
            if app.pending is not None:
                payload, live = app.pending, app.pending_live
                app.pending, app.pending_live = None, False
                app.current = payload
            elif app.reconcile and app.current is not None:
                payload, live = app.current, False
            else:
                await self._refresh(app)
                continue
            app.reconcile = False
            try:
                await self._apply(app, payload, live=live)
            except DockerUnavailableError as exc:
                self._engine_lost(str(exc))
                if app.pending is None:  # do it again once the engine is back
                    app.pending, app.pending_live = payload, live
                app.wake.set()
                continue
            if payload == b"" and self._removed_and_idle(app):
                del self._apps[app.name]
                return

    @staticmethod
    def _removed_and_idle(app: _App) -> bool:
        return app.pending is None and app.status is not None and app.status.state == "removed"

    @staticmethod
    def _deployed(app: _App) -> bool:
        return app.status is not None and app.status.state in {"running", "degraded"}

    async def _wait_ready(self, app: _App, payload: bytes | None = None) -> None:
        """Wait for the engine; meanwhile the app is ``pending`` with the reason."""
        if self._ready.is_set():
            return
        target = app.current if payload is None else payload
        pending = DeploymentStatus(
            app=app.name,
            state="pending",
            revision=revision_of(target) if target else None,
            services=app.status.services if app.status else (),
            error=self._unready_reason,
            deployed_at=app.status.deployed_at if app.status else None,
        )
        await self._publish(app, pending)
        await self._ready.wait()

    async def _apply(self, app: _App, payload: bytes, *, live: bool) -> None:
        if not payload:
            await self._remove(app)
            self._forget_refusal(app.name)
            return
        revision = revision_of(payload)
        assert revision is not None  # noqa: S101 - a non-empty message has one
        refusal = self._refused.get(app.name)
        if (
            refusal is not None
            and (refusal.revision, refusal.config) == (revision, self._config_key)
            and not (live and _forced(payload))
        ):
            logger.info("deploy: %s revision %s was refused: not tried again", app.name, revision)
            await self._publish_failed(app, revision, refusal.error, (), live=live)
            return
        try:
            desired = parse_desired(payload, max_size=self._config.max_compose_size)
            await self._deploy(app, desired, revision, live=live)
        except DockerUnavailableError:
            raise
        except (DeployError, OSError) as exc:
            if isinstance(exc, OSError):  # the workspace under data_dir (disk full, permissions)
                exc = DeployError(f"cannot write under {self._workspace.root}: {exc.strerror or exc}")
            self._failures += 1
            logger.warning("deploy: %s revision %s failed: %s", app.name, revision, exc)
            if isinstance(exc, InvalidDeploymentError) and not isinstance(exc, ImagesMissingError):
                self._remember_refusal(app.name, Refusal(revision, self._config_key, str(exc)))
            await self._publish_failed(
                app, revision, str(exc), getattr(exc, "output", ())[-_OUTPUT_LINES:], live=live
            )
        else:
            self._forget_refusal(app.name)

    async def _publish_failed(
        self, app: _App, revision: str, error: str, output: tuple[str, ...], *, live: bool
    ) -> None:
        state = self._workspace.read_state(app.name)
        failed = DeploymentStatus(
            app=app.name,
            state="failed",
            revision=revision,
            services=await self._services_if_any(app.name, state),
            error=error,
            output=output,
            deployed_at=format_time(state.deployed_at) if state else None,
        )
        await self._publish(app, failed, fresh=live)

    def _remember_refusal(self, app: str, refusal: Refusal) -> None:
        self._refused[app] = refusal
        self._write_refusals()

    def _forget_refusal(self, app: str) -> None:
        if self._refused.pop(app, None) is not None:
            self._write_refusals()

    def _write_refusals(self) -> None:
        try:
            self._workspace.write_refusals(self._refused)
        except OSError as exc:  # then a restart tries the refused revision once more: no harm
            logger.warning("deploy: cannot record refused revisions: %s", exc.strerror or exc)

    async def _deploy(self, app: _App, desired: DesiredState, revision: str, *, live: bool) -> None:
        force = desired.force and live
        project = project_name(app.name)
        previous = self._workspace.read_state(app.name)
        if not force and previous is not None and previous.revision == revision:
            services = summarize_services(previous.services, await self._engine.containers(project))
            if all(service.state == "running" for service in services):
                self._unchanged += 1
                logger.info("deploy: %s revision %s already runs; left untouched", app.name, revision)
                await self._publish_settled(app, revision, services, previous.deployed_at, fresh=live)
                return
        await self._publish(
            app,
            DeploymentStatus(
                app=app.name,
                state="deploying",
                revision=revision,
                services=app.status.services if app.status else (),
                deployed_at=format_time(previous.deployed_at) if previous else None,
            ),
            fresh=True,
        )
        async with self._semaphore:
            try:
                expected = await self._compose_up(app.name, desired, force=force)
            except DeployError as exc:
                if previous is None:
                    await self._clean_up_new_app(app.name, ran_up=not isinstance(exc, InvalidDeploymentError))
                raise
            deployed_at = time.time()
            self._workspace.write_state(
                app.name, AppState(revision=revision, deployed_at=deployed_at, services=expected)
            )
            self._deployments += 1
        logger.info("deploy: %s revision %s is up", app.name, revision)
        services = await self._wait_settled(project, expected)
        await self._publish_settled(app, revision, services, deployed_at, fresh=True)

    async def _compose_up(self, app: str, desired: DesiredState, *, force: bool) -> tuple[str, ...]:
        """Check, write and ``up`` ``desired``; return its services."""
        config = self._config
        if desired.compose_s3 is not None:
            text = await self._aws.fetch_compose(desired.compose_s3, max_size=config.max_compose_size)
        else:
            assert desired.compose is not None  # noqa: S101 - one of the two, by parse_desired
            text = desired.compose
        model = await asyncio.to_thread(
            functools.partial(parse_compose, text, max_size=config.max_compose_size)
        )
        services = check_compose_model(model)
        named = [self._registry(name) for name in desired.registry_auth]
        files = self._workspace.write_compose(app, text, services)
        project = ComposeProject(name=project_name(app), files=files, env=desired.env)
        try:
            resolved = await self._runner.config(project)
        except ComposeFailedError as exc:
            raise InvalidDeploymentError(f"the compose file was refused by {exc}") from exc
        expected = check_compose_model(resolved)
        check_policy(
            resolved, config.policy, project_dir=str(files[0].parent), protected_paths=self._protected_paths()
        )
        pull = desired.pull or config.pull
        images = images_of(resolved)
        if pull == "never":
            missing = await self._engine.missing_images(images)
            if missing:
                raise ImagesMissingError(
                    f"image(s) not on this gateway and pull is never: {', '.join(missing)}"
                )
        needs_ecr = pull != "never" and any(ecr_registry(registry_of(image)) for image in images)
        credentials = (
            await self._aws.registry_credentials(images=images if pull != "never" else (), named=named)
            if named or needs_ecr
            else {}
        )
        try:
            if credentials:
                program = await self._runner.discover()
                with temporary_docker_config(credentials, plugin_dir=program.plugin_dir) as docker_config:
                    await self._runner.up(
                        replace(project, docker_config=docker_config), pull=pull, force=force
                    )
            else:
                await self._runner.up(project, pull=pull, force=force)
        except ComposeFailedError:
            await self._engine.connect()  # DockerUnavailableError if that is why it failed
            raise
        return expected

    def _protected_paths(self) -> tuple[str, ...]:
        """Host paths no app may mount, besides the engine's usual ones: its socket here, our files."""
        paths = [str(self._workspace.root)]
        if self.docker_host.startswith("unix://"):
            paths.append(self.docker_host.removeprefix("unix://"))
        return tuple(paths)

    def _registry(self, name: str) -> RegistryCredential:
        credential = self._config.registries.get(name)
        if credential is None:
            configured = ", ".join(sorted(self._config.registries)) or "none"
            raise InvalidDeploymentError(
                f"registry_auth: no registry credential named {name!r} in deploy.registries "
                f"(configured: {configured})"
            )
        return credential

    async def _clean_up_new_app(self, app: str, *, ran_up: bool) -> None:
        """A new app failed: leave nothing behind (containers, networks, files)."""
        # A failed `up` may have got as far as a network: down. A refused file never ran `up`.
        if ran_up:
            with contextlib.suppress(DeployError):
                await self._runner.down(project_name(app), stop_timeout=2)
        self._workspace.remove(app)

    async def _remove(self, app: _App) -> None:
        await self._publish(
            app,
            DeploymentStatus(
                app=app.name, state="removing", services=app.status.services if app.status else ()
            ),
            fresh=True,
        )
        async with self._semaphore:
            try:
                await self._runner.down(project_name(app.name))
            except ComposeFailedError as exc:
                await self._engine.connect()
                self._failures += 1
                logger.warning("deploy: removing %s failed: %s", app.name, exc)
                failed = DeploymentStatus(
                    app=app.name, state="failed", error=str(exc), output=exc.output[-_OUTPUT_LINES:]
                )
                await self._publish(app, failed, fresh=True)
                return
        self._workspace.remove(app.name)
        self._removals += 1
        logger.info("deploy: %s removed", app.name)
        await self._publish(app, DeploymentStatus(app=app.name, state="removed"), fresh=True)
        # Watchers (and `deploy down`) saw `removed`; now the app has no status at all, so that
        # `deploy status` stops listing it. A new message publishes a status again.
        await self._publish_topic(self._status_topic(app.name), b"")

    async def _wait_settled(self, project: str, expected: tuple[str, ...]) -> tuple[ServiceStatus, ...]:
        """Poll until no service is on its way (or one stopped, or settle_timeout passed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_timeout
        while True:
            services = summarize_services(expected, await self._engine.containers(project))
            stopped = any(service.state in {"exited", "dead", "missing"} for service in services)
            if stopped or not any(service.settling for service in services) or loop.time() >= deadline:
                return services
            await asyncio.sleep(self._settle_poll)

    async def _refresh(self, app: _App) -> None:
        """The periodic look at a deployed app's containers (never raises)."""
        state = self._workspace.read_state(app.name)
        if state is None:
            return
        try:
            containers = await self._engine.containers(project_name(app.name))
        except DockerUnavailableError as exc:
            self._engine_lost(str(exc))  # this app says pending on its next round
            app.wake.set()
            return
        except DeployError as exc:
            logger.warning("deploy: cannot refresh the status of %s: %s", app.name, exc)
            return
        services = summarize_services(state.services, containers)
        await self._publish_settled(app, state.revision, services, state.deployed_at, fresh=False)

    async def _services_if_any(self, app: str, state: AppState | None) -> tuple[ServiceStatus, ...]:
        try:
            containers = await self._engine.containers(project_name(app))
        except DeployError:
            return ()
        return summarize_services(state.services if state else (), containers)

    # --- the engine --------------------------------------------------------------------------

    def _engine_lost(self, reason: str) -> None:
        if self._ready.is_set():
            logger.warning("deploy: %s", reason)
        self._ready.clear()
        self._unready_reason = reason
        self._suspect.set()

    async def _watch_engine(self) -> None:
        shortest, longest = self._retry_delays
        delay = shortest
        announced: str | None = None
        while True:
            try:
                program = await self._runner.discover()
                version = await self._engine.connect()
                if not self._ready.is_set():
                    await self._reconcile()
            except (DockerUnavailableError, ComposeUnavailableError, EngineError) as exc:
                was_ready = self._ready.is_set()
                self._ready.clear()
                self._unready_reason = f"waiting for Docker: {exc}"
                if was_ready or announced != self._unready_reason:
                    announced = self._unready_reason
                    logger.warning("deploy: %s (retrying)", exc)
                    await self._publish_plugin_status("pending", self._unready_reason)
                    for app in self._apps.values():
                        app.wake.set()  # each says pending
                self._suspect.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            delay = shortest
            if not self._ready.is_set():
                self._ready.set()
                announced = None
                logger.info(
                    "deploy: Docker %s at %s, docker compose %s: ready",
                    version,
                    self.docker_host,
                    program.version,
                )
                await self._publish_plugin_status("ready", None)
            self._suspect.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.status_interval):
                    await self._suspect.wait()

    async def _reconcile(self) -> None:
        """Line Docker up with the desired states (see the module docstring)."""
        found = await self._engine.apps(self._instance)
        for name in sorted(found):
            if app_name_problem(name) is None and name not in self._apps:
                logger.info("deploy: %s runs but has no desired state: removing it", name)
                self._accept(name, b"", live=False)
        for name in self._workspace.apps():
            if name not in self._apps and name not in found:
                self._workspace.remove(name)
        for name in [name for name in self._refused if name not in self._apps]:
            self._forget_refusal(name)  # its message was cleared while Headwater was away
        for app in self._apps.values():
            app.reconcile = True
            app.wake.set()

    # --- statuses ----------------------------------------------------------------------------

    def _status_topic(self, name: str) -> str:
        return f"{self._topic_prefix}{name}/status"

    async def _publish_settled(
        self,
        app: _App,
        revision: str,
        services: tuple[ServiceStatus, ...],
        deployed_at: float,
        *,
        fresh: bool,
    ) -> None:
        problems = service_problems(services)
        status = DeploymentStatus(
            app=app.name,
            state="degraded" if problems else "running",
            revision=revision,
            services=services,
            error=problems,
            deployed_at=format_time(deployed_at),
        )
        await self._publish(app, status, fresh=fresh)

    async def _publish(self, app: _App, status: DeploymentStatus, *, fresh: bool = False) -> None:
        """Publish ``status`` when it differs from the last one (or always, ``fresh``)."""
        if not fresh and status.same_as(app.status):
            return
        status = replace(status, updated_at=format_time(time.time()))
        app.status = status
        await self._publish_topic(self._status_topic(app.name), status.to_payload())

    async def _publish_plugin_status(
        self, state: Literal["starting", "ready", "pending"], error: str | None
    ) -> None:
        program = self._runner.program
        status = PluginStatus(
            state=state,
            docker_host=self.docker_host,
            started_at=format_time(self._started_at),
            error=error,
            engine_version=self._engine.version if state == "ready" else None,
            compose=program.version if program else None,
            updated_at=format_time(time.time()),
        )
        await self._publish_topic(self._status_topic(PLUGIN_STATUS_NAME), status.to_payload())

    async def _publish_topic(self, topic: str, payload: bytes) -> None:
        assert self._host is not None  # noqa: S101 - started
        try:
            await self._host.publish(topic, payload, qos=1, retain=True)
        except StorageError as exc:
            logger.warning("deploy: status %s not published: %s", topic, exc)
            return
        self._statuses_published += 1


def _stale_statuses(desired: set[str], statuses: Mapping[str, bytes]) -> list[str]:
    """The apps whose retained status should go: no desired state, and removed or an invalid name."""
    stale = []
    for name, payload in sorted(statuses.items()):
        if name in desired:
            continue
        if app_name_problem(name) is not None:
            stale.append(name)
            continue
        try:
            state = json.loads(payload).get("state")
        except (ValueError, AttributeError):
            continue  # not ours to judge
        if state == "removed":
            stale.append(name)
    return stale


def _forced(payload: bytes) -> bool:
    """The message asks for ``force`` (False when it is no valid deploy message)."""
    try:
        return parse_desired(payload).force
    except InvalidDeploymentError:
        return False


def _config_fingerprint(config: DeployConfig, docker_host: str) -> str:
    """What a refusal depends on besides the message: a config change tries refused files again."""
    relevant = (
        config.policy,
        config.max_compose_size,
        config.compose_memory_limit,
        sorted(config.registries.items()),
        docker_host,
    )
    return hashlib.sha256(repr(relevant).encode()).hexdigest()[:16]
