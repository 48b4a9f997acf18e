"""The helpers both processes share (ipc.home, ipc.files, ipc.loopback): one rule each, checked where the two sides meet."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.http.access import host_allowed
from agent.settings import HttpSettings, Settings
from agent.worker import StartupError, _check_exposure
from ipc.client import Client
from ipc.files import atomic_write
from ipc.messages import Ping, PingResult
from tests.support.agentproc import AgentProcess, start_agent


def test_atomic_write_replaces_whole_and_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    target = folder / "manifest.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new content", mode=0o640)
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640

    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]  # fails inside the write
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"], "the temp file was left behind"


def test_a_client_with_hflocal_home_set_finds_the_agent_the_agent_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agents: list[AgentProcess]
) -> None:
    """``HFLOCAL_HOME=~/state``: the agent expands it; a client given no home must look in the same place."""
    user = tmp_path / "user"
    user.mkdir()
    started = start_agent(user / "state", env={"HOME": str(user), "HFLOCAL_HOME": "~/state"})
    agents.append(started)

    monkeypatch.setenv("HOME", str(user))
    monkeypatch.setenv("HFLOCAL_HOME", "~/state")
    with Client(timeout=20) as client:
        result = client.call(Ping())
    assert isinstance(result, PingResult)
    assert result.pid == started.proc.pid


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("localhost", True),
     ("LOCALHOST", True), ("127.example.com", False), ("0.0.0.0", False), ("192.168.1.10", False)],
)
def test_the_exposure_check_and_the_host_check_agree_on_loopback(host: str, local: bool) -> None:
    """Binding to ``host`` needs no opt-in exactly when the HTTP ``Host`` check takes it as this machine."""
    settings = Settings(http=HttpSettings(host=host))
    if local:
        _check_exposure(settings)
    else:
        with pytest.raises(StartupError):
            _check_exposure(settings)
    bracketed = f"[{host}]" if ":" in host else host
    assert host_allowed(f"{bracketed}:9231", 9231, bound_host="127.0.0.1") is local
