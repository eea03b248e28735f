"""The Headwater process: config → database → broker → plugins, started and stopped symmetrically.

Owns the plugin host: :class:`HeadwaterHost` implements the
:class:`~headwater.core.plugin_host.PluginHost` interface that plugins type against (the
lifecycle and the capabilities are described there). In ``start`` a plugin may register a
publish interceptor on ``host.gate`` (to store messages before they are acknowledged) and start
background tasks with ``host.spawn`` (the host owns them: they are cancelled and awaited at
shutdown, and a task that dies unexpectedly is logged with its name). Plugins start before any
listener opens, in the order given, and stop in reverse order after the listeners have closed
and every client is gone. The topics each plugin reserves (its status topics) are refused to
clients by the publish gate.

Start-up order:  open the database → build the broker → restore retained messages →
start plugins → open listeners.  Shutdown is the mirror image.

We use our own plugin host rather than amqtt's event plugins: amqtt runs each event hook as a
fire-and-forget task per message and swallows its exceptions, which is the opposite of "every
task has an owner".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from headwater.broker.connection import ConnectionLimits
from headwater.broker.durable import PublishGate
from headwater.broker.server import Authenticator, HeadwaterBroker, RetainedPersistence
from headwater.core.access import AccessPolicy
from headwater.core.store import Database

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence
    from typing import Any

    from headwater.broker.server import BoundListener
    from headwater.core.config import HeadwaterConfig
    from headwater.core.plugin_host import HeadwaterPlugin
    from headwater.core.store import RetainedMessage

__all__ = ["Headwater", "HeadwaterHost", "HeadwaterStatistics"]

logger = logging.getLogger(__name__)


class HeadwaterHost:
    """The plugin host (implements :class:`~headwater.core.plugin_host.PluginHost`)."""

    def __init__(self, config: HeadwaterConfig, database: Database, gate: PublishGate) -> None:
        self._config = config
        self._database = database
        self._gate = gate
        self._broker: HeadwaterBroker | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> HeadwaterConfig:
        """The validated config Headwater runs with."""
        return self._config

    @property
    def gate(self) -> PublishGate:
        """The publish gate: interceptor registration and the publish decision."""
        return self._gate

    @property
    def storage(self) -> Database:
        """The stream database (the streams plugin's capability)."""
        return self._database

    def retained(self, prefix: str) -> list[RetainedMessage]:
        """The stored retained messages whose topic starts with ``prefix``."""
        return [message for message in self._database.retained.load_all() if message.topic.startswith(prefix)]

    def _attach(self, broker: HeadwaterBroker) -> None:
        self._broker = broker

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Publish as Headwater itself (status topics). A retained message is stored durably."""
        if self._broker is None:
            msg = "the broker is not running"
            raise RuntimeError(msg)
        if retain:
            await self._broker.retain_message(None, topic, payload, qos)
        await self._broker.internal_message_broadcast(topic, payload, qos)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a background task owned by the host (cancelled at shutdown)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("background task %s died: %r", task.get_name(), exc, exc_info=exc)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class HeadwaterStatistics:
    """A snapshot of a running Headwater."""

    connected_clients: int
    retained_messages: int


class Headwater:
    """One running Headwater: ``await start()``, then ``await stop()`` (or ``async with``)."""

    def __init__(
        self,
        config: HeadwaterConfig,
        *,
        plugins: Sequence[HeadwaterPlugin] = (),
        reserved_topics: Sequence[str] = (),
    ) -> None:
        """``reserved_topics`` adds to what the plugins reserve (topics of plugins not running)."""
        self.config = config
        self._plugins = list(plugins)
        self._started: list[HeadwaterPlugin] = []
        self._database: Database | None = None
        self._broker: HeadwaterBroker | None = None
        self.host: HeadwaterHost | None = None
        declared = [topic for plugin in plugins for topic in plugin.reserved_topics(config.topic_prefix)]
        reserved = tuple(dict.fromkeys([*declared, *reserved_topics]))
        self.access = AccessPolicy(config.broker.acl)
        self.gate = PublishGate(access=self.access, reserved_filters=reserved)
        self.limits = ConnectionLimits(config.broker.limits)

    @property
    def bound(self) -> tuple[BoundListener, ...]:
        """Where the listeners actually listen (ports resolved)."""
        return self._broker.bound if self._broker else ()

    @property
    def broker(self) -> HeadwaterBroker:
        """The running amqtt broker (raises if not started)."""
        if self._broker is None:
            msg = "Headwater is not started"
            raise RuntimeError(msg)
        return self._broker

    async def start(self) -> None:
        """Open the database, restore retained messages, start plugins, open listeners."""
        config = self.config
        authenticator = Authenticator(
            allow_anonymous=config.broker.allow_anonymous, password_file=config.broker.password_file
        )
        authenticator.check_password_file()
        _raise_descriptor_limit(config.broker.limits.max_connections)
        self._database = Database.open(config.data_dir)
        try:
            host = self.host = HeadwaterHost(config, self._database, self.gate)
            self.gate.add_interceptor(
                RetainedPersistence(self._database.retained, self._database.request_wal_sync),
                retained_only=True,
            )
            self._broker = HeadwaterBroker(
                listeners=config.broker.listeners,
                authenticator=authenticator,
                gate=self.gate,
                access=self.access,
                retained_store=self._database.retained,
                limits=self.limits,
                before_listen=self._start_plugins,
            )
            host._attach(self._broker)  # noqa: SLF001 - the host and the app are one unit
            await self._broker.start()
        except BaseException:
            await self._stop_plugins()
            await self._database.aclose()
            self._database = None
            raise
        for listener in self._broker.bound:
            logger.info("listening on %s (listener %s)", listener.url, listener.name)

    async def _start_plugins(self) -> None:
        assert self.host is not None  # noqa: S101 - set just before the broker starts
        for plugin in self._plugins:
            await plugin.start(self.host)
            self._started.append(plugin)
            logger.info("plugin %s started", plugin.name)

    async def _stop_plugins(self) -> None:
        while self._started:
            plugin = self._started.pop()
            try:
                await plugin.stop()
            except Exception:
                logger.exception("plugin %s failed to stop cleanly", plugin.name)
        if self.host is not None:
            await self.host._cancel_tasks()  # noqa: SLF001

    async def stop(self) -> None:
        """Close listeners and sessions, stop plugins, then close the database."""
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()
        await self._stop_plugins()
        if self._database is not None:
            database, self._database = self._database, None
            await database.aclose()
        logger.info("Headwater stopped")

    def statistics(self) -> HeadwaterStatistics:
        """Counters for monitoring and tests."""
        broker = self.broker
        connected = sum(1 for session, _ in broker.sessions.values() if session.transitions.is_connected())
        return HeadwaterStatistics(
            connected_clients=connected, retained_messages=len(broker.retained_messages)
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# Descriptors Headwater needs besides its client connections (RocksDB files, logs, Docker).
_DESCRIPTOR_RESERVE = 256


def _raise_descriptor_limit(max_connections: int) -> None:
    """Make room for ``max_connections`` sockets in the soft RLIMIT_NOFILE, or say there is none."""
    wanted = max_connections + _DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft < wanted:
        logger.warning(
            "only %d file descriptors allowed (ulimit -n); broker.limits.max_connections %d needs "
            "about %d: connections beyond the limit will fail to open",
            soft,
            max_connections,
            wanted,
        )
