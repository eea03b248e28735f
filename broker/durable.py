"""The durable-acknowledgement hook point: plugins finish a durable write before the PUBACK.

amqtt sends the PUBACK (QoS 1) or PUBREC (QoS 2) of an incoming PUBLISH from
``ProtocolHandler.handle_publish`` before any plugin hook runs. Headwater replaces the
broker's protocol handler with :class:`DurableAckProtocolHandler`, whose ``handle_publish``

1. checks, synchronously and in packet-arrival order, that the topic is valid and that the
   publisher may publish to it (the same :class:`~headwater.core.access.AccessPolicy` the
   broker enforces afterwards; a refused message is never offered to an interceptor);
2. offers the message to every registered :class:`PublishInterceptor` — still synchronously,
   so interceptors see messages in arrival order and can batch them (group commit);
3. for QoS 1 and 2 only, awaits what the interceptors returned, then waits for the previous
   QoS 1/2 publish of the same connection to be released, and only then lets amqtt acknowledge
   and route the message. QoS 0 is never delayed: its awaitables are not awaited here, the
   interceptor owns them. Other connections are never delayed by this one.

If an interceptor's write fails (disk full, I/O error), or an interceptor raises while it is
offered the message, the message is *not* acknowledged and the connection is closed: the client
resends after reconnecting, so nothing it was told is safe is lost. The failure is counted and
logged (rate-limited to one line per connection).

A QoS 2 message is offered once: a PUBLISH that repeats the packet id of a QoS 2 message not
yet released by its PUBREL (a resend with DUP, also after a reconnection of the same session)
waits for the first one's storage and is never stored again. It is delivered once, also when
its PUBREL comes on a later connection of the same session
(:meth:`DurableAckProtocolHandler.handle_pubrel`).

This module must never do I/O itself: it sequences other objects' I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.pubcomp import PubcompPacket

from headwater.core.publish import IncomingPublish, PublishInterceptor
from headwater.core.topics import topic_matches

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from amqtt.mqtt.publish import PublishPacket
    from amqtt.mqtt.pubrel import PubrelPacket
    from amqtt.plugins.manager import PluginManager

    from headwater.core.access import AccessPolicy

__all__ = [
    "DurableAckProtocolHandler",
    "GateStatistics",
    "PublishGate",
    "principal_of",
]

logger = logging.getLogger(__name__)

_DECISION_CACHE_SIZE = 8192

#: Session attribute holding the authenticated username (None = anonymous).
PRINCIPAL_ATTRIBUTE = "headwater.principal"
#: Session attribute: QoS 2 packet ids received and offered, not yet released by a PUBREL,
#: each with what its storage returned. Kept with the session, so it spans reconnections.
_EXACTLY_ONCE_ATTRIBUTE = "headwater.qos2_received"


def principal_of(session: object) -> str | None:
    """The authenticated username of an amqtt session, None for anonymous clients."""
    attributes = getattr(session, "attributes", {})
    principal = attributes.get(PRINCIPAL_ATTRIBUTE)
    return principal if isinstance(principal, str) else None


def _exactly_once(session: object) -> dict[int, tuple[Awaitable[None], ...]]:
    attributes: dict[str, object] = getattr(session, "attributes", {})
    received = attributes.get(_EXACTLY_ONCE_ATTRIBUTE)
    if not isinstance(received, dict):
        received = attributes[_EXACTLY_ONCE_ATTRIBUTE] = {}
    return received


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """Counters of :class:`PublishGate`."""

    offered: int
    refused_by_acl: int
    durable_failures: int


class PublishGate:
    """Holds the interceptors and decides which messages they see."""

    def __init__(self, *, access: AccessPolicy, reserved_filters: tuple[str, ...] = ()) -> None:
        self._access = access
        self._interceptors: list[PublishInterceptor] = []
        self._retained_interceptors: list[PublishInterceptor] = []
        self.reserved_filters = reserved_filters
        # (username, topic) -> decision. Topics repeat, and this runs twice per message (before
        # the ack here, then in amqtt's routing): one dict lookup instead of matching filters.
        self._publish_decisions: dict[tuple[str | None, str], bool] = {}
        self._offered = 0
        self._refused_by_acl = 0
        self._durable_failures = 0

    def add_interceptor(self, interceptor: PublishInterceptor, *, retained_only: bool = False) -> None:
        """Register ``interceptor``; it sees every accepted publish (or retained one) from now on."""
        (self._retained_interceptors if retained_only else self._interceptors).append(interceptor)

    def remove_interceptor(self, interceptor: PublishInterceptor) -> None:
        """Unregister ``interceptor``."""
        for interceptors in (self._interceptors, self._retained_interceptors):
            if interceptor in interceptors:
                interceptors.remove(interceptor)

    def may_publish(self, username: str | None, topic: str) -> bool:
        """The broker's one publish decision: ACL plus topics reserved for Headwater itself."""
        key = (username, topic)
        decision = self._publish_decisions.get(key)
        if decision is None:
            decision = not any(
                topic_matches(reserved, topic) for reserved in self.reserved_filters
            ) and self._access.may_publish(username, topic)
            if len(self._publish_decisions) >= _DECISION_CACHE_SIZE:
                self._publish_decisions.clear()  # cheap bound; topics that matter come back fast
            self._publish_decisions[key] = decision
        return decision

    def wants(self, *, retain: bool) -> bool:
        """Whether any interceptor would see such a message (else skip building it)."""
        return bool(self._interceptors) or (retain and bool(self._retained_interceptors))

    def offer(self, message: IncomingPublish) -> list[Awaitable[None]]:
        """Offer an accepted message to every interceptor; return what must complete first."""
        self._offered += 1
        pending: list[Awaitable[None]] = []
        interceptors = self._interceptors
        if message.retain and self._retained_interceptors:
            interceptors = self._retained_interceptors + interceptors
        for interceptor in interceptors:
            waitable = interceptor.intercept(message)
            if waitable is not None:
                pending.append(waitable)
        return pending

    def note_refused(self) -> None:
        """Count a publish the ACL refused."""
        self._refused_by_acl += 1

    def note_durable_failure(self) -> None:
        """Count a publish that could not be made durable (and was not acknowledged)."""
        self._durable_failures += 1

    def statistics(self) -> GateStatistics:
        """A snapshot of the counters."""
        return GateStatistics(
            offered=self._offered,
            refused_by_acl=self._refused_by_acl,
            durable_failures=self._durable_failures,
        )


