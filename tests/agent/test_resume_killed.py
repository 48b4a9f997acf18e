"""A worker killed (SIGKILL) mid-file: the next worker continues from the bytes on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.downloads import Downloads
from agent.paths import Paths
from agent.store import Store
from tests.agent.conftest import MODEL, EventLog, onnx_repo_files
from tests.hubserver import HubRepos, HubServer
from tests.hubserver.process import REPO_ROOT

Q4 = f"huggingface-local/{MODEL}::q4::auto"
BIG = "onnx/model_q4.onnx_data"


def test_download_resumes_after_the_worker_is_killed(
    hub_repos: HubRepos, hub: HubServer, hf_env: Path, paths: Paths,
    make_downloads: Callable[..., tuple[Store, Downloads]], events: EventLog,
) -> None:
    files = onnx_repo_files({"q4": 50_000}, external={"q4": [3_000_000]})
    hub_repos.add_repo(MODEL, files)
    size = len(files[BIG])
    hub.control.add_fault(f"{MODEL}/{BIG}", rate_limit_bytes_per_s=1_000_000, times=-1)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.agent.download_child", str(paths.home), MODEL, "q4"],
        cwd=REPO_ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        blobs = paths.cache / ("models--" + MODEL.replace("/", "--")) / "blobs"
        deadline = time.monotonic() + 30
        partial = 0
        while partial < 700_000:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never got far enough"
            partial = max([p.stat().st_size for p in blobs.glob("*.incomplete")] or [0])
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL
    first_run = hub.control.bytes_served(f"{MODEL}/{BIG}")
    on_disk = max(p.stat().st_size for p in blobs.glob("*.incomplete"))
    assert 700_000 <= on_disk < size

    time.sleep(0.3)  # let the server notice the dead connection before counting anew
    hub.control.reset()
    store, downloads = make_downloads()
    assert [e.key for e in store.interrupted()] == [Q4]
    killed_job = store.require(Q4).job_id
    assert killed_job.startswith("dl-")
    jobs = downloads.resume_interrupted()
    assert [j.key for j in jobs] == [Q4] and jobs[0].job_id == killed_job  # the killed job's id goes on
    assert jobs[0].wait(30) and jobs[0].state == "finished", jobs[0].error
    gets = [r for r in hub.control.requests("GET", f"{MODEL}/{BIG}") if r["status"] in (200, 206)]
    assert [(r["range"], r["status"], r["bytes"]) for r in gets] == [(f"bytes={on_disk}-", 206, size - on_disk)]
    assert first_run + gets[0]["bytes"] < 2 * size  # only the remainder crossed the wire again
    entry = store.require(Q4)
    assert entry.status == "ready"
    assert (Path(entry.path) / BIG).read_bytes() == files[BIG]
    assert not list(blobs.glob("*.incomplete"))
