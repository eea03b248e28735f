"""Headwater's Python client library (paho-mqtt based), used by devices, operators and the CLI.

A device installs it alone, without the hub: from a checkout of the repository,
``pip install ./clients`` installs the ``headwater-client`` distribution (this package and
:mod:`headwater.wire`, the wire protocol it shares with Headwater; its only dependency is
paho-mqtt). ``import headwater.clients`` never loads the broker, the plugins, amqtt,
rocksdict or PyYAML.

- :mod:`~headwater.clients.connection`: where the broker is (``mqtt[s]://`` URLs, ``HEADWATER_URL``).
- :mod:`~headwater.clients.streams`: :class:`StreamClient`, the stream API (list, describe, read,
  follow, append, create, update, delete) with typed results and exceptions.
- :mod:`~headwater.clients.deploy`: :class:`DeployClient`, deployments (deploy, update, remove,
  statuses, following an operation to its end).
"""

from headwater.clients.connection import (
    DEFAULT_URL,
    ENV_URL,
    ConnectionSettings,
    InvalidURLError,
    resolve_url,
)
from headwater.clients.deploy import (
    DeployClient,
    DeployClientError,
    DeployConnectionError,
    DeployForbiddenError,
    DeployTimeoutError,
    InvalidDeployRequestError,
    StatusUpdate,
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
from headwater.wire.deploy import DeploymentStatus, S3Reference, ServiceStatus
from headwater.wire.streams import ExportInfo, StorageInfo, StreamDescription, StreamRecord

__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "ConnectionFailedError",
    "ConnectionSettings",
    "DeployClient",
    "DeployClientError",
    "DeployConnectionError",
    "DeployForbiddenError",
    "DeployTimeoutError",
    "DeploymentStatus",
    "ExportInfo",
    "ForbiddenError",
    "InvalidDeployRequestError",
    "InvalidStreamRequestError",
    "InvalidURLError",
    "MalformedResponseError",
    "RequestTimeoutError",
    "S3Reference",
    "ServiceStatus",
    "StatusUpdate",
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
