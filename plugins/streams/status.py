"""The retained status topic of every stream: ``<prefix>/streams/<name>/status``.

Owns :class:`StatusPublisher`, the ``headwater-streams-status`` task's work: it publishes a
stream's ``describe`` object (retained) when it changed, at most once per interval per stream
(changes in between are coalesced), clears the status topic of a deleted stream and, at start,
of streams that no longer exist. A status that could not be published is retried next round,
logged once per failure streak. It must never change a stream: it only reads ``describe``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from headwater.core.store import StorageError
from headwater.core.topics import topic_matches
from headwater.wire.streams import status_topic

if TYPE_CHECKING:
    from collections.abc import Callable, Container

    from headwater.core.plugin_host import PluginHost
    from headwater.wire.streams import StreamDescription

__all__ = ["StatusPublisher"]

# The plugin's logger: these lines have always come from the plugin.
logger = logging.getLogger("headwater.plugins.streams.plugin")


class StatusPublisher:
    """Publishes the status topics of the served streams; see the module docstring.

    ``served`` is the live collection of served stream names, ``describe`` the status of one.
    """

    def __init__(
        self,
        *,
        interval: float,
        served: Container[str],
        describe: Callable[[str], StreamDescription],
    ) -> None:
        self._interval = interval
        self._served = served
        self._describe = describe
        self._dirty: set[str] = set()  # names whose status may have changed
        self._removed: set[str] = set()  # names whose status must be cleared
        self._wanted = asyncio.Event()
        self._published: dict[str, bytes] = {}
        self._failing: set[str] = set()
        self._count = 0

    @property
    def published(self) -> int:
        """How many statuses were published (clearing ones included)."""
        return self._count

    def mark(self, name: str) -> None:
        """The status of ``name`` may have changed: republish it (at most once per interval)."""
        self._dirty.add(name)
        self._wanted.set()

    def mark_removed(self, name: str) -> None:
        """Stream ``name`` was deleted: clear its status topic."""
        self._published.pop(name, None)
        self._removed.add(name)
        self._wanted.set()

    async def run(self, host: PluginHost) -> None:
        """The status task: coalesce changes, publish at most once per interval per stream."""
        await self._clear_stale(host)
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            dirty, self._dirty = self._dirty, set()
            removed, self._removed = self._removed, set()
            for name in sorted(removed):
                if name in self._served:
                    continue
                if not await self._publish(host, name, b""):
                    self._removed.add(name)
            for name in sorted(dirty):
                if name not in self._served:
                    continue
                payload = json.dumps(self._describe(name).to_json_dict(), separators=(",", ":")).encode()
                if payload == self._published.get(name):
                    continue
                if await self._publish(host, name, payload):
                    self._published[name] = payload
                else:
                    self._dirty.add(name)  # retried next round
            if self._dirty or self._removed:
                self._wanted.set()
            await asyncio.sleep(self._interval)

    async def _publish(self, host: PluginHost, name: str, payload: bytes) -> bool:
        try:
            await host.publish(status_topic(host.config.topic_prefix, name), payload, retain=True)
        except StorageError as exc:
            if name not in self._failing:  # one line per failure streak, not per retry
                self._failing.add(name)
                logger.warning("status of stream %s not published (retrying): %s", name, exc)
            return False
        self._failing.discard(name)
        self._count += 1
        return True

    async def _clear_stale(self, host: PluginHost) -> None:
        """Clear retained status topics of streams that no longer exist (from an earlier run)."""
        pattern = status_topic(host.config.topic_prefix, "+")
        prefix, suffix = pattern.split("+")
        for message in host.retained(prefix):
            if topic_matches(pattern, message.topic):
                name = message.topic.removeprefix(prefix).removesuffix(suffix)
                if name not in self._served:
                    await self._publish(host, name, b"")
