"""Download jobs through the official client against the local hub: progress, cancel, resume, faults."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.downloads import Downloads
from agent.errors import (
    ConflictError,
    DiskFullError,
    GatedRepoError,
    NoOnnxError,
    QuantNotOfferedError,
    RepoNotFoundError,
)
from agent.store import Store
from ipc.messages import (
    DownloadCancelled,
    DownloadFailed,
    DownloadFinished,
    DownloadProgress,
    DownloadStarted,
    ModelsChanged,
)
from tests.agent.conftest import MODEL, SESSION, EventLog, onnx_repo_files
from tests.hubserver import DEFAULT_TOKEN, HubRepos, HubServer

Make = Callable[..., tuple[Store, Downloads]]
Q4 = f"huggingface-local/{MODEL}::q4::auto"
DATA = f"{MODEL}/onnx/model_q4.onnx_data"  # the hub's byte-accounting key of the biggest q4 file


def q4_files(files: dict[str, bytes]) -> list[str]:
    return ["onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "onnx/model_q4.onnx_data_1", "config.json",
            "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def test_download_makes_a_ready_entry_with_monotonic_progress(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    store, downloads = make_downloads()
    job, existing = downloads.start(MODEL, "q4")
    assert not existing and job.key == Q4
    assert store.require(Q4).status in ("downloading", "ready")
    assert job.wait(30) and job.state == "finished", job.error
    total = sum(len(tiny_repo[f]) for f in q4_files(tiny_repo))
    entry = store.require(Q4)
    assert entry.status == "ready" and entry.files == q4_files(tiny_repo) and entry.size == total
    assert entry.commit == job.commit and entry.downloaded_at and entry.path.endswith(job.commit)
    for rel in entry.files:
        assert (Path(entry.path) / rel).read_bytes() == tiny_repo[rel]
    started = events.all(DownloadStarted, job.job_id)
    assert len(started) == 1 and started[0].total_bytes == total and started[0].resumed_bytes == 0
    progress = [e.done_bytes for e in events.all(DownloadProgress, job.job_id)]
    assert progress == sorted(progress) and progress[-1] == total
    assert all(e.total_bytes == total for e in events.all(DownloadProgress, job.job_id))
    finished = events.all(DownloadFinished, job.job_id)
    assert len(finished) == 1 and finished[0].size_bytes == total and finished[0].fetched_bytes == total
    assert Q4 in events.all(ModelsChanged)[-1].keys
    assert hub.control.bytes_served(MODEL) == total
    assert downloads.running() == []
    # again: everything is present, nothing is fetched, the entry is unchanged
    again, _ = downloads.start(MODEL, "q4")
    assert again.wait(30) and again.state == "finished" and again.fetched_bytes == 0
    assert store.require(Q4).downloaded_at == entry.downloaded_at
    assert hub.control.bytes_served(MODEL) == total


def test_progress_is_rate_limited(make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog) -> None:
    hub.control.add_fault(f"{MODEL}/onnx/*", rate_limit_bytes_per_s=1_000_000, times=-1)
    _, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "finished", job.error
    times = [e.time for e in events.all(DownloadProgress, job.job_id)]
    assert len(times) >= 3
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the final one may follow at once
    assert min(gaps) >= 0.15
    rates = [e.rate_bps for e in events.all(DownloadProgress, job.job_id)]
    assert 200_000 < max(rates) < 3_000_000
    assert all(e.session == SESSION and e.time > 0 for e in events.all(job_id=job.job_id))


def test_same_variant_twice_is_one_job_and_two_variants_run_together(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    hub.control.add_fault(f"{MODEL}/onnx/*", rate_limit_bytes_per_s=800_000, times=-1)
    store, downloads = make_downloads()
    first, existing1 = downloads.start(MODEL, "q4")
    second, existing2 = downloads.start(MODEL, "Q4", "auto")
    fp32, existing3 = downloads.start(MODEL, "fp32")
    assert second is first and not existing1 and existing2 and not existing3
    running = {d.key for d in downloads.running()}
    assert running == {Q4, f"huggingface-local/{MODEL}::fp32::auto"}
    assert first.wait(30) and fp32.wait(30)
    assert first.state == fp32.state == "finished"
    assert {e.status for e in store.list()} == {"ready"}
    assert len(events.all(DownloadStarted, first.job_id)) == 1
    # each file crossed the wire once, shared config files included
    stats = hub.control.stats()["bytes_by_file"]
    assert stats[f"{MODEL}/config.json"] == len(tiny_repo["config.json"])
    assert stats[DATA] == len(tiny_repo["onnx/model_q4.onnx_data"])


def test_cancel_keeps_partial_bytes_and_a_new_start_resumes(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    hub.control.add_fault(f"{MODEL}/onnx/*", rate_limit_bytes_per_s=500_000, times=-1)
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    events.wait_for(lambda e: isinstance(e, DownloadProgress) and e.done_bytes >= 300_000)
    assert downloads.cancel(job_id=job.job_id) is job
    assert job.state == "cancelled"  # cancel() returned because the job ended, not by timing out
    assert events.all(DownloadCancelled, job.job_id)
    entry = store.require(Q4)
    assert entry.status == "error" and "download again to resume" in (entry.error or "")
    assert downloads.running() == []
    kept = job.done_bytes
    served_before = hub.control.bytes_served(MODEL)
    hub.control.clear_faults()
    again, existing = downloads.start(MODEL, "q4")
    assert not existing and again.wait(30) and again.state == "finished", again.error
    assert events.all(DownloadStarted, again.job_id)[0].resumed_bytes > 0
    total = store.require(Q4).size
    assert hub.control.bytes_served(MODEL) - served_before == again.fetched_bytes < total
    assert again.fetched_bytes <= total - kept + 256 * 1024
    assert store.require(Q4).status == "ready"


def test_cancel_before_any_weight_bytes_removes_the_entry(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    hub.control.add_fault(f"{MODEL}/onnx/*", rate_limit_bytes_per_s=400_000, times=-1)
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    downloads.cancel(key=Q4)
    assert job.state == "cancelled" and store.get(Q4) is None
    assert not list(store.paths.cache.glob("models--*/snapshots/*/*"))
    with pytest.raises(Exception, match="no running download"):
        downloads.cancel(job_id=job.job_id)


def test_dropped_connection_resumes_from_the_bytes_on_disk(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    size = len(tiny_repo["onnx/model_q4.onnx_data"])
    hub.control.add_fault(DATA, drop_after_bytes=size // 2, times=1)
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "finished", job.error
    gets = hub.control.requests("GET", DATA)
    assert len(gets) == 2 and gets[0]["range"] is None and gets[1]["range"].startswith("bytes=")
    assert int(gets[1]["range"][6:-1]) > 0
    assert hub.control.bytes_served(DATA) < 2 * size
    assert hub.control.bytes_served(DATA) <= size + size // 2
    assert (Path(store.require(Q4).path) / "onnx/model_q4.onnx_data").read_bytes() == tiny_repo["onnx/model_q4.onnx_data"]
    progress = [e.done_bytes for e in events.all(DownloadProgress, job.job_id)]
    assert progress[-1] == store.require(Q4).size


def test_server_errors_are_retried(make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer) -> None:
    hub.control.add_fault(DATA, methods=["HEAD", "GET"], fail_status=503, times=2)
    _, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "finished", job.error


def test_persistent_server_errors_fail_after_retries(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    # 429: huggingface_hub retries 5xx itself (5 times, 1-8 s apart), 429 only through this layer
    hub.control.add_fault(DATA, methods=["HEAD", "GET"], fail_status=429, times=-1)
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "failed"
    failed = events.all(DownloadFailed, job.job_id)[0]
    assert failed.code == "hub_error" and "429" in failed.message
    assert store.require(Q4).status == "error" and store.require(Q4).error == failed.message
    assert len(hub.control.requests("HEAD", DATA)) == 1 + 3  # settings.hub.retries = 3


def test_corrupt_bytes_fail_with_integrity_and_no_ready_entry(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    hub.control.add_fault(DATA, corrupt=True, times=1)
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "failed"
    assert job.error is not None and job.error.code == "integrity"
    assert "onnx/model_q4.onnx_data" in str(job.error)
    assert events.all(DownloadFailed, job.job_id)[0].code == "integrity"
    assert store.require(Q4).status == "error"
    blob = Path(store.paths.cache) / ("models--" + MODEL.replace("/", "--")) / "blobs"
    data_sha = __import__("hashlib").sha256(tiny_repo["onnx/model_q4.onnx_data"]).hexdigest()
    assert not (blob / data_sha).exists()
    # a clean hub afterwards: the next start succeeds
    again, _ = downloads.start(MODEL, "q4")
    assert again.wait(30) and again.state == "finished" and store.require(Q4).status == "ready"


def test_start_errors_are_raised_at_once(
    make_downloads: Make, hub_repos: HubRepos, hf_env: Path, monkeypatch: pytest.MonkeyPatch, events: EventLog
) -> None:
    hub_repos.add_repo(MODEL, onnx_repo_files({"q8": 1000, "fp32": 2000}))
    hub_repos.add_repo("org/gated", onnx_repo_files({"q4": 1000}), gated=True)
    hub_repos.add_repo("org/weights", {"model.safetensors": b"x"})
    store, downloads = make_downloads()
    with pytest.raises(QuantNotOfferedError, match="does not offer q4; it offers q8, fp32") as info:
        downloads.start(MODEL, "q4")
    assert info.value.details["offered"] == ["q8", "fp32"]
    with pytest.raises(RepoNotFoundError):
        downloads.start("org/missing", "q4")
    with pytest.raises(NoOnnxError):
        downloads.start("org/weights", "q4")
    with pytest.raises(GatedRepoError, match="HF_TOKEN"):
        downloads.start("org/gated", "q4")
    with pytest.raises(ValueError, match="invalid model id"):
        downloads.start("../../etc/passwd", "q4")
    assert store.list() == [] and downloads.running() == [] and events.all() == []
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    job, _ = downloads.start("org/gated", "q4")
    assert job.wait(30) and job.state == "finished", job.error


def test_not_enough_disk_is_refused_before_starting(make_downloads: Make, tiny_repo: dict[str, bytes]) -> None:
    store, downloads = make_downloads(disk_margin_bytes=1 << 60)
    with pytest.raises(DiskFullError, match="needed") as info:
        downloads.start(MODEL, "q4")
    assert info.value.details["free"] > 0 and store.list() == []


def test_shutdown_leaves_jobs_resumable_for_the_next_worker(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer, events: EventLog
) -> None:
    hub.control.add_fault(f"{MODEL}/onnx/*", rate_limit_bytes_per_s=500_000, times=-1)
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    events.wait_for(lambda e: isinstance(e, DownloadProgress) and e.done_bytes >= 300_000)
    downloads.shutdown()
    assert job.state == "stopped" and not events.all(DownloadCancelled)
    [ended] = events.all(DownloadFailed)  # a follower is told, not left waiting
    assert (ended.job_id, ended.code) == (job.job_id, "interrupted") and job.job_id in ended.message
    assert Store(store.paths).require(Q4).status == "downloading"
    hub.control.clear_faults()
    served_before = hub.control.bytes_served(MODEL)
    store2, downloads2 = make_downloads()
    assert [e.key for e in store2.interrupted()] == [Q4]
    jobs = downloads2.resume_interrupted()
    assert [j.key for j in jobs] == [Q4]
    assert jobs[0].job_id == job.job_id  # resumed under the id its clients know
    assert jobs[0].wait(30) and jobs[0].state == "finished", jobs[0].error
    assert [e.job_id for e in events.all(DownloadFinished)] == [job.job_id]
    assert jobs[0].resumed_bytes > 0
    assert hub.control.bytes_served(MODEL) - served_before < store2.require(Q4).size
    assert store2.require(Q4).status == "ready"


def test_delete_after_download_keeps_shared_files_and_frees_the_rest(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer
) -> None:
    store, downloads = make_downloads()
    for quant in ("q4", "fp32"):
        job, _ = downloads.start(MODEL, quant)
        assert job.wait(30) and job.state == "finished"
    fp32 = store.require(f"huggingface-local/{MODEL}::fp32::auto")
    freed = downloads.delete(Q4)
    only_q4 = ["onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "onnx/model_q4.onnx_data_1"]
    assert freed == sum(len(tiny_repo[f]) for f in only_q4)
    assert not fp32.missing_files() and Store(store.paths).require(fp32.key).status == "ready"
    assert downloads.delete(fp32.key) >= fp32.size
    assert not any(store.paths.cache.glob("models--*"))


def test_corrupt_manifest_after_downloads_is_rebuilt_from_the_cache(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub: HubServer
) -> None:
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "finished"
    before = store.require(Q4)
    store.paths.manifest.write_text('{"version": 1, "variants": [')
    rebuilt = Store(store.paths)
    assert rebuilt.warnings and "manifest.corrupt-" in rebuilt.warnings[0]
    after = rebuilt.require(Q4)
    assert (after.files, after.size, after.commit, after.path, after.status) == (
        before.files, before.size, before.commit, before.path, "ready")
    assert len(list(store.paths.home.glob("manifest.corrupt-*.json"))) == 1


def test_a_new_commit_replaces_the_old_files_and_keeps_serving_meanwhile(
    make_downloads: Make, tiny_repo: dict[str, bytes], hub_repos: HubRepos, hub: HubServer
) -> None:
    store, downloads = make_downloads()
    job, _ = downloads.start(MODEL, "q4")
    assert job.wait(30) and job.state == "finished"
    old = store.require(Q4)
    old_graph = Path(os.path.realpath(Path(old.path) / "onnx/model_q4.onnx"))
    new_graph = b"a new graph" * 30_000  # 330 kB at 200 kB/s: the job is still running below
    commit = hub_repos.update_repo(MODEL, {"onnx/model_q4.onnx": new_graph})
    hub.control.add_fault(f"{MODEL}/onnx/*", rate_limit_bytes_per_s=200_000, times=-1)
    update, existing = downloads.start(MODEL, "q4")
    assert not existing
    assert store.require(Q4).status == "ready" and store.require(Q4).commit == old.commit  # still serving
    assert update.wait(30) and update.state == "finished", update.error
    new = store.require(Q4)
    assert new.commit == commit != old.commit and new.status == "ready"
    assert (Path(new.path) / "onnx/model_q4.onnx").read_bytes() == new_graph
    assert update.fetched_bytes == len(new_graph)  # unchanged files were not fetched again
    assert not old_graph.exists() and not Path(old.path).exists()
    assert (Path(new.path) / "onnx/model_q4.onnx_data").read_bytes() == tiny_repo["onnx/model_q4.onnx_data"]


def test_no_new_downloads_after_shutdown(make_downloads: Make, tiny_repo: dict[str, bytes]) -> None:
    _, downloads = make_downloads()
    downloads.shutdown()
    with pytest.raises(ConflictError, match="stopping"):
        downloads.start(MODEL, "q4")
