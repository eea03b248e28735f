"""Headwater's Python client library (paho-mqtt based), used by devices, operators and the CLI.

- :mod:`~headwater.clients.connection`: where the broker is (``mqtt[s]://`` URLs, ``HEADWATER_URL``).
- :mod:`~headwater.clients.streams`: :class:`StreamClient`, the stream API (list, describe, read,
  follow, append, create, update, delete) with typed results and exceptions.
"""

from headwater.clients.connection import (
    DEFAULT_URL,
    ENV_URL,
    ConnectionSettings,
    InvalidURLError,
    resolve_url,
)
from headwater.clients.streams import (
    ConnectionFailedError,
    ForbiddenError,
    InvalidStreamRequestError,
    MalformedResponseError,
    RequestTimeoutError,
    StreamApiError,
    StreamClient,
    StreamClientError,
    StreamExistsError,
    StreamNotFoundError,
    StreamRejectedError,
)
from headwater.plugins.streams.service import ExportInfo, StorageInfo, StreamDescription, StreamRecord

__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "ConnectionFailedError",
    "ConnectionSettings",
    "ExportInfo",
    "ForbiddenError",
    "InvalidStreamRequestError",
    "InvalidURLError",
    "MalformedResponseError",
    "RequestTimeoutError",
    "StorageInfo",
    "StreamApiError",
    "StreamClient",
    "StreamClientError",
    "StreamDescription",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamRecord",
    "StreamRejectedError",
    "resolve_url",
]
