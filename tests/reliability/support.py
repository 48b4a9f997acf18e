"""Helpers for the reliability tests: the ``reliability`` marker, a live agent with a model, RSS.

Every test here carries ``@case(case=..., did=..., outcome=...)``; ``scripts/reliability_table.py``
collects those markers into ``docs/reliability.md``, so the table lists exactly what is guarded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from tests.support.agentproc import AgentProcess, cli
from tests.support.worker import TINY, variant_key

F = TypeVar("F", bound=Callable[..., Any])
MIB = 1 << 20
KEY = variant_key(TINY, "q4")
REPO_ROOT = Path(__file__).resolve().parents[2]


def case(*, area: str, case: str, did: str, outcome: str, lost: str = "nothing") -> pytest.MarkDecorator:
    """The row of ``docs/reliability.md`` this test guards."""
    return pytest.mark.reliability(area=area, case=case, did=did, outcome=outcome, lost=lost)


def make_ready(agent: AgentProcess, quant: str = "q4") -> str:
    """Pull ``TINY`` from the test hub and make it active and loaded; returns its variant key."""
    for args in (("pull", TINY, "--quant", quant), ("use", TINY)):
        done = cli(*args, home=agent.home)
        assert done.returncode == 0, done.stderr
    return variant_key(TINY, quant)


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def assert_memory_returns(samples: Sequence[int], what: str) -> None:
    """RSS after each round (the first is after a warm-up round) must not keep growing.

    A memory property, not a timing one: allocators keep freed pages, so the bound is generous — the
    last round may not exceed the first by more than 25 % + 48 MiB, and the samples must not grow
    strictly at every round by more than 4 MiB each (a leak proportional to the work done)."""
    assert len(samples) >= 3, samples
    first, last = samples[0], samples[-1]
    mib = [round(s / MIB, 1) for s in samples]
    assert last <= first * 1.25 + 48 * MIB, f"{what}: RSS grew from {mib[0]} to {mib[-1]} MiB: {mib}"
    steps = [b - a for a, b in itertools.pairwise(samples)]
    assert not all(step > 4 * MIB for step in steps), f"{what}: RSS grew at every round: {mib} MiB"
