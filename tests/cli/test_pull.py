"""``hflocal pull`` as a long-running process: its progress bar on a terminal, Ctrl-C cancelling it."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from ipc.messages import Status
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, cli, start_agent
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

pytestmark = pytest.mark.timeout(180)

KEY = variant_key(BIG, "q4")
SIZE = 4 * MIB
DATA = f"{BIG}/{BIG_DATA}"
REPO_ROOT = Path(__file__).resolve().parents[2]


def pull_process(home: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "HFLOCAL_HOME": str(home)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "cli.main", "pull", BIG, "--quant", "q4"], env=env, cwd=REPO_ROOT, text=True,
        **kwargs,
    )


def test_ctrl_c_cancels_the_job_and_a_second_pull_resumes(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos
) -> None:
    files = big_repo_files(SIZE)
    publish(hub_repos, BIG, files)
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=1_000_000, times=-1)
    with EventRecorder(agent.info, ("download.",)) as events:
        events.wait_connected()
        proc = pull_process(agent.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: partial_bytes(agent.home, BIG) >= MIB, 60, "1 MiB on disk")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, (out, err)
        assert f"cancelled {KEY}; the bytes fetched are kept and `hflocal pull {BIG}` resumes" in err
        assert "Traceback" not in err
        started = next(e for t, e in events.events if t == "download.started")
        assert job_end(events, started["job_id"], 30)[0] == "download.cancelled"
    with agent.client() as client:
        assert client.call(Status()).downloads == []
    entry = manifest_entry(agent.home, KEY)
    assert entry is not None and entry["status"] == "error" and "cancelled" in entry["error"]
    on_disk = partial_bytes(agent.home, BIG)
    assert on_disk >= MIB

    hub.control.clear_faults()
    again = cli("pull", BIG, "--quant", "q4", home=agent.home)
    assert again.returncode == 0, again.stderr
    gets = [(r["range"], r["status"]) for r in hub.control.requests("GET", DATA) if r["status"] in (200, 206)]
    assert gets == [(None, 200), (f"bytes={on_disk}-", 206)]
    assert hub.control.bytes_served(DATA) < 2 * SIZE
    assert (Path(manifest_entry(agent.home, KEY)["path"]) / BIG_DATA).read_bytes() == files[BIG_DATA]  # type: ignore[index]


@pytest.mark.parametrize("columns", [100, 0], ids=["sized", "unsized"])
def test_progress_bar_on_a_terminal(agent: AgentProcess, hub: HubServer, hub_repos: HubRepos, columns: int) -> None:
    files = big_repo_files(SIZE)
    publish(hub_repos, BIG, files)
    total = sum(len(data) for data in files.values())
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=2_000_000, times=-1)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))  # 0: size unknown
    try:
        proc = pull_process(agent.home, stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        follower = -1
        drawn = b""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not chunk:
                    break
                drawn += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, drawn
    text = drawn.decode(errors="replace")
    assert f"pulling {KEY}" in text
    # tqdm redraws one line with carriage returns: percentages, a bar, byte counts and a rate.
    frames = [f for f in text.split("\r") if "Big-Weights" in f and "%|" in f]
    assert len(frames) >= 2, text
    assert "100%|" in frames[-1] and f"{total / 1e6:.2f}M/{total / 1e6:.2f}M" in frames[-1], frames[-1]
    assert any("B/s" in f for f in frames)
    assert out.startswith(f"installed {KEY}")
    assert json.loads(cli("ls", "--json", home=agent.home).stdout)["models"][0]["status"] == "ready"


def test_pull_says_so_when_the_agent_dies(agent: AgentProcess, hub: HubServer, hub_repos: HubRepos) -> None:
    publish(hub_repos, BIG, big_repo_files(SIZE))
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=1_000_000, times=-1)
    proc = pull_process(agent.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: partial_bytes(agent.home, BIG) >= MIB, 60, "1 MiB on disk")
        agent.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    last = err.strip().splitlines()[-1]
    assert last == (f"hflocal: the agent (pid {agent.proc.pid}) stopped; start it again with `hflocal serve` "
                    "and the download resumes"), err
    assert "Traceback" not in err


def test_an_agent_stop_ends_the_pull_and_the_download_resumes_under_its_job_id(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos, agents: list[AgentProcess]
) -> None:
    """A stop (not a crash) interrupts the job: the follower gets the terminal ``interrupted`` error
    at once, and the next agent continues the same job id, which ``status`` shows."""
    publish(hub_repos, BIG, big_repo_files(SIZE))
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=1_000_000, times=-1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "pull", BIG, "--quant", "q4", "--json"], cwd=REPO_ROOT, text=True,
        env={**os.environ, "HFLOCAL_HOME": str(agent.home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: partial_bytes(agent.home, BIG) >= MIB, 60, "1 MiB on disk")
        assert agent.stop() == 0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out) == (1, ""), (out, err)
    error = json.loads(err.strip().splitlines()[-1])["error"]
    assert error["code"] == "interrupted", error
    job_id = error["message"].split("resumes under job ")[1].split()[0]
    assert job_id.startswith("dl-")

    again = start_agent(agent.home)
    agents.append(again)

    def resumed() -> bool:
        status = json.loads(cli("status", "--json", home=agent.home).stdout)
        return any(d["job_id"] == job_id for d in status["downloads"])

    wait_until(resumed, 60, f"the resumed download under {job_id}")
    hub.control.clear_faults()

    def installed() -> bool:
        models = json.loads(cli("ls", "--json", home=agent.home).stdout)["models"]
        return [m["status"] for m in models] == ["ready"]

    wait_until(installed, 60, "the resumed download to finish")
