"""The real worker over raw ZeroMQ: a ``zmq.REQ`` socket sending msgpack written by hand and a
``zmq.SUB`` socket decoding events, as a program in another language would (docs/protocol.md)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from ipc.messages import MAX_REQUEST_BYTES
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess
from tests.support.worker import (
    BIG,
    BIG_DATA,
    MIB,
    EventRecorder,
    big_repo_files,
    job_end,
    publish,
    raw_req,
    variant_key,
)

pytestmark = pytest.mark.timeout(180)


def test_ping_and_list_installed_by_hand(agent: AgentProcess) -> None:
    token = agent.info.token
    with raw_req(agent.info.request_endpoint) as req:
        reply = req.call({"type": "ping", "token": token, "id": 7})
        assert reply["type"] == "ok" and reply["id"] == 7
        assert reply["result"]["session"] == agent.info.session
        assert reply["result"]["pid"] == agent.proc.pid and reply["result"]["protocol"] == 1
        reply = req.call({"type": "list_installed", "token": token, "id": "second"})
        assert reply == {"type": "ok", "id": "second", "result": {"models": []}}
        reply = req.call({"type": "status", "token": token})
        assert reply["type"] == "ok" and reply["id"] is None
        assert reply["result"]["http_url"] == agent.http_url and reply["result"]["active"] is None


def test_download_events_by_hand_and_progress_is_rate_limited(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos
) -> None:
    size = 3 * MIB
    files = big_repo_files(size)
    publish(hub_repos, BIG, files)
    hub.control.add_fault(f"{BIG}/{BIG_DATA}", rate_limit_bytes_per_s=1_000_000, times=-1)
    total = sum(len(data) for name, data in files.items() if name != "README.md")
    key = variant_key(BIG, "q4")
    with EventRecorder(agent.info, ("download.", "model.installed_changed")) as events, \
            raw_req(agent.info.request_endpoint) as req:
        events.wait_connected()
        reply = req.call({"type": "download", "token": agent.info.token, "id": 1, "model_id": BIG,
                          "quantization": "q4"})
        assert reply["type"] == "ok", reply
        job_id = reply["result"]["job_id"]
        assert reply["result"] == {"job_id": job_id, "key": key, "existing": False}
        topic, finished = job_end(events, job_id)
        assert topic == "download.finished", finished
        ours = events.of_job(job_id)
        topics = [t for t, _ in ours]
        assert topics[0] == "download.started" and topics[-1] == "download.finished"
        assert set(topics[1:-1]) == {"download.progress"}
        started = ours[0][1]
        assert started["key"] == key and started["total_bytes"] == total and started["resumed_bytes"] == 0
        assert sorted(started["files"]) == sorted(f for f in files if f != "README.md")
        progress = [e for t, e in ours if t == "download.progress"]
        done = [e["done_bytes"] for e in progress]
        assert done == sorted(done) and done[-1] == total
        assert all(e["total_bytes"] == total and e["key"] == key for e in progress)
        assert any(e["current_file"] == BIG_DATA and e["rate_bps"] > 0 and e["eta_s"] > 0 for e in progress)
        assert progress[-1]["eta_s"] == 0
        assert finished["size_bytes"] == total and finished["fetched_bytes"] == total
        # At most ~5 progress events a second over the job's life (a rate property, with slack for the
        # first and the final event): the events' own timestamps measure the life.
        elapsed = finished["time"] - started["time"]
        assert len(progress) <= 5.5 * elapsed + 3, (len(progress), elapsed)
        assert len(progress) >= 3  # it did report progress while the ~3 s transfer ran
        assert all(e["session"] == agent.info.session for _, e in ours)
        events.wait_for(lambda t, e: t == "model.installed_changed" and key in e["keys"], 10, "installed_changed")
        listed = req.call({"type": "list_installed", "token": agent.info.token})["result"]["models"]
        assert [(m["key"], m["status"], m["size"]) for m in listed] == [(key, "ready", total)]


def _mp(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


BAD_FRAMES: list[tuple[str, Callable[[str], bytes], str, str]] = [
    ("garbage", lambda token: b"\xc1\xc1 not msgpack", "bad_request", "msgpack"),
    ("not a map", lambda token: _mp([1, 2]), "bad_request", "map"),
    ("unknown type", lambda token: _mp({"type": "fly", "token": token}), "bad_request", "unknown request type 'fly'"),
    ("missing field", lambda token: _mp({"type": "download", "token": token}), "bad_request", "model_id"),
    ("wrong token", lambda token: _mp({"type": "ping", "token": "not-the-token"}), "unauthorized", "token"),
    ("no token", lambda token: _mp({"type": "ping"}), "unauthorized", "token"),
    ("protocol", lambda token: _mp({"type": "ping", "token": token, "protocol": 2}), "protocol_mismatch", "protocol 2"),
    ("oversize", lambda token: b"\x80" + b" " * MAX_REQUEST_BYTES, "too_large", "exceeds"),
]


@pytest.mark.parametrize(("frame", "code", "words"), [b[1:] for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_get_an_error_and_the_worker_keeps_serving(
    agent: AgentProcess, frame: Callable[[str], bytes], code: str, words: str
) -> None:
    token = agent.info.token
    with raw_req(agent.info.request_endpoint) as req:
        reply = req.send_raw(frame(token))
        assert reply is not None and reply["type"] == "error", reply
        assert reply["code"] == code and words in reply["message"], reply
        assert "\n" not in reply["message"]
        again = req.call({"type": "ping", "token": token})
        assert again["type"] == "ok"
    assert agent.proc.poll() is None


def test_extra_frames_and_a_huge_frame_do_not_stop_the_worker(agent: AgentProcess) -> None:
    token = agent.info.token
    ping = msgspec.msgpack.encode({"type": "ping", "token": token})
    with raw_req(agent.info.request_endpoint) as req:
        reply = req.send_raw([ping, ping])
        assert reply is not None and reply["code"] == "bad_request" and "one body frame" in reply["message"]
    # Above the transport's hard cap (64 MiB) libzmq drops the sender's connection instead of buffering
    # the frame: that client gets no reply (documented), everyone else is served as before.
    with raw_req(agent.info.request_endpoint) as huge, raw_req(agent.info.request_endpoint) as other:
        assert huge.send_raw(b"\x80" + b" " * (64 * MIB + 1), timeout=3) is None
        assert other.call({"type": "ping", "token": token})["type"] == "ok"
    assert agent.proc.poll() is None
