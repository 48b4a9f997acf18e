"""The local hub against the official huggingface_hub client (0.36), unchanged.

Every client call passes ``endpoint=hub.url``: huggingface_hub bakes ``HF_ENDPOINT`` into its URL
templates at import time, so setting the variable in a fixture would not reach this process.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from pathlib import Path

import pytest
import requests
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from . import DEFAULT_TOKEN, HubProcess, HubRepos, HubServer, git_blob_sha1

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
CONFIG = b'{"model_type": "llama"}\n'
# Bigger than the client's 10 MiB read chunk: a dropped connection keeps only whole chunks.
BIG = hashlib.sha256(b"seed").digest() * (12 * MiB // 32)


def add_tiny_model(repos: HubRepos, repo_id: str = "org/tiny", **kwargs: object) -> str:
    files: dict[str, bytes | Path] = {
        "config.json": CONFIG,
        "tokenizer.json": b'{"version": "1.0"}',
        "onnx/model.onnx": b"\x08\x07" * 5000,
        "onnx/model_q4.onnx": b"\x08\x04" * 3000,
        "onnx/model_q4.onnx_data": b"\x01" * 7000,
    }
    return repos.add_repo(repo_id, files, **kwargs)  # type: ignore[arg-type]


def blob_name(data: bytes, lfs: bool) -> str:
    return hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)


def raw(
    hub: HubServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request without the client, to check status lines and headers exactly."""
    conn = http.client.HTTPConnection(hub.host, hub.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


# ---- listing and metadata -----------------------------------------------------------------------


def test_list_models_filters_sorts_and_paginates(hub: HubServer, hf_env: Path) -> None:
    for i, name in enumerate(["phi-3", "phi-4", "qwen", "llama", "smollm", "gemma", "mistral"]):
        hub.repos.add_repo(f"onnx-community/{name}", {"config.json": CONFIG}, downloads=100 * i, likes=i)
    hub.repos.add_repo("other/phi-gguf", {"m.gguf": b"g"}, tags=("gguf",), library_name="gguf", downloads=10_000)
    api = HfApi(endpoint=hub.url)

    top = list(api.list_models(filter="onnx", sort="downloads", limit=5))
    assert [m.id.split("/")[1] for m in top] == ["mistral", "gemma", "smollm", "llama", "qwen"]
    assert [m.downloads for m in top] == [600, 500, 400, 300, 200]
    pages = [r for r in hub.control.requests("GET") if r["key"] == "/api/models"]
    assert len(pages) == 2  # page size is capped at 3: the client followed the Link header once
    assert "cursor=3" in pages[1]["path"] and "sort=downloads" in pages[1]["path"]
    assert "filter=onnx" in pages[1]["path"] and "limit=5" in pages[1]["path"]

    assert sorted(m.id for m in api.list_models(search="phi")) == [
        "onnx-community/phi-3",
        "onnx-community/phi-4",
        "other/phi-gguf",
    ]
    assert [m.id for m in api.list_models(search="phi", filter="gguf")] == ["other/phi-gguf"]
    assert len(list(api.list_models(author="onnx-community"))) == 7
    assert [m.id for m in api.list_models(sort="downloads", limit=1)] == ["other/phi-gguf"]
    full = next(iter(api.list_models(search="qwen", full=True)))
    assert full.siblings is not None and [s.rfilename for s in full.siblings] == ["config.json"]
    assert next(iter(api.list_models(search="qwen"))).siblings is None
    assert full.pipeline_tag == "text-generation" and full.library_name == "transformers.js"
    assert full.last_modified is not None and full.private is False


def test_model_info_with_files_metadata(hub: HubServer, hf_env: Path) -> None:
    sha = add_tiny_model(hub.repos)
    api = HfApi(endpoint=hub.url)
    info = api.model_info("org/tiny", files_metadata=True)
    assert info.sha == sha and len(sha) == 40
    assert info.gated is False and "onnx" in (info.tags or [])
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert siblings["config.json"].size == len(CONFIG)
    assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert siblings["config.json"].lfs is None
    lfs = siblings["onnx/model.onnx"].lfs
    assert lfs is not None and lfs.sha256 == hashlib.sha256(b"\x08\x07" * 5000).hexdigest()
    assert lfs.size == 10000 and lfs.pointer_size > 100
    assert siblings["onnx/model_q4.onnx_data"].lfs is not None
    assert api.model_info("org/tiny", revision=sha).sha == sha
    plain = api.model_info("org/tiny")
    assert plain.siblings is not None and plain.siblings[0].size is None


def test_list_repo_tree(hub: HubServer, hf_env: Path) -> None:
    add_tiny_model(hub.repos)
    api = HfApi(endpoint=hub.url)
    everything = list(api.list_repo_tree("org/tiny", recursive=True))
    assert {e.path for e in everything} == {
        "onnx",
        "config.json",
        "tokenizer.json",
        "onnx/model.onnx",
        "onnx/model_q4.onnx",
        "onnx/model_q4.onnx_data",
    }
    files = {e.path: e for e in everything if isinstance(e, RepoFile)}
    assert files["config.json"].blob_id == git_blob_sha1(CONFIG) and files["config.json"].lfs is None
    assert files["onnx/model.onnx"].lfs is not None and files["onnx/model.onnx"].size == 10000
    top = {e.path for e in api.list_repo_tree("org/tiny")}
    assert top == {"onnx", "config.json", "tokenizer.json"}
    hub.tree_page_size = 2  # the client must follow Link headers through the tree too
    inner = [e.path for e in api.list_repo_tree("org/tiny", path_in_repo="onnx")]
    assert inner == ["onnx/model.onnx", "onnx/model_q4.onnx", "onnx/model_q4.onnx_data"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/tiny", path_in_repo="nope"))


# ---- downloads --------------------------------------------------------------------------------


def test_hf_hub_download_cache_layout(hub: HubServer, hf_env: Path) -> None:
    sha = add_tiny_model(hub.repos)
    onnx = b"\x08\x07" * 5000
    lfs_path = Path(hf_hub_download("org/tiny", "onnx/model.onnx", endpoint=hub.url))
    git_path = Path(hf_hub_download("org/tiny", "config.json", endpoint=hub.url))
    repo_dir = hf_env / "models--org--tiny"  # hf_env made the default cache hermetic
    assert lfs_path == repo_dir / "snapshots" / sha / "onnx" / "model.onnx"
    assert git_path == repo_dir / "snapshots" / sha / "config.json"
    assert (repo_dir / "refs" / "main").read_text() == sha
    assert lfs_path.resolve() == repo_dir / "blobs" / blob_name(onnx, lfs=True)
    assert git_path.resolve() == repo_dir / "blobs" / blob_name(CONFIG, lfs=False)
    assert lfs_path.read_bytes() == onnx and git_path.read_bytes() == CONFIG
    assert hub.control.bytes_served("org/tiny") == len(onnx) + len(CONFIG)

    # A second call is answered from the cache after one HEAD: no body bytes.
    hub.control.reset_stats()
    assert Path(hf_hub_download("org/tiny", "onnx/model.onnx", endpoint=hub.url)) == lfs_path
    assert hub.control.bytes_served("org/tiny") == 0
    assert [r["method"] for r in hub.control.requests()] == ["HEAD"]


def test_resolve_headers_and_ranges(hub: HubServer) -> None:
    sha = add_tiny_model(hub.repos)
    data = b"\x08\x07" * 5000
    status, headers, body = raw(hub, "HEAD", "/org/tiny/resolve/main/onnx/model.onnx")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == sha and headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == "10000"
    status, headers, _ = raw(hub, "HEAD", f"/org/tiny/resolve/{sha}/config.json")
    assert status == 200 and headers["ETag"] == f'"{git_blob_sha1(CONFIG)}"' and "X-Linked-Etag" not in headers

    path = "/org/tiny/resolve/main/onnx/model.onnx"
    assert raw(hub, "GET", path, {"Range": "bytes=10-19"})[::2] == (206, data[10:20])
    status, headers, body = raw(hub, "GET", path, {"Range": "bytes=9990-"})
    assert (status, body, headers["Content-Range"]) == (206, data[9990:], "bytes 9990-9999/10000")
    assert raw(hub, "GET", path, {"Range": "bytes=-4"})[::2] == (206, data[-4:])
    status, headers, _ = raw(hub, "GET", path, {"Range": "bytes=10000-"})
    assert status == 416 and headers["Content-Range"] == "bytes */10000"
    assert raw(hub, "GET", path)[::2] == (200, data)
    assert hub.control.bytes_served("org/tiny/onnx/model.onnx") == 10 + 10 + 4 + 10000


def test_snapshot_download_allow_patterns(hub: HubServer, hf_env: Path) -> None:
    sha = add_tiny_model(hub.repos)
    folder = Path(snapshot_download("org/tiny", allow_patterns=["*.json", "onnx/model_q4*"], endpoint=hub.url))
    assert folder == hf_env / "models--org--tiny" / "snapshots" / sha
    got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert got == ["config.json", "onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "tokenizer.json"]
    assert "org/tiny/onnx/model.onnx" not in hub.control.stats()["bytes_by_file"]


def test_update_repo_makes_a_new_commit(hub: HubServer, hf_env: Path) -> None:
    old = add_tiny_model(hub.repos)
    new = hub.repos.update_repo("org/tiny", {"config.json": b"{}"}, delete=["onnx/model.onnx"])
    assert new != old
    api = HfApi(endpoint=hub.url)
    assert api.model_info("org/tiny").sha == new
    assert "onnx/model.onnx" not in {s.rfilename for s in api.model_info("org/tiny").siblings or []}
    assert Path(hf_hub_download("org/tiny", "config.json", endpoint=hub.url)).read_bytes() == b"{}"
    assert Path(hf_hub_download("org/tiny", "config.json", revision=old, endpoint=hub.url)).read_bytes() == CONFIG


# ---- errors -----------------------------------------------------------------------------------


def test_not_found_errors_map_to_client_exceptions(hub: HubServer, hf_env: Path) -> None:
    add_tiny_model(hub.repos)
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError) as repo_err:
        hf_hub_download("org/missing", "config.json", endpoint=hub.url)
    assert not isinstance(repo_err.value, GatedRepoError)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="v9", endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "onnx/model_fp16.onnx", endpoint=hub.url)
    status, headers, body = raw(hub, "GET", "/org/tiny/resolve/main/nope.bin")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound") and b'"error"' in body
    hub.repos.remove_repo("org/tiny")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/tiny")


def test_any_revision_text_gets_a_not_found_answer(hub: HubServer, hf_env: Path) -> None:
    """The error message quotes the revision: non-Latin-1 text or CR/LF in it must still make one
    well-formed header (it once broke the answer: the client saw a dropped connection)."""
    add_tiny_model(hub.repos)
    api = HfApi(endpoint=hub.url)
    for revision in ("\u1072\xb6\xda/B", "v1\r\nX-Injected: 1", "\U0005778a"):
        with pytest.raises(RevisionNotFoundError) as err:
            api.model_info("org/tiny", revision=revision)
        assert err.value.response is not None and "X-Injected" not in err.value.response.headers


def test_gated_repo_needs_a_token(hub: HubServer, hf_env: Path) -> None:
    add_tiny_model(hub.repos, "org/gated", gated=True)
    api = HfApi(endpoint=hub.url)
    assert api.model_info("org/gated").gated == "manual"  # metadata stays public, like the Hub
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", endpoint=hub.url)
    with pytest.raises(HfHubHTTPError) as bad:
        hf_hub_download("org/gated", "config.json", endpoint=hub.url, token="hf_wrong")
    assert bad.value.response is not None and bad.value.response.status_code == 401
    path = hf_hub_download("org/gated", "config.json", endpoint=hub.url, token=DEFAULT_TOKEN)
    assert Path(path).read_bytes() == CONFIG


# ---- faults -----------------------------------------------------------------------------------


def test_dropped_download_resumes_with_range(hub: HubServer, hf_env: Path) -> None:
    hub.repos.add_repo("org/big", {"onnx/model.onnx": BIG})
    hub.control.add_fault("org/big/onnx/model.onnx", drop_after_bytes=11 * MiB)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        hf_hub_download("org/big", "onnx/model.onnx", endpoint=hub.url)
    assert hub.control.bytes_served("org/big/onnx/model.onnx") == 11 * MiB
    incomplete = hf_env / "models--org--big" / "blobs" / f"{hashlib.sha256(BIG).hexdigest()}.incomplete"
    kept = incomplete.stat().st_size
    assert 0 < kept <= 11 * MiB  # the client keeps whole 10 MiB reads only

    hub.control.reset_stats()
    path = Path(hf_hub_download("org/big", "onnx/model.onnx", endpoint=hub.url))
    assert path.read_bytes() == BIG and not incomplete.exists()
    (get,) = hub.control.requests("GET")
    assert (get["range"], get["status"]) == (f"bytes={kept}-", 206)
    assert hub.control.bytes_served("org/big") == len(BIG) - kept


def test_server_errors_are_retried(hub: HubServer, hf_env: Path) -> None:
    add_tiny_model(hub.repos)
    hub.control.add_fault("org/tiny/config.json", methods=["HEAD"], fail_status=500)
    hub.control.add_fault("org/tiny/config.json", methods=["GET"], fail_status=503)
    assert Path(hf_hub_download("org/tiny", "config.json", endpoint=hub.url)).read_bytes() == CONFIG
    log = [(r["method"], r["status"]) for r in hub.control.requests()]
    assert log == [("HEAD", 500), ("HEAD", 200), ("GET", 503), ("GET", 200)]
    assert hub.control.stats()["faults"] == []  # both rules used up


def test_corrupt_rate_limit_and_stall(hub: HubServer, hf_env: Path) -> None:
    add_tiny_model(hub.repos)
    data = b"\x08\x07" * 5000
    hub.control.add_fault("org/tiny/onnx/model.onnx", corrupt=True, rate_limit_bytes_per_s=40_000)
    hub.control.add_fault("org/tiny/*", methods=["HEAD"], stall_seconds=0.3)
    started = time.monotonic()
    path = Path(hf_hub_download("org/tiny", "onnx/model.onnx", endpoint=hub.url))
    assert time.monotonic() - started >= 0.5  # 0.3 s stall + 10 kB at 40 kB/s
    got = path.read_bytes()
    assert len(got) == len(data) and got != data  # right length, wrong bytes: only a hash check sees it
    assert hashlib.sha256(got).hexdigest() != path.resolve().name


def test_subprocess_server_killed_mid_transfer(tmp_path: Path, hf_env: Path) -> None:
    repos = HubRepos(tmp_path / "proc-hub")
    repos.add_repo("org/big", {"onnx/model.onnx": BIG})
    errors: list[BaseException] = []
    with HubProcess(repos.root) as proc:
        proc.control.add_fault("org/big/*", rate_limit_bytes_per_s=8 * MiB)

        def download() -> None:
            try:
                hf_hub_download("org/big", "onnx/model.onnx", endpoint=proc.url, etag_timeout=5)
            except Exception as exc:  # the server dies under it
                errors.append(exc)

        client = threading.Thread(target=download)
        client.start()
        deadline = time.monotonic() + 30
        while proc.control.bytes_served("org/big") < 11 * MiB:
            assert time.monotonic() < deadline, "transfer did not progress"
            time.sleep(0.05)
        proc.kill()
        client.join(30)
        assert not client.is_alive()
        # huggingface_hub 0.36 does not retry a broken body within the call: the error surfaces.
        assert [type(e) for e in errors] == [requests.exceptions.ChunkedEncodingError]
        blob = hf_env / "models--org--big" / "blobs" / hashlib.sha256(BIG).hexdigest()
        kept = Path(f"{blob}.incomplete").stat().st_size
        assert kept >= 10 * MiB

        proc.start()  # same root, same port: the same commit and ETag
        hf_hub_download("org/big", "onnx/model.onnx", endpoint=proc.url)
        assert blob.read_bytes() == BIG
        (get,) = proc.control.requests("GET")
        assert get["range"] == f"bytes={kept}-"
        assert proc.control.bytes_served("org/big") == len(BIG) - kept
    assert proc.proc is None


def test_cli_prints_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    repos = HubRepos(tmp_path / "hub")
    add_tiny_model(repos)
    proc = HubProcess(repos.root).start()
    try:
        popen = proc.proc
        assert popen is not None and proc.port > 0
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        try:
            conn.request("HEAD", "/org/tiny/resolve/main/config.json")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        popen.terminate()
        assert popen.wait(10) == 0
    finally:
        proc.stop()
    assert "Traceback" not in proc.log_path.read_text()
    assert os.path.exists(repos.root / "repos" / "org" / "tiny.json")
