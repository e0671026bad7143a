from __future__ import annotations

import pytest
from gateway.security.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refuse_then_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3.0, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.try_take()
    assert wait == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_take() == 0.0
    assert bucket.try_take() > 0


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=2.0, clock=clock)
    clock.now += 60
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.1)


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate=0, burst=1)
