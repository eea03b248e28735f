"""How the client commands print: JSON lines, aligned tables, sizes, timestamps and payloads.

Owns the formatting shared by ``headwater streams`` and ``headwater deploy``. Text output is for
people and may change; ``--json`` prints one JSON object per line with the exact values. Pure
string building except :func:`print_json`; nothing here talks to the broker.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["human_size", "print_json", "printable", "table", "timestamp"]


def print_json(value: object) -> None:
    """Print ``value`` as one line of JSON and flush (a reader may be following the output)."""
    print(json.dumps(value, ensure_ascii=False), flush=True)


def human_size(size: int) -> str:
    """``216B``, ``1.5KiB``, ``256.0MiB``: for people; ``--json`` has the exact byte count."""
    if size < 1024:  # noqa: PLR2004 - one KiB
        return f"{size}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":  # noqa: PLR2004
            break
    return f"{value:.1f}{unit}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a table: ``header`` then ``rows``, columns two spaces apart, no trailing blanks."""
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def timestamp(milliseconds: int) -> str:
    """Milliseconds since the epoch as UTC ISO 8601: ``2024-05-01T10:15:00.123Z``."""
    moment = datetime.fromtimestamp(milliseconds / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds % 1000:03d}Z"


def printable(payload: bytes) -> str:
    """A payload on one line: text with control characters escaped, else ``base64:...``."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
