"""The ``broker`` section: listeners and their TLS, anonymous access, the ACL, the limits.

Owns: the bind address rules (host:port, bracketed IPv6, ports that would collide), the TLS
files of a listener (the one place the package looks at a file other than the config: they must
exist), the ACL entries (topic filters, deny filters, client id patterns, stream rights),
``broker.limits``, and the check that somebody can log in to every listener. It must never
decide access at run time: headwater.core.access and headwater.core.stream_rights do that with
what this builds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal

from headwater.core.config.errors import ConfigError
from headwater.core.config.reader import (
    _NAME,
    _bool,
    _duration,
    _existing_file,
    _expected,
    _int_between,
    _join,
    _list_of,
    _one_of,
    _path,
    _Section,
    _size,
    _str,
    _topic_filter,
)
from headwater.core.config.schema import BrokerLimits, BrokerSettings, ListenerConfig, TLSConfig, TopicACL
from headwater.core.config.units import _KiB

# --- listeners ----------------------------------------------------------------------------------


_MAX_PORT: Final = 65535
_MAX_HOST_NAME: Final = 253
_BIND_EXAMPLE: Final = "host:port such as 127.0.0.1:1883 or [::1]:1883"
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _bind(value: object, path: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise _expected(path, _BIND_EXAMPLE, value)
    host, colon, port_text = value.rpartition(":")
    if not colon or not host:
        raise _expected(path, _BIND_EXAMPLE, value)
    problem = _bind_host_problem(host)
    if problem is not None:
        raise ConfigError(path, f"{problem} in {value!r}")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > _MAX_PORT:
        raise ConfigError(path, f"port must be a number between 0 and 65535, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def _bind_host_problem(host: str) -> str | None:
    """Why ``host`` (the part of a bind before the port) is unusable, or ``None``."""
    if host.startswith("[") and host.endswith("]"):
        return _address_problem(host[1:-1], ipaddress.IPv6Address, "IPv6")
    if ":" in host or "[" in host or "]" in host:
        return "IPv6 addresses need brackets, e.g. [::1]:1883"
    if re.fullmatch(r"[0-9.]+", host):
        return _address_problem(host, ipaddress.IPv4Address, "IPv4")
    if len(host) > _MAX_HOST_NAME or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return f"invalid host name {host!r}"
    return None


def _address_problem(
    text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address], family: str
) -> str | None:
    try:
        kind(text)
    except ValueError:
        return f"invalid {family} address {text!r}"
    return None


def _tls(value: object, path: str) -> TLSConfig:
    section = _Section(value, path, ("certfile", "keyfile", "cafile", "require_client_cert"))
    certfile = section.require("certfile", _existing_file)
    keyfile = section.require("keyfile", _existing_file)
    cafile = section.optional("cafile", _existing_file)
    require_client_cert = section.get("require_client_cert", _bool, default=False)
    if require_client_cert and cafile is None:
        raise ConfigError(
            section.at("require_client_cert"),
            "requires cafile (the CA that signs client certificates)",
        )
    return TLSConfig(
        certfile=certfile, keyfile=keyfile, cafile=cafile, require_client_cert=require_client_cert
    )


_LISTENER_TYPES: Final[tuple[Literal["tcp", "ws"], ...]] = ("tcp", "ws")


def _addresses_overlap(first: str, second: str) -> bool:
    """Tell whether two listeners on one port would collide (Linux refuses the second bind).

    A wildcard address covers every address of its family; asyncio binds ``::`` IPv6-only, so
    ``0.0.0.0`` and ``::`` can share a port.
    """
    if first == second:
        return True
    try:
        addresses = ipaddress.ip_address(first), ipaddress.ip_address(second)
    except ValueError:
        return False  # a host name: only the OS can tell
    if addresses[0].version != addresses[1].version:
        return False
    return any(address.is_unspecified for address in addresses)


def _listeners(broker: _Section) -> tuple[ListenerConfig, ...]:
    if broker.is_unset("listeners"):
        return (ListenerConfig(name="default", host="127.0.0.1", port=1883),)
    listeners: list[ListenerConfig] = []
    for name, value, path in broker.named("listeners", what="listener", pattern=_NAME):
        section = _Section(value, path, ("bind", "type", "tls", "allow_anonymous"))
        host, port = section.require("bind", _bind)
        for other in listeners:
            if port != 0 and port == other.port and _addresses_overlap(host, other.host):
                raise ConfigError(
                    section.at("bind"), f"port {port} is already bound by listener {other.name!r}"
                )
        listeners.append(
            ListenerConfig(
                name=name,
                host=host,
                port=port,
                type=section.get("type", _one_of(_LISTENER_TYPES), "tcp"),
                tls=section.optional("tls", _tls),
                allow_anonymous=section.optional("allow_anonymous", _bool),
            )
        )
    if not listeners:
        raise ConfigError(broker.at("listeners"), "at least one listener is required")
    return tuple(listeners)


# --- the ACL ------------------------------------------------------------------------------------


# Name patterns (client ids, stream names): `*` any run of characters, `?` one character, `%u`
# the username; any other `%` is refused (kept free for more placeholders, as mosquitto's %c).
_NAME_PATTERN_TOKEN: Final = re.compile(r"%u|%|[^%]+")
_STREAM_PATTERN_TEXT: Final = re.compile(r"[A-Za-z0-9_.*?-]*")


def _name_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is no valid name pattern (client id or stream), or ``None``."""
    if not pattern:
        return "must not be empty"
    if "\0" in pattern:
        return f"must not contain U+0000, got {pattern!r}"
    if "%" in _NAME_PATTERN_TOKEN.findall(pattern):
        return f"'%' must be followed by 'u' (%u is the username), got {pattern!r}"
    return None


