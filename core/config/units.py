"""Sizes, durations and bandwidths as the config writes them: ``256MiB``, ``30s``, ``2Mbit/s``.

Owns: the unit tables, :func:`parse_size`, :func:`format_size`, :func:`parse_duration`,
:func:`parse_bandwidth`, and the binary units (``_KiB``...) the validators write their limits in.
The parsers know no key path: they raise plain :class:`ValueError`, which the reader's
converters turn into a ``ConfigError``. It must never know a config key nor read anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Final

from headwater.core.config.errors import _describe

_KiB: Final = 1024
_MiB: Final = 1024**2
_GiB: Final = 1024**3
_SIZE_UNITS: Final[Mapping[str, int]] = {
    "B": 1,
    "KiB": _KiB,
    "MiB": _MiB,
    "GiB": _GiB,
    "KB": 1000,
    "kB": 1000,  # the SI spelling, accepted but not advertised
    "MB": 1000**2,
    "GB": 1000**3,
}
_SIZE_UNITS_SHOWN: Final = "B, KiB, MiB, GiB, KB, MB, GB"

_DURATION_UNITS: Final[Mapping[str, float]] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

# Bits are 1000-based and divided by 8; bytes follow the size units.
_BANDWIDTH_UNITS: Final[Mapping[str, float]] = {
    "bit": 1 / 8,
    "kbit": 1000 / 8,
    "Kbit": 1000 / 8,
    "Mbit": 1000**2 / 8,
    "Gbit": 1000**3 / 8,
    **{unit: float(factor) for unit, factor in _SIZE_UNITS.items()},
}
_BANDWIDTH_UNITS_SHOWN: Final = "bit, kbit, Mbit, Gbit, B, KiB, MiB, GiB, KB, MB, GB, each with /s"

# A number and a unit, e.g. "256MiB", "1.5 s", "-3d". The sign is matched only to give
# "must not be negative" instead of "not a size".
_QUANTITY: Final = re.compile(
    r"\s*(?P<number>[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*(?P<unit>[A-Za-z/]*)\s*"
)


def parse_size(text: str | int) -> int:
    """Return a size in bytes: ``"256MiB"``, ``"64KB"``, ``"1.5GiB"``, ``"512"`` or ``512``.

    Units: ``B``, ``KiB``, ``MiB``, ``GiB`` (1024-based) and ``KB``, ``MB``, ``GB``
    (1000-based); a bare number is bytes. Raises :class:`ValueError` with a one-line reason.
    """
    if isinstance(text, bool) or not isinstance(text, str | int):
        msg = f"expected a size such as 256MiB, got {_describe(text)}"
        raise ValueError(msg)  # noqa: TRY004 -- config errors are ValueErrors by contract
    if isinstance(text, int):
        if text < 0:
            msg = f"must not be negative, got {text}"
            raise ValueError(msg)
        return text
    match = _QUANTITY.fullmatch(text)
    if match is None:
        msg = f"expected a size such as 256MiB, got {text!r}"
        raise ValueError(msg)
    unit = match["unit"] or "B"
    if unit not in _SIZE_UNITS:
        msg = f"unknown size unit {unit!r} in {text!r} (expected {_SIZE_UNITS_SHOWN})"
        raise ValueError(msg)
    try:
        size = Decimal(match["number"]) * _SIZE_UNITS[unit]
    except InvalidOperation as exc:  # pragma: no cover -- the regex only lets numbers through
        msg = f"expected a size such as 256MiB, got {text!r}"
        raise ValueError(msg) from exc
    if size < 0:
        msg = f"must not be negative, got {text!r}"
        raise ValueError(msg)
    if size != size.to_integral_value():
        msg = f"must be a whole number of bytes, got {text!r}"
        raise ValueError(msg)
    return int(size)


def format_size(size: int) -> str:
    """Spell a byte count with the largest binary unit that divides it: ``268435456`` -> ``256MiB``.

    ``parse_size(format_size(n)) == n`` for every ``n >= 0``.
    """
    for unit, factor in (("GiB", _GiB), ("MiB", _MiB), ("KiB", _KiB)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_duration(text: str | float) -> float:
    """Return a duration in seconds: ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``, ``10``.

    A bare number (or a numeric string) is seconds. Negative, infinite and NaN durations are
    refused with :class:`ValueError`.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        msg = f"expected a duration such as 30s, got {_describe(text)}"
        raise ValueError(msg)  # noqa: TRY004 -- config errors are ValueErrors by contract
    if isinstance(text, str):
        match = _QUANTITY.fullmatch(text)
        if match is None:
            msg = f"expected a duration such as 30s, got {text!r}"
            raise ValueError(msg)
        unit = match["unit"] or "s"
        if unit not in _DURATION_UNITS:
            msg = f"unknown duration unit {unit!r} in {text!r} (expected ms, s, m, h, d)"
            raise ValueError(msg)
        seconds = float(match["number"]) * _DURATION_UNITS[unit]
    else:
        seconds = float(text)
    if not math.isfinite(seconds):
        msg = f"must be a finite duration, got {text!r}"
        raise ValueError(msg)
    if seconds < 0:
        msg = f"must not be negative, got {text!r}"
        raise ValueError(msg)
    return seconds


def parse_bandwidth(text: str) -> float:
    """Return a bandwidth in bytes per second: ``"2Mbit/s"``, ``"500kbit/s"``, ``"100KiB/s"``.

    Bit units (``bit``, ``kbit``, ``Mbit``, ``Gbit``) are 1000-based and divided by 8; byte
    units are those of :func:`parse_size`. The ``/s`` is required. Zero is refused: a budget of
    nothing would stall every export forever.
    """
    raw: object = text  # callers outside mypy's reach (the CLI) may pass anything
    match = _QUANTITY.fullmatch(raw) if isinstance(raw, str) else None
    if match is None or not match["unit"].endswith("/s"):
        msg = f"expected a bandwidth such as 2Mbit/s, got {_describe(text)}"
        raise ValueError(msg)
    unit = match["unit"].removesuffix("/s")
    if unit not in _BANDWIDTH_UNITS:
        expected = _BANDWIDTH_UNITS_SHOWN
        msg = f"unknown bandwidth unit {unit + '/s'!r} in {text!r} (expected {expected})"
        raise ValueError(msg)
    rate = float(match["number"]) * _BANDWIDTH_UNITS[unit]
    if rate <= 0:
        msg = f"must be greater than zero, got {text!r}"
        raise ValueError(msg)
    return rate
