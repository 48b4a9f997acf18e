"""Which models to unload, and when: pure functions of a snapshot of the pool.

Kept apart from the pool (which owns tasks, timers and threads) so that the decisions can be tested
with plain values, like ``ui.restart_policy``. The rules:

- **LRU, before a load** (``to_make_room``): while the models in memory (loaded or loading) leave
  no room for one more under ``max_loaded``, unload the least recently used idle loaded model. The
  active model goes last, but it does go: a request for another model must be able to run.
- **LRU, after the pool went over the limit** (``to_trim``; every model was busy when a load had
  to start): while over ``max_loaded``, unload the least recently used idle model other than the
  active one. The active model is spared while another model is in memory, because that one is
  only busy for now and will be the one to go when it is idle.
- **Idle** (``unloads_when_idle``): a loaded model that nobody uses and that is not the active one
  unloads after ``keep_alive_s`` (the pool arms the timer; this says whether one applies).

A model that is generating, or that requests wait for, is never chosen. There is no memory rule:
the pool counts models (``max_loaded``), not bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    """A model in memory as the policy sees it."""

    key: str
    loaded: bool
    """False while it is still loading: it counts against ``max_loaded`` but cannot be unloaded."""
    in_use: bool
    """A lease holds it, or requests wait for it."""
    last_used: float
    """When its last user let go (a monotonic clock; only the order matters)."""


def to_make_room(residents: Sequence[Resident], active: str | None, max_loaded: int) -> list[str]:
    """The keys to unload, in order, before one more model starts loading. Fewer than needed (even
    none) when the others are in use: the pool then goes over the limit and trims back later."""
    left = list(residents)
    chosen: list[str] = []
    while len(left) >= max_loaded and (victim := _least_recently_used(left, active, spare_active=False)):
        chosen.append(victim.key)
        left.remove(victim)
    return chosen


def to_trim(residents: Sequence[Resident], active: str | None, max_loaded: int) -> list[str]:
    """The keys to unload, in order, to come back under ``max_loaded`` once models are idle."""
    left = list(residents)
    chosen: list[str] = []
    while len(left) > max_loaded:
        others = any(r.key != active for r in left)
        victim = _least_recently_used(left, active, spare_active=others)
        if victim is None:
            break
        chosen.append(victim.key)
        left.remove(victim)
    return chosen


def unloads_when_idle(resident: Resident, active: str | None) -> bool:
    """Whether the keep-alive timer applies: loaded, unused and not the active model."""
    return resident.loaded and not resident.in_use and resident.key != active


def _least_recently_used(residents: Sequence[Resident], active: str | None, *, spare_active: bool) -> Resident | None:
    idle = [r for r in residents if r.loaded and not r.in_use and not (spare_active and r.key == active)]
    return min(idle, key=lambda r: (r.key == active, r.last_used), default=None)
