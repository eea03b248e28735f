"""Headwater's configuration: the YAML schema as typed, frozen objects.

Owns: reading a YAML file (or the embedded default), validating every key once, and turning it
into the frozen dataclasses below. It must never open sockets, databases or files other than the
config file itself (it only checks that the TLS files a listener names exist).

Why frozen dataclasses and a hand-written validator rather than pydantic: the schema is small,
we want exactly one error line of the form ``key.path: reason`` (pydantic's multi-line reports
would have to be reformatted anyway), and it keeps a heavy dependency out of a gateway image.

Error contract: every problem raises :class:`ConfigError` whose ``str()`` is one line naming the
dotted key path and the reason, e.g. ``streams.telemetry.max_size: must be at least 1KiB``.
List items are named by index (``streams.telemetry.exports[0].priority``). Problems with the
file as a whole (unreadable, not YAML, empty, not a mapping) have an empty ``path`` and a reason
that starts with the file name.

Exceptions::

    ValueError
     └── ConfigError            a config problem: ``key.path: reason`` on one line

:func:`parse_size`, :func:`parse_duration` and :func:`parse_bandwidth` raise plain
:class:`ValueError` (they know no key path); the validator turns that into a ``ConfigError``.

Reading rules, in one place:

- Scalars follow YAML 1.2, not PyYAML's YAML 1.1 default: only ``true``/``false`` are booleans
  (``yes``, ``no``, ``on``, ``off`` stay strings and are refused where a boolean is expected),
  and ``1:30`` or ``0755`` are strings, never base-60 or octal numbers. A key written twice in
  one mapping is refused.
- ``null`` is accepted exactly where the default is ``null`` (``ttl``, ``password_file``,
  ``max_bandwidth``...). A whole section or list written as ``null`` (``exports:`` with nothing
  under it) means "the default".
- Relative paths (``data_dir``, ``password_file``, TLS files) are resolved against the current
  working directory of the process, *not* the directory of the config file, and stored absolute.
- Sizes, durations and bandwidths are parsed by :func:`parse_size`, :func:`parse_duration` and
  :func:`parse_bandwidth` and stored as bytes, seconds and bytes per second.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import string
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Final, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError

from headwater.core.config.errors import ConfigError, _describe
from headwater.core.config.schema import (
    AwsConfig,
    BrokerLimits,
    BrokerSettings,
    DeployConfig,
    DeployPolicy,
    ExportConfig,
    HeadwaterConfig,
    ListenerConfig,
    RegistryCredential,
    StreamConfig,
    TLSConfig,
    TopicACL,
    UploadsConfig,
)
from headwater.core.config.units import (
    _GiB,
    _KiB,
    _MiB,
    format_size,
    parse_bandwidth,
    parse_duration,
    parse_size,
)
from headwater.core.topics import InvalidTopicError, validate_topic_filter, validate_topic_name
from headwater.wire.streams import STREAM_NAME, stream_name_problem

__all__ = [
    "AwsConfig",
    "BrokerLimits",
    "BrokerSettings",
    "ConfigError",
    "DeployConfig",
    "DeployPolicy",
    "ExportConfig",
    "HeadwaterConfig",
    "ListenerConfig",
    "RegistryCredential",
    "StreamConfig",
    "TLSConfig",
    "TopicACL",
    "UploadsConfig",
    "format_size",
    "load_config",
    "parse_bandwidth",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_stream_config",
]


# --------------------------------------------------------------------------------------------
# YAML 1.2-style loading
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and integers, refusing duplicate keys."""

    def construct_mapping(
        self,
        node: yaml.MappingNode,
        deep: bool = False,  # noqa: FBT001, FBT002 -- PyYAML's signature, called positionally
    ) -> dict[Hashable, object]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            # Merge keys ("<<") may legitimately be overridden; only literal duplicates count.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx) for tag, rx in resolvers if tag not in {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# Decimal only: PyYAML would read 0755 as octal and 1:30 as 90.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")
)


def _yaml_error_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return " ".join(f"invalid YAML{where}: {problem}".split())
    return " ".join(f"invalid YAML: {exc}".split())


_EMBEDDED_SOURCE: Final = "<embedded default>"
_EMBEDDED_NAME: Final = "headwater.yaml"


