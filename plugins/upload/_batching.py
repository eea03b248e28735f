"""Helpers the export types share: split a batch into requests, send the requests in order.

:func:`split_within` keeps each request within a service's limits. The driver already batches
within :attr:`ExportSink.limits`; a type still splits what it is given, so that a batch larger
than one request (a driver change, a test) goes out as several requests in order rather than
being refused by AWS. :func:`split_within` is pure; :func:`send_in_order` only awaits the
type's own send function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

from headwater.plugins.upload.sink import ExportError, SendOutcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

__all__ = ["KiB", "MiB", "SequencedRequest", "not_sent", "send_in_order", "split_within"]

KiB = 1024
MiB = 1024 * KiB


def split_within(sizes: Sequence[int], *, max_records: int, max_bytes: int) -> list[range]:
    """Split items of ``sizes`` into consecutive index ranges of ≤ ``max_records`` and ≤ ``max_bytes``.

    Greedy, in order; every range holds at least one item, so an item larger than ``max_bytes``
    (which the caller should have refused) gets a range of its own.
    """
    if max_records < 1:
        msg = f"max_records must be at least 1, got {max_records}"
        raise ValueError(msg)
    ranges: list[range] = []
    start = 0
    total = 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_records or total + size > max_bytes):
            ranges.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


def not_sent(sequences: Iterable[int], reason: str) -> dict[int, str]:
    """``failed`` entries for records a send did not get to (an earlier request failed)."""
    return dict.fromkeys(sequences, f"not sent: {reason}")


class SequencedRequest(Protocol):
    """A request carrying some records of a batch (their sequences, in order)."""

    @property
    def sequences(self) -> tuple[int, ...]: ...


RequestT = TypeVar("RequestT", bound=SequencedRequest)


async def send_in_order(
    requests: Sequence[RequestT], send: Callable[[RequestT], Awaitable[Mapping[int, str]]]
) -> SendOutcome:
    """Send ``requests`` one after the other; ``send`` returns the failed records of one request.

    When the first request fails as a whole its :class:`ExportError` propagates (nothing was
    delivered). When a later one does, the batch's earlier requests stay delivered: its records
    and every later request's are returned as ``failed``, so the driver checkpoints the delivered
    prefix and resends the rest.
    """
    failed: dict[int, str] = {}
    for index, request in enumerate(requests):
        try:
            failed.update(await send(request))
        except ExportError as exc:
            if index == 0:
                raise
            for unsent in requests[index:]:
                failed.update(not_sent(unsent.sequences, str(exc)))
            break
    return SendOutcome(failed=failed)
