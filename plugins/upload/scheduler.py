"""Who may send next: export priorities, bandwidth budgets and aging.

Owns the one rule for priority's direction — :data:`HIGHEST_PRIORITY` is 1, :data:`LOWEST_PRIORITY`
is 10, a smaller number goes first — and the token buckets of ``uploads.max_bandwidth`` (shared
by every export) and of each export's own ``max_bandwidth``.

How a turn is chosen
--------------------

Every export has at most one request in flight (its driver asks for a turn, sends, then asks
again), so the scheduler sees at most one waiting request per export. A request costs its size
in bytes. Budgets are token buckets that may go into debt: a request is granted as soon as its
buckets hold tokens (are not in debt), whatever its size, and its cost is then taken — so a
request larger than a second's budget still goes out, and the next one waits until the debt is
paid back. A bucket holds at most one second of its rate (the burst).

When the shared budget allows a grant, the waiting request with the best *effective priority*
goes: its priority minus one level per :attr:`UploadScheduler.aging` seconds it has waited (ties:
the longest waiting first). Highest priority first, and nobody starves: with the default 10 s, a
priority-10 request outranks a fresh priority-1 request after 90 s of waiting. A request whose
own export budget is in debt is passed over (it does not block the others). Without any
bandwidth limit every request is granted at once: priorities matter only when bandwidth is
scarce (an outage ends with every export ready to send at once — then the shared budget decides).

:class:`BandwidthPlan` is the pure part (no clock, no loop: ``now`` is passed in);
:class:`UploadScheduler` is the asyncio shell that parks drivers on futures and wakes them with
one timer (no task).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_AGING",
    "HIGHEST_PRIORITY",
    "LOWEST_PRIORITY",
    "BandwidthPlan",
    "SchedulerStatistics",
    "TokenBucket",
    "UploadScheduler",
]

#: The highest priority: a smaller number goes first.
HIGHEST_PRIORITY: Final = 1
#: The lowest priority.
LOWEST_PRIORITY: Final = 10
#: Seconds of waiting that raise a request by one priority level.
DEFAULT_AGING: Final = 10.0


# A bucket must hold more than nothing to grant (a fraction of a byte: float rounding).
_EPSILON: Final = 1e-6


class TokenBucket:
    """A rate in bytes per second that may go into debt (see the module docstring)."""

    def __init__(self, rate: float, now: float) -> None:
        if rate <= 0:
            msg = f"rate must be positive, got {rate}"
            raise ValueError(msg)
        self.rate = rate
        self.burst = rate  # one second's worth
        self._tokens = self.burst
        self._updated = now

    def tokens(self, now: float) -> float:
        """Tokens at ``now`` (negative: in debt)."""
        return min(self.burst, self._tokens + (now - self._updated) * self.rate)

    def ready(self, now: float) -> bool:
        """Whether a request may go now (the bucket holds tokens: it is not in debt)."""
        return self.tokens(now) > 0

    def take(self, size: int, now: float) -> None:
        """Spend ``size`` bytes (may leave the bucket in debt)."""
        self._tokens = self.tokens(now) - size
        self._updated = now

    def ready_in(self, now: float) -> float:
        """Seconds until :meth:`ready` (0 if it is)."""
        tokens = self.tokens(now)
        return 0.0 if tokens > 0 else (_EPSILON - tokens) / self.rate


@dataclass(eq=False, slots=True)
class _Request:
    export: str
    priority: int
    size: int
    since: float
    order: int


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """Counters of an :class:`UploadScheduler`."""

    granted: int
    granted_bytes: int
    waiting: int


@dataclass(slots=True)
class BandwidthPlan:
    """The pure scheduling state: budgets and waiting requests; the caller supplies ``now``."""

    shared_rate: float | None
    aging: float = DEFAULT_AGING
    now: float = 0.0
    _shared: TokenBucket | None = None
    _own: dict[str, TokenBucket] = field(default_factory=dict)
    _waiting: list[_Request] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.shared_rate is not None:
            self._shared = TokenBucket(self.shared_rate, self.now)

    def set_export_rate(self, export: str, rate: float | None) -> None:
        """Give ``export`` its own budget (``None``: none, only the shared one applies)."""
        if rate is None:
            self._own.pop(export, None)
        elif export not in self._own or self._own[export].rate != rate:
            self._own[export] = TokenBucket(rate, self.now)

    def request(self, export: str, *, priority: int, size: int, now: float) -> _Request:
        """Queue a request of ``size`` bytes for ``export``; :meth:`grant` decides when it goes."""
        if not HIGHEST_PRIORITY <= priority <= LOWEST_PRIORITY:
            msg = f"priority must be {HIGHEST_PRIORITY}..{LOWEST_PRIORITY}, got {priority}"
            raise ValueError(msg)
        request = _Request(export, priority, max(0, size), now, next(self._order))
        self._waiting.append(request)
        return request

    def withdraw(self, request: _Request) -> None:
        """Forget a request that no longer waits (its driver stopped)."""
        if request in self._waiting:
            self._waiting.remove(request)

    def effective_priority(self, request: _Request, now: float) -> float:
        """``priority`` minus one level per ``aging`` seconds waited (smaller goes first)."""
        return request.priority - (now - request.since) / self.aging

    def grant(self, now: float) -> list[_Request]:
        """Take the requests that may go at ``now``, best first, and charge their budgets."""
        self.now = now
        granted: list[_Request] = []
        while self._waiting:
            if self._shared is not None and not self._shared.ready(now):
                break
            candidates = [
                request
                for request in self._waiting
                if request.export not in self._own or self._own[request.export].ready(now)
            ]
            if not candidates:
                break
            best = min(candidates, key=lambda request: (self.effective_priority(request, now), request.order))
            self._waiting.remove(best)
            if self._shared is not None:
                self._shared.take(best.size, now)
            if best.export in self._own:
                self._own[best.export].take(best.size, now)
            granted.append(best)
        return granted

    def next_grant_in(self, now: float) -> float | None:
        """Seconds until a waiting request could be granted; ``None`` if nothing waits."""
        if not self._waiting:
            return None
        delays = [
            self._own[request.export].ready_in(now) if request.export in self._own else 0.0
            for request in self._waiting
        ]
        own = min(delays)
        shared = self._shared.ready_in(now) if self._shared is not None else 0.0
        return max(own, shared)

    @property
    def waiting(self) -> int:
        """How many requests wait."""
        return len(self._waiting)


class UploadScheduler:
    """The asyncio shell around :class:`BandwidthPlan`: ``await acquire(...)`` until it is your turn."""

    def __init__(
        self,
        shared_rate: float | None,
        *,
        aging: float = DEFAULT_AGING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._plan = BandwidthPlan(shared_rate, aging=aging, now=clock())
        self._futures: dict[_Request, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._granted = 0
        self._granted_bytes = 0

    def set_export_rate(self, export: str, rate: float | None) -> None:
        """Set ``export``'s own budget (bytes per second; ``None`` = no own limit)."""
        self._plan.set_export_rate(export, rate)

    async def acquire(self, export: str, *, priority: int, size: int) -> None:
        """Return when ``export`` may send ``size`` bytes (its budgets are charged)."""
        request = self._plan.request(export, priority=priority, size=size, now=self._clock())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[request] = future
        self._pump()
        try:
            await future
        finally:
            if self._futures.pop(request, None) is not None:  # cancelled while waiting
                self._plan.withdraw(request)
                self._pump()

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of the counters."""
        return SchedulerStatistics(
            granted=self._granted, granted_bytes=self._granted_bytes, waiting=self._plan.waiting
        )

    def close(self) -> None:
        """Cancel the wake-up timer (waiting drivers are cancelled by their owners)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pump(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        for request in self._plan.grant(now):
            future = self._futures.pop(request, None)
            if future is not None and not future.done():
                future.set_result(None)
                self._granted += 1
                self._granted_bytes += request.size
        delay = self._plan.next_grant_in(now)
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._pump)
