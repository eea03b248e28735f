"""Reading fields out of decoded JSON objects, with errors that name the field (stdlib only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["WireFormatError", "describe_value", "optional_int", "optional_str", "require", "require_object"]


class WireFormatError(ValueError):
    """A message that does not have the shape the wire protocol declares; ``str()`` says where."""


def describe_value(value: object) -> str:
    """A short, JSON-like description of ``value`` for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        shown = repr(value) if isinstance(value, str) else str(value)
        return shown if len(shown) <= 60 else shown[:56] + "...'"  # noqa: PLR2004 - message width
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def require_object(value: object, what: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else :class:`WireFormatError` naming ``what``."""
    if not isinstance(value, dict):
        msg = f"{what}: expected a JSON object, got {describe_value(value)}"
        raise WireFormatError(msg)
    return value


def require(data: Mapping[str, Any], key: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    """``data[key]`` if it is a ``kind`` (a JSON boolean is no integer), else :class:`WireFormatError`."""
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        msg = f"field {key!r}: unexpected {describe_value(value)}"
        raise WireFormatError(msg)
    return value


def optional_int(data: Mapping[str, Any], key: str) -> int | None:
    """``data[key]`` as an integer, None when absent or null; :class:`WireFormatError` otherwise."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"field {key!r}: expected an integer or null, got {describe_value(value)}"
        raise WireFormatError(msg)
    return value


def optional_str(value: object) -> str | None:
    """``value`` if it is a string, else None (tolerant fields)."""
    return value if isinstance(value, str) else None
