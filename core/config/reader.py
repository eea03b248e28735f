"""The section reader: a YAML mapping that knows its key path, and the converters every section shares.

Owns: :class:`_Section` (refuses unknown keys, names each key's dotted path, tells an absent key
from a null one), the :data:`Converter` shape, the generic converters (booleans, strings,
integers in a range, choices, sizes, durations, bandwidths, paths, URLs, lists, MQTT topic
filters) and the rule for user-chosen names. A converter returns a typed value or raises
``ConfigError`` naming the path. It must never know a section's keys or defaults: those belong
to the section modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Final, TypeAlias, TypeVar
from urllib.parse import urlsplit

from headwater.core.config.errors import ConfigError, _describe
from headwater.core.config.units import format_size, parse_bandwidth, parse_duration, parse_size
from headwater.core.topics import InvalidTopicError, validate_topic_filter

T = TypeVar("T")
S = TypeVar("S", bound=str)
# A converter turns one YAML value into a typed value or raises ConfigError naming the path.
Converter: TypeAlias = Callable[[object, str], T]


_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NAME_RULE: Final = "1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"


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
    # Relative to the working directory, by contract (see the package docstring).
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
