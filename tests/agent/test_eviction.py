"""The pool's eviction rules as plain decisions (``agent.pool.eviction``): LRU before a load, trimming
back under the limit, and which models the keep-alive timer applies to."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.pool.eviction import Resident, to_make_room, to_trim, unloads_when_idle


def idle(key: str, last_used: float) -> Resident:
    return Resident(key=key, loaded=True, in_use=False, last_used=last_used)


def busy(key: str, last_used: float = 0.0) -> Resident:
    return Resident(key=key, loaded=True, in_use=True, last_used=last_used)


def loading(key: str) -> Resident:
    return Resident(key=key, loaded=False, in_use=True, last_used=0.0)


def test_a_load_under_the_limit_unloads_nothing() -> None:
    assert to_make_room([], None, 1) == []
    assert to_make_room([idle("a", 1)], "a", 2) == []


def test_a_load_at_the_limit_unloads_the_least_recently_used_idle_model() -> None:
    residents = [idle("a", 5), idle("b", 1), idle("c", 3)]
    assert to_make_room(residents, None, 3) == ["b"]
    assert to_make_room(residents, None, 2) == ["b", "c"]
    assert to_make_room(residents, None, 1) == ["b", "c", "a"]


def test_the_active_model_goes_last_but_goes() -> None:
    residents = [idle("active", 0), idle("other", 9)]
    assert to_make_room(residents, "active", 2) == ["other"]
    assert to_make_room(residents, "active", 1) == ["other", "active"]


def test_models_in_use_or_loading_are_never_chosen() -> None:
    residents = [busy("a", 0), loading("b"), idle("c", 7)]
    assert to_make_room(residents, None, 1) == ["c"]
    assert to_trim(residents, None, 1) == ["c"]
    assert to_make_room([busy("a"), loading("b")], None, 1) == []


def test_trimming_spares_the_active_model_while_another_is_in_memory() -> None:
    # A request for "b" loaded it while "a" (active) was busy; now "a" is idle, "b" still runs.
    assert to_trim([idle("a", 0), busy("b", 5)], "a", 1) == []
    # Once "b" is idle it is the one to go, although the active model was used less recently.
    assert to_trim([idle("a", 0), idle("b", 5)], "a", 1) == ["b"]
    assert to_trim([idle("a", 0), idle("b", 5), idle("c", 2)], "a", 1) == ["c", "b"]


def test_trimming_stops_at_the_limit() -> None:
    assert to_trim([idle("a", 0), idle("b", 1)], None, 2) == []
    assert to_trim([idle("a", 0), idle("b", 1), idle("c", 2)], None, 2) == ["a"]


def test_the_keep_alive_timer_applies_to_idle_loaded_models_other_than_the_active_one() -> None:
    assert unloads_when_idle(idle("a", 0), None)
    assert unloads_when_idle(idle("a", 0), "b")
    assert not unloads_when_idle(idle("a", 0), "a")
    assert not unloads_when_idle(busy("a"), None)
    assert not unloads_when_idle(loading("a"), None)


residents_strategy = st.lists(
    st.builds(Resident, key=st.sampled_from("abcdefgh"), loaded=st.booleans(), in_use=st.booleans(),
              last_used=st.floats(0, 100)),
    max_size=8, unique_by=lambda r: r.key,
)


@given(residents_strategy, st.sampled_from([None, *"abcdefgh"]), st.integers(1, 4))
def test_decisions_hold_whatever_the_pool_holds(residents: list[Resident], active: str | None, limit: int) -> None:
    unloadable = {r.key for r in residents if r.loaded and not r.in_use}
    room = to_make_room(residents, active, limit)
    trim = to_trim(residents, active, limit)
    for chosen in (room, trim):
        assert set(chosen) <= unloadable
        assert len(chosen) == len(set(chosen))
    # Room for one more, unless everything left is in use or loading.
    assert len(residents) - len(room) < limit or set(room) == unloadable
    # Back under the limit, unless what is left is in use, loading or the spared active model.
    left = len(residents) - len(trim)
    assert left <= limit or set(trim) == unloadable - {active}
    assert active not in trim
    # Least recently used first, among the models other than the active one.
    last = {r.key: r.last_used for r in residents}
    others = [last[k] for k in room if k != active]
    assert others == sorted(others)
