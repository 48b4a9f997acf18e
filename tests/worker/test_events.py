"""Events of the real worker on a raw SUB socket (heartbeat, model.*, installed_changed, stopping),
and the Python clients across a worker restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from ipc.client import AsyncClient, CallTimeout, Client
from ipc.messages import Ping
from tests.hubserver import HubServer
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import TINY, TINY_REPLY, EventRecorder, raw_req, variant_key

pytestmark = pytest.mark.timeout(180)

Q4 = variant_key(TINY, "q4")


def test_heartbeat_and_stopping(agent: AgentProcess) -> None:
    with EventRecorder(agent.info, ("worker.",)) as events:
        _, beat = events.wait_for(lambda t, e: t == "worker.status", 30, "a heartbeat")
        assert beat == {**beat, "topic": "worker.status", "pid": agent.proc.pid, "state": "ready",
                        "http_url": agent.http_url, "downloads": 0, "active": None, "model_state": "none",
                        "session": agent.info.session}
        assert agent.signal(signal.SIGTERM) == 0
        events.wait_for(lambda t, e: t == "worker.status" and e["state"] == "stopping", 30, "the stopping status")


def test_activate_and_delete_by_hand_publish_model_events(agent: AgentProcess) -> None:
    assert cli("pull", TINY, "--quant", "q4", home=agent.home).returncode == 0
    token = agent.info.token
    with EventRecorder(agent.info, ("model.",)) as events, raw_req(agent.info.request_endpoint) as req:
        events.wait_connected()
        reply = req.call({"type": "activate", "token": token, "key": TINY})  # a bare model id
        assert reply["type"] == "ok", reply
        job_id = reply["result"]["job_id"]
        assert reply["result"]["key"] == Q4
        _, ready = events.wait_for(lambda t, e: t in ("model.ready", "model.failed"), 60, "the load to end")
        assert ready["topic"] == "model.ready" and ready["key"] == Q4 and ready["job_id"] == job_id, ready
        assert ready["provider"] == "CPUExecutionProvider" and ready["load_s"] >= 0
        events.wait_for(lambda t, e: t == "model.activated" and e["key"] == Q4, 30, "model.activated")
        ours = [t for t, e in events.events if e.get("key") == Q4]
        assert ours.index("model.loading") < ours.index("model.ready")
        loading = next(e for t, e in events.events if t == "model.loading")
        assert loading["job_id"] == job_id

        answer = httpx.post(agent.http_url + "/v1/chat/completions", timeout=60,
                            json={"messages": [{"role": "user", "content": "Hi"}]}).json()
        assert answer["choices"][0]["message"]["content"] == TINY_REPLY

        reply = req.call({"type": "activate", "token": token, "key": variant_key(TINY, "fp16")})
        assert reply["type"] == "error" and reply["code"] == "not_found", reply

        reply = req.call({"type": "delete", "token": token, "key": Q4})
        assert reply["type"] == "ok" and reply["result"]["key"] == Q4 and reply["result"]["freed_bytes"] > 0
        events.wait_for(lambda t, e: t == "model.installed_changed" and e["keys"] == [], 30, "installed_changed")
        events.wait_for(lambda t, e: t == "model.unloaded" and e["key"] == Q4, 30, "the deleted model to unload")
        status = req.call({"type": "status", "token": token})["result"]
    assert status["active"] is None and status["loaded"] == [] and status["model_state"] == "none"
    health = httpx.get(agent.http_url + "/health", timeout=10).json()
    assert health["model"] is None


def test_clients_survive_a_worker_restart(tiny_hub: HubServer, hermetic_home: Path, agents: list[AgentProcess]) -> None:
    first = start_agent(hermetic_home)
    agents.append(first)
    client = Client(hermetic_home, timeout=5)
    aclient = AsyncClient(hermetic_home, timeout=5)
    try:
        assert client.call(Ping()).session == first.info.session
        assert asyncio.run(aclient.call(Ping())).session == first.info.session
        assert first.stop() == 0

        # Same ports, new token: the clients re-read agent.json after "unauthorized" and retry.
        second = start_agent(hermetic_home, ports=first.ports)
        agents.append(second)
        assert client.call(Ping()).session == second.info.session
        assert asyncio.run(aclient.call(Ping())).session == second.info.session
        assert second.stop() == 0

        # Other ports: the call times out (a deadline, never a hang); the client then finds the new one.
        third = start_agent(hermetic_home)
        agents.append(third)
        with pytest.raises(CallTimeout):
            client.call(Ping(), timeout=1)
        assert client.call(Ping()).session == third.info.session
        with pytest.raises(CallTimeout):
            asyncio.run(aclient.call(Ping(), timeout=1))
        assert asyncio.run(aclient.call(Ping())).session == third.info.session
    finally:
        client.close()
        aclient.close()