def _read_embedded_default() -> str:
    """The text of ``headwater.defaults/headwater.yaml``, in a regular or an editable install.

    ``headwater.defaults`` is a data-only namespace package. In an editable install
    (``pip install -e .``) its ``__path__`` holds the real folder *and* setuptools' path-hook
    placeholder, and ``resources.files()`` then builds a ``MultiplexedPath``, which refuses any
    entry that is not a folder. So the file is looked up in each real folder of the path first;
    ``resources`` remains the way for installs whose path has no folder (a zip).
    """
    package = importlib.import_module("headwater.defaults")
    for folder in getattr(package, "__path__", ()):
        candidate = Path(folder) / _EMBEDDED_NAME
        if candidate.is_file():
            return candidate.read_text("utf-8")
    return resources.files(package).joinpath(_EMBEDDED_NAME).read_text("utf-8")


def load_config(path: Path | None) -> HeadwaterConfig:
    """Read and validate a config file; ``None`` reads the embedded default.

    The embedded default is ``headwater.yaml`` in the package ``headwater.defaults`` (the
    repository's ``config/`` folder). Relative paths inside the config are resolved against the
    current working directory, not against the file's directory. Raises :class:`ConfigError`.
    """
    if path is None:
        source = _EMBEDDED_SOURCE
        try:
            text = _read_embedded_default()
        except (OSError, ModuleNotFoundError) as exc:
            raise ConfigError("", f"{source}: cannot read headwater.defaults/headwater.yaml: {exc}") from exc
    else:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"{source}: cannot read config file: not UTF-8 text") from exc
        except OSError as exc:
            raise ConfigError("", f"{source}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        data: object = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: {_yaml_error_reason(exc)}") from exc
    return parse_config(data, source=source)


# --------------------------------------------------------------------------------------------
# The reader: a mapping that knows its key path
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
S = TypeVar("S", bound=str)
# A converter turns one YAML value into a typed value or raises ConfigError naming the path.
Converter: TypeAlias = Callable[[object, str], T]


def _expected(path: str, what: str, value: object) -> ConfigError:
    return ConfigError(path, f"expected {what}, got {_describe(value)}")


def _join(path: str, key: str) -> str:
    # A key with a newline or other control character is quoted: the message stays one line.
    shown = key if key.isprintable() else repr(key)
    return f"{path}.{shown}" if path else shown


class _Section:
    """One YAML mapping being read: refuses keys it does not know and names every key's path."""

    __slots__ = ("_data", "path")

    def __init__(self, value: object, path: str, keys: Collection[str] | None) -> None:
        """Wrap ``value`` (``None`` reads as empty); ``keys=None`` defers :meth:`refuse_unknown`."""
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise _expected(path, "a mapping", value)
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(path, f"keys must be strings, got {_describe(key)}")
        self._data: Mapping[str, object] = value
        self.path = path
        if keys is not None:
            self.refuse_unknown(keys)

    def refuse_unknown(self, keys: Collection[str]) -> None:
        for key in self._data:
            if key not in keys:
                expected = ", ".join(sorted(keys))
                raise ConfigError(self.at(key), f"unknown key (expected one of: {expected})")

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def require(self, key: str, convert: Converter[T]) -> T:
        if key not in self._data:
            raise ConfigError(self.at(key), "required")
        return convert(self._data[key], self.at(key))

    def get(self, key: str, convert: Converter[T], default: T) -> T:
        """Convert the value of ``key``; ``default`` when absent (null goes to the converter)."""
        if key not in self._data:
            return default
        return convert(self._data[key], self.at(key))

    def optional(self, key: str, convert: Converter[T]) -> T | None:
        """Convert the value of ``key``; ``None`` when absent or null (keys whose default is null)."""
        value = self._data.get(key)
        return None if value is None else convert(value, self.at(key))

    def is_unset(self, key: str) -> bool:
        """Tell whether ``key`` is absent or null."""
        return self._data.get(key) is None

    def section(self, key: str, keys: Collection[str]) -> _Section:
        return _Section(self._data.get(key), self.at(key), keys)

    def entries(self, *, what: str, pattern: re.Pattern[str] | None) -> Iterator[tuple[str, object, str]]:
        """Yield ``(name, value, path)`` when the keys are user-chosen names (streams, users)."""
        for name, value in self._data.items():
            if pattern is not None and not pattern.fullmatch(name):
                raise ConfigError(self.at(name), f"invalid {what} name {name!r} (expected {_NAME_RULE})")
            if not name:
                raise ConfigError(self.path, f"{what} names must not be empty")
            yield name, value, self.at(name)

    def named(
        self, key: str, *, what: str, pattern: re.Pattern[str] | None
    ) -> Iterator[tuple[str, object, str]]:
        """:meth:`entries` of the mapping under ``key`` (absent or null: none)."""
        return _Section(self._data.get(key), self.at(key), keys=None).entries(what=what, pattern=pattern)


