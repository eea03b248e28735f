"""``DeployClient``: deploy, update, remove and watch Headwater apps from Python (paho-mqtt 2.x).

Owns the client side of deployments (docs/deploy.md; the message and status shapes are declared
in :mod:`headwater.wire.deploy`): publishing the retained
desired state of an app on ``<prefix>/deploy/<app>`` (the compose file itself, or the JSON
envelope when options are given), reading the retained status topics, and following the live
status updates of one operation until it ends. It must never print: the CLI decides what people
see.

Usage::

    with DeployClient.connect("mqtt://ops:secret@gateway:1883") as deploy:
        revision = deploy.deploy("web", Path("compose.yml").read_text(), pull="never")
        final = deploy.wait("web", revision=revision, on_status=print)
        assert final.state == "running"

How the end of an operation is recognized: the client subscribes to the app's status topic
*before* publishing, and only statuses that arrive live (not the retained copy replayed on
subscription) for the revision it published count. The revision is computed here with the
same function Headwater uses (:func:`headwater.wire.deploy.revision_of`). Headwater
answers every deploy message it receives with at least one status, even when nothing changed.

The ACL needs: publish on ``<prefix>/deploy/<app>``, subscribe on
``<prefix>/deploy/<app>/status`` (``+`` for :meth:`DeployClient.statuses` of every app). A
refused PUBLISH is dropped silently by MQTT 3.1.1 brokers: it shows as a
:class:`DeployTimeoutError` naming that possibility.

Exception tree::

    DeployClientError
    ├── DeployConnectionError       can't connect, refused at CONNACK, or the connection dropped
    ├── DeployForbiddenError        the broker refused a subscription to a status topic
    ├── DeployTimeoutError          no (final) status in time
    └── InvalidDeployRequestError   refused before sending: bad app name, bad option
"""

from __future__ import annotations

import json
import queue
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self, overload

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from headwater.clients._paho import new_client, open_connection
from headwater.clients.connection import ConnectionSettings, resolve_url
from headwater.wire.deploy import (
    FINAL_STATES,
    PLUGIN_STATUS_NAME,
    DeploymentStatus,
    PullPolicy,
    S3Reference,
    WireFormatError,
    app_name_problem,
    deploy_topic,
    encode_deploy_message,
    revision_of,
    status_topic,
)

if TYPE_CHECKING:
    from types import TracebackType

    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "DEFAULT_DEPLOY_TIMEOUT",
    "DeployClient",
    "DeployClientError",
    "DeployConnectionError",
    "DeployForbiddenError",
    "DeployTimeoutError",
    "InvalidDeployRequestError",
    "StatusUpdate",
    "app_topic_problem",
]

DEFAULT_PREFIX: Final = "headwater"
DEFAULT_TIMEOUT: Final = 10.0
#: How long :meth:`DeployClient.wait` waits by default (image pulls can be slow).
DEFAULT_DEPLOY_TIMEOUT: Final = 600.0
# Retained messages arrive right after the SUBACK; the snapshot ends after this much silence.
_QUIET: Final = 0.5
_UNSPECIFIED: Final = 128


class DeployClientError(Exception):
    """Base of the deploy client's errors; ``str()`` is a message for a person."""


class DeployConnectionError(DeployClientError):
    """Could not connect to the broker, it refused us, or the connection was lost."""


class DeployForbiddenError(DeployClientError):
    """The broker refused a subscription (the ACL does not let this user read that status)."""


class DeployTimeoutError(DeployClientError):
    """No (final) status arrived in time; ``last`` is the last status seen, if any."""

    def __init__(self, message: str, last: DeploymentStatus | None = None) -> None:
        super().__init__(message)
        self.last = last


