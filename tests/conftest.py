"""Suite-wide rules: hermetic homes, loopback only, and no silent skips in CI.

Under ``CI=true`` a skipped test is reported as a failure: tests that need a display, a tray host, a
browser or a notification server must run for real there (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hubserver.fixtures import hf_env, hub, hub_repos  # noqa: F401 - shared fixtures
from tests.support.exports import exports  # noqa: F401 - shared fixture

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is a failure here: {reason}"


@pytest.fixture(autouse=True)
def hermetic_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own ``HFLOCAL_HOME``; nothing reads or writes the user's real state."""
    home = tmp_path / "hflocal-home"
    home.mkdir()
    monkeypatch.setenv("HFLOCAL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HFLOCAL_API_KEY", raising=False)
    if "HF_ENDPOINT" not in os.environ:
        # Never the real Hub: a port nothing listens on makes any stray call fail fast.
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return home


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave screenshots and logs worth keeping (``test-artifacts/``, kept by CI)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Collects agents started by a test (``agents.append(start_agent(...))``) and stops them all."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


from tests.support.agentproc import AgentProcess  # noqa: E402
