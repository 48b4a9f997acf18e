"""Protocol benchmark: ping round trip (p50/p99) over tcp loopback, and events per second.

Starts a real ``hflocal serve`` on a temporary home and free ports, measures, stops it, and writes
``bench/results/protocol.json``. Run on purpose: ``.venv/bin/python bench/protocol.py``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipc.events import EventSubscriber
from ipc.messages import Ping, Status
from tests.support.agentproc import start_agent

PINGS = 5000
EVENT_SECONDS = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_events(count: int = 100_000) -> dict[str, float]:
    """Publish ``count`` progress events through the worker's EventPublisher over tcp loopback and
    count what one subscriber receives (PUB drops under overload, so both numbers are reported)."""
    import asyncio

    import zmq.asyncio

    from ipc.events import EventPublisher
    from ipc.messages import DownloadProgress

    received = 0
    done = threading.Event()
    ready = threading.Event()
    endpoint: list[str] = []
    key: list[str] = []

    async def publish() -> float:
        ctx = zmq.asyncio.Context()
        pub = EventPublisher(ctx, "tcp://127.0.0.1:0", "bench")
        endpoint.append(pub.endpoint)
        key.append(pub.key)
        ready.set()
        await asyncio.sleep(1.0)  # let the subscription arrive
        t0 = time.perf_counter()
        for n in range(count):
            pub.publish(DownloadProgress(job_id="j", key="k", done_bytes=n, total_bytes=count,
                                         rate_bps=1.0, eta_s=None, current_file="f"))
            if n % 1000 == 0:
                await asyncio.sleep(0)
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        pub.close()
        ctx.term()
        return elapsed

    def subscribe() -> None:
        nonlocal received
        ready.wait()
        with EventSubscriber(endpoint[0], ("download.",), key=key[0]) as sub:
            while not done.is_set():
                if sub.recv(0.5) is not None:
                    received += 1

    thread = threading.Thread(target=subscribe)
    thread.start()
    t0 = time.perf_counter()
    elapsed = asyncio.run(publish())
    done.set()
    thread.join()
    return {"published": count, "received": received, "publish_per_s": count / elapsed,
            "received_per_s": received / elapsed, "wall_s": time.perf_counter() - t0}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(Path(tmp) / "home", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
        try:
            client = agent.client()
            for _ in range(200):
                client.call(Ping())
            samples = []
            for _ in range(PINGS):
                t0 = time.perf_counter()
                client.call(Ping())
                samples.append((time.perf_counter() - t0) * 1000)
            status_samples = []
            for _ in range(500):
                t0 = time.perf_counter()
                client.call(Status())
                status_samples.append((time.perf_counter() - t0) * 1000)
            client.close()
        finally:
            agent.stop()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ping_ms": {"n": PINGS, "p50": statistics.median(samples), "p99": percentile(samples, 0.99),
                    "mean": statistics.fmean(samples)},
        "status_ms": {"n": len(status_samples), "p50": statistics.median(status_samples),
                      "p99": percentile(status_samples, 0.99)},
        "pings_per_s": 1000 / statistics.fmean(samples),
        "events": measure_events(),
    }
    out = Path(__file__).resolve().parent / "results" / "protocol.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
