"""The supervisor with real workers (``hflocal serve`` subprocesses), no desktop needed.

Crashes are real: SIGKILL, SIGSTOP (a hung worker), and a settings file the worker refuses.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ipc.connection import pid_alive
from tests.support.agentproc import AgentProcess, start_agent
from tests.support.tray import Recorder, configure_ports, health, port_free, wait_until
from ui.observations import WorkerDown, WorkerGaveUp, WorkerRestarting, WorkerStarting, WorkerStopping, WorkerUp
from ui.restart_policy import RestartPolicy
from ui.supervisor import Supervisor, Timeouts

FAST = Timeouts(start_s=60, ping_interval_s=0.3, ping_timeout_s=1.0, ping_failures=2, shutdown_s=2.0, terminate_s=1.0,
                poll_stopped_s=0.3)
POLICY = RestartPolicy(base_delay_s=0.1, max_delay_s=0.5, window_s=60, max_crashes=3)


@pytest.fixture
def supervise(hermetic_home: Path) -> Iterator[tuple[Supervisor, Recorder]]:
    recorder = Recorder()
    sup = Supervisor(hermetic_home, recorder, policy=POLICY, timeouts=FAST)
    try:
        yield sup, recorder
    finally:
        sup.stop()


def gone(pid: int) -> bool:
    return not pid_alive(pid)


def test_restarts_a_killed_worker_and_stops_it_politely(supervise: tuple[Supervisor, Recorder], hermetic_home: Path) -> None:
    sup, seen = supervise
    http, req, pub = configure_ports(hermetic_home)
    sup.start()
    first = seen.wait_for(WorkerUp, 60)
    assert not first.attached and sup.child_pid == first.info.pid
    assert psutil.Process(first.info.pid).ppid() == os.getpid()
    assert health(http)["status"] == "ok"

    os.kill(first.info.pid, signal.SIGKILL)
    down = seen.wait_for(WorkerDown, 30)
    assert down.crashed and down.reason == "killed by SIGKILL"
    assert seen.wait_for(WorkerRestarting, 5).crashes == 1
    second = seen.wait_for(WorkerUp, 60, lambda o: o.info.pid != first.info.pid)
    assert wait_until(lambda: health(http), 30, "the restarted worker's /health")["status"] == "ok"

    sup.stop()
    assert seen.of(WorkerStopping)
    assert gone(second.info.pid) and gone(first.info.pid)
    assert not (hermetic_home / "agent.json").exists()  # a clean exit removes it: shutdown, not SIGKILL
    assert all(port_free(p) for p in (http, req, pub))
    worker_log = (hermetic_home / "logs" / "agent.log").read_text()
    assert "agent stopped" in worker_log


def test_gives_up_after_repeated_crashes_then_restarts_on_request(
    supervise: tuple[Supervisor, Recorder], hermetic_home: Path
) -> None:
    sup, seen = supervise
    (hermetic_home / "settings.toml").write_text("[http]\nport = 'not a port'\n")
    sup.start()
    gave_up = seen.wait_for(WorkerGaveUp, 90)
    assert gave_up.crashes == POLICY.max_crashes
    assert "settings.toml" in gave_up.reason and "exit status 1" in gave_up.reason
    assert len(seen.of(WorkerStarting)) == POLICY.max_crashes
    assert sup.child_pid is None

    http, _, _ = configure_ports(hermetic_home)  # the user fixes the settings and asks again
    mark = len(seen.items)
    sup.restart()
    up = seen.wait_for(WorkerUp, 60, after=mark)
    assert health(http)["status"] == "ok" and up.info.pid == sup.child_pid


def test_a_hung_worker_is_killed_and_replaced(supervise: tuple[Supervisor, Recorder], hermetic_home: Path) -> None:
    sup, seen = supervise
    http, _, _ = configure_ports(hermetic_home)
    sup.start()
    first = seen.wait_for(WorkerUp, 60)
    os.kill(first.info.pid, signal.SIGSTOP)
    try:
        down = seen.wait_for(WorkerDown, 30)
        assert down.crashed and "stopped answering" in down.reason
        second = seen.wait_for(WorkerUp, 60, lambda o: o.info.pid != first.info.pid)
        assert gone(first.info.pid)  # SIGTERM stays pending on a stopped process: SIGKILL ended it
        assert wait_until(lambda: health(http), 30, "the new worker's /health")
        assert second.info.session != first.info.session
    finally:
        if pid_alive(first.info.pid):
            os.kill(first.info.pid, signal.SIGKILL)


def test_stop_escalates_to_sigkill_for_a_worker_that_does_not_answer(
    supervise: tuple[Supervisor, Recorder], hermetic_home: Path
) -> None:
    sup, seen = supervise
    configure_ports(hermetic_home)
    sup.start()
    up = seen.wait_for(WorkerUp, 60)
    proc = psutil.Process(up.info.pid)
    proc.suspend()
    sup.stop()
    assert gone(up.info.pid)
    assert seen.of(WorkerStopping)


def test_attaches_to_a_headless_agent_and_leaves_it_running(
    hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    agent = start_agent(hermetic_home)
    agents.append(agent)
    seen = Recorder()
    sup = Supervisor(hermetic_home, seen, policy=POLICY, timeouts=FAST)
    sup.start()
    try:
        up = seen.wait_for(WorkerUp, 30)
        assert up.attached and up.info.pid == agent.proc.pid
        assert sup.child_pid is None
        assert not any(p.cmdline()[-3:-1] == ["serve", "--parent-pid"] for p in psutil.Process().children(recursive=True))
    finally:
        sup.stop()
    assert agent.proc.poll() is None  # never stop an agent the tray did not start
    with agent.client() as client:
        from ipc.messages import Ping

        assert client.call(Ping()).pid == agent.proc.pid


def test_follows_a_headless_agent_that_stops_and_comes_back(hermetic_home: Path, agents: list[AgentProcess]) -> None:
    agent = start_agent(hermetic_home)
    seen = Recorder()
    sup = Supervisor(hermetic_home, seen, policy=POLICY, timeouts=FAST)
    sup.start()
    try:
        seen.wait_for(WorkerUp, 30)
        agent.stop()
        down = seen.wait_for(WorkerDown, 30)
        assert not down.crashed and str(agent.proc.pid) in down.reason
        assert sup.child_pid is None  # a clean stop is respected: no worker of its own
        again = start_agent(hermetic_home)
        agents.append(again)
        up = seen.wait_for(WorkerUp, 30, lambda o: o.info.pid == again.proc.pid)
        assert up.attached
        assert seen.of(WorkerStarting) == []  # it never started a worker of its own meanwhile
    finally:
        sup.stop()


def test_restart_runtime_while_attached_replaces_the_headless_agent_with_its_own(
    hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    """"Restart runtime" is the one time the tray stops an agent it did not start: politely."""
    agent = start_agent(hermetic_home)
    agents.append(agent)
    http, _, _ = configure_ports(hermetic_home)  # for the worker the tray starts afterwards
    seen = Recorder()
    sup = Supervisor(hermetic_home, seen, policy=POLICY, timeouts=FAST)
    sup.start()
    try:
        assert seen.wait_for(WorkerUp, 30).attached
        mark = len(seen.items)
        sup.restart()
        assert agent.proc.wait(30) == 0  # it accepted the shutdown request
        own = seen.wait_for(WorkerUp, 60, after=mark)
        assert not own.attached and own.info.pid == sup.child_pid != agent.proc.pid
        assert health(http)["status"] == "ok"
    finally:
        sup.stop()
    assert sup.child_pid is None
