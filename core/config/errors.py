"""The config package's one exception, and how a YAML value is shown in its messages.

Owns: :class:`ConfigError` (its one-line contract is in the package docstring) and
:func:`_describe`, which every message quoting a user's value goes through, so that a value reads
the same in every message. It must never import another module of this package: the units and
the validators import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final


class ConfigError(ValueError):
    """A config problem; ``str(exc)`` is one line: ``key.path: reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


_MAX_SHOWN: Final = 60


def _describe(value: object) -> str:
    """Show a YAML value in an error message, the way the user wrote it where possible."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        shown = repr(value)
        return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 4] + "...'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"
