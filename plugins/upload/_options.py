"""Typed access to an export's ``options`` (validated and defaulted by the config loader).

``ExportConfig.options`` is a ``Mapping[str, object]``; these read one key with the type
:class:`~headwater.core.config.ExportConfig` documents for it, and fail loudly (a bug, not a
user error: the loader already checked the value) when it has another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headwater.core.config import ExportConfig

__all__ = ["float_option", "int_option", "str_option"]


def _wrong(export: ExportConfig, key: str, expected: str) -> TypeError:
    value = export.options.get(key)
    return TypeError(f"export {export.id!r}: option {key!r} should be {expected}, got {value!r}")


def str_option(export: ExportConfig, key: str) -> str:
    """``export.options[key]`` as a string."""
    value = export.options.get(key)
    if not isinstance(value, str):
        raise _wrong(export, key, "a string")
    return value


def int_option(export: ExportConfig, key: str) -> int:
    """``export.options[key]`` as an integer."""
    value = export.options.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(export, key, "an integer")
    return value


def float_option(export: ExportConfig, key: str) -> float:
    """``export.options[key]`` as a number of seconds, bytes... (an int is fine)."""
    value = export.options.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(export, key, "a number")
    return float(value)
