"""Disk full, for real: the cache on a tiny tmpfs (needs root to mount; skipped otherwise)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.downloads import Downloads
from agent.errors import DiskFullError
from agent.paths import Paths
from agent.store import Store
from ipc.messages import DownloadFailed, DownloadProgress, DownloadStarted
from tests.agent.conftest import MODEL, EventLog, onnx_repo_files
from tests.hubserver import HubRepos, HubServer

Q4 = f"huggingface-local/{MODEL}::q4::auto"


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        if not _mount_tmpfs(where, size):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return filler


def test_refused_up_front_when_the_disk_is_too_small(
    small_disk: Callable[[str], Path], hub_repos: HubRepos, hf_env: Path, paths: Paths,
    make_downloads: Callable[..., tuple[Store, Downloads]],
) -> None:
    hub_repos.add_repo(MODEL, onnx_repo_files({"q4": 10_000}, external={"q4": [3_000_000]}))
    small = Paths.for_home(paths.home, cache_dir=small_disk("1m"))
    store, downloads = make_downloads(small)
    with pytest.raises(DiskFullError, match="not enough disk space") as info:
        downloads.start(MODEL, "q4")
    assert info.value.details["needed"] > info.value.details["free"]
    assert store.list() == []


def test_disk_filling_up_mid_download_fails_cleanly_and_resumes_later(
    small_disk: Callable[[str], Path], hub_repos: HubRepos, hub: HubServer, hf_env: Path, paths: Paths,
    make_downloads: Callable[..., tuple[Store, Downloads]], events: EventLog,
) -> None:
    files = onnx_repo_files({"q4": 10_000}, external={"q4": [2_500_000]})
    hub_repos.add_repo(MODEL, files)
    hub.control.add_fault(f"{MODEL}/onnx/model_q4.onnx_data", rate_limit_bytes_per_s=1_000_000, times=1)
    disk = small_disk("4m")
    small = Paths.for_home(paths.home, cache_dir=disk)  # the manifest stays on the roomy disk
    store, downloads = make_downloads(small)
    job, _ = downloads.start(MODEL, "q4")
    events.wait_for(lambda e: isinstance(e, DownloadProgress) and e.done_bytes >= 600_000)
    filler = fill(disk)
    assert job.wait(30) and job.state == "failed"
    failed = events.all(DownloadFailed, job.job_id)[0]
    assert failed.code == "disk_full" and str(disk) in failed.message
    assert Store(small).require(Q4).status == "error"  # what a restarted worker sees
    filler.unlink()
    again, _ = downloads.start(MODEL, "q4")
    assert again.wait(30) and again.state == "finished", again.error
    assert events.all(DownloadStarted, again.job_id)[0].resumed_bytes >= 500_000
    entry = store.require(Q4)
    assert entry.status == "ready"
    assert (Path(entry.path) / "onnx/model_q4.onnx_data").read_bytes() == files["onnx/model_q4.onnx_data"]
