"""Headwater's plugins: ``streams`` (topics into durable RocksDB streams), ``upload`` and ``deploy``."""

__all__: list[str] = []
