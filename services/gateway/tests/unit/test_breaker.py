from __future__ import annotations

from gateway.clients.breaker import BreakerState, CircuitBreaker


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(3, 1.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()


def test_half_open_lets_exactly_one_probe_then_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2.0, clock=clock)
    breaker.record_failure()
    assert not breaker.allow()
    assert breaker.retry_after() == 2.0
    clock.now = 2.0
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_failed_probe_reopens_for_a_full_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2.0, clock=clock)
    breaker.record_failure()
    clock.now = 2.5
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.now = 4.0
    assert not breaker.allow()
    clock.now = 4.5
    assert breaker.allow()


def test_cancelled_probe_frees_the_probe_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.record_cancelled()
    assert breaker.allow()


def test_answer_with_an_error_still_proves_the_backend_is_up() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.record_neutral()
    assert state_of(breaker) is BreakerState.CLOSED
