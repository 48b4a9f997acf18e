"""When to restart a crashed worker, and when to stop trying: a pure function of the crash history.

Kept apart from the supervisor (which owns processes and threads) so it can be tested with plain
numbers, in the spirit of circus' flapping plugin: a worker that crashes ``max_crashes`` times
within ``window_s`` seconds is not restarted again until the user asks ("Restart runtime"). Below
that, restarts back off exponentially: ``base_delay_s``, twice that, four times... capped at
``max_delay_s``. Crashes older than the window are forgotten, so a worker that ran fine for a while
gets a fast restart again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    window_s: float = 120.0
    max_crashes: int = 5

    def __post_init__(self) -> None:
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        if self.window_s <= 0 or self.max_crashes < 1:
            raise ValueError("need window_s > 0 and max_crashes >= 1")


@dataclass(frozen=True, slots=True)
class Restart:
    """Restart after ``delay_s``; ``crashes`` is how many crashes the window holds (this one included)."""

    delay_s: float
    crashes: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Too many crashes in a short time: wait for the user."""

    crashes: int
    window_s: float


def recent_crashes(crash_times: Sequence[float], now: float, policy: RestartPolicy) -> list[float]:
    """The crash times that still count at ``now`` (inside the window, none from the future)."""
    return [t for t in crash_times if 0 <= now - t <= policy.window_s]


def decide(crash_times: Sequence[float], now: float, policy: RestartPolicy = RestartPolicy()) -> Restart | GiveUp:
    """What to do after a crash. ``crash_times`` are monotonic timestamps of crashes, the one that
    just happened included; ``now`` is the same clock's present."""
    crashes = len(recent_crashes(crash_times, now, policy))
    if crashes >= policy.max_crashes:
        return GiveUp(crashes=crashes, window_s=policy.window_s)
    if crashes == 0:
        return Restart(delay_s=0.0, crashes=0)
    delay = min(policy.max_delay_s, policy.base_delay_s * 2.0 ** (crashes - 1))
    return Restart(delay_s=delay, crashes=crashes)


__all__ = ["GiveUp", "Restart", "RestartPolicy", "decide", "recent_crashes"]