class InvalidDeployRequestError(DeployClientError):
    """Refused before sending: an invalid app name or option."""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A status message as received: ``retained`` is True for a replay on subscription."""

    app: str
    status: DeploymentStatus | None  # None: the status was cleared (empty message)
    retained: bool
    raw: Mapping[str, Any] | None = None  # the JSON object as received (None when cleared)


def _check_app(app: str) -> None:
    problem = app_name_problem(app)
    if problem is not None:
        raise InvalidDeployRequestError(problem)


def app_topic_problem(app: str) -> str | None:
    """Why ``app`` names no deploy topic at all, or None; looser than ``app_name_problem``.

    Headwater refuses a deploy message on an invalid name (``Bad_Name``, ``a/b``) with a
    ``failed`` status, but the retained message stays until someone clears it: removing such an
    app, and reading its status, must work. Not addressable: wildcards, NUL, a status topic, and
    names starting with ``_`` (Headwater's own, ignored by it).
    """
    if app_name_problem(app) is None:
        return None
    unusable = (
        not app or any(char in app for char in "+#\x00") or app.startswith("_") or app.endswith("/status")
    )
    return app_name_problem(app) if unusable else None


def _check_app_topic(app: str) -> None:
    problem = app_topic_problem(app)
    if problem is not None:
        raise InvalidDeployRequestError(problem)


def build_payload(
    compose: str | bytes | None = None,
    *,
    compose_s3: S3Reference | None = None,
    pull: PullPolicy | None = None,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    registry_auth: Sequence[str] = (),
) -> bytes:
    """The deploy message: the compose file as it is when no option is given, else the envelope."""
    text = compose.decode() if isinstance(compose, bytes) else compose
    try:
        return encode_deploy_message(
            text, compose_s3=compose_s3, pull=pull, force=force, env=env, registry_auth=registry_auth
        )
    except WireFormatError as exc:
        raise InvalidDeployRequestError(str(exc)) from exc


class DeployClient:
    """A blocking client for Headwater deployments; build it with :meth:`connect`.

    Use as a context manager, or call :meth:`close`. One thread at a time may wait for statuses
    (:meth:`wait`, :meth:`statuses`, :meth:`watch`).
    """

    def __init__(
        self, settings: ConnectionSettings, *, client_id: str, topic_prefix: str, timeout: float
    ) -> None:
        """Prefer :meth:`connect`, which also connects."""
        self.settings = settings
        self.client_id = client_id
        self.topic_prefix = topic_prefix
        self.timeout = timeout
        self._updates: queue.Queue[StatusUpdate | DeployClientError] = queue.Queue()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._connect_failure: str | None = None
        self._subscriptions: dict[str, int] = {}  # filter -> granted QoS (128 refused)
        self._suback: dict[int, tuple[str, threading.Event]] = {}
        self._closed = False
        self._mqtt = new_client(
            client_id,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_subscribe=self._on_subscribe,
            on_message=self._on_message,
        )

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        client_id: str | None = None,
        topic_prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> DeployClient:
        """Connect to ``url`` (else ``$HEADWATER_URL``, else ``mqtt://127.0.0.1:1883``).

        Raises :class:`DeployConnectionError` and, for a bad URL,
        :class:`~headwater.clients.connection.InvalidURLError`.
        """
        settings = resolve_url(url)
        client = cls(
            settings,
            client_id=client_id or f"headwater-deploy-{secrets.token_hex(6)}",
            topic_prefix=topic_prefix,
            timeout=timeout,
        )
        try:
            client._open(ssl_context)
        except BaseException:
            client.close()
            raise
        return client

    def _open(self, ssl_context: ssl.SSLContext | None) -> None:
        open_connection(
            self._mqtt,
            self.settings,
            timeout=self.timeout,
            ssl_context=ssl_context,
            connected=self._connected,
            connect_failure=lambda: self._connect_failure,
            error=DeployConnectionError,
        )

    def close(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        self._updates.put(DeployConnectionError("the client was closed"))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_failure = str(reason_code)
            self._connected.set()
            client.disconnect()
            return
        with self._lock:
            filters = list(self._subscriptions)
        for topic_filter in filters:  # after a reconnect
            client.subscribe(topic_filter, qos=1)
        self._connected.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._closed:
            return
        reason = "" if reason_code.value in {0, _UNSPECIFIED} else f" ({reason_code})"
        self._updates.put(DeployConnectionError(f"connection to {self.settings.display_url} lost{reason}"))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            waiting = self._suback.pop(mid, None)
            if waiting is not None:
                topic_filter, done = waiting
                self._subscriptions[topic_filter] = (
                    128 if any(code.is_failure for code in reason_codes) else 1
                )
                done.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        prefix = f"{self.topic_prefix}/deploy/"
        topic = message.topic
        if not topic.startswith(prefix) or not topic.endswith("/status"):
            return
        app = topic[len(prefix) : -len("/status")]
        if not message.payload:
            self._updates.put(StatusUpdate(app=app, status=None, retained=bool(message.retain)))
            return
        try:
            raw = json.loads(message.payload)
            status = DeploymentStatus.from_json_dict(raw) if app != PLUGIN_STATUS_NAME else None
        except ValueError:
            return  # not a status document: ignored
        if not isinstance(raw, dict):
            return
        self._updates.put(StatusUpdate(app=app, status=status, retained=bool(message.retain), raw=raw))

    # --- subscriptions -------------------------------------------------------------------------

    def _subscribe(self, topic_filter: str) -> None:
        """Subscribe (once) and wait for the SUBACK; raise DeployForbiddenError if refused."""
        if self._closed:
            msg = "the client is closed"
            raise DeployConnectionError(msg)
        with self._lock:
            granted = self._subscriptions.get(topic_filter)
        if granted is None:
            done = threading.Event()
            with self._lock:
                result, mid = self._mqtt.subscribe(topic_filter, qos=1)
                if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                    msg = f"cannot subscribe on {self.settings.display_url}: {mqtt.error_string(result)}"
                    raise DeployConnectionError(msg)
                self._suback[mid] = (topic_filter, done)
            if not done.wait(self.timeout):
                msg = f"no SUBACK for {topic_filter} within {self.timeout:g}s"
                raise DeployConnectionError(msg)
            with self._lock:
                granted = self._subscriptions.get(topic_filter)
        if granted == 128:  # noqa: PLR2004 - MQTT 3.1.1's SUBACK failure code
            who = f"user {self.settings.username!r}" if self.settings.username else "anonymous clients"
            msg = f"{who} may not read {topic_filter} (refused by the broker's ACL)"
            raise DeployForbiddenError(msg)

    def _status_topic(self, app: str) -> str:
        return status_topic(self.topic_prefix, app)

    def _drain(self) -> None:
        while True:
            try:
                item = self._updates.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, DeployClientError):
                raise item

    # --- operations -----------------------------------------------------------------------------

    def publish(self, app: str, payload: bytes) -> str | None:
        """Publish ``payload`` as the retained desired state of ``app``; return its revision.

        Subscribes to the app's status first, so that :meth:`wait` sees every status that
        follows. Returns once the broker acknowledged the message (QoS 1). The empty (remove)
        message may name an invalid app too (see :func:`app_topic_problem`).
        """
        if payload:
            _check_app(app)
        else:
            _check_app_topic(app)
        self._subscribe(self._status_topic(app))
        self._drain()  # from here on, only what follows this message
        info = self._mqtt.publish(deploy_topic(self.topic_prefix, app), payload, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            msg = f"cannot send to {self.settings.display_url}: {mqtt.error_string(info.rc)}"
            raise DeployConnectionError(msg)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as exc:
            msg = f"the broker did not acknowledge the message: {exc}"
            raise DeployConnectionError(msg) from exc
        if not info.is_published():
            msg = f"the broker did not acknowledge the message within {self.timeout:g}s"
            raise DeployConnectionError(msg)
        return revision_of(payload)

    def deploy(
        self,
        app: str,
        compose: str | bytes | None = None,
        *,
        compose_s3: S3Reference | None = None,
        pull: PullPolicy | None = None,
        force: bool = False,
        env: Mapping[str, str] | None = None,
        registry_auth: Sequence[str] = (),
    ) -> str:
        """Deploy or update ``app``; return the revision to :meth:`wait` for.

        Without options the compose file is published as it is; with any, as the JSON envelope.
        """
        payload = build_payload(
            compose, compose_s3=compose_s3, pull=pull, force=force, env=env, registry_auth=registry_auth
        )
        revision = self.publish(app, payload)
        assert revision is not None  # noqa: S101 - a non-empty payload has one
        return revision

    def remove(self, app: str) -> None:
        """Remove ``app`` (the empty retained message); :meth:`wait` with ``revision=None``."""
        self.publish(app, b"")

    def wait(
        self,
        app: str,
        *,
        revision: str | None,
        timeout: float = DEFAULT_DEPLOY_TIMEOUT,
        on_status: Callable[[DeploymentStatus], None] | None = None,
        on_quiet: Callable[[float, DeploymentStatus | None], None] | None = None,
        quiet_every: float = 15.0,
    ) -> DeploymentStatus:
        """Follow the live statuses of ``app`` until the operation for ``revision`` ends.

        ``revision=None`` waits for a removal (``removed``, or ``failed`` without a revision);
        otherwise for ``running``, ``degraded`` or ``failed`` of that revision. ``on_status``
        sees every live status of the app on the way; ``on_quiet(seconds waited, last status)``
        is called after each ``quiet_every`` seconds without one (a pull can take minutes).
        Raises :class:`DeployTimeoutError`.
        """
        started = time.monotonic()
        deadline = started + timeout
        last: DeploymentStatus | None = None
        for update in self._updates_until(deadline, tick=quiet_every if on_quiet else None):
            if update is None:
                assert on_quiet is not None  # noqa: S101 - ticks only come with on_quiet
                on_quiet(time.monotonic() - started, last)
                continue
            if update.retained or update.app != app or update.status is None:
                continue
            status = update.status
            last = status
            if on_status is not None:
                on_status(status)
            if status.revision == revision and (
                status.state in FINAL_STATES - {"removed"}
                if revision is not None
                else status.state in {"removed", "failed"}
            ):
                return status
        what = "the removal" if revision is None else f"revision {revision}"
        seen = f"; last status: {last.state} (revision {last.revision})" if last else "; no status arrived"
        who = f"user {self.settings.username!r}" if self.settings.username else "anonymous clients"
        topic = f"{self.topic_prefix}/deploy/{app}"
        hint = "" if last else f" (is deploy enabled on Headwater, and may {who} publish to {topic}?)"
        msg = f"{app}: {what} did not finish within {timeout:g}s{seen}{hint}"
        raise DeployTimeoutError(msg, last)

    @overload
    def _updates_until(self, deadline: float | None) -> Iterator[StatusUpdate]: ...

    @overload
    def _updates_until(
        self, deadline: float | None, *, tick: float | None
    ) -> Iterator[StatusUpdate | None]: ...

    def _updates_until(
        self, deadline: float | None, *, tick: float | None = None
    ) -> Iterator[StatusUpdate | None]:
        """Updates until ``deadline``; ``None`` after each ``tick`` seconds without one."""
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            ticking = tick is not None and (remaining is None or tick < remaining)
            try:
                item = self._updates.get(timeout=tick if ticking else remaining)
            except queue.Empty:
                if ticking:
                    yield None
                    continue
                return
            if isinstance(item, DeployClientError):
                raise item
            yield item

    def statuses(
        self, app: str | None = None
    ) -> tuple[dict[str, DeploymentStatus], Mapping[str, Any] | None]:
        """The retained statuses (of every app, or of ``app``), and the plugin's own status.

        Waits for the retained messages that follow the subscription (until none arrived for
        half a second). Returns ``({app: status}, plugin status object or None)``.
        """
        if app is not None:
            _check_app_topic(app)
        topic_filter = self._status_topic("+" if app is None else app)
        self._subscribe(topic_filter)
        found: dict[str, DeploymentStatus] = {}
        plugin: Mapping[str, Any] | None = None
        while True:
            try:
                item = self._updates.get(timeout=_QUIET)
            except queue.Empty:
                return found, plugin
            if isinstance(item, DeployClientError):
                raise item
            if item.app == PLUGIN_STATUS_NAME:
                plugin = item.raw
            elif item.status is not None:
                found[item.app] = item.status
            else:
                found.pop(item.app, None)

    def watch(self, app: str | None = None) -> Iterator[StatusUpdate]:
        """Live status updates (of every app, or of ``app``) until the client is closed."""
        self._subscribe(self._status_topic("+" if app is None else app))
        for update in self._updates_until(None):
            if not update.retained and (app is None or update.app == app):
                yield update