class DurableAckProtocolHandler(BrokerProtocolHandler):
    """amqtt's broker protocol handler, acknowledging QoS 1/2 only once interceptors are done."""

    def __init__(
        self,
        plugins_manager: PluginManager,  # type: ignore[type-arg]
        *,
        gate: PublishGate,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(plugins_manager, loop=loop)
        self._gate = gate
        # Released when the previous QoS 1/2 publish of this connection has been handed to amqtt.
        self._release_tail: asyncio.Future[None] | None = None
        self._failure_logged = False

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        """Offer, wait for durability (QoS 1/2), then let amqtt acknowledge and route."""
        qos = publish_packet.qos or 0
        # Everything up to the first await runs in packet-arrival order (one task per packet,
        # started in order): the ACL check and the offer to interceptors must stay above it.
        try:
            pending, duplicate = self._offer(publish_packet)
        except Exception as exc:  # noqa: BLE001 - an interceptor that raises means "not stored"
            if qos:
                self._durable_phase_done()
            await self._refuse_after_failure(exc)
            return
        if qos == 0:
            await super().handle_publish(publish_packet)
            return
        if duplicate:
            # A QoS 2 message again before its PUBREL: once its first copy is stored, amqtt
            # answers PUBREC again and delivers it once. It must not wait behind the first copy
            # (which waits for the PUBREL that the client sends only after this PUBREC).
            if await self._wait_stored(pending, publish_packet):
                await super().handle_publish(publish_packet)
            return
        previous = self._release_tail
        if not pending and (previous is None or previous.done()):
            # Nothing to wait for and nothing earlier still waiting: amqtt's own path.
            self._durable_phase_done()
            await super().handle_publish(publish_packet)
            return
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._release_tail = released
        try:
            if not await self._wait_stored(pending, publish_packet):
                return
            if previous is not None:
                await asyncio.shield(previous)
            await super().handle_publish(publish_packet)
        finally:
            if not released.done():
                released.set_result(None)

    async def _wait_stored(self, pending: list[Awaitable[None]], publish_packet: PublishPacket) -> bool:
        """Wait until the interceptors stored the message; on failure refuse it, return False."""
        try:
            for waitable in pending:
                # shield: interceptors share one future among many publishes (group commit);
                # a connection closing must not cancel it for the others.
                await asyncio.shield(waitable)
        except Exception as exc:  # noqa: BLE001 - any storage failure means "not durable"
            self._forget_exactly_once(publish_packet)
            await self._refuse_after_failure(exc)
            return False
        finally:
            self._durable_phase_done()
        return True

    async def handle_pubrel(self, pubrel: PubrelPacket) -> None:
        """The publisher released a QoS 2 message: deliver it once, answer PUBCOMP.

        Its packet id may now carry a new message. When the PUBLISH arrived on an earlier
        connection of the session, amqtt had no waiter for this PUBREL and answered nothing:
        the message, still held in the session's ``inflight_in``, is delivered here. A PUBREL
        for a message released already (its PUBCOMP was lost) is answered again and delivers
        nothing (MQTT 4.3.3: the receiver answers every PUBREL with a PUBCOMP).
        """
        session = self.session
        packet_id = pubrel.packet_id
        if session is None:
            return
        _exactly_once(session).pop(packet_id, None)
        waiter = self._pubrel_waiters.get(packet_id)
        if waiter is not None and not waiter.done():
            await super().handle_pubrel(pubrel)  # this connection's own flow delivers and answers
            return
        held = session.inflight_in.pop(packet_id, None)
        if held is not None:
            held.pubrel_packet = pubrel
            await session.delivered_message_queue.put(held)
        await self._send_packet(PubcompPacket.build(packet_id))

    def _durable_phase_done(self) -> None:
        """A QoS 1/2 publish no longer waits for storage (subclasses count these)."""

    def _forget_exactly_once(self, publish_packet: PublishPacket) -> None:
        packet_id = publish_packet.packet_id
        if publish_packet.qos == 2 and self.session is not None and packet_id is not None:  # noqa: PLR2004
            _exactly_once(self.session).pop(packet_id, None)

    def _offer(self, publish_packet: PublishPacket) -> tuple[list[Awaitable[None]], bool]:
        """Offer an accepted publish; return what must complete first, and whether it repeats one."""
        topic = publish_packet.topic_name
        data = publish_packet.data
        session = self.session
        if topic is None or data is None or session is None:
            return [], False
        if topic.startswith("$"):
            return [], False  # amqtt refuses client publishes to $-topics and closes the connection
        username = principal_of(session)
        if not self._gate.may_publish(username, topic):
            # Also covers invalid topics (wildcards, "$...") that amqtt then refuses itself.
            self._gate.note_refused()
            return [], False
        retain = bool(publish_packet.retain_flag)
        qos = publish_packet.qos or 0
        exactly_once = _exactly_once(session) if qos == 2 else None  # noqa: PLR2004
        packet_id = publish_packet.packet_id
        if exactly_once is not None and packet_id is not None and packet_id in exactly_once:
            # The same QoS 2 message again (DUP), before its PUBREL: it is stored already.
            # Wait for that first write, never store it twice (MQTT 4.3.3: exactly once).
            return list(exactly_once[packet_id]), True
        if not self._gate.wants(retain=retain):
            pending: list[Awaitable[None]] = []
        else:
            message = IncomingPublish(
                client_id=session.client_id or "",
                username=username,
                topic=topic,
                payload=bytes(data),
                qos=qos,
                retain=retain,
                received_at_ms=time.time_ns() // 1_000_000,
            )
            pending = self._gate.offer(message)
        if exactly_once is not None and packet_id is not None:
            exactly_once[packet_id] = tuple(pending)
        return pending, False

    async def _refuse_after_failure(self, exc: BaseException) -> None:
        self._gate.note_durable_failure()
        client_id = self.session.client_id if self.session else "?"
        if not self._failure_logged:
            self._failure_logged = True
            logger.error(
                "could not store a publish from client %s durably (%s); not acknowledging it and "
                "closing the connection so that the client resends it",
                client_id,
                exc,
            )
        if self.writer is not None:
            await self.writer.close()