# --- converters -------------------------------------------------------------------------------


def _bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _expected(path, "a boolean", value)


def _str(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    raise _expected(path, "a string", value)


def _nonempty_str(value: object, path: str) -> str:
    text = _str(value, path)
    if not text.strip():
        raise ConfigError(path, "must not be empty")
    return text


def _int_between(minimum: int, maximum: int | None = None) -> Converter[int]:
    def convert(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected(path, "an integer", value)
        if maximum is None and value < minimum:
            raise ConfigError(path, f"must be at least {minimum}, got {value}")
        if maximum is not None and not minimum <= value <= maximum:
            raise ConfigError(path, f"must be between {minimum} and {maximum}, got {value}")
        return value

    return convert


def _one_of(choices: tuple[S, ...]) -> Converter[S]:
    def convert(value: object, path: str) -> S:
        for choice in choices:
            if value == choice:
                return choice
        raise _expected(path, "one of " + ", ".join(choices), value)

    return convert


def _size(minimum: int = 0, maximum: int | None = None, *, why_maximum: str = "") -> Converter[int]:
    def convert(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _expected(path, "a size such as 256MiB", value)
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from exc
        if size < minimum:
            raise ConfigError(path, f"must be at least {format_size(minimum)}")
        if maximum is not None and size > maximum:
            raise ConfigError(path, f"must be at most {format_size(maximum)}{why_maximum}")
        return size

    return convert


def _duration(*, positive: bool) -> Converter[float]:
    def convert(value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _expected(path, "a duration such as 30s", value)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from exc
        if positive and seconds == 0:
            raise ConfigError(path, f"must be greater than zero, got {_describe(value)}")
        return seconds

    return convert


def _bandwidth(value: object, path: str) -> float:
    if not isinstance(value, str):
        raise _expected(path, "a bandwidth such as 2Mbit/s", value)
    try:
        return parse_bandwidth(value)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from exc


def _path(value: object, path: str) -> Path:
    # Relative to the working directory, by contract (see the module docstring).
    return Path(_nonempty_str(value, path)).expanduser().absolute()


def _existing_file(value: object, path: str) -> Path:
    file = _path(value, path)
    if not file.is_file():
        problem = "not a regular file" if file.exists() else "file not found"
        raise ConfigError(path, f"{problem}: {file}")
    return file


def _url(value: object, path: str) -> str:
    text = _str(value, path)
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise _expected(path, "an http:// or https:// URL", value)
    return text


def _matching(pattern: str, what: str, rule: str) -> Converter[str]:
    compiled = re.compile(pattern)

    def convert(value: object, path: str) -> str:
        text = _str(value, path)
        if not compiled.fullmatch(text):
            raise ConfigError(path, f"invalid {what} {text!r} (expected {rule})")
        return text

    return convert


def _list_of(item: Converter[T]) -> Converter[tuple[T, ...]]:
    def convert(value: object, path: str) -> tuple[T, ...]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise _expected(path, "a list", value)
        return tuple(item(element, f"{path}[{index}]") for index, element in enumerate(value))

    return convert


# --- MQTT topics ------------------------------------------------------------------------------


def _topic_filter(value: object, path: str) -> str:
    topic = _str(value, path)
    try:
        validate_topic_filter(topic)
    except InvalidTopicError as exc:
        raise ConfigError(path, str(exc)) from exc
    return topic


def _topic_prefix(value: object, path: str) -> str:
    prefix = _str(value, path)
    try:
        validate_topic_name(prefix)
    except InvalidTopicError as exc:
        raise ConfigError(path, str(exc)) from exc
    if prefix.startswith("$"):
        raise ConfigError(path, f"must not start with '$', got {prefix!r}")
    if "" in prefix.split("/"):
        raise ConfigError(path, f"must not have empty levels, got {prefix!r}")
    return prefix


# --- templates --------------------------------------------------------------------------------

_KINESIS_PLACEHOLDERS: Final = ("topic", "client_id", "stream", "sequence")
_S3_PLACEHOLDERS: Final = ("stream", "yyyy", "mm", "dd", "HH", "first_sequence", "last_sequence")
_IOT_PLACEHOLDERS: Final = ("topic", "stream", "client_id")


def _template_literals(template: str, placeholders: Collection[str], path: str) -> str:
    """Check a ``{placeholder}`` template; return its literal text (placeholders removed)."""
    literals = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(path, f"invalid template {template!r}: {exc}") from exc
    for literal, name, spec, conversion in parsed:
        literals.append(literal)
        if name is None:
            continue
        if name not in placeholders:
            expected = ", ".join("{" + p + "}" for p in sorted(placeholders))
            raise ConfigError(path, f"unknown placeholder {{{name}}} (expected one of: {expected})")
        if spec or conversion:
            raise ConfigError(path, f"placeholder {{{name}}} takes no format spec or conversion")
    return "".join(literals)


def _template(placeholders: Collection[str]) -> Converter[str]:
    def convert(value: object, path: str) -> str:
        template = _nonempty_str(value, path)
        _template_literals(template, placeholders, path)
        return template

    return convert


def _s3_key(value: object, path: str) -> str:
    key = _template(_S3_PLACEHOLDERS)(value, path)
    if key.startswith("/"):
        raise ConfigError(path, f"must not start with '/', got {key!r}")
    return key


def _iot_topic(value: object, path: str) -> str:
    template = _nonempty_str(value, path)
    literals = _template_literals(template, _IOT_PLACEHOLDERS, path)
    if "+" in literals or "#" in literals or "\0" in literals:
        raise ConfigError(path, f"must be a topic name, not a filter (no +, #), got {template!r}")
    if template.startswith("$"):
        raise ConfigError(path, f"must not start with '$' (reserved by AWS IoT), got {template!r}")
    return template


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


_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NAME_RULE: Final = "1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
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


# --- sections -----------------------------------------------------------------------------------


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
        section = _Section(rules, user_path, ("publish", "subscribe", "client_ids", "streams"))
        # A stream right whose key is absent (or null) keeps its default: read and append are
        # derived from the topic rules, admin is none. Written as [], it is none.
        streams = section.section("streams", ("read", "append", "admin"))
        acl[user] = TopicACL(
            publish=section.get("publish", _list_of(_topic_filter), ()),
            subscribe=section.get("subscribe", _list_of(_topic_filter), ()),
            client_ids=section.optional("client_ids", _list_of(_client_id_pattern)),
            stream_read=streams.optional("read", _list_of(_stream_pattern)),
            stream_append=streams.optional("append", _list_of(_stream_pattern)),
            stream_admin=streams.get("admin", _list_of(_stream_pattern), ()),
        )
    return acl


_LIMIT_KEYS: Final = (
    "connect_timeout",
    "max_packet_size",
    "max_connections",
    "max_queued_messages",
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


_AWS_SERVICES: Final = ("kinesis", "firehose", "s3", "iot-data", "ecr", "secretsmanager")


def _aws(top: _Section) -> AwsConfig:
    aws = top.section("aws", ("region", "endpoint_url", "endpoints"))
    endpoints = aws.section("endpoints", _AWS_SERVICES)
    return AwsConfig(
        region=aws.get(
            "region",
            _matching(r"[a-z0-9]+(?:-[a-z0-9]+)*", "AWS region", "a name such as us-east-1"),
            "us-east-1",
        ),
        endpoint_url=aws.optional("endpoint_url", _url),
        endpoints={
            service: endpoints.require(service, _url) for service in _AWS_SERVICES if service in endpoints
        },
    )


_EXPORT_TYPES: Final[tuple[Literal["kinesis", "firehose", "s3", "iot_core"], ...]] = (
    "kinesis",
    "firehose",
    "s3",
    "iot_core",
)
_EXPORT_KEYS: Final = (
    "id",
    "type",
    "priority",
    "batch_size",
    "batch_interval",
    "max_bandwidth",
    "start",
)
_EXPORT_TYPE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "kinesis": ("stream_name", "partition_key"),
    "firehose": ("delivery_stream", "delimiter"),
    "s3": ("bucket", "key", "compression", "max_object_size", "max_object_age"),
    "iot_core": ("topic", "qos"),
}
_AWS_NAME_RULE: Final = "1-{} characters of A-Z a-z 0-9 _ . -"
_BUCKET_RULE: Final = "3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit"
_COMPRESSIONS: Final = ("gzip", "none")
# PutRecords and PutRecordBatch take at most 500 records per call.
_MAX_AWS_BATCH: Final = 500
_S3_DEFAULT_KEY: Final = "{stream}/{yyyy}/{mm}/{dd}/{HH}/{first_sequence}-{last_sequence}.jsonl"
_S3_MAX_PUT: Final = 5 * _GiB


def _start(value: object, path: str) -> Literal["oldest", "newest"] | int:
    if value == "oldest":
        return "oldest"
    if value == "newest":
        return "newest"
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_between(0)(value, path)
    raise _expected(path, "oldest, newest or a sequence number", value)


def _export_options(kind: str, export: _Section) -> dict[str, object]:
    if kind == "kinesis":
        return {
            "stream_name": export.require(
                "stream_name",
                _matching(r"[A-Za-z0-9_.-]{1,128}", "Kinesis stream name", _AWS_NAME_RULE.format(128)),
            ),
            "partition_key": export.get("partition_key", _template(_KINESIS_PLACEHOLDERS), "{topic}"),
        }
    if kind == "firehose":
        return {
            "delivery_stream": export.require(
                "delivery_stream",
                _matching(
                    r"[A-Za-z0-9_.-]{1,64}", "Firehose delivery stream name", _AWS_NAME_RULE.format(64)
                ),
            ),
            "delimiter": export.get("delimiter", _str, "\n"),
        }
    if kind == "s3":
        compression = export.get("compression", _one_of(_COMPRESSIONS), "gzip")
        default_key = _S3_DEFAULT_KEY + (".gz" if compression == "gzip" else "")
        return {
            "bucket": export.require(
                "bucket", _matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "S3 bucket name", _BUCKET_RULE)
            ),
            "key": export.get("key", _s3_key, default_key),
            "compression": compression,
            "max_object_size": export.get(
                "max_object_size",
                _size(_KiB, _S3_MAX_PUT, why_maximum=" (S3's single PUT limit)"),
                64 * _MiB,
            ),
            "max_object_age": export.get("max_object_age", _duration(positive=True), 300.0),
        }
    return {  # iot_core
        "topic": export.get("topic", _iot_topic, "{topic}"),
        "qos": export.get("qos", _int_between(0, 1), 0),
    }


def _export(value: object, path: str) -> ExportConfig:
    export = _Section(value, path, keys=None)
    kind = export.require("type", _one_of(_EXPORT_TYPES))
    export.refuse_unknown(_EXPORT_KEYS + _EXPORT_TYPE_KEYS[kind])
    batch_limit = _MAX_AWS_BATCH if kind in {"kinesis", "firehose"} else None
    return ExportConfig(
        id=export.require("id", _matching(_NAME.pattern, "export id", _NAME_RULE)),
        type=kind,
        priority=export.get("priority", _int_between(1, 10), 5),
        batch_size=export.get("batch_size", _int_between(1, batch_limit), 500),
        batch_interval=export.get("batch_interval", _duration(positive=False), 1.0),
        max_bandwidth=export.optional("max_bandwidth", _bandwidth),
        start=export.get("start", _start, "oldest"),
        options=_export_options(kind, export),
    )


_PERSISTENCES: Final[tuple[Literal["file", "memory"], ...]] = ("file", "memory")
_STRATEGIES: Final[tuple[Literal["overwrite_oldest", "reject_new"], ...]] = (
    "overwrite_oldest",
    "reject_new",
)
_STREAM_KEYS: Final = (
    "topics",
    "persistence",
    "max_size",
    "strategy_on_full",
    "ttl",
    "flush_on_write",
    "drop_exported",
    "exports",
)


def _stream(name: str, value: object, path: str) -> StreamConfig:
    stream = _Section(value, path, _STREAM_KEYS)
    persistence: Literal["file", "memory"] = stream.get("persistence", _one_of(_PERSISTENCES), "file")
    flush_on_write = stream.get("flush_on_write", _bool, default=False)
    if flush_on_write and persistence == "memory":
        raise ConfigError(
            stream.at("flush_on_write"),
            "needs persistence: file (a memory stream has nothing to fsync)",
        )
    exports: tuple[ExportConfig, ...] = stream.get("exports", _list_of(_export), ())
    seen: set[str] = set()
    for index, export in enumerate(exports):
        if export.id in seen:
            raise ConfigError(f"{stream.at('exports')}[{index}].id", f"duplicate export id {export.id!r}")
        seen.add(export.id)
    return StreamConfig(
        name=name,
        topics=stream.get("topics", _list_of(_topic_filter), ()),
        persistence=persistence,
        max_size=stream.get("max_size", _size(_KiB), 256 * _MiB),
        strategy_on_full=stream.get("strategy_on_full", _one_of(_STRATEGIES), "overwrite_oldest"),
        ttl=stream.optional("ttl", _duration(positive=True)),
        flush_on_write=flush_on_write,
        drop_exported=stream.get("drop_exported", _bool, default=False),
        exports=exports,
    )


def parse_stream_config(name: str, data: object) -> StreamConfig:
    """Validate one stream's settings outside a config file (run-time create/update).

    ``data`` holds the keys of a ``streams.<name>`` section (``None`` means all defaults).
    Raises :class:`ConfigError` naming ``streams.<name>.<key>``, exactly as :func:`parse_config`
    would for the same section in a file, and for a ``name`` that is no valid stream name.
    """
    problem = stream_name_problem(name)
    if problem is not None:
        raise ConfigError(_join("streams", name), problem)
    return _stream(name, data, _join("streams", name))


def _absolute_path(value: object, path: str) -> str:
    mount = _nonempty_str(value, path)
    if not mount.startswith("/"):
        raise ConfigError(path, f"must be an absolute path, got {mount!r}")
    return mount


_PULL_POLICIES: Final[tuple[Literal["always", "missing", "never"], ...]] = (
    "always",
    "missing",
    "never",
)


_DEPLOY_KEYS: Final = (
    "enabled",
    "pull",
    "policy",
    "status_interval",
    "timeout",
    "docker_host",
    "compose_command",
    "max_compose_size",
    "compose_memory_limit",
    "registries",
)
_DEPLOY_POLICY_SWITCHES: Final = (
    "allow_privileged",
    "allow_host_network",
    "allow_external_volumes",
    "allow_external_networks",
    "allow_kernel_tuning",
)
_DOCKER_HOST: Final = re.compile(
    r"unix:///[^\0]+|tcp://[A-Za-z0-9.-]+:[0-9]{1,5}|tcp://\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}"
)
_REGISTRY_SERVER: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?"
)
# Keys people write when they mean to put a password in the config: refused with a pointer to
# Secrets Manager rather than "unknown key".
_PLAIN_SECRET_KEYS: Final = ("username", "password", "auth", "token", "identitytoken", "registrytoken")


def _docker_host(value: object, path: str) -> str:
    text = _str(value, path)
    if not _DOCKER_HOST.fullmatch(text):
        raise _expected(path, "unix:///path/to/docker.sock or tcp://host:port", value)
    return text


def _command(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _expected(path, 'a list such as ["docker", "compose"]', value)
    if not value:
        raise ConfigError(path, 'must name a program, e.g. ["docker", "compose"]')
    return tuple(_nonempty_str(item, f"{path}[{index}]") for index, item in enumerate(value))


def _registry(name: str, value: object, path: str) -> RegistryCredential:
    registry = _Section(value, path, keys=None)
    for key in _PLAIN_SECRET_KEYS:
        if key in registry:
            raise ConfigError(
                registry.at(key),
                "plain-text credentials are not accepted: store "
                '{"username": ..., "password": ...} in AWS Secrets Manager and give its secret_id',
            )
    registry.refuse_unknown(("server", "secret_id"))
    server = registry.require("server", _str)
    if not _REGISTRY_SERVER.fullmatch(server):
        raise ConfigError(
            registry.at("server"),
            f"expected a registry host[:port] such as ghcr.io (no scheme), got {server!r}",
        )
    return RegistryCredential(
        name=name,
        server=server,
        secret_id=registry.require(
            "secret_id",
            _matching(r"[A-Za-z0-9/_+=.@:-]{1,2048}", "Secrets Manager secret id", "a secret name or ARN"),
        ),
    )


def _deploy(top: _Section) -> DeployConfig:
    deploy = top.section("deploy", _DEPLOY_KEYS)
    policy = deploy.section("policy", (*_DEPLOY_POLICY_SWITCHES, "allowed_bind_mounts"))
    return DeployConfig(
        enabled=deploy.get("enabled", _bool, default=True),
        pull=deploy.get("pull", _one_of(_PULL_POLICIES), "missing"),
        policy=DeployPolicy(
            allow_privileged=policy.get("allow_privileged", _bool, default=False),
            allow_host_network=policy.get("allow_host_network", _bool, default=False),
            allow_external_volumes=policy.get("allow_external_volumes", _bool, default=False),
            allow_external_networks=policy.get("allow_external_networks", _bool, default=False),
            allow_kernel_tuning=policy.get("allow_kernel_tuning", _bool, default=False),
            allowed_bind_mounts=policy.get("allowed_bind_mounts", _list_of(_absolute_path), ()),
        ),
        status_interval=deploy.get("status_interval", _duration(positive=True), 30.0),
        timeout=deploy.get("timeout", _duration(positive=True), 600.0),
        docker_host=deploy.optional("docker_host", _docker_host),
        compose_command=deploy.optional("compose_command", _command),
        max_compose_size=deploy.get(
            "max_compose_size",
            _size(_KiB, 16 * _MiB, why_maximum=" (a compose file, not an image)"),
            256 * _KiB,
        ),
        compose_memory_limit=deploy.get(
            "compose_memory_limit",
            _size(64 * _MiB),
            512 * _MiB,
        ),
        registries={
            name: _registry(name, value, path)
            for name, value, path in deploy.named("registries", what="registry", pattern=_NAME)
        },
    )


_TOP_KEYS: Final = ("data_dir", "topic_prefix", "broker", "aws", "streams", "uploads", "deploy")


def parse_config(data: object, *, source: str) -> HeadwaterConfig:
    """Validate a YAML-loaded document and return the frozen config.

    ``source`` names where ``data`` came from (a file path or ``<embedded default>``); it is
    stored in :attr:`HeadwaterConfig.source` and starts the message when the document as a whole
    is unusable. ``data_dir`` and the other relative paths are resolved against the current
    working directory, not the config file's directory. No file is read, except that TLS
    ``certfile``/``keyfile``/``cafile`` must exist. Raises :class:`ConfigError`.
    """
    if data is None:
        raise ConfigError(
            "",
            f"{source}: the config is empty (expected a mapping with keys such as broker, streams)",
        )
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: the config must be a mapping of sections, got {_describe(data)}")
    top = _Section(data, "", _TOP_KEYS)
    broker = _broker(top)
    streams = {
        name: _stream(name, value, path)
        for name, value, path in top.named("streams", what="stream", pattern=STREAM_NAME)
    }
    uploads = top.section("uploads", ("max_bandwidth", "max_backoff", "priority_aging"))
    deploy = _deploy(top)
    if deploy.enabled and deploy.max_compose_size > broker.limits.max_packet_size:
        raise ConfigError(
            "deploy.max_compose_size",
            f"{format_size(deploy.max_compose_size)} does not fit in one MQTT packet of "
            f"broker.limits.max_packet_size ({format_size(broker.limits.max_packet_size)}): "
            "lower one or raise the other",
        )
    return HeadwaterConfig(
        data_dir=top.get("data_dir", _path, Path("headwater-data").absolute()),
        topic_prefix=top.get("topic_prefix", _topic_prefix, "headwater"),
        broker=broker,
        aws=_aws(top),
        streams=streams,
        uploads=UploadsConfig(
            max_bandwidth=uploads.optional("max_bandwidth", _bandwidth),
            max_backoff=uploads.get("max_backoff", _duration(positive=True), 300.0),
            priority_aging=uploads.get("priority_aging", _duration(positive=True), 10.0),
        ),
        deploy=deploy,
        source=source,
    )
