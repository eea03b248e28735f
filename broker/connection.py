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
  dropped and counted).

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
        """Deliver to the client; QoS 1/2 wait for one of ``max_inflight_messages`` slots."""
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
        self._waiting_deliveries += 1
        try:
            await self._deliveries.acquire()
        finally:
            self._waiting_deliveries -= 1
        try:
            return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)
        finally:
            self._deliveries.release()

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
