"""``hflocal serve`` as a process: signals, one agent per home, stale and busy resources, settings,
the connection file, and the active model surviving a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ipc.connection import pid_alive
from ipc.messages import Ping, Status
from tests.hubserver import HubServer
from tests.hubserver.process import REPO_ROOT
from tests.support.agentproc import AgentProcess, cli, free_port, run_serve, serve_args, start_agent
from tests.support.worker import TINY, TINY_REPLY, variant_key, wait_until

pytestmark = pytest.mark.timeout(180)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("hflocal: ")
    return lines[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_the_worker_cleanly(hermetic_home: Path, agents: list[AgentProcess], sig: int) -> None:
    agent = start_agent(hermetic_home)
    agents.append(agent)
    with agent.client() as client:
        assert client.call(Ping()).pid == agent.proc.pid
    assert agent.signal(sig) == 0
    assert not (hermetic_home / "agent.json").exists()
    assert "Traceback" not in agent.output()
    # The ports are free again: a new agent binds the very same ones.
    again = start_agent(hermetic_home, ports=agent.ports)
    agents.append(again)
    assert again.info.request_endpoint == agent.info.request_endpoint and again.http_url == agent.http_url
    assert again.info.token != agent.info.token and again.info.session != agent.info.session


def test_agent_json_is_private_and_describes_the_worker(hermetic_home: Path, agents: list[AgentProcess]) -> None:
    agent = start_agent(hermetic_home)
    agents.append(agent)
    path = hermetic_home / "agent.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(hermetic_home.stat().st_mode) == 0o700
    info = json.loads(path.read_text())
    http, req, pub = agent.ports
    assert info["pid"] == agent.proc.pid and info["protocol"] == 1 and len(info["token"]) >= 32
    assert info["http_url"] == f"http://127.0.0.1:{http}"
    assert info["request_endpoint"] == f"tcp://127.0.0.1:{req}" and info["event_endpoint"] == f"tcp://127.0.0.1:{pub}"
    assert info["home"] == str(hermetic_home)
    assert httpx.get(info["http_url"] + "/health", timeout=10).json()["status"] == "ok"


def test_a_second_agent_on_the_same_home_refuses(hermetic_home: Path, agents: list[AgentProcess]) -> None:
    agent = start_agent(hermetic_home)
    agents.append(agent)
    before = (hermetic_home / "agent.json").read_bytes()
    line = one_line(run_serve(hermetic_home))  # other, free ports: only the home is shared
    assert "another hflocal agent is already running" in line and f"pid {agent.proc.pid}" in line
    assert "hflocal stop" in line
    assert (hermetic_home / "agent.json").read_bytes() == before
    with agent.client() as client:
        assert client.call(Ping()).pid == agent.proc.pid


def test_a_stale_agent_json_is_replaced(hermetic_home: Path, agents: list[AgentProcess]) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (hermetic_home / "agent.json").write_text(json.dumps({
        "http_url": "http://127.0.0.1:1", "request_endpoint": "tcp://127.0.0.1:1", "event_endpoint": "tcp://127.0.0.1:2",
        "token": "old", "pid": dead.pid, "session": "old",
    }))
    agent = start_agent(hermetic_home)  # waits until agent.json names the new pid
    agents.append(agent)
    assert json.loads((hermetic_home / "agent.json").read_text())["pid"] == agent.proc.pid
    assert cli("status", home=hermetic_home).returncode == 0


def test_a_taken_http_port_is_one_clear_line(hermetic_home: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_serve(hermetic_home, ports=(port, free_port(), free_port()))
    line = one_line(result)
    assert f"HTTP port {port} on 127.0.0.1 is already in use" in line and "--port" in line
    assert not (hermetic_home / "agent.json").exists()


@pytest.mark.parametrize("which", ["request", "event"])
def test_a_taken_zeromq_port_is_one_clear_line(hermetic_home: Path, which: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        ports = (free_port(), port, free_port()) if which == "request" else (free_port(), free_port(), port)
        result = run_serve(hermetic_home, ports=ports)
    line = one_line(result)
    assert f"cannot bind the ZeroMQ {which} socket to tcp://127.0.0.1:{port}" in line
    assert "settings.toml [zmq]" in line
    assert not (hermetic_home / "agent.json").exists()


def test_ports_taken_by_another_agent_on_another_home(tmp_path: Path, agents: list[AgentProcess]) -> None:
    agent = start_agent(tmp_path / "first-home")
    agents.append(agent)
    http, req, pub = agent.ports
    line = one_line(run_serve(tmp_path / "second-home", ports=(free_port(), req, free_port())))
    assert "cannot bind the ZeroMQ request socket" in line and "another hflocal agent" in line
    line = one_line(run_serve(tmp_path / "second-home", ports=(http, free_port(), free_port())))
    assert f"HTTP port {http}" in line
    with agent.client() as client:
        assert client.call(Ping()).pid == agent.proc.pid


BAD_OPTIONS = [
    (("--port", "99999"), "--port 99999 is not a port number (0-65535)"),
    (("--zmq-request", "garbage"), "--zmq-request 'garbage' is not a ZeroMQ endpoint"),
    (("--zmq-events", "tcp://127.0.0.1"), "--zmq-events 'tcp://127.0.0.1' is not a ZeroMQ endpoint"),
    (("--zmq-request", "tcp://127.0.0.1:45999", "--zmq-events", "tcp://127.0.0.1:45999"),
     "the ZeroMQ request and event endpoints must differ (both are tcp://127.0.0.1:45999)"),
    (("--host", "0.0.0.0"), "refusing to listen on 0.0.0.0: set http.allow_non_loopback = true and http.api_key"),
]


@pytest.mark.parametrize(("args", "words"), BAD_OPTIONS, ids=[o[0][-2] + "=" + o[0][-1] for o in BAD_OPTIONS])
def test_bad_options_are_one_clear_line(hermetic_home: Path, args: tuple[str, ...], words: str) -> None:
    line = one_line(run_serve(hermetic_home, extra_args=args))
    assert words in line, line
    assert not (hermetic_home / "agent.json").exists()


BAD_SETTINGS = [
    ("unparseable", b"[http\nport = 1\n", ["not valid TOML", "left as it is"]),
    ("bad quantization", b'[models]\ndefault_quantization = "q3"\n',
     ["models.default_quantization = 'q3' is not allowed", "q4, q8, fp16, fp32"]),
    ("bad port", b"[http]\nport = 70000\n", ["http.port", "<= 65535"]),
    ("wrong type", b'[hub]\nresume_on_start = "sometimes"\n', ["hub.resume_on_start", "bool"]),
    ("unknown key", b"[http]\nprot = 9000\n", ["http.prot", "unknown setting"]),
    ("bad endpoint", b'[zmq]\nrequest = "localhost:9232"\n', ["zmq.request", "tcp://127.0.0.1:9232"]),
]


@pytest.mark.parametrize(("text", "words"), [b[1:] for b in BAD_SETTINGS], ids=[b[0] for b in BAD_SETTINGS])
def test_bad_settings_are_reported_and_left_untouched(hermetic_home: Path, text: bytes, words: list[str]) -> None:
    path = hermetic_home / "settings.toml"
    path.write_bytes(text)
    before = path.stat()
    line = one_line(run_serve(hermetic_home))
    assert str(path) in line
    for word in words:
        assert word in line, line
    assert path.read_bytes() == text
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert not (hermetic_home / "agent.json").exists()


def test_the_active_model_is_remembered_and_reloaded_at_start(
    tiny_hub: HubServer, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    key = variant_key(TINY, "q4")
    first = start_agent(hermetic_home)
    agents.append(first)
    assert cli("pull", TINY, "--quant", "q4", home=hermetic_home).returncode == 0
    assert cli("use", key, home=hermetic_home).returncode == 0
    assert first.stop() == 0
    assert json.loads((hermetic_home / "manifest.json").read_text())["active"] == key

    second = start_agent(hermetic_home)
    agents.append(second)
    with second.client() as client:
        wait_until(lambda: client.call(Status()).model_state == "ready", 60, "the active model to load at start")
        status = client.call(Status())
    assert status.active == key and status.loaded == [key] and status.warnings == []
    assert httpx.get(second.http_url + "/health", timeout=10).json()["model"] == key
    answer = httpx.post(second.http_url + "/v1/chat/completions", timeout=60,
                        json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert answer["model"] == key and answer["choices"][0]["message"]["content"] == TINY_REPLY


def test_a_remembered_model_whose_files_vanished_is_a_warning(
    tiny_hub: HubServer, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    key = variant_key(TINY, "q4")
    first = start_agent(hermetic_home)
    agents.append(first)
    assert cli("pull", TINY, "--quant", "q4", home=hermetic_home).returncode == 0
    assert cli("use", key, "--no-wait", home=hermetic_home).returncode == 0
    wait_until(lambda: json.loads((hermetic_home / "manifest.json").read_text())["active"] == key, 60,
               "the choice to be remembered")
    assert first.stop() == 0
    entry = json.loads((hermetic_home / "manifest.json").read_text())["variants"][key]
    os.unlink(Path(entry["path"]) / "onnx/model_q4.onnx")

    second = start_agent(hermetic_home)
    agents.append(second)
    status = json.loads(cli("status", "--json", home=hermetic_home).stdout)
    assert status["active"] == key and status["model_state"] == "unloaded" and status["loaded"] == []
    assert status["warnings"] == [
        f"the remembered active model {key} was not loaded: it is error: files missing: onnx/model_q4.onnx"]
    listed = json.loads(cli("ls", "--json", home=hermetic_home).stdout)["models"]
    assert [(m["key"], m["status"], m["error"]) for m in listed] == [(key, "error", "files missing: onnx/model_q4.onnx")]
    answer = httpx.post(second.http_url + "/v1/chat/completions", timeout=60,
                        json={"messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code >= 400 and "files missing" in answer.json()["error"]["message"]


PARENT = """
import subprocess, sys, time
args = [sys.executable, "-m", "cli.main", "serve", "--parent-pid", str(__import__("os").getpid()), *sys.argv[1:]]
child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_the_worker_exits_when_its_parent_dies(hermetic_home: Path) -> None:
    """What the tray relies on: a worker started with --parent-pid stops (cleanly) once that parent is gone."""
    args = serve_args((free_port(), free_port(), free_port()))[4:]  # the port options
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *args], stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT, env={**os.environ, "HFLOCAL_HOME": str(hermetic_home)})
    worker_pid = 0
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        wait_until(lambda: (hermetic_home / "agent.json").exists(), 60, "the worker to start")
        assert json.loads((hermetic_home / "agent.json").read_text())["pid"] == worker_pid
        parent.kill()
        parent.wait(10)
        wait_until(lambda: not pid_alive(worker_pid), 30, "the orphaned worker to exit")
        assert not (hermetic_home / "agent.json").exists()
        assert "parent process" in (hermetic_home / "logs" / "agent.log").read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        if worker_pid and pid_alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def test_port_zero_everywhere_means_free_ports_named_in_agent_json(
    hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    agent = start_agent(hermetic_home, extra_args=(
        "--port", "0", "--zmq-request", "tcp://127.0.0.1:0", "--zmq-events", "tcp://127.0.0.1:0"))
    agents.append(agent)
    info = agent.info
    ports = {int(url.rsplit(":", 1)[1]) for url in (info.http_url, info.request_endpoint, info.event_endpoint)}
    assert len(ports) == 3 and 0 not in ports
    assert httpx.get(info.http_url + "/health", timeout=10).json()["port"] == int(info.http_url.rsplit(":", 1)[1])
    with agent.client() as client:
        assert client.call(Ping()).pid == agent.proc.pid


def test_port_zero_in_settings(hermetic_home: Path, agents: list[AgentProcess]) -> None:
    (hermetic_home / "settings.toml").write_text(
        '[http]\nport = 0\n[zmq]\nrequest = "tcp://127.0.0.1:0"\nevents = "tcp://127.0.0.1:0"\n')
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], cwd=REPO_ROOT,
                            env={**os.environ, "HFLOCAL_HOME": str(hermetic_home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or (hermetic_home / "agent.json").exists(), 60, "the start")
        assert proc.poll() is None, proc.communicate()[1]
        info = json.loads((hermetic_home / "agent.json").read_text())
        assert not info["request_endpoint"].endswith(":0") and info["request_endpoint"] != info["event_endpoint"]
        assert cli("status", home=hermetic_home).returncode == 0
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0
