"""Search and file listings through the official client against the local hub."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent import hub as hubmod
from agent.errors import GatedRepoError, NetworkError, NoOnnxError, RepoNotFoundError
from tests.agent.conftest import MODEL, onnx_repo_files
from tests.hubserver import DEFAULT_TOKEN, HubRepos, HubServer


def test_endpoint_and_token_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1/")
    monkeypatch.setenv("HF_TOKEN", "abc")
    assert hubmod.endpoint() == "http://127.0.0.1:1" and hubmod.token() == "abc"
    assert hubmod.api().endpoint == "http://127.0.0.1:1"
    monkeypatch.delenv("HF_ENDPOINT")
    assert hubmod.endpoint() == "https://huggingface.co"


def test_search_follows_pagination_sorted_by_downloads(hub_repos: HubRepos, hub: HubServer, hf_env: Path) -> None:
    for i in range(8):
        hub_repos.add_repo(f"org/chat-{i}", {"onnx/model.onnx": b"x"}, downloads=i * 10, likes=i)
    hub_repos.add_repo("org/chat-not-onnx", {"model.safetensors": b"x"}, tags=["safetensors"], downloads=1000)
    hub_repos.add_repo("org/chat-embedder", {"onnx/model.onnx": b"x"}, pipeline_tag="feature-extraction", downloads=999)
    hub.control.reset_stats()
    found = hubmod.search("chat", limit=7)
    assert [m.id for m in found] == [f"org/chat-{i}" for i in range(7, 0, -1)]
    assert found[0].downloads == 70 and found[0].likes == 7 and found[0].pipeline_tag == "text-generation"
    assert "onnx" in found[0].tags and found[0].last_modified and not found[0].curated
    listing_calls = [r for r in hub.control.requests("GET") if r["key"] == "/api/models"]
    assert len(listing_calls) >= 3  # page size 3: the client followed Link headers
    assert hubmod.search("nothing-matches-this") == []


def test_empty_search_is_the_curated_list_enriched_when_known(hub_repos: HubRepos, hf_env: Path) -> None:
    hub_repos.add_repo(hubmod.CURATED[1], {"onnx/model_q4.onnx": b"x"}, downloads=1234, likes=5)
    found = hubmod.search("", limit=20)
    assert [m.id for m in found] == list(hubmod.CURATED)
    assert all(m.curated for m in found)
    assert found[1].downloads == 1234 and found[1].likes == 5
    assert found[0].downloads == 0  # unknown to this hub: listed bare
    assert [m.id for m in hubmod.search("  ", limit=2)] == list(hubmod.CURATED[:2])


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_curated_list_offline_and_network_errors_name_the_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dead = _dead_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    found = hubmod.search("")
    assert [m.id for m in found] == list(hubmod.CURATED) and all(m.curated for m in found)
    with pytest.raises(NetworkError, match=dead.replace(".", r"\.")):
        hubmod.search("llama")
    with pytest.raises(NetworkError) as info:
        hubmod.model_files("org/name")
    assert "connection refused" in str(info.value) and info.value.code == "network"


def test_model_files_lists_options_with_all_files_and_sizes(hub_repos: HubRepos, hf_env: Path) -> None:
    files = onnx_repo_files({"q4": 1000, "q8": 700, "fp32": 3000}, external={"q4": [5000, 4000], "fp32": [9000]})
    commit = hub_repos.add_repo(MODEL, files)
    result = hubmod.model_files(MODEL, installed=["q8"])
    assert result.model_id == MODEL and result.commit == commit and not result.gated
    by_quant = {o.quantization: o for o in result.options}
    assert list(by_quant) == ["q4", "q8", "fp32"]
    q4 = by_quant["q4"]
    assert q4.files[:3] == ["onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "onnx/model_q4.onnx_data_1"]
    assert "config.json" in q4.files and "README.md" not in q4.files
    assert q4.size == sum(len(files[f]) for f in q4.files)
    assert by_quant["fp32"].size == sum(len(files[f]) for f in by_quant["fp32"].files)
    assert by_quant["q8"].installed and not q4.installed
    listing = hubmod.fetch_listing(MODEL)
    assert listing.files["onnx/model_q4.onnx"].sha256 and listing.files["config.json"].sha256 is None
    assert listing.files["config.json"].etag  # git blob id: the cache's blob name


def test_model_files_errors(hub_repos: HubRepos, hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RepoNotFoundError, match="org/missing"):
        hubmod.model_files("org/missing")
    hub_repos.add_repo("org/weights-only", {"model.safetensors": b"x", "config.json": b"{}"})
    with pytest.raises(NoOnnxError, match="org/weights-only has no ONNX weights"):
        hubmod.model_files("org/weights-only")
    hub_repos.add_repo("org/gated", onnx_repo_files({"q4": 10}), gated=True)
    assert hubmod.model_files("org/gated").gated
    with pytest.raises(RepoNotFoundError, match="revision 'v9'"):
        hubmod.model_files("org/gated", revision="v9")
    with pytest.raises(ValueError, match="invalid model id"):
        hubmod.model_files("../etc")


def test_map_error_for_gated_downloads(hub_repos: HubRepos, hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import hf_hub_download

    hub_repos.add_repo("org/gated", onnx_repo_files({"q4": 10}), gated=True)
    with pytest.raises(Exception) as info:
        hf_hub_download("org/gated", "config.json", cache_dir=hf_env, endpoint=hubmod.endpoint(), token=False)
    err = hubmod.map_error(info.value, "org/gated")
    assert isinstance(err, GatedRepoError) and "HF_TOKEN" in str(err)
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    assert hubmod.token() == DEFAULT_TOKEN
