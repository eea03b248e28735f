"""The one way Headwater's clients open a paho connection and wait for the broker's answer.

Owns the connect sequence shared by :class:`~headwater.clients.streams.StreamClient` and
:class:`~headwater.clients.deploy.DeployClient`: credentials and TLS from the URL, the TCP
connect (with its errors in words), paho's network thread, and the wait for the CONNACK that the
client's own ``on_connect`` callback reports. It must never put a password in a message.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import paho.mqtt.client as mqtt

    from headwater.clients.connection import ConnectionSettings

__all__ = ["new_client", "open_connection"]


def new_client(
    client_id: str,
    *,
    on_connect: Callable[..., None],
    on_disconnect: Callable[..., None],
    on_subscribe: Callable[..., None],
    on_message: Callable[..., None],
) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, clean session, reconnecting after 1-10 s) for our clients.

    The callbacks have paho's VERSION2 signatures.
    """
    import paho.mqtt.client as mqtt  # noqa: PLC0415 - shadows the type-only import
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(1, 10)
    return client


def open_connection(
    client: mqtt.Client,
    settings: ConnectionSettings,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
    connected: threading.Event,
    connect_failure: Callable[[], str | None],
    error: type[Exception],
) -> None:
    """Connect ``client`` to ``settings`` and return once the broker accepted it.

    ``connected`` is set by the caller's ``on_connect`` (also on a refusal, after which
    ``connect_failure()`` says why). Raises ``error`` with ``cannot connect to <url>: <reason>``.
    """
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set_context(ssl_context or ssl.create_default_context())
    client.connect_timeout = timeout
    try:
        client.connect(settings.host, settings.port, keepalive=30)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = f"cannot connect to {settings.display_url}: {reason}"
        raise error(msg) from exc
    _disable_nagle(client)
    client.loop_start()
    if not connected.wait(timeout) or connect_failure() is not None:
        reason = connect_failure() or f"no CONNACK within {timeout:g}s"
        msg = f"cannot connect to {settings.display_url}: {reason}"
        raise error(msg)


def _disable_nagle(client: mqtt.Client) -> None:
    """Send small packets at once (paho leaves Nagle's algorithm on).

    Request/response over MQTT is a string of small packets: with Nagle on, a request written
    while our previous PUBACK is still unacknowledged waits for the broker's delayed ACK, which
    dominates each stream-API call on Linux (docs/benchmarks.md has the measurement).
    """
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
