"""Headwater's MQTT broker: amqtt 0.12.1 with Headwater's security and durability fixes.

Owns the subclass of :class:`amqtt.broker.Broker` and everything Headwater changes in it:

* **Listeners** are opened here (tcp, ws, each optionally TLS with optional required client
  certificates) instead of from amqtt's listener config, whose defaults-merging can silently copy
  TLS settings between listeners. Port 0 picks an ephemeral port; :attr:`HeadwaterBroker.bound`
  tells which.
* **Authentication and authorization** are Headwater's own synchronous objects
  (:class:`Authenticator`, :class:`~headwater.core.access.AccessPolicy`) called directly,
  not through amqtt's plugin manager, which would create one task per plugin per message.
* **CONNECT** is read whole within ``broker.limits.connect_timeout`` and ``max_packet_size``,
  and decided before any session state is touched (amqtt deleted a clean session before it
  authenticated the CONNECT that asked for it): the password, the ACL's ``client_ids``, who
  owns an existing session of that client id (a session belongs to the user that created it),
  and the will (its topic must be one the user may publish to). A refused CONNECT gets CONNACK
  5 (not authorised) and changes nothing.
* **Wills** are published through the same gate as client publishes when they fire (ACL,
  reserved topics, durable storage of a retained will); amqtt published them unchecked.
* **Limits**: ``max_connections`` (closed before reading), offline queues of at most
  ``max_queued_messages`` (the rest dropped and counted), and per connection the packet loop of
  :mod:`headwater.broker.connection`.
* **Retained-message leak**: amqtt replays retained messages for every client's filters to a
  subscriber, without the ACL's receive check. Here a subscriber gets only retained messages
  matching its *own* filters that the ACL lets it receive; messages queued for an offline
  session are checked against the ACL again when they are delivered.
* **Durable retained messages**: every change to the retained set is written through
  :class:`~headwater.core.store.RetainedStore`; client publishes are written before
  their PUBACK (see :mod:`headwater.broker.durable`), and the set is restored before any
  listener opens.

It must never decide what a plugin stores: that goes through the publish gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import websockets
import websockets.asyncio.server
from amqtt.adapters import ReaderAdapter, StreamWriterAdapter, WebSocketsWriter
from amqtt.broker import Broker, RetainedApplicationMessage, Server
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.packet import CONNECT
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from headwater.broker.connection import ConnectionHandler, ConnectionLimits
from headwater.broker.durable import PRINCIPAL_ATTRIBUTE, PublishGate, principal_of
from headwater.broker.framing import FramingError, PacketTooLargeError, read_frame, replay_reader
from headwater.broker.passwords import PasswordFile, PasswordFileError
from headwater.core.config import ListenerConfig
from headwater.core.publish import IncomingPublish
from headwater.core.store import StorageError
from headwater.core.topics import InvalidTopicError, topic_matches, validate_topic_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from amqtt.adapters import WriterAdapter
    from amqtt.session import Session

    from headwater.core.access import AccessPolicy
    from headwater.core.store import RetainedStore

__all__ = ["Authenticator", "BoundListener", "HeadwaterBroker", "ListenerStartError", "RetainedPersistence"]

logger = logging.getLogger(__name__)

# SUBACK's return code for a refused filter.
_REFUSED = 0x80
# Seconds a client's previous connection gets to end (will, cleanup) when it connects again.
_TAKEOVER_TIMEOUT = 5.0


class ListenerStartError(Exception):
    """A listener could not be opened (port in use, bad certificate...)."""


@dataclass(frozen=True, slots=True)
class BoundListener:
    """A listening socket: which listener, where, and whether it speaks TLS."""

    name: str
    type: str
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        """The URL a client would use, e.g. ``mqtt://127.0.0.1:1883``."""
        scheme = {"tcp": "mqtt", "ws": "ws"}[self.type] + ("s" if self.tls else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


class Authenticator:
    """Decides CONNECTs: anonymous access and the password file (re-read when it changes)."""

    def __init__(self, *, allow_anonymous: bool, password_file: Path | None) -> None:
        self.allow_anonymous = allow_anonymous
        self._password_path = password_file
        self._passwords: PasswordFile | None = None
        self._passwords_stamp: tuple[int, int] | None = None

    def check_password_file(self) -> None:
        """Load the password file now, so a broken one stops the start with a clear message."""
        self._current_passwords()

    def _current_passwords(self) -> PasswordFile | None:
        if self._password_path is None:
            return None
        stat = self._password_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._passwords_stamp:
            self._passwords = PasswordFile.load(self._password_path)
            self._passwords_stamp = stamp
            logger.info("loaded %d user(s) from %s", len(self._passwords.usernames), self._password_path)
        return self._passwords

    async def authenticate(
        self, username: str | None, password: str | None, *, allow_anonymous: bool | None = None
    ) -> tuple[bool, str | None]:
        """Return (accepted, principal). The principal is None for anonymous clients.

        ``allow_anonymous`` is the connection's listener's own rule (None: the broker's).
        """
        anonymous_ok = self.allow_anonymous if allow_anonymous is None else allow_anonymous
        if username is None:
            return anonymous_ok, None
        try:
            passwords = self._current_passwords()
        except (OSError, PasswordFileError) as exc:
            logger.error("refusing login of %r: password file unusable: %s", username, exc)  # noqa: TRY400
            return False, None
        if passwords is None:
            # No password file: a claimed username proves nothing, so it gets anonymous rights.
            return anonymous_ok, None
        # argon2 is deliberately slow: keep it off the event loop.
        accepted = await asyncio.to_thread(passwords.verify, username, password or "")
        return accepted, username if accepted else None


class RetainedPersistence:
    """The publish interceptor that writes retained messages before their PUBACK."""

    def __init__(self, store: RetainedStore, request_sync: Callable[[], asyncio.Future[None]]) -> None:
        self._store = store
        self._request_sync = request_sync

    def intercept(self, message: IncomingPublish) -> Awaitable[None] | None:
        """Write a retained message (or its deletion) before the PUBACK; fsync owed."""
        if not message.retain:
            return None
        self._store.put(message.topic, message.payload, message.qos)
        return self._request_sync()


@dataclass
class _ConnectTurn:
    """The CONNECTs of one client id waiting for, or holding, their turn."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class HeadwaterBroker(Broker):
    """amqtt's broker with Headwater's listeners, security and durable retained messages."""

    def __init__(
        self,
        *,
        listeners: tuple[ListenerConfig, ...],
        authenticator: Authenticator,
        gate: PublishGate,
        access: AccessPolicy,
        retained_store: RetainedStore | None,
        limits: ConnectionLimits,
        before_listen: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # amqtt gets no plugins at all (an empty map keeps its defaults out) and one unbound
        # listener: Headwater opens the sockets itself in _start_listeners.
        super().__init__({"listeners": {"default": {"bind": None}}, "plugins": {}})
        self._headwater_listeners = listeners
        # amqtt only looks listeners up by name to hand them to _admit (per-listener rules).
        self.listeners_config = {listener.name: listener for listener in listeners}  # type: ignore[misc]
        self._authenticator = authenticator
        self._gate = gate
        self._access = access
        self._retained_store = retained_store
        self._limits = limits
        self._before_listen = before_listen
        self._retained_write_failures = 0
        self.bound: tuple[BoundListener, ...] = ()
        # Every accepted connection's task and writer, so that shutdown leaves none behind
        # (amqtt only closes connections that already have a session).
        self._connections: dict[asyncio.Task[Any], WriterAdapter] = {}
        # Client id -> the turn its CONNECTs wait for (see _connect_turn).
        self._connecting: dict[str, _ConnectTurn] = {}

    # --- listeners ---------------------------------------------------------------------------

    async def _start_listeners(self) -> None:
        self._restore_retained()
        if self._before_listen is not None:
            await self._before_listen()
        bound: list[BoundListener] = []
        for listener in self._headwater_listeners:
            instance = await self._open_listener(listener)
            self._servers[listener.name] = Server(listener.name, instance)
            for host, port in _socket_addresses(instance):
                bound.append(
                    BoundListener(listener.name, listener.type, host, port, listener.tls is not None)
                )
        self.bound = tuple(bound)

    async def _open_listener(
        self, listener: ListenerConfig
    ) -> asyncio.Server | websockets.asyncio.server.Server:
        ssl_context = _server_ssl_context(listener)
        try:
            if listener.type == "ws":
                return await websockets.serve(
                    partial(self.ws_connected, listener_name=listener.name),
                    listener.host,
                    listener.port,
                    ssl=ssl_context,
                    subprotocols=[websockets.Subprotocol("mqtt")],
                )
            return await asyncio.start_server(
                partial(self.stream_connected, listener_name=listener.name),
                listener.host,
                listener.port,
                reuse_address=True,
                ssl=ssl_context,
            )
        except OSError as exc:
            where = f"broker.listeners.{listener.name}"
            msg = f"{where}: cannot listen on {listener.host}:{listener.port}: {exc.strerror or exc}"
            raise ListenerStartError(msg) from exc

    async def ws_connected(
        self, websocket: websockets.asyncio.server.ServerConnection, listener_name: str
    ) -> None:
        """A WebSocket connection: amqtt's writer, Headwater's reader (:class:`_WebSocketReader`)."""
        await self._client_connected(listener_name, _WebSocketReader(websocket), WebSocketsWriter(websocket))

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - asyncio runs every connection in a task
        if len(self._connections) >= self._limits.limits.max_connections:
            # Closed before a byte is read: a flood of connections holds each descriptor only
            # as long as it takes to close it.
            self._limits.refused_max_connections += 1
            self._log_limit(
                "refusing a connection on listener %s: %d connections open (broker.limits.max_connections)",
                listener_name,
                len(self._connections),
            )
            await _close_quietly(writer)
            return
        self._connections[task] = writer
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            self._connections.pop(task, None)
            _close_transport(writer)

    def _log_limit(self, text: str, *args: object) -> None:
        self._limits.log(text, *args)

    async def _session_monitor(self) -> None:
        # amqtt's monitor removed disconnected clean and anonymous sessions once a second, by
        # client id, with awaits between listing and removing them: a client reconnecting in
        # between lost its new session. Clean sessions end with their connection here
        # (_end_session) and anonymous ones are kept like any other: nothing is left to do.
        return

    async def shutdown(self) -> None:
        """Stop accepting, close every connection and session, and leave no connection task."""
        for server in self._servers.values():
            server.instance.close()
        # Close every transport first. Connections still in the CONNECT handshake have no session
        # for amqtt to clean up; and amqtt's handler.stop() cancels its reader and then waits for
        # it without a timeout, while on Python 3.11 that cancel can be swallowed by the
        # reader's wait_for: only the end of the stream reliably ends the read.
        for writer in self._connections.values():
            _close_transport(writer)
        await super().shutdown()
        await self._close_connections(list(self._connections.values()))
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _close_connections(writers: list[WriterAdapter]) -> None:
        async def close(writer: WriterAdapter) -> None:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.close(), timeout=2)
            _close_transport(writer)

        await asyncio.gather(*(close(writer) for writer in writers))

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # amqtt's loop handles a DISCONNECT before the client's publishes still queued for
        # routing, and drops them: acknowledged messages never reached subscribers (seen when a
        # group commit releases a burst of PUBACKs and the client disconnects right after the
        # last one). Same loop, but everything acknowledged is routed before the disconnect.
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
                if wait_deliver in done:
                    if not await self._handle_message_delivery(client_session, handler, wait_deliver):
                        # amqtt's answer to a publish to a '$' topic: a protocol error. The
                        # connection ends as if it had dropped (MQTT-3.1.2-8: the will fires);
                        # leaving the loop without that left the session "connected" forever.
                        await self._end_session(client_session, handler, will=True)
                        break
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if disconnect_waiter in done:
                    await self._route_remaining(client_session, handler, wait_deliver)
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    break
        except asyncio.CancelledError:
            logger.debug("message loop of client %s cancelled", client_session.client_id)
        finally:
            waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _route_remaining(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: asyncio.Future[Any]
    ) -> None:
        """Route, in order, every message the client published before it disconnected."""
        if not wait_deliver.done():
            wait_deliver.cancel()
            await asyncio.gather(wait_deliver, return_exceptions=True)
        if wait_deliver.done() and not wait_deliver.cancelled() and wait_deliver.result() is not None:
            await self._handle_message_delivery(client_session, handler, wait_deliver)
        queue = client_session.delivered_message_queue
        while not queue.empty():
            delivered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            delivered.set_result(queue.get_nowait())
            await self._handle_message_delivery(client_session, handler, delivered)

    # --- security ----------------------------------------------------------------------------

    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        """Read the CONNECT (within the connect timeout and packet size) into a new session.

        Nothing of the broker's state is touched here: whether the session is new, resumed or
        taken over is decided after authentication (:meth:`_handle_client_session`).
        """
        limits = self._limits.limits
        where = f"{remote_address}:{remote_port}"
        try:
            frame = await asyncio.wait_for(
                read_frame(reader, max_packet_size=limits.max_packet_size), limits.connect_timeout
            )
        except TimeoutError:
            self._limits.connect_timeouts += 1
            self._log_limit(
                "closing connection from %s: no CONNECT within %gs (broker.limits.connect_timeout)",
                where,
                limits.connect_timeout,
            )
            await _close_quietly(writer)
            raise MQTTError("no CONNECT in time") from None
        except FramingError as exc:
            self._limits.oversized_packets += isinstance(exc, PacketTooLargeError)
            self._log_limit("closing connection from %s before CONNECT: %s", where, exc)
            await _close_quietly(writer)
            raise MQTTError(str(exc)) from exc
        if frame is None or frame.packet_type != CONNECT:
            # MQTT-3.1.0-1: the first packet must be a CONNECT.
            await _close_quietly(writer)
            msg = f"{where}: the first packet was not a CONNECT"
            raise MQTTError(msg)
        try:
            _, session = await BrokerProtocolHandler.init_from_connect(
                replay_reader(frame), writer, self.plugins_manager
            )
        except MQTTError:
            await _close_quietly(writer)
            raise
        except Exception as exc:
            # A CONNECT that amqtt cannot parse (bad UTF-8, short fields...): malformed.
            self._limits.malformed_packets += 1
            self._log_limit("closing connection from %s: malformed CONNECT: %s", where, exc)
            await _close_quietly(writer)
            raise MQTTError(str(exc)) from exc
        handler = ConnectionHandler(
            self.plugins_manager, gate=self._gate, limits=self._limits, loop=self._loop
        )
        return handler, session

    async def _handle_client_session(  # noqa: PLR0917 - amqtt's signature
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Server,
        listener_name: str,
    ) -> None:
        """Admit or refuse the CONNECT, then take the session and run the client."""
        del server  # amqtt's connection count; Headwater counts in _client_connected
        accepted, principal = await self._check_credentials(
            client_session, self.listeners_config[listener_name]
        )
        # The rest is decided and applied for one CONNECT of a client id at a time: taking a
        # session over waits for the previous connection to end, and two CONNECTs doing that
        # at once both took it (two live connections on one session, MQTT-3.1.4-2).
        session: Session | None = None
        async with self._connect_turn(client_session.client_id or ""):
            refusal = self._admit(client_session, accepted=accepted, principal=principal)
            if refusal is None:
                session = await self._take_session(client_session, principal)
                session.transitions.connect()
                handler.attach(session, reader, writer)
                assert session.client_id is not None  # noqa: S101 - amqtt generates one when empty
                self._sessions[session.client_id] = (session, handler)
                # Started before the next CONNECT of this client id may end it.
                await handler.mqtt_connack_authorize(True)  # noqa: FBT003 - amqtt's signature
                await handler.start()
        if session is None:
            logger.info(
                "refused connection of client %r from %s: %s",
                client_session.client_id,
                client_session.remote_address,
                refusal,
            )
            # A refused CONNECT changes nothing: no session was looked up, deleted or taken.
            with contextlib.suppress(OSError, ConnectionError):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await _close_quietly(writer)
            return
        await self._publish_session_retained_messages(session)
        if session.parent:
            # A resumed session's subscriptions: replay the retained messages they match.
            for topic_filter, subscribers in list(self._subscriptions.items()):
                if any(owner is session for owner, _ in subscribers):
                    await self._publish_retained_messages_for_subscription((topic_filter, 0), session)
        await self._client_message_loop(session, handler)

    async def _check_credentials(self, incoming: Session, listener: object) -> tuple[bool, str | None]:
        """The password check of a CONNECT: (accepted, principal)."""
        # amqtt hands over listeners_config[name]: our ListenerConfig (see __init__).
        own_rule = listener.allow_anonymous if isinstance(listener, ListenerConfig) else None
        accepted, principal = await self._authenticator.authenticate(
            incoming.username, incoming.password, allow_anonymous=own_rule
        )
        incoming.password = None  # nothing secret stays in memory longer than needed
        return accepted, principal

    @contextlib.asynccontextmanager
    async def _connect_turn(self, client_id: str) -> AsyncIterator[None]:
        """Hold the turn of ``client_id``: its CONNECTs are admitted and applied one at a time."""
        turn = self._connecting.get(client_id)
        if turn is None:
            turn = self._connecting[client_id] = _ConnectTurn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._connecting[client_id]

    def _admit(self, incoming: Session, *, accepted: bool, principal: str | None) -> str | None:
        """Decide an authenticated CONNECT before anything else: why it is refused, or None."""
        if not accepted:
            return "anonymous access disabled" if incoming.username is None else "bad username or password"
        who = "anonymous clients" if principal is None else f"user {principal!r}"
        client_id = incoming.client_id or ""
        if not self._access.may_use_client_id(principal, client_id):
            return f"{who} may not use the client id {client_id!r} (no acl entry, or no client_ids match)"
        existing = self._sessions.get(client_id)
        if existing is not None and principal_of(existing[0]) != principal:
            # A session belongs to whoever created it: nobody else resumes, replaces or ends it.
            return f"the session {client_id!r} belongs to another user"
        if incoming.will_flag:
            will_topic = incoming.will_topic or ""
            try:
                validate_topic_name(will_topic)
            except InvalidTopicError as exc:
                return f"invalid will topic: {exc}"
            if will_topic.startswith("$") or not self._gate.may_publish(principal, will_topic):
                self._gate.note_refused()
                return f"{who} may not publish to the will topic {will_topic!r}"
        return None

    async def _take_session(self, incoming: Session, principal: str | None) -> Session:
        """Apply clean-session semantics to an admitted CONNECT; return the session to use."""
        client_id = incoming.client_id or ""
        existing = self._sessions.get(client_id)
        if existing is not None and existing[0].transitions.is_connected():
            # MQTT-3.1.4-2: the same client id connecting again ends the other connection.
            logger.info("client %s connected again: closing its previous connection", client_id)
            await self._end_connection(existing[1])
            if existing[0].transitions.is_connected():
                existing[0].transitions.disconnect()
        if incoming.clean_session or existing is None:
            if existing is not None:
                await self._delete_session(client_id)
            incoming.parent = 0
            incoming.attributes[PRINCIPAL_ATTRIBUTE] = principal
            # amqtt neither queued for nor kept sessions it marked anonymous: an anonymous
            # persistent session lost everything. Here it is a session like any other, owned
            # by the anonymous principal (every anonymous client may resume it).
            incoming.is_anonymous = False
            return incoming
        session = existing[0]
        # The new connection brings its own will, keepalive and address.
        session.will_flag = incoming.will_flag
        session.will_message = incoming.will_message
        session.will_topic = incoming.will_topic
        session.will_qos = incoming.will_qos
        session.will_retain = incoming.will_retain
        session.keep_alive = incoming.keep_alive
        session.remote_address = incoming.remote_address
        session.remote_port = incoming.remote_port
        session.ssl_object = incoming.ssl_object
        session.parent = 1
        return session

    async def _end_connection(self, handler: BrokerProtocolHandler) -> None:
        """Close ``handler``'s connection and wait (a while) until its task has finished."""
        tasks = [task for task, writer in self._connections.items() if writer is handler.writer]
        await handler.handle_connection_closed()
        if tasks:
            await asyncio.wait(tasks, timeout=_TAKEOVER_TIMEOUT)

    async def _handle_disconnect(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        disconnect_waiter: asyncio.Future[Any],
    ) -> None:
        # amqtt published and retained the will here without any ACL check (anyone could
        # plant a retained deployment). A will is a publish: it goes through the same gate.
        await self._end_session(
            client_session, handler, will=not isinstance(disconnect_waiter.result(), DisconnectPacket)
        )

    async def _end_session(self, session: Session, handler: BrokerProtocolHandler, *, will: bool) -> None:
        """End a connection's use of its session: its will when ``will``, then offline."""
        if will and session.will_flag:
            await self._publish_will(session)
        await self._stop_handler(handler)
        if session.transitions.is_connected():
            session.transitions.disconnect()
        client_id = session.client_id or ""
        registered = self._sessions.get(client_id)
        if session.clean_session and registered is not None and registered[0] is session:
            # MQTT 3.1.2.4: a clean session lasts as long as its connection. amqtt kept it (and
            # its subscriptions) forever; kept, it would also keep its client id owned.
            await self._delete_session(client_id)

    async def _publish_will(self, session: Session) -> None:
        """Publish a client's will as if the client had published it now (ACL, storage, retain)."""
        topic = session.will_topic or ""
        payload = bytes(session.will_message or b"")
        qos = session.will_qos or 0
        retain = bool(session.will_retain)
        principal = principal_of(session)
        # Checked at CONNECT already, and again now: the gate decides at the time it publishes.
        if topic.startswith("$") or not self._gate.may_publish(principal, topic):
            self._gate.note_refused()
            logger.warning("will of client %s on %r not published: not authorised", session.client_id, topic)
            return
        if self._gate.wants(retain=retain):
            message = IncomingPublish(
                client_id=session.client_id or "",
                username=principal,
                topic=topic,
                payload=payload,
                qos=qos,
                retain=retain,
                received_at_ms=time.time_ns() // 1_000_000,
            )
            try:
                for waitable in self._gate.offer(message):
                    await asyncio.shield(waitable)
            except Exception as exc:  # noqa: BLE001 - a storage failure: say so, still deliver
                self._gate.note_durable_failure()
                logger.error(  # noqa: TRY400 - one line; the cause is in the message
                    "will of client %s on %r could not be stored: %s", session.client_id, topic, exc
                )
        await self._broadcast_message(session, topic, payload, qos)
        if retain:
            await self.retain_message(session, topic, payload, qos)

    # --- offline sessions ----------------------------------------------------------------------

    async def _retain_broadcast_message(
        self, broadcast: dict[str, Any], qos: int, target_session: Session
    ) -> None:
        # amqtt queued every message for an offline session without bound.
        limit = self._limits.limits.max_queued_messages
        if target_session.retained_messages.qsize() >= limit:
            self._limits.queued_dropped += 1
            self._log_limit(
                "dropped a message for offline client %s: %d queued (broker.limits.max_queued_messages)",
                target_session.client_id,
                limit,
            )
            return
        await super()._retain_broadcast_message(broadcast, qos, target_session)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # The messages queued while the session was offline, checked against the ACL when
        # delivered, and sent as ordinary deliveries: amqtt set RETAIN on them (MQTT-3.3.1-9
        # says it must be 0 for a message matching an established subscription).
        handler = self._get_handler(session)
        if handler is None:
            return
        principal = principal_of(session)
        queue = session.retained_messages
        deliveries = []
        while not queue.empty():
            queued = queue.get_nowait()
            if not self._access.may_receive(principal, queued.topic):
                logger.warning(
                    "queued message on %r not delivered to client %s: not authorised",
                    queued.topic,
                    session.client_id,
                )
                continue
            data = queued.data or b""
            deliveries.append(handler.mqtt_publish(queued.topic, data, queued.qos, retain=False))
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            logger.warning(
                "%d queued message(s) not delivered to client %s: %s",
                len(failures),
                session.client_id,
                failures[0],
            )

    # --- security ----------------------------------------------------------------------------

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        principal = principal_of(session)
        if action == Action.PUBLISH:
            allowed = self._gate.may_publish(principal, topic)
        elif action == Action.SUBSCRIBE:
            allowed = self._access.may_subscribe(principal, topic)
        else:
            allowed = self._access.may_receive(principal, topic)
        return allowed

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Subscribe ``session``; return the granted QoS or 0x80 (refused).

        A SUBSCRIBE repeating one of the session's filters replaces that subscription (MQTT
        3.8.4), so its new QoS applies to the retained messages it gets again and to what
        follows; amqtt answered with the new QoS and kept the old one.
        """
        granted = await super().add_subscription(subscription, session)
        if granted != _REFUSED:
            subscribers = self._subscriptions[subscription[0]]
            client_id = session.client_id
            subscribers[:] = [
                (owner, granted if owner.client_id == client_id else qos) for owner, qos in subscribers
            ]
        return granted

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt calls this for *every* filter of every client when a session resumes, and never
        # checks the receive ACL: deliver only for this session's own filters, ACL-checked.
        topic_filter, _ = subscription
        granted = next(
            (
                qos
                for owner, qos in self._subscriptions.get(topic_filter, [])
                if owner.client_id == session.client_id
            ),
            None,
        )
        handler = self._get_handler(session)
        if granted is None or handler is None:
            return
        principal = principal_of(session)
        publishes = [
            handler.mqtt_publish(retained.topic, retained.data, min(granted, retained.qos or 0), retain=True)
            for topic, retained in list(self._retained_messages.items())
            if topic_matches(topic_filter, topic) and self._access.may_receive(principal, topic)
        ]
        results = await asyncio.gather(*publishes, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            logger.warning(
                "%d retained message(s) not delivered to client %s: %s",
                len(failures),
                session.client_id,
                failures[0],
            )

    # --- retained messages -------------------------------------------------------------------

    def _restore_retained(self) -> None:
        if self._retained_store is None:
            return
        restored = self._retained_store.load_all()
        for message in restored:
            self._retained_messages[message.topic] = RetainedApplicationMessage(
                None, message.topic, message.payload, message.qos
            )
        logger.info("restored %d retained message(s)", len(restored))

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        """Keep ``data`` as the retained message of ``topic_name`` (empty deletes), on disk too."""
        # Client publishes were already written before their PUBACK; writing again keeps the
        # disk equal to memory whatever order concurrent publishers' writes happened in, and
        # covers will messages and Headwater's own retained status messages.
        if self._retained_store is not None and topic_name is not None:
            try:
                self._retained_store.put(topic_name, bytes(data or b""), qos or 0)
            except StorageError as exc:
                # The client's own publish was written before its PUBACK; this write only keeps
                # disk and memory in the same order. Failing it must not end the client's loop.
                self._retained_write_failures += 1
                self._log_limit("could not store the retained message of %r: %s", topic_name, exc)
        await super().retain_message(source_session, topic_name, data, qos)

    @property
    def retained_write_failures(self) -> int:
        """Retained messages kept in memory that could not be written to disk (since start)."""
        return self._retained_write_failures


class _WebSocketReader(ReaderAdapter):
    """The bytes of a WebSocket connection's messages, read like a stream.

    amqtt's ``WebSocketsReader`` must not be used: once the connection is closed, its
    ``recv()`` fails at once (without yielding to the event loop) and the adapter appends the
    *last message it received* again and again until the requested count is reached. A client
    that announces a packet of ``max_packet_size`` bytes, sends one byte and closes, blocked
    the whole broker for as long as that takes (about 25 s for 8 MiB). Here the end of the
    connection ends the read: it returns what there is, and the frame reader calls that a
    truncated packet.
    """

    def __init__(self, connection: websockets.asyncio.server.ServerConnection) -> None:
        self._connection = connection
        self._buffer = bytearray()
        self._position = 0
        self._ended = False

    async def read(self, n: int = -1) -> bytes:
        while not self._ended and (n < 0 or len(self._buffer) - self._position < n):
            try:
                message = await self._connection.recv()
            except websockets.ConnectionClosed:
                self._ended = True
                break
            if self._position:
                # Only when a message arrives: a read served from the buffer copies nothing more.
                del self._buffer[: self._position]
                self._position = 0
            self._buffer += message.encode() if isinstance(message, str) else message
        end = len(self._buffer) if n < 0 else min(len(self._buffer), self._position + n)
        data = bytes(self._buffer[self._position : end])
        self._position = end
        return data

    def feed_eof(self) -> None:
        self._ended = True


def _server_ssl_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    tls = listener.tls
    if tls is None:
        return None
    where = f"broker.listeners.{listener.name}.tls"
    try:
        context = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH, cafile=str(tls.cafile) if tls.cafile else None
        )
        context.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    except (OSError, ssl.SSLError) as exc:
        msg = f"{where}: cannot load certificate or key: {exc}"
        raise ListenerStartError(msg) from exc
    if tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.cafile is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _socket_addresses(
    instance: asyncio.Server | websockets.asyncio.server.Server,
) -> list[tuple[str, int]]:
    sockets = instance.sockets
    addresses: list[tuple[str, int]] = []
    for sock in sockets or ():
        host, port = sock.getsockname()[:2]
        addresses.append((str(host), int(port)))
    return addresses


def _close_transport(writer: WriterAdapter) -> None:
    """Make sure a TCP connection's transport is closed.

    amqtt's ``StreamWriterAdapter.close`` marks itself closed, then drains: when the peer is
    already gone the drain raises and the transport is never closed (a leaked socket).
    """
    if isinstance(writer, StreamWriterAdapter):
        stream = writer._writer  # noqa: SLF001 - amqtt keeps no public handle on it
        if not stream.is_closing():
            stream.close()


async def _close_quietly(writer: WriterAdapter) -> None:
    """Close a connection that is being refused; the peer may already be gone."""
    _close_transport(writer)
    with contextlib.suppress(OSError, ConnectionError, TimeoutError):
        await asyncio.wait_for(writer.close(), timeout=1)
