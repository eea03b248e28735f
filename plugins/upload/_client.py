"""The boto3 client of one export sink: the only place where export types touch boto3's I/O.

Owns one boto3 client per sink, created on first use in a worker thread (a new session loading
botocore's service model takes tens of milliseconds; the event loop must not wait for it), and every
call on it, each in a worker thread (:func:`asyncio.to_thread`), with botocore's exceptions
translated at this boundary (:func:`headwater.plugins.upload._errors.export_error`).

Clients are configured for a driver that owns retries: botocore makes **one attempt** per call
(``total_max_attempts: 1``; its own retries would hide throttling and outages from the driver's
backoff and state), connects within :data:`CONNECT_TIMEOUT` and waits :data:`READ_TIMEOUT` for
an answer. Credentials come from boto3's default chain, through a boto3 ``Session`` of the
sink's own (boto3's default session is not thread-safe).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import boto3
from botocore.config import Config

from headwater.plugins.upload._errors import AWS_ERRORS, export_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from headwater.plugins.upload.sink import BatchLimits
    from headwater.wire.streams import StreamRecord

__all__ = [
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "AwsClient",
    "BuilderSink",
    "RecordRules",
    "client_config",
    "new_session",
]

CONNECT_TIMEOUT: Final = 5.0  # seconds
READ_TIMEOUT: Final = 30.0  # seconds


class _Closable(Protocol):
    def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Closable)
ResultT = TypeVar("ResultT")


def client_config() -> Config:
    """The botocore config of every export client: short timeouts, one attempt, no retries."""
    return Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        # total_max_attempts counts the first attempt; botocore's max_attempts counts retries
        # (max_attempts=1 would still retry once).
        retries={"total_max_attempts": 1, "mode": "standard"},
        user_agent_extra="headwater",
        tcp_keepalive=True,
    )


def new_session() -> boto3.session.Session:
    """A boto3 session of its own (credentials from boto3's default chain)."""
    return boto3.session.Session()


class AwsClient(Generic[ClientT]):
    """A lazily created boto3 client whose calls run in worker threads and raise ExportErrors.

    ``create`` builds the client (called once, in a worker thread, on the first :meth:`call`).
    """

    def __init__(self, create: Callable[[], ClientT]) -> None:
        self._create = create
        self._client: ClientT | None = None
        self._lock = threading.Lock()
        self._closed = False

    async def call(self, operation: Callable[[ClientT], ResultT]) -> ResultT:
        """Run ``operation(client)`` in a worker thread; botocore errors become ExportErrors."""
        if self._closed:
            msg = "the export's AWS client is closed"
            raise RuntimeError(msg)
        try:
            return await asyncio.to_thread(self._run, operation)
        except AWS_ERRORS as exc:
            raise export_error(exc) from exc

    def _run(self, operation: Callable[[ClientT], ResultT]) -> ResultT:
        with self._lock:
            if self._closed:
                msg = "the export's AWS client is closed"
                raise RuntimeError(msg)
            if self._client is None:
                self._client = self._create()
            client = self._client
        return operation(client)

    async def aclose(self) -> None:
        """Close the client's connection pool (idempotent; later calls raise RuntimeError)."""
        self._closed = True
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        # Under the lock: a client being created right now is closed too, not leaked.
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class RecordRules(Protocol):
    """What a type's request builder says about single records (pure)."""

    def record_size(self, record: StreamRecord) -> int:
        """Bytes the record adds to a request."""
        ...

    def problem(self, record: StreamRecord) -> str | None:
        """Why AWS will never accept the record, or ``None``."""
        ...


class BuilderSink(Generic[ClientT]):
    """The part every export sink shares: its limits, the builder's record rules, one client.

    A type's sink subclasses it and adds ``send`` (its request builder + its calls).
    """

    def __init__(self, *, rules: RecordRules, limits: BatchLimits, client: AwsClient[ClientT]) -> None:
        self._rules = rules
        self._limits = limits
        self._client = client

    @property
    def limits(self) -> BatchLimits:
        """How the driver batches records for this export (see ``BatchLimits``)."""
        return self._limits

    def record_size(self, record: StreamRecord) -> int:
        """Bytes ``record`` adds to a request (what AWS counts toward its limits)."""
        return self._rules.record_size(record)

    def problem(self, record: StreamRecord) -> str | None:
        """Why AWS will never accept ``record`` (the builder's rule), or ``None``."""
        return self._rules.problem(record)

    async def aclose(self) -> None:
        """Close the boto3 client (idempotent)."""
        await self._client.aclose()
