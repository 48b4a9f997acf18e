"""Load, bounded: 32 streaming chats and ~200 req/s of ``GET /v1/models`` against a live worker.

The driver is ``tests/support/load.py`` (``bench/load.py`` runs it for the full 60 s); here three rounds of a few seconds:
every request ends in a completion or a 503/429 with Retry-After, the worker stays up, and its
memory does not grow from round to round. Rates achieved are recorded, not asserted (shared CPUs).
"""

from __future__ import annotations

import httpx

from tests.reliability.support import assert_memory_returns, case, rss
from tests.support.agentproc import AgentProcess
from tests.support.load import run_load

ROUND_S = 5.0


@case(area="load", case="32 streaming clients + 200 req/s of /v1/models (3 rounds of 5 s; 60 s in bench/load.py)",
      did="bench/load.py's driver on loopback against the tiny model: 32 concurrent streaming chats in a loop and GET /v1/models on a 200/s clock",
      outcome="every request a completion, a model list, or 503/429 with Retry-After; no transport error; worker alive; RSS stable across rounds")
def test_streams_and_model_listings_under_load(live: AgentProcess) -> None:
    samples = []
    results = []
    for _ in range(3):
        result = run_load(live.http_url, ROUND_S, streams=32, rate=200, max_tokens=16, timeout=120)
        assert not result.failed, result.failed[:10]
        assert result.completed > 0 and result.models_ok > 0, result.summary()
        results.append(result.summary())
        samples.append(rss(live.proc.pid))
    assert live.proc.poll() is None
    assert httpx.get(live.http_url + "/health", timeout=10).json()["model_state"] == "ready"
    assert_memory_returns(samples, f"load rounds {results}")
