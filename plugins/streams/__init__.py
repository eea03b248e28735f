"""Durable streams: MQTT topics into sequence-numbered RocksDB (or in-memory) streams.

:mod:`~headwater.plugins.streams.store` owns the RocksDB database, :mod:`~headwater.plugins.streams.plugin`
the running streams (:class:`StreamsPlugin`), :mod:`~headwater.plugins.streams.service` the types
they share with the stream API.
"""

from headwater.plugins.streams.memory import MemoryStream
from headwater.plugins.streams.plugin import StreamsPlugin, StreamsStatistics
from headwater.plugins.streams.store import Database, RetainedMessage, StorageError

__all__ = [
    "Database",
    "MemoryStream",
    "RetainedMessage",
    "StorageError",
    "StreamsPlugin",
    "StreamsStatistics",
]
