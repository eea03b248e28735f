"""One client connection's packet loop, under the broker's limits.

Owns :class:`ConnectionHandler`, the protocol handler Headwater puts on every accepted
connection in place of amqtt's, and :class:`ConnectionLimits`' counters. On top of the durable
acknowledgements of :class:`~headwater.broker.durable.DurableAckProtocolHandler` it replaces
amqtt's packet reader:

* packets are read as whole frames under ``max_packet_size`` and parsed from memory
  (:mod:`headwater.broker.framing`); a packet that is too large, malformed, of a type a client
  may not send (CONNACK, a second CONNECT...) or cut short closes the connection, as MQTT 3.1.1
  section 4.8 asks — amqtt skipped the packet and read on from wherever its parser stopped;
* amqtt's ``PACKET_RECEIVED`` plugin event is not fired (Headwater runs no amqtt plugins; the
  event cost several awaits per packet);
* keepalive is enforced: a client silent for one and a half keepalive periods is disconnected
  (MQTT-3.1.2-24); amqtt never did;
* flow control, per connection and direction, ``max_inflight_messages`` = N: reading pauses
  while N of the client's QoS 1/2 publishes wait for their durable write (this wait needs no
  further input from the client, so it cannot deadlock); a client with more than
  ``4 x N`` QoS 1/2 publishes unfinished (a QoS 2 publish waits for its PUBREL) is
  disconnected; at most N QoS 1/2 deliveries to the client await its acknowledgement at once,
  and at most ``max_pending_deliveries`` more wait for one of those slots (the rest are
  dropped and counted);
* a QoS 1/2 delivery to the client stays in the session's in-flight set until the client
  acknowledges it, however long that takes: amqtt gave up after 5 s and dropped it, also when
  the connection ended. When the session is resumed (clean session 0) its next connection sends
  every delivery still in flight again, in the order first sent and before anything new: a
  PUBLISH with DUP=1 (its packet id unchanged), or a PUBREL for a QoS 2 delivery whose PUBREC
  had arrived (MQTT-4.4.0-1). amqtt sent the PUBLISH again in that case and, since it forgot
  the message once the PUBREC arrived, never the PUBREL.

It must never decide who may publish what (the gate does) nor touch sessions (the broker does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from amqtt.mqtt.packet import (
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
)
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import OutgoingApplicationMessage

from headwater.broker.durable import DurableAckProtocolHandler
from headwater.broker.framing import (
    Frame,
    FramingError,
    MalformedPacketError,
    PacketTooLargeError,
    parse_frame,
    read_frame,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from amqtt.mqtt.packet import MQTTPacket
    from amqtt.plugins.manager import PluginManager

    from headwater.broker.durable import PublishGate
    from headwater.core.config import BrokerLimits

__all__ = ["ConnectionHandler", "ConnectionLimits", "ConnectionStatistics"]

logger = logging.getLogger(__name__)

# MQTT-3.1.2-24: the server disconnects a client silent for one and a half keepalive periods.
_KEEPALIVE_GRACE: Final = 1.5
# How many unfinished QoS 1/2 publishes, in units of max_inflight_messages, end a connection.
_UNFINISHED_FACTOR: Final = 4

# Fixed-header flags MQTT 3.1.1 (2.2.2) requires for each packet type a client may send;
# PUBLISH carries DUP, QoS and RETAIN and is checked on its own.
_REQUIRED_FLAGS: Final = {
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    UNSUBSCRIBE: 2,
    PINGREQ: 0,
    DISCONNECT: 0,
}


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """Connections ended, and messages dropped, because of a limit (since start)."""

    refused_max_connections: int
    connect_timeouts: int
    oversized_packets: int
    malformed_packets: int
    keepalive_timeouts: int
    inflight_exceeded: int
    queued_dropped: int
    pending_dropped: int


class ConnectionLimits:
    """The broker's limits and the counters of what they stopped; shared by every connection."""

    def __init__(self, limits: BrokerLimits) -> None:
        self.limits = limits
        self.refused_max_connections = 0
        self.connect_timeouts = 0
        self.oversized_packets = 0
        self.malformed_packets = 0
        self.keepalive_timeouts = 0
        self.inflight_exceeded = 0
        self.queued_dropped = 0
        self.pending_dropped = 0
        self._last_log = 0.0

    def log(self, text: str, *args: object) -> None:
        """Log a limit's refusal at most once a second (a flood must not flood the log too)."""
        now = time.monotonic()
        if now - self._last_log >= 1:
            self._last_log = now
            logger.warning(text, *args)

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the counters."""
        return ConnectionStatistics(
            refused_max_connections=self.refused_max_connections,
            connect_timeouts=self.connect_timeouts,
            oversized_packets=self.oversized_packets,
            malformed_packets=self.malformed_packets,
            keepalive_timeouts=self.keepalive_timeouts,
            inflight_exceeded=self.inflight_exceeded,
            queued_dropped=self.queued_dropped,
            pending_dropped=self.pending_dropped,
        )


class ConnectionHandler(DurableAckProtocolHandler):
    """The protocol handler of one client connection (see the module docstring)."""

    def __init__(
        self,
        plugins_manager: PluginManager,  # type: ignore[type-arg]
        *,
        gate: PublishGate,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(plugins_manager, gate=gate, loop=loop)
        self._limits = limits
        inflight = limits.limits.max_inflight_messages
        self._storing = asyncio.Semaphore(inflight)
        self._deliveries = asyncio.Semaphore(inflight)
        self._max_unfinished = inflight * _UNFINISHED_FACTOR
        self._unfinished = 0
        self._waiting_deliveries = 0
        # True once the connection's acknowledgement waiters were cancelled: a delivery started
        # after that must not wait for an answer that cannot come (it stays in flight).
        self._answers_closed = False
        # Each QoS 1/2 delivery sent on this connection waits for its answers in one of these.
        self._answer_waits: set[asyncio.Task[None]] = set()
        self._handlers: dict[int, Callable[[Any], Coroutine[Any, Any, None]]] = {
            PUBACK: self.handle_puback,
            PUBREC: self.handle_pubrec,
            PUBREL: self.handle_pubrel,
            PUBCOMP: self.handle_pubcomp,
            SUBSCRIBE: self.handle_subscribe,
            UNSUBSCRIBE: self.handle_unsubscribe,
            PINGREQ: self.handle_pingreq,
            DISCONNECT: self.handle_disconnect,
        }

    @property
    def _client(self) -> str:
        session = self.session
        if session is None:
            return "?"
        return f"{session.client_id} ({session.remote_address}:{session.remote_port})"

    # --- outgoing ------------------------------------------------------------------------------

    async def mqtt_publish(
        self,
        topic: str,
        data: bytes | bytearray,
        qos: int | None,
        retain: bool,  # noqa: FBT001 - amqtt's signature
        ack_timeout: int | None = None,
    ) -> OutgoingApplicationMessage:
        """Deliver to the client; return once the PUBLISH is sent.

        A QoS 1/2 delivery first waits for one of ``max_inflight_messages`` slots; the client's
        acknowledgement is awaited by a task of this handler, which gives the slot back. So the
        caller (a broadcast, a subscription's retained messages, a session's queue, all awaited
        in the client's message loop) is never held up by a client slow to acknowledge.
        ``ack_timeout`` only applies to QoS 0 (amqtt's meaning); a QoS 1/2 delivery stays in
        flight until acknowledged.
        """
        if not qos:
            return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)
        pending_limit = self._limits.limits.max_pending_deliveries
        if self._deliveries.locked() and self._waiting_deliveries >= pending_limit:
            # A subscriber slower than its publishers: a bounded wait, then drop, count, say so.
            self._limits.pending_dropped += 1
            self._limits.log(
                "dropped a message for client %s: %d waiting behind %d unacknowledged "
                "(broker.limits.max_pending_deliveries)",
                self._client,
                self._waiting_deliveries,
                self._limits.limits.max_inflight_messages,
            )
            return OutgoingApplicationMessage(None, topic, qos, data, retain)
        session = self.session
        if session is None:
            msg = "the handler is not attached to a session"
            raise RuntimeError(msg)
        self._waiting_deliveries += 1
        try:
            await self._deliveries.acquire()
        finally:
            self._waiting_deliveries -= 1
        try:
            message = OutgoingApplicationMessage(session.next_packet_id, topic, qos, data, retain)
            waiter = await self._send_in_flight(message)
        except BaseException:
            self._deliveries.release()
            raise
        self._wait_answers_in_task(message, waiter, slot=True)
        return message

    async def _retry_deliveries(self) -> None:
        # amqtt's version waited here (in start(), so before the broker sends anything else)
        # up to 10 s for the answers, and sent PUBREC again for incoming QoS 2 messages. Here
        # the packets are sent, in order, before start() returns; their answers are awaited
        # by tasks this handler owns. Incoming QoS 2 messages wait for the client's PUBREL
        # (see DurableAckProtocolHandler.handle_pubrel).
        session = self.session
        if session is None:
            return
        for message in list(session.inflight_out.values()):
            self._wait_answers_in_task(message, await self._send_in_flight(message), slot=False)
        if session.inflight_out:
            count = len(session.inflight_out)
            logger.info("client %s: sent %d unacknowledged deliveries again", self._client, count)

    def _wait_answers_in_task(
        self, message: OutgoingApplicationMessage, waiter: asyncio.Future[Any], *, slot: bool
    ) -> None:
        """Wait for the answers in a task of this handler; give a delivery slot back after (``slot``)."""
        task = asyncio.create_task(
            self._wait_answers(message, waiter), name=f"delivery {message.packet_id} to {self._client}"
        )
        self._answer_waits.add(task)
        task.add_done_callback(self._answer_waits.discard)
        if slot:
            task.add_done_callback(lambda _task: self._deliveries.release())

    async def _send_in_flight(self, message: OutgoingApplicationMessage) -> asyncio.Future[Any]:
        """Send a delivery's next packet; return the waiter of the client's answer to it.

        The packet is the PUBLISH (DUP=1 when it was sent before) or, for a QoS 2 delivery
        whose PUBREC arrived, the PUBREL. The delivery joins the session's in-flight set first,
        and the waiter is registered before the packet leaves (the answer can come at once).
        """
        session = self.session
        packet_id = message.packet_id
        if session is None or packet_id is None:
            msg = "a QoS 1/2 delivery needs a session and a packet id"
            raise RuntimeError(msg)
        session.inflight_out[packet_id] = message
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        releasing = message.qos == 2 and message.pubrec_packet is not None  # noqa: PLR2004
        if releasing:
            self._pubcomp_waiters[packet_id] = waiter
        elif message.qos == 1:
            self._puback_waiters[packet_id] = waiter
        else:
            self._pubrec_waiters[packet_id] = waiter
        if self._answers_closed:
            # The connection is gone: nothing was sent (DUP stays 0 for a first PUBLISH).
            waiter.cancel()
            return waiter
        packet: PublishPacket | PubrelPacket
        if releasing:
            packet = message.pubrel_packet = PubrelPacket.build(packet_id)
        else:
            sent_before = message.publish_packet is not None
            packet = message.publish_packet = message.build_publish_packet(dup=sent_before)
        await self._send_packet(packet)
        return waiter

    async def _wait_answers(self, message: OutgoingApplicationMessage, waiter: asyncio.Future[Any]) -> None:
        """Wait for the client's answers; only they take the delivery out of the in-flight set.

        When the connection ends first, the delivery stays in flight for the session's next
        connection (a clean session is deleted with it).
        """
        session = self.session
        packet_id = message.packet_id
        assert session is not None  # noqa: S101 - checked by _send_in_flight
        assert packet_id is not None  # noqa: S101 - checked by _send_in_flight
        while True:
            try:
                answer = await waiter
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if waiter.cancelled() and task is not None and not task.cancelling():
                    return  # the connection ended (_stop_waiters)
                raise
            finally:
                self._forget_waiter(packet_id, waiter)
            if message.qos == 1:
                message.puback_packet = answer
                break
            if message.pubrec_packet is None:
                message.pubrec_packet = answer
                waiter = await self._send_in_flight(message)  # the PUBREL
                continue
            message.pubcomp_packet = answer
            break
        if session.inflight_out.get(packet_id) is message:
            del session.inflight_out[packet_id]

    def _forget_waiter(self, packet_id: int, waiter: asyncio.Future[Any]) -> None:
        for waiters in (self._puback_waiters, self._pubrec_waiters, self._pubcomp_waiters):
            if waiters.get(packet_id) is waiter:
                del waiters[packet_id]

    def _stop_waiters(self) -> None:
        self._answers_closed = True
        super()._stop_waiters()

    # --- incoming ------------------------------------------------------------------------------

    def _durable_phase_done(self) -> None:
        self._storing.release()

    async def _reader_loop(self) -> None:
        if self.session is None or self._reader_ready is None:
            msg = "the handler is not attached to a session"
            raise RuntimeError(msg)
        keep_alive = self.session.keep_alive
        idle_limit = keep_alive * _KEEPALIVE_GRACE if keep_alive > 0 else None
        tasks: set[asyncio.Task[None]] = set()
        try:
            while self.reader is not None:
                self._reader_ready.set()
                if not await self._read_one(idle_limit, tasks):
                    break
        except asyncio.CancelledError:
            logger.debug("reader of client %s cancelled", self._client)
        finally:
            for task in tasks:
                task.cancel()
            await self.handle_connection_closed()
            self._reader_stopped.set()
            await self.stop()

    async def _read_one(self, idle_limit: float | None, tasks: set[asyncio.Task[None]]) -> bool:
        """Read and dispatch one packet; False when the connection must end."""
        read = await self._next_packet(idle_limit)
        if read is None:
            return False
        frame, packet = read
        packet_type = frame.packet_type
        if packet_type == PUBLISH and isinstance(packet, PublishPacket):
            return await self._dispatch_publish(packet, tasks)
        handler = self._handlers.get(packet_type)
        if handler is None or frame.flags != _REQUIRED_FLAGS[packet_type]:
            self._limits.malformed_packets += 1
            what = type(packet).__name__.removesuffix("Packet").upper()
            logger.warning(
                "closing client %s: protocol violation: %s",
                self._client,
                f"a client may not send {what}" if handler is None else f"{what} with flags {frame.flags:#x}",
            )
            return False
        self._spawn(handler(packet), tasks)
        return True

    async def _next_packet(self, idle_limit: float | None) -> tuple[Frame, MQTTPacket[Any, Any, Any]] | None:
        """The next frame and its packet; None (counted and logged) when the connection ends."""
        assert self.reader is not None  # noqa: S101 - checked by the loop
        limits = self._limits
        try:
            # asyncio.timeout, not wait_for: wait_for wraps every read in a task of its own.
            async with asyncio.timeout(idle_limit):
                frame = await read_frame(self.reader, max_packet_size=limits.limits.max_packet_size)
            if frame is None:
                return None
            return frame, await parse_frame(frame)
        except TimeoutError:
            limits.keepalive_timeouts += 1
            logger.info("closing client %s: silent for %.0fs (1.5 x its keepalive)", self._client, idle_limit)
        except PacketTooLargeError as exc:
            limits.oversized_packets += 1
            logger.warning("closing client %s: %s (broker.limits.max_packet_size)", self._client, exc)
        except MalformedPacketError as exc:
            limits.malformed_packets += 1
            logger.warning("closing client %s: malformed packet: %s", self._client, exc)
        except FramingError as exc:
            logger.info("client %s: %s", self._client, exc)
        return None

    async def _dispatch_publish(self, packet: PublishPacket, tasks: set[asyncio.Task[None]]) -> bool:
        qos = packet.qos or 0
        if qos > 2:  # noqa: PLR2004
            self._limits.malformed_packets += 1
            logger.warning("closing client %s: a PUBLISH with QoS 3 (malformed)", self._client)
            return False
        if qos == 0:
            self._spawn(self.handle_publish(packet), tasks)
            return True
        if self._unfinished >= self._max_unfinished:
            self._limits.inflight_exceeded += 1
            logger.warning(
                "closing client %s: more than %d QoS 1/2 publishes unfinished "
                "(4 x broker.limits.max_inflight_messages; lower the client's in-flight window)",
                self._client,
                self._max_unfinished,
            )
            return False
        # Back-pressure: wait while max_inflight publishes wait for storage. Released by
        # handle_publish once its durable write is done (_durable_phase_done).
        await self._storing.acquire()
        self._unfinished += 1
        task = self._spawn(self.handle_publish(packet), tasks)
        task.add_done_callback(self._publish_finished)
        return True

    def _publish_finished(self, _task: asyncio.Task[None]) -> None:
        self._unfinished -= 1

    @staticmethod
    def _spawn(coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> asyncio.Task[None]:
        # One task per packet, started in arrival order, as amqtt does: handlers rely on it.
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task
