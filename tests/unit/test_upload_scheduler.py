"""The upload scheduler's pure decisions: priority, budgets, aging; and the retry delays."""

from __future__ import annotations

import pytest

from headwater.plugins.upload.driver import BASE_DELAY, retry_delay
from headwater.plugins.upload.scheduler import BandwidthPlan, TokenBucket


def test_without_limits_every_request_goes_at_once() -> None:
    plan = BandwidthPlan(shared_rate=None)
    requests = [plan.request(f"e{i}", priority=10 - i, size=10**9, now=0.0) for i in range(5)]
    assert set(plan.grant(0.0)) == set(requests)
    assert plan.next_grant_in(0.0) is None


def test_shared_budget_goes_to_the_highest_priority_first() -> None:
    plan = BandwidthPlan(shared_rate=1000.0)
    low = plan.request("low", priority=9, size=1000, now=0.0)
    high = plan.request("high", priority=1, size=1000, now=0.0)
    middle = plan.request("middle", priority=5, size=1000, now=0.0)
    # The bucket starts full (one second's worth): the best request takes it all.
    assert plan.grant(0.0) == [high]
    assert plan.next_grant_in(0.0) == pytest.approx(0.0, abs=1e-6)
    # Any tokens at all let the next best go (it leaves the bucket in debt).
    assert plan.grant(0.5) == [middle]
    assert plan.next_grant_in(0.5) == pytest.approx(0.5)
    assert plan.grant(0.99) == []
    assert plan.grant(1.01) == [low]


def test_a_request_larger_than_the_burst_still_goes_and_leaves_a_debt() -> None:
    plan = BandwidthPlan(shared_rate=100.0)
    big = plan.request("big", priority=1, size=1000, now=0.0)
    assert plan.grant(0.0) == [big]
    small = plan.request("small", priority=1, size=1, now=0.0)
    # 100 tokens - 1000 = -900: nine seconds of debt.
    assert plan.next_grant_in(0.0) == pytest.approx(9.0)
    assert plan.grant(8.9) == []
    assert plan.grant(9.01) == [small]


def test_an_export_over_its_own_budget_does_not_block_the_others() -> None:
    plan = BandwidthPlan(shared_rate=None)
    plan.set_export_rate("capped", 10.0)
    first = plan.request("capped", priority=1, size=100, now=0.0)
    assert plan.grant(0.0) == [first]
    again = plan.request("capped", priority=1, size=100, now=0.0)
    other = plan.request("other", priority=10, size=100, now=0.0)
    assert plan.grant(0.0) == [other]
    assert plan.next_grant_in(0.0) == pytest.approx(9.0)
    assert plan.grant(9.01) == [again]


def test_a_waiting_low_priority_gains_a_level_per_aging_period_and_is_never_starved() -> None:
    # Two exports always have a batch ready; the budget allows one batch per second.
    plan = BandwidthPlan(shared_rate=1000.0, aging=10.0)
    granted = {"p1": 0, "p9": 0}
    waiting = {name: plan.request(name, priority=int(name[1]), size=1000, now=0.0) for name in granted}
    now = 0.0
    first_p9: float | None = None
    while now < 300:
        for request in plan.grant(now):
            granted[request.export] += 1
            if request.export == "p9" and first_p9 is None:
                first_p9 = now
            waiting[request.export] = plan.request(
                request.export, priority=request.priority, size=1000, now=now
            )
        now += 0.25
    # Priority 9 needs 8 levels: 80 s of waiting, then one batch; priority 1 gets the rest.
    assert first_p9 == pytest.approx(80.0, abs=2.0)
    assert granted["p9"] == 3
    assert granted["p1"] > 250


def test_ties_go_to_the_longest_waiting() -> None:
    plan = BandwidthPlan(shared_rate=1.0)
    plan.request("warmup", priority=1, size=1, now=0.0)
    plan.grant(0.0)
    first = plan.request("a", priority=3, size=1, now=0.1)
    second = plan.request("b", priority=3, size=1, now=0.2)
    assert plan.grant(5.0) == [first]
    assert plan.grant(10.0) == [second]


def test_a_withdrawn_request_is_forgotten() -> None:
    plan = BandwidthPlan(shared_rate=1.0)
    request = plan.request("a", priority=1, size=1, now=0.0)
    plan.withdraw(request)
    assert plan.grant(0.0) == []
    assert plan.waiting == 0


@pytest.mark.parametrize("priority", [0, 11])
def test_priorities_outside_1_to_10_are_refused(priority: int) -> None:
    with pytest.raises(ValueError, match=r"priority must be 1\.\.10"):
        BandwidthPlan(shared_rate=None).request("a", priority=priority, size=1, now=0.0)


def test_token_bucket_refills_up_to_one_second() -> None:
    bucket = TokenBucket(100.0, now=0.0)
    bucket.take(150, now=0.0)
    assert bucket.tokens(0.0) == pytest.approx(-50.0)
    assert bucket.ready_in(0.0) == pytest.approx(0.5)
    assert bucket.tokens(100.0) == pytest.approx(100.0)


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 20, 100])
def test_retry_delays_double_with_jitter_and_are_capped(failures: int) -> None:
    cap = 60.0
    full = min(cap, BASE_DELAY * 2 ** (failures - 1))
    assert retry_delay(failures, cap=cap, rand=lambda: 0.0) == pytest.approx(full / 2)
    assert retry_delay(failures, cap=cap, rand=lambda: 1.0) == pytest.approx(full)
    assert retry_delay(failures, cap=cap, rand=lambda: 0.0) > 0  # never a busy loop
