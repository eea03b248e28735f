"""What plugins see of incoming publishes: the message, the interceptor contract, the gate.

The broker's durable-acknowledgement handler (``headwater.broker.durable``) offers every
publish the ACL accepted to the registered :class:`PublishInterceptor` objects before it
acknowledges the message; plugins register on a :class:`PublishGateView`. This module only
declares the shapes both sides agree on: it must never import amqtt nor the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = ["IncomingPublish", "PublishGateView", "PublishInterceptor"]


@dataclass(frozen=True, slots=True)
class IncomingPublish:
    """A client's PUBLISH, as offered to interceptors before it is acknowledged."""

    client_id: str
    username: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at_ms: int


class PublishInterceptor(Protocol):
    """Something that must store a message before its publisher is told it is safe."""

    def intercept(self, message: IncomingPublish) -> Awaitable[None] | None:
        """Accept ``message``; called synchronously, in arrival order, on the event loop.

        Return None when nothing needs waiting for, or an awaitable (a future, never a bare
        coroutine: for QoS 0 nobody awaits it) that completes when the message is durable and
        raises if it could not be made durable.
        """
        ...


class PublishGateView(Protocol):
    """The publish gate as plugins use it: register interceptors, ask the publish decision."""

    def add_interceptor(self, interceptor: PublishInterceptor, *, retained_only: bool = False) -> None:
        """Register ``interceptor``; it sees every accepted publish (or retained one) from now on."""
        ...

    def remove_interceptor(self, interceptor: PublishInterceptor) -> None:
        """Unregister ``interceptor``."""
        ...

    def may_publish(self, username: str | None, topic: str) -> bool:
        """The broker's one publish decision: ACL plus the topics reserved for Headwater itself."""
        ...
