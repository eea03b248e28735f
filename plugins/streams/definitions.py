"""Run-time stream definitions: how they are stored, and which changes are allowed.

``create`` / ``update`` / ``delete`` at run time are persisted as JSON definitions (the config
file's stream section, sizes in bytes, durations in seconds) with
``Database.put_stream_definition``, validated by the same rules as the config file. On start
the plugin serves the config file's streams plus the stored run-time definitions, and:

* **the config file wins for every name it defines.** A stored run-time definition of a name
  that the config file now also defines is deleted (a warning names it); the records stay and
  the config's settings apply to them.
* Config-defined streams can't be updated or deleted at run time (the request is refused with
  :class:`~headwater.core.streams.InvalidStreamRequestError` naming the config
  file): the file is the single source of their settings.
* Run-time streams persist until deleted at run time. ``create`` of a name the config defines
  raises :class:`~headwater.core.streams.StreamExistsError`.
* ``persistence`` can't change by ``update`` (delete and create instead).
* A file stream whose definition disappeared (removed from the config file) keeps its records
  on disk, unserved; a later stream of that name, from either source, adopts them.

Owns the definition format (:func:`encode_definition`, :func:`decode_definition`) and the
checks of a run-time change (:func:`check_update`, :func:`check_delete`). Pure: no I/O, the
plugin stores and serves.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from headwater.core.config import ConfigError, StreamConfig, parse_config
from headwater.core.streams import InvalidStreamRequestError

if TYPE_CHECKING:
    from headwater.plugins.streams.served import ServedStream

__all__ = ["check_delete", "check_update", "decode_definition", "encode_definition"]

_DEFINITION_VERSION: Final = 1


def encode_definition(config: StreamConfig) -> bytes:
    """``config`` as the stored JSON definition (the config file's keys, sizes in bytes)."""
    exports: list[dict[str, object]] = []
    for export in config.exports:
        entry: dict[str, object] = {
            "id": export.id,
            "type": export.type,
            "priority": export.priority,
            "batch_size": export.batch_size,
            "batch_interval": export.batch_interval,
            "start": export.start,
        }
        if export.max_bandwidth is not None:
            # Bandwidths are only read from strings; an exact decimal keeps every digit.
            entry["max_bandwidth"] = f"{Decimal(export.max_bandwidth):f}B/s"
        entry.update(export.options)
        exports.append(entry)
    section: dict[str, object] = {
        "topics": list(config.topics),
        "persistence": config.persistence,
        "max_size": config.max_size,
        "strategy_on_full": config.strategy_on_full,
        "ttl": config.ttl,
        "flush_on_write": config.flush_on_write,
        "drop_exported": config.drop_exported,
        "exports": exports,
    }
    return json.dumps({"version": _DEFINITION_VERSION, "stream": section}, sort_keys=True).encode()


def decode_definition(name: str, data: bytes) -> StreamConfig:
    """A stored definition back as a validated :class:`StreamConfig` (the config file's rules).

    Raises :class:`InvalidStreamRequestError` with the config validator's one-line reason.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidStreamRequestError(f"stream {name!r}: the definition is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != _DEFINITION_VERSION:
        raise InvalidStreamRequestError(f"stream {name!r}: unknown definition format")
    try:
        config = parse_config({"streams": {name: document.get("stream")}}, source=f"stream {name!r}")
    except ConfigError as exc:
        raise InvalidStreamRequestError(str(exc)) from exc
    return config.streams[name]


def check_update(stream: ServedStream, config: StreamConfig, *, config_file: str) -> None:
    """Raise :class:`InvalidStreamRequestError` unless ``stream`` may take ``config`` at run time."""
    if stream.origin == "config":
        raise InvalidStreamRequestError(_config_owned(config.name, "updated", config_file))
    if config.persistence != stream.config.persistence:
        raise InvalidStreamRequestError(
            f"stream {config.name!r}: persistence can't change from {stream.config.persistence} "
            f"to {config.persistence} (delete the stream and create it again)"
        )


def check_delete(stream: ServedStream, *, config_file: str) -> None:
    """Raise :class:`InvalidStreamRequestError` unless ``stream`` may be deleted at run time."""
    if stream.origin == "config":
        raise InvalidStreamRequestError(_config_owned(stream.name, "deleted", config_file))


def _config_owned(name: str, what: str, config_file: str) -> str:
    return (
        f"stream {name!r} is defined in the config file ({config_file}) and can't be "
        f"{what} at run time: change it there and restart"
    )
