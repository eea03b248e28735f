"""Durable streams: MQTT topics into sequence-numbered RocksDB (or in-memory) streams.

:mod:`~headwater.plugins.streams.plugin` runs the streams (:class:`StreamsPlugin`; its parts are
listed in its module docstring), :mod:`~headwater.plugins.streams.api` answers the MQTT stream
API (requests parsed by :mod:`~headwater.plugins.streams.requests`, access decided by
:mod:`~headwater.plugins.streams.permissions`), :mod:`~headwater.plugins.streams.memory` holds
``persistence: memory`` streams. The RocksDB store is :mod:`headwater.core.store`, the
interfaces other plugins use are in :mod:`headwater.core.streams`, the wire shapes in
:mod:`headwater.wire.streams`.
"""

from headwater.plugins.streams.memory import MemoryStream
from headwater.plugins.streams.plugin import StreamsPlugin, StreamsStatistics

__all__ = [
    "MemoryStream",
    "StreamsPlugin",
    "StreamsStatistics",
]
