"""Durable streams. :mod:`headwater.plugins.streams.store` owns the RocksDB database."""

from headwater.plugins.streams.store import Database, RetainedMessage, StorageError

__all__ = ["Database", "RetainedMessage", "StorageError"]
