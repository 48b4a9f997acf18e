"""Load on a live agent for the full measurement: 60 s of concurrent streaming chats plus a steady rate
of ``GET /v1/models`` (the driver is ``tests/support/load.py``, which ``tests/reliability/test_load.py``
runs for a few seconds per round):

    python bench/load.py [--url http://127.0.0.1:9231] [--seconds 60] [--streams 32] [--rate 200]

With no ``--url`` it starts its own ``hflocal serve`` on a temporary home with the tests' tiny model
(imported from ``tests/``) and writes ``bench/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"


def _own_agent(tmp: Path) -> tuple[Any, Any, str]:
    """Start a hub with the tests' tiny model and an agent with it active; returns (agent, hub, url)."""
    import os

    from tests.fakes.tiny_model import build_tiny_repo
    from tests.hubserver import HubRepos, HubServer
    from tests.support.agentproc import cli, start_agent
    from tests.support.worker import TINY, TINY_REPLY, publish, repo_files

    model = build_tiny_repo(tmp / "Tiny-Chat", ("q4",), reply=TINY_REPLY)
    repos = HubRepos(tmp / "hub")
    publish(repos, TINY, repo_files(model.path))
    hub = HubServer(repos.root).start()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_XET": "1",
           "NO_PROXY": "127.0.0.1,localhost"}
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

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the checkout's packages
    import psutil

    from tests.support.load import run_load

    with tempfile.TemporaryDirectory(prefix="hflocal-load-") as tmp:
        agent = hub = None
        url = args.url
        if url is None:
            agent, hub, url = _own_agent(Path(tmp))
        try:
            rounds = []
            for _ in range(args.rounds):
                worker = psutil.Process(agent.proc.pid) if agent is not None else None
                cpu_before = sum(worker.cpu_times()[:2]) if worker is not None else 0.0
                summary = run_load(url, args.seconds, streams=args.streams, rate=args.rate).summary()
                if worker is not None:
                    summary["worker_cpu_s"] = round(sum(worker.cpu_times()[:2]) - cpu_before, 2)
                    summary["worker_rss_mib"] = round(worker.memory_info().rss / 2**20, 1)
                rounds.append(summary)
                print(json.dumps(summary), flush=True)
        finally:
            if agent is not None:
                agent.stop()
            if hub is not None:
                hub.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {"url": args.url or "own agent (tiny model, loopback)", "rounds": rounds}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(not r["failed"] for r in rounds)
    print(f"{'ok' if ok else 'FAILED'}: wrote {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
