"""Load on a live agent: concurrent streaming chats plus a steady rate of ``GET /v1/models``.

``run_load`` is the driver, shared with ``tests/reliability/test_load.py`` (which runs it for a few
seconds per round); run this file for the full 60 s measurement against a tiny model on loopback:

    python bench/load.py [--url http://127.0.0.1:9231] [--seconds 60] [--streams 32] [--rate 200]

With no ``--url`` it starts its own ``hflocal serve`` on a temporary home with the tests' tiny model
(imported from ``tests/``) and writes ``bench/results/load.json``. Every request must end in a
completion, or in 503/429 with ``Retry-After``; anything else is counted under ``failed`` with why.
The run is bounded: clients stop at the deadline and wait at most ``timeout`` for what is in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"


@dataclass
class LoadResult:
    seconds: float
    streams: int
    rate: float
    completed: int = 0
    refused: int = 0
    """503/429 with Retry-After: the agent said "later", as it promises under overload."""
    failed: list[str] = field(default_factory=list)
    models_ok: int = 0
    models_skipped: int = 0
    """Ticks of the models clock skipped because too many were still in flight (client-side limit)."""
    stream_latency_s: list[float] = field(default_factory=list)
    models_latency_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(statistics.quantiles(values, n=100)[int(q) - 1], 4) if len(values) >= 2 else None

        out = asdict(self)
        del out["stream_latency_s"], out["models_latency_s"]
        out["failed_kinds"] = dict(Counter(f.split(":", 1)[0] for f in self.failed))
        out["failed"] = self.failed[:20]
        out["models_per_s"] = round(self.models_ok / self.seconds, 1)
        out["completions_per_s"] = round(self.completed / self.seconds, 1)
        out["stream_p50_s"], out["stream_p99_s"] = pct(self.stream_latency_s, 50), pct(self.stream_latency_s, 99)
        out["models_p50_s"], out["models_p99_s"] = pct(self.models_latency_s, 50), pct(self.models_latency_s, 99)
        return out


def _refusal(response: httpx.Response) -> bool:
    return response.status_code in (429, 503) and "retry-after" in response.headers


async def _streamer(http: httpx.AsyncClient, deadline: float, result: LoadResult, max_tokens: int) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens, "stream": True}
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    if _refusal(response):
                        result.refused += 1
                        await asyncio.sleep(min(float(response.headers["retry-after"]), 1.0))
                    else:
                        result.failed.append(f"status {response.status_code}: {response.text[:200]}")
                    continue
                last = ""
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        last = line
                        if '"error"' in line:
                            result.failed.append(f"error event: {line[:200]}")
                            break
                if last == "data: [DONE]":
                    result.completed += 1
                    result.stream_latency_s.append(time.monotonic() - start)
                elif '"error"' not in last:
                    result.failed.append(f"truncated: stream ended with {last[:100]!r}")
        except httpx.HTTPError as exc:
            result.failed.append(f"transport: {type(exc).__name__} {exc}")


async def _models(http: httpx.AsyncClient, deadline: float, result: LoadResult, rate: float, max_in_flight: int = 64) -> None:
    in_flight: set[asyncio.Task[None]] = set()

    async def one() -> None:
        start = time.monotonic()
        try:
            response = await http.get("/v1/models")
        except httpx.HTTPError as exc:
            result.failed.append(f"transport: /v1/models {type(exc).__name__} {exc}")
            return
        if response.status_code == 200 and response.json().get("object") == "list":
            result.models_ok += 1
            result.models_latency_s.append(time.monotonic() - start)
        elif _refusal(response):
            result.refused += 1
        else:
            result.failed.append(f"status {response.status_code}: /v1/models {response.text[:200]}")

    tick = time.monotonic()
    while tick < deadline:
        if len(in_flight) < max_in_flight:
            task = asyncio.ensure_future(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        else:
            result.models_skipped += 1
        tick += 1.0 / rate
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    if in_flight:
        await asyncio.gather(*in_flight)


async def run_load_async(url: str, seconds: float, *, streams: int = 32, rate: float = 200.0, max_tokens: int = 16,
                         timeout: float = 120.0, headers: dict[str, str] | None = None) -> LoadResult:
    result = LoadResult(seconds=seconds, streams=streams, rate=rate)
    limits = httpx.Limits(max_connections=streams + 80, max_keepalive_connections=streams + 80)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) as http:
        deadline = time.monotonic() + seconds
        await asyncio.wait_for(asyncio.gather(
            _models(http, deadline, result, rate),
            *(_streamer(http, deadline, result, max_tokens) for _ in range(streams)),
        ), seconds + timeout)
    return result


def run_load(url: str, seconds: float, **options: Any) -> LoadResult:
    """Run the load against ``url`` for ``seconds`` (bounded: see the module docstring)."""
    return asyncio.run(run_load_async(url, seconds, **options))


def _own_agent(tmp: Path) -> tuple[Any, Any, str]:
    """Start a hub with the tests' tiny model and an agent with it active; returns (agent, hub, url)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import os

    from tests.fakes.tiny_model import build_tiny_repo
    from tests.hubserver import HubRepos, HubServer
    from tests.support.agentproc import cli, start_agent
    from tests.support.worker import TINY, TINY_REPLY, publish, repo_files

    model = build_tiny_repo(tmp / "Tiny-Chat", ("q4",), reply=TINY_REPLY)
    repos = HubRepos(tmp / "hub")
    publish(repos, TINY, repo_files(model.path))
    hub = HubServer(repos.root).start()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost"}
    os.environ.update(env)
    agent = start_agent(tmp / "home", env=env)
    for args in (("pull", TINY, "--quant", "q4"), ("use", TINY)):
        done = cli(*args, home=agent.home)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
    return agent, hub, agent.http_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running agent (default: start one with the tiny test model)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200.0, help="GET /v1/models per second")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, recording the worker's RSS after each")
    args = parser.parse_args()
    import tempfile

    import psutil

    with tempfile.TemporaryDirectory(prefix="hflocal-load-") as tmp:
        agent = hub = None
        url = args.url
        if url is None:
            agent, hub, url = _own_agent(Path(tmp))
        try:
            rounds = []
            for _ in range(args.rounds):
                summary = run_load(url, args.seconds, streams=args.streams, rate=args.rate).summary()
                if agent is not None:
                    summary["worker_rss_mib"] = round(psutil.Process(agent.proc.pid).memory_info().rss / 2**20, 1)
                rounds.append(summary)
                print(json.dumps(summary), flush=True)
        finally:
            if agent is not None:
                agent.stop()
            if hub is not None:
                hub.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"url": args.url or "own agent (tiny model, loopback)", "rounds": rounds}, indent=2) + "\n")
    ok = all(not r["failed"] for r in rounds)
    print(f"{'ok' if ok else 'FAILED'}: wrote {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
