"""``python -m tests.agent.download_child HOME MODEL QUANT``: a worker stand-in that downloads one
variant with the real ``Downloads`` class, printing each event as a line, so a test can kill -9 it
mid-file. The Hub endpoint comes from ``HF_ENDPOINT``."""

from __future__ import annotations

import sys
from pathlib import Path

from agent.downloads import Downloads
from agent.paths import Paths
from agent.settings import Settings
from agent.store import Store
from ipc.messages import Event, topic_of


def main() -> int:
    home, model, quant = sys.argv[1:4]
    paths = Paths.for_home(Path(home))
    store = Store(paths)

    def publish(event: Event) -> None:
        print(topic_of(event), getattr(event, "done_bytes", ""), flush=True)

    downloads = Downloads(store, paths, Settings(), publish, disk_margin_bytes=0)
    job, _ = downloads.start(model, quant)
    job.wait()
    print("end", job.state, flush=True)
    return 0 if job.state == "finished" else 1


if __name__ == "__main__":
    raise SystemExit(main())
