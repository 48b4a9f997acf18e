from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ui.restart_policy import GiveUp, Restart, RestartPolicy, decide, recent_crashes

POLICY = RestartPolicy(base_delay_s=1.0, max_delay_s=8.0, window_s=60.0, max_crashes=5)


def test_backoff_doubles_then_gives_up() -> None:
    crashes: list[float] = []
    decisions = []
    for i in range(5):
        crashes.append(100.0 + i)
        decisions.append(decide(crashes, 100.0 + i, POLICY))
    assert decisions[:4] == [Restart(1.0, 1), Restart(2.0, 2), Restart(4.0, 3), Restart(8.0, 4)]
    assert decisions[4] == GiveUp(crashes=5, window_s=60.0)


def test_delay_is_capped() -> None:
    policy = RestartPolicy(base_delay_s=1.0, max_delay_s=3.0, window_s=60.0, max_crashes=10)
    assert decide([1, 2, 3, 4, 5, 6], 6, policy) == Restart(3.0, 6)


def test_old_crashes_are_forgotten() -> None:
    # four crashes long ago, one now: a fast restart again
    assert decide([0, 1, 2, 3, 500], 500, POLICY) == Restart(1.0, 1)
    assert recent_crashes([0, 1, 2, 3, 500], 500, POLICY) == [500]


def test_no_crash_means_start_now() -> None:
    assert decide([], 10, POLICY) == Restart(0.0, 0)


def test_invalid_policies_are_rejected() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(base_delay_s=5, max_delay_s=1)
    with pytest.raises(ValueError):
        RestartPolicy(max_crashes=0)


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=30), st.floats(min_value=0, max_value=1000))
def test_decisions_are_bounded_and_monotone(times: list[float], now: float) -> None:
    decision = decide(times, now, POLICY)
    recent = recent_crashes(times, now, POLICY)
    if isinstance(decision, GiveUp):
        assert len(recent) >= POLICY.max_crashes
    else:
        assert 0 <= decision.delay_s <= POLICY.max_delay_s
        assert decision.crashes == len(recent) < POLICY.max_crashes
        # one more crash never makes the wait shorter
        after = decide([*times, now], now, POLICY)
        assert isinstance(after, GiveUp) or after.delay_s >= decision.delay_s
