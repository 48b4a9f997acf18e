"""The real HTTP app (``agent.http.create_app`` on Hypercorn, the model pool, the engine) serving one
model folder, for the benchmark's HTTP-streaming engine. Its own process, so its RSS is its own.

    python bench/http_server.py MODEL_DIR QUANT PORT THREADS

Prints ``ready <load seconds>`` once the model is loaded and the port answers; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.engine.loader import load_variant
from agent.http import create_app, serve_http
from agent.pool import ModelPool, ResolvedVariant, UnknownModelError
from agent.settings import ModelSettings, Settings
from agent.variants import VariantKey


class OneModel:
    """A catalog of exactly one installed variant."""

    def __init__(self, variant: ResolvedVariant) -> None:
        self.variant = variant

    def resolve(self, name: str) -> ResolvedVariant:
        if name in (self.variant.key, self.variant.model_id):
            return self.variant
        raise UnknownModelError(name)

    def installed(self) -> Sequence[ResolvedVariant]:
        return [self.variant]


async def main(folder: Path, quant: str, port: int, threads: int) -> None:
    key = str(VariantKey.make("bench/SmolLM2-135M-Instruct", quant, "cpu"))
    variant = ResolvedVariant(key=key, model_id="bench/SmolLM2-135M-Instruct", path=folder,
                              quantization=quant, device="cpu")
    settings = ModelSettings(threads=threads, default_max_tokens=4096)
    pool = ModelPool(OneModel(variant), load_variant, settings, lambda event: None, active=key)
    app = create_app(pool, Settings(models=settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.perf_counter()
    await pool.activate(key)
    load_s = time.perf_counter() - started
    server = asyncio.create_task(serve_http(app, "127.0.0.1", port, stop, graceful_timeout=1))
    await asyncio.sleep(0.2)
    print(f"ready {load_s:.3f}", flush=True)
    try:
        await server
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