def _client_id_pattern(value: object, path: str) -> str:
    pattern = _str(value, path)
    problem = _name_pattern_problem(pattern)
    if problem is not None:
        raise ConfigError(path, problem)
    return pattern


def _stream_pattern(value: object, path: str) -> str:
    pattern = _str(value, path)
    problem = _name_pattern_problem(pattern)
    if problem is None and not _STREAM_PATTERN_TEXT.fullmatch(pattern.replace("%u", "")):
        problem = (
            f"invalid stream name pattern {pattern!r} (expected letters, digits, _ . - "
            "and the wildcards * and ?, %u for the username)"
        )
    if problem is not None:
        raise ConfigError(path, problem)
    return pattern


def _acl(value: object, path: str) -> dict[str, TopicACL]:
    acl: dict[str, TopicACL] = {}
    for user, rules, user_path in _Section(value, path, keys=None).entries(what="user", pattern=None):
        section = _Section(rules, user_path, ("publish", "subscribe", "deny", "client_ids", "streams"))
        deny = section.section("deny", ("publish", "subscribe"))
        # A stream right whose key is absent (or null) keeps its default: read and append are
        # derived from the topic rules, admin is none. Written as [], it is none.
        streams = section.section("streams", ("read", "append", "admin"))
        acl[user] = TopicACL(
            publish=section.get("publish", _list_of(_topic_filter), ()),
            subscribe=section.get("subscribe", _list_of(_topic_filter), ()),
            deny_publish=deny.get("publish", _list_of(_topic_filter), ()),
            deny_subscribe=deny.get("subscribe", _list_of(_topic_filter), ()),
            client_ids=section.optional("client_ids", _list_of(_client_id_pattern)),
            stream_read=streams.optional("read", _list_of(_stream_pattern)),
            stream_append=streams.optional("append", _list_of(_stream_pattern)),
            stream_admin=streams.get("admin", _list_of(_stream_pattern), ()),
        )
    return acl


# --- limits and the section ---------------------------------------------------------------------


_LIMIT_KEYS: Final = (
    "connect_timeout",
    "max_packet_size",
    "max_connections",
    "max_queued_messages",
    "max_pending_deliveries",
    "max_inflight_messages",
)
# The smallest packet limit that still lets a client CONNECT with a long will or password.
_MIN_PACKET_SIZE: Final = 1 * _KiB
# MQTT's remaining length is at most 268,435,455 bytes, plus at most 5 bytes of fixed header.
_MAX_PACKET_SIZE: Final = 268_435_460


def _limits(broker: _Section) -> BrokerLimits:
    limits = broker.section("limits", _LIMIT_KEYS)
    defaults = BrokerLimits()
    return BrokerLimits(
        connect_timeout=limits.get("connect_timeout", _duration(positive=True), defaults.connect_timeout),
        max_packet_size=limits.get(
            "max_packet_size",
            _size(_MIN_PACKET_SIZE, _MAX_PACKET_SIZE, why_maximum=" (the largest packet MQTT can frame)"),
            defaults.max_packet_size,
        ),
        max_connections=limits.get("max_connections", _int_between(1, 1_000_000), defaults.max_connections),
        max_queued_messages=limits.get(
            "max_queued_messages", _int_between(0, 10_000_000), defaults.max_queued_messages
        ),
        max_pending_deliveries=limits.get(
            "max_pending_deliveries", _int_between(0, 10_000_000), defaults.max_pending_deliveries
        ),
        max_inflight_messages=limits.get(
            "max_inflight_messages", _int_between(1, 65_535), defaults.max_inflight_messages
        ),
    )


def _check_someone_can_log_in(
    broker: _Section, listeners: tuple[ListenerConfig, ...], *, allow_anonymous: bool, has_passwords: bool
) -> None:
    """Refuse a listener that accepts nobody: it would only log one refusal per attempt."""
    if has_passwords:
        return
    for listener in listeners:
        anonymous = allow_anonymous if listener.allow_anonymous is None else listener.allow_anonymous
        if anonymous:
            continue
        raise ConfigError(
            _join(broker.at("listeners"), listener.name),
            f"nobody can log in to listener {listener.name!r} (anonymous access is off and there is "
            "no broker.password_file): add users with `headwater passwd FILE USER` and set "
            "broker.password_file, or set allow_anonymous: true on this listener",
        )


def _broker(top: _Section) -> BrokerSettings:
    broker = top.section("broker", ("listeners", "allow_anonymous", "password_file", "acl", "limits"))
    listeners = _listeners(broker)
    # Anonymous access is safe by default only when nobody outside this machine can connect.
    allow_anonymous = broker.get(
        "allow_anonymous", _bool, all(listener.is_loopback for listener in listeners)
    )
    password_file = broker.optional("password_file", _path)
    _check_someone_can_log_in(
        broker, listeners, allow_anonymous=allow_anonymous, has_passwords=password_file is not None
    )
    return BrokerSettings(
        listeners=listeners,
        allow_anonymous=allow_anonymous,
        allow_anonymous_explicit="allow_anonymous" in broker,
        password_file=password_file,
        acl=broker.optional("acl", _acl),
        limits=_limits(broker),
    )
