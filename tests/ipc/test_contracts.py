"""Contracts the two processes share are defined once: the tray keeps the protocol's own types, and the
agent's manifest entry reaches the wire with every field the two have in common."""

from __future__ import annotations

import msgspec

from agent.store import VariantEntry
from ipc.messages import DownloadInfo, DownloadProgress, InstalledModel, StatusResult
from ui.state import Snapshot, reduce


def test_every_field_a_manifest_entry_shares_with_installed_model_reaches_the_wire() -> None:
    entry = VariantEntry(
        key="huggingface-local/org/m::q4::cpu", model_id="org/m", name="m", quantization="q4", device="cpu",
        files=["onnx/model_q4.onnx"], size=123, commit="abc", downloaded_at="2026-01-01T00:00:00Z",
        status="failed", error="bad file", source="import", path="/x", revision="r1", kind="embed", job_id="j1",
    )
    installed = entry.to_installed(active_key=entry.key)
    wire = msgspec.structs.asdict(installed)
    shared = set(InstalledModel.__struct_fields__) & set(VariantEntry.__struct_fields__)
    assert shared >= {"key", "files", "status", "error", "source", "kind"}
    assert {name: wire[name] for name in shared} == {name: getattr(entry, name) for name in shared}
    assert installed.active is True and entry.to_installed(active_key=None).active is False
    assert installed.files is not entry.files


def test_the_tray_keeps_the_download_the_worker_reported_as_the_protocol_type() -> None:
    info = DownloadInfo(job_id="j1", key="huggingface-local/org/m::q4::cpu", model_id="org/m", quantization="q4",
                        done_bytes=10, total_bytes=100, rate_bps=5.0, eta_s=18.0, current_file="a.onnx")
    status = StatusResult(session="s", pid=1, version="0", uptime_s=1.0, http_url="http://127.0.0.1:9231", home="/h",
                          downloads=[info])
    snapshot, _ = reduce(Snapshot(), status)
    assert snapshot.downloads == (info,)
    progressed, _ = reduce(snapshot, DownloadProgress(job_id="j1", key=info.key, done_bytes=60, total_bytes=100,
                                                      rate_bps=6.0, eta_s=6.0, current_file="b.onnx"))
    assert progressed.downloads == (
        msgspec.structs.replace(info, done_bytes=60, rate_bps=6.0, eta_s=6.0, current_file="b.onnx"),
    )
