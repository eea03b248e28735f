"""The contract between the export driver and the export types (Kinesis, Firehose, S3, IoT Core).

Every export type has the same shape:

* **config**: :class:`~headwater.core.config.ExportConfig`, validated at load (``options``
  holds the type's own keys, every default filled in);
* **request builder**: pure functions/classes in the type's module that turn records into AWS
  requests within the service's limits and say which record can never be accepted (too large);
  no I/O, tested without boto3;
* **service**: the only code of the type that calls boto3; it runs the blocking boto3 call in a
  worker thread and translates botocore's errors into the :class:`ExportError` tree below;
* **driver**: :mod:`headwater.plugins.upload.driver`, the same for every type: reads the stream
  from the checkpoint, batches within :attr:`ExportSink.limits`, asks the scheduler for
  bandwidth, calls :meth:`ExportSink.send`, retries, dead-letters, checkpoints.

A type module exposes a class implementing :class:`ExportSink`, built by
:func:`headwater.plugins.upload.factory.build_sink` from the export's config, the stream's name and
an :class:`AwsSession`.

What "delivered" means: :meth:`ExportSink.send` returns normally only when AWS accepted every
record it does not list in :attr:`SendOutcome.failed` or :attr:`SendOutcome.rejected`. The driver
checkpoints through the longest prefix of the batch whose records were accepted or rejected for
good (and dead-lettered), then sends again only the records that failed.

Exception tree (whole-call failures; the driver maps them to export states)::

    ExportError                  base; ``str()`` is AWS's message, fit for a status topic
    ├── ExportThrottledError     throttling / SlowDown / ProvisionedThroughputExceeded → backoff
    ├── ExportOfflineError       no connection to the endpoint (DNS, refused, timeout) → offline
    ├── ExportBlockedError       no credentials, AccessDenied, the target does not exist → blocked
    └── ExportRetryableError     anything else (5xx, a malformed answer) → backoff
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from headwater.wire.streams import StreamRecord

__all__ = [
    "AwsSession",
    "BatchLimits",
    "ExportBlockedError",
    "ExportError",
    "ExportOfflineError",
    "ExportRetryableError",
    "ExportSink",
    "ExportThrottledError",
    "SendOutcome",
]


class ExportError(Exception):
    """A call to AWS failed as a whole; ``str()`` says why (AWS's own message when it gave one)."""


class ExportThrottledError(ExportError):
    """AWS asked us to slow down (throttling, SlowDown, ProvisionedThroughputExceeded)."""


class ExportOfflineError(ExportError):
    """The endpoint could not be reached (no network, DNS failure, connection refused, timeout)."""


class ExportBlockedError(ExportError):
    """Retrying soon will not help: no credentials, access denied, the target does not exist."""


class ExportRetryableError(ExportError):
    """Any other failure (a 5xx, an unexpected answer): retry with backoff."""


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How the driver batches records for one :meth:`ExportSink.send` call.

    A batch is sent as soon as it holds ``max_records`` records or ``max_bytes`` of
    :meth:`ExportSink.record_size`, or when its oldest record is ``max_wait`` seconds old
    (record timestamps, so a backlog goes out at once; ``0`` = as soon as records exist).
    """

    max_records: int
    max_bytes: int
    max_wait: float


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What AWS did with a batch that was sent; records not listed here were accepted.

    ``failed``: sequence → error, for records AWS did not take this time but may take later
    (partial failures of PutRecords / PutRecordBatch: throttling, internal errors). ``rejected``:
    sequence → reason, for records AWS will never take (they go to the dead-letter stream).
    """

    failed: Mapping[int, str] = field(default_factory=dict)
    rejected: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AwsSession:
    """Where and how to reach AWS: the config's ``aws`` section, resolved per service.

    ``endpoint_url(service)`` is ``aws.endpoints[service]``, else ``aws.endpoint_url``, else
    ``None`` (AWS itself). Credentials come from boto3's default chain (environment, shared
    config, container and instance metadata), never from Headwater's config.
    """

    region: str
    endpoint_url_default: str | None = None
    endpoints: Mapping[str, str] = field(default_factory=dict)

    def endpoint_url(self, service: str) -> str | None:
        """The endpoint for ``service`` (boto3's service name: ``kinesis``, ``iot-data``, ...)."""
        return self.endpoints.get(service, self.endpoint_url_default)


class ExportSink(Protocol):
    """One export's connection to its AWS target (a type's request builder + service)."""

    @property
    def limits(self) -> BatchLimits:
        """How to batch records for :meth:`send` (the export's config within the service limits)."""
        ...

    def record_size(self, record: StreamRecord) -> int:
        """Bytes ``record`` adds to a request (what the bandwidth budget and ``max_bytes`` count)."""
        ...

    def problem(self, record: StreamRecord) -> str | None:
        """Why AWS will never accept ``record`` (e.g. too large), or ``None``. Pure, no I/O."""
        ...

    async def send(self, records: Sequence[StreamRecord]) -> SendOutcome:
        """Deliver ``records`` (in stream order, none with a :meth:`problem`) in one or more calls.

        Returns which records failed or were rejected; raises an :class:`ExportError` when the
        call failed as a whole (nothing delivered, or nothing known to be). Never raises
        botocore's exceptions.
        """
        ...

    async def aclose(self) -> None:
        """Release the boto3 client (idempotent)."""
        ...
