"""Download jobs through the real worker: cancel, joining a running job, two variants at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipc.client import RemoteError
from ipc.messages import CancelDownload, Download, ListInstalled, Status
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, cli
from tests.support.worker import (
    BIG,
    BIG_DATA,
    MIB,
    EventRecorder,
    big_repo_files,
    job_end,
    manifest_entry,
    partial_bytes,
    publish,
    variant_key,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

Q4 = variant_key(BIG, "q4")
FP32 = variant_key(BIG, "fp32")
SIZE = 4 * MIB
DATA = f"{BIG}/{BIG_DATA}"


def test_cancel_by_job_id_and_by_key_keeps_the_bytes_for_a_resume(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos
) -> None:
    files = big_repo_files(SIZE)
    publish(hub_repos, BIG, files)
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=1_000_000, times=-1)
    home = agent.home
    with agent.client() as client, EventRecorder(agent.info, ("download.",)) as events:
        events.wait_connected()
        marks = [MIB, 2 * MIB]
        for how in ("job_id", "key"):
            job = client.call(Download(model_id=BIG, quantization="q4"))
            assert job.existing is False
            mark = marks.pop(0)
            wait_until(lambda mark=mark: partial_bytes(home, BIG) >= mark, 60, f"{mark} bytes on disk")
            request = CancelDownload(job_id=job.job_id) if how == "job_id" else CancelDownload(key=Q4)
            cancelled = client.call(request)
            assert (cancelled.job_id, cancelled.key) == (job.job_id, Q4)
            topic, _ = job_end(events, job.job_id)
            assert topic == "download.cancelled"
            assert client.call(Status()).downloads == []
            entry = manifest_entry(home, Q4)
            assert entry is not None and entry["status"] == "error" and "cancelled" in entry["error"]
            assert "download again to resume" in entry["error"]
            assert partial_bytes(home, BIG) >= mark
            with pytest.raises(RemoteError) as missing:
                client.call(CancelDownload(job_id=job.job_id))
            assert missing.value.code == "not_found"
        on_disk = partial_bytes(home, BIG)
        hub.control.clear_faults()
        job = client.call(Download(model_id=BIG, quantization="q4"))
        topic, finished = job_end(events, job.job_id)
        assert topic == "download.finished"
        started = next(e for t, e in events.of_job(job.job_id) if t == "download.started")
        assert started["resumed_bytes"] >= on_disk
    gets = [(r["range"], r["status"]) for r in hub.control.requests("GET", DATA) if r["status"] in (200, 206)]
    assert gets[0] == (None, 200) and all(status == 206 for _, status in gets[1:]) and len(gets) == 3
    assert gets[-1][0] == f"bytes={on_disk}-"
    assert hub.control.bytes_served(DATA) < 2 * SIZE
    assert partial_bytes(home, BIG) == 0


def test_asking_twice_for_a_running_variant_joins_its_job(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos
) -> None:
    publish(hub_repos, BIG, big_repo_files(SIZE))
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=2_000_000, times=-1)
    with agent.client() as client, EventRecorder(agent.info, ("download.",)) as events:
        events.wait_connected()
        first = client.call(Download(model_id=BIG, quantization="q4"))
        second = client.call(Download(model_id=BIG, quantization="q4", device="auto"))
        assert (second.job_id, second.key, second.existing) == (first.job_id, Q4, True)
        # The CLI joins it too, says so, and ends when that job ends.
        pulled = cli("pull", BIG, "--quant", "q4", home=agent.home)
        assert pulled.returncode == 0, pulled.stderr
        assert "already downloading; following it" in pulled.stderr
        assert pulled.stdout.startswith(f"installed {Q4}")
        topic, _ = job_end(events, first.job_id)
        assert topic == "download.finished"
        assert events.topics("download.started") == ["download.started"]  # one job, started once
    assert [r["status"] for r in hub.control.requests("GET", DATA)] == [200]


def test_two_variants_download_at_once(agent: AgentProcess, hub: HubServer, hub_repos: HubRepos) -> None:
    files = big_repo_files(SIZE, fp32_data_size=SIZE)
    publish(hub_repos, BIG, files)
    hub.control.add_fault(f"{BIG}/onnx/*_data", rate_limit_bytes_per_s=2_000_000, times=-1)
    with agent.client() as client, EventRecorder(agent.info, ("download.",)) as events:
        events.wait_connected()
        q4 = client.call(Download(model_id=BIG, quantization="q4"))
        fp32 = client.call(Download(model_id=BIG, quantization="fp32"))
        assert q4.job_id != fp32.job_id and (q4.key, fp32.key) == (Q4, FP32)

        def both_running() -> bool:
            running = client.call(Status()).downloads
            return {d.key for d in running} == {Q4, FP32} and all(d.done_bytes > 0 for d in running)

        wait_until(both_running, 60, "both downloads to be running at once")
        shown = cli("status", home=agent.home).stdout.splitlines()
        assert sorted(line.split()[1] for line in shown if line.startswith("download ")) == [FP32, Q4]
        listed = cli("ls", home=agent.home).stdout.splitlines()[1:]
        assert sorted((line.split()[0], line.split()[-1]) for line in listed) == [(FP32, "downloading"),
                                                                                  (Q4, "downloading")]
        assert job_end(events, q4.job_id)[0] == "download.finished"
        assert job_end(events, fp32.job_id)[0] == "download.finished"
        models = {m.key: m for m in client.call(ListInstalled()).models}
    assert {k: m.status for k, m in models.items()} == {Q4: "ready", FP32: "ready"}
    for key, data in ((Q4, BIG_DATA), (FP32, "onnx/model.onnx_data")):
        entry = manifest_entry(agent.home, key)
        assert entry is not None
        assert (Path(entry["path"]) / data).read_bytes() == files[data]
        assert (Path(entry["path"]) / "config.json").read_bytes() == files["config.json"]
    for data in (BIG_DATA, "onnx/model.onnx_data"):
        assert hub.control.bytes_served(f"{BIG}/{data}") == SIZE
