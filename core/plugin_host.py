"""The plugin host interface: what a Headwater plugin is, and what the host offers it.

Plugins type against these protocols; the implementation is the broker's
(``headwater.broker.app``). A plugin is an object with ``name``, ``reserved_topics(prefix)``,
``async start(host)`` and ``async stop()``. Plugins start before any listener opens, in the
order given, and stop in reverse order after the listeners have closed and every client is
gone.

The host offers capabilities, not its internals:

* ``config``: the validated :class:`~headwater.core.config.HeadwaterConfig`;
* ``gate``: interceptor registration and the publish decision
  (:class:`~headwater.core.publish.PublishGateView`);
* ``publish``: publish as Headwater itself (status topics; retained ones are stored durably);
* ``retained(prefix)``: the retained messages stored under a topic prefix, as of now;
* ``spawn``: a background task owned by the host (cancelled and awaited at shutdown, logged
  with its name if it dies);
* ``storage``: the stream database itself. Only the streams plugin, which owns the streams,
  uses it; every other plugin reaches streams through interfaces in
  :mod:`headwater.core.streams`.

A write the host could not make durable raises :class:`~headwater.core.store.StorageError`.
Topics a plugin publishes as Headwater are declared by :meth:`HeadwaterPlugin.reserved_topics`:
the broker refuses client publishes to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Coroutine
    from typing import Any

    from headwater.core.config import HeadwaterConfig
    from headwater.core.publish import PublishGateView
    from headwater.core.store import Database, RetainedMessage

__all__ = ["HeadwaterPlugin", "PluginHost"]


class PluginHost(Protocol):
    """What a plugin may use (see the module docstring)."""

    @property
    def config(self) -> HeadwaterConfig:
        """The validated config Headwater runs with."""
        ...

    @property
    def gate(self) -> PublishGateView:
        """Where interceptors are registered, and the broker's publish decision."""
        ...

    @property
    def storage(self) -> Database:
        """The stream database: the streams plugin's capability, no other plugin's."""
        ...

    def retained(self, prefix: str) -> list[RetainedMessage]:
        """The stored retained messages whose topic starts with ``prefix``."""
        ...

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Publish as Headwater itself. A retained message is stored durably first."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a background task owned by the host (cancelled at shutdown)."""
        ...


class HeadwaterPlugin(Protocol):
    """What the host needs of a plugin (see the module docstring for the lifecycle)."""

    name: str

    def reserved_topics(self, prefix: str) -> tuple[str, ...]:
        """Topic filters only Headwater publishes to (this plugin's status topics)."""
        ...

    async def start(self, host: PluginHost) -> None:
        """Get ready before any listener opens: register interceptors, spawn tasks."""
        ...

    async def stop(self) -> None:
        """Finish in-flight work and release resources; clients are gone by now."""
        ...
