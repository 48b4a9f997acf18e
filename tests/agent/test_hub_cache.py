"""``agent.hub_cache``: the Hugging Face cache layout, checked against what the real client writes."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download

from agent import hub, hub_cache
from agent.convert.fast_cache import cache_dir_for
from agent.paths import Paths
from tests.agent.conftest import MODEL, make_cache_repo


def test_the_names_are_where_the_hub_client_puts_a_download(paths: Paths, tiny_repo: dict[str, bytes]) -> None:
    listing = hub.fetch_listing(MODEL)
    f = listing.files["onnx/model_q4.onnx_data"]
    assert f.etag and f.sha256
    assert hub_cache.bytes_on_disk(paths.cache, MODEL, listing.commit, f.path, f.size, f.etag) == 0
    pointer = Path(hf_hub_download(MODEL, f.path, revision=listing.commit, cache_dir=paths.cache,
                                   endpoint=hub.endpoint(), token=hub.token()))
    snapshot = hub_cache.snapshot_dir(paths.cache, MODEL, listing.commit)
    assert pointer == snapshot / f.path
    assert pointer.resolve() == hub_cache.blob_path(paths.cache, MODEL, f.etag).resolve()
    assert hub_cache.is_snapshot(snapshot) and hub_cache.repo_of_snapshot(snapshot) == hub_cache.repo_dir(
        paths.cache, MODEL).resolve()
    assert hub_cache.repo_name_of_snapshot(snapshot) == MODEL.split("/")[1]
    assert hub_cache.bytes_on_disk(paths.cache, MODEL, listing.commit, f.path, f.size, f.etag) == f.size
    [found] = hub_cache.snapshots(paths.cache)
    assert (found.model_id, found.commit, found.revision, found.names) == (MODEL, listing.commit, listing.commit,
                                                                            [f.path])
    assert found.folder.resolve() == snapshot


def test_bytes_on_disk_counts_a_blob_and_a_partial_blob(paths: Paths) -> None:
    commit = "a" * 40
    make_cache_repo(paths.cache, MODEL, commit, {"config.json": b"{}"})
    args = (paths.cache, MODEL, commit, "onnx/model_q4.onnx")
    blob = hub_cache.blob_path(paths.cache, MODEL, "e" * 64)
    assert hub_cache.bytes_on_disk(*args, 4000, "e" * 64) == 0
    partial = Path(f"{blob}{hub_cache.PARTIAL_SUFFIX}")
    partial.write_bytes(b"x" * 1000)
    assert hub_cache.bytes_on_disk(*args, 4000, "e" * 64) == 1000
    assert hub_cache.bytes_on_disk(*args, 400, "e" * 64) == 400  # never more than the file has
    assert hub_cache.bytes_on_disk(*args, 4000, None) == 0  # no etag: no blob name to look for
    assert hub_cache.partial_blobs(hub_cache.repo_dir(paths.cache, MODEL)) == [partial]
    blob.write_bytes(b"x" * 4000)
    assert hub_cache.bytes_on_disk(*args, 4000, "e" * 64) == 4000
    [found] = hub_cache.snapshots(paths.cache)
    assert found.revision == "main" and found.names == ["config.json"]


def test_the_fast_path_folder_sits_beside_the_snapshots(paths: Paths, tmp_path: Path) -> None:
    commit = "b" * 40
    snapshot = make_cache_repo(paths.cache, MODEL, commit, {"config.json": b"{}"})
    repo = hub_cache.repo_dir(paths.cache, MODEL)
    assert hub_cache.fast_dir_for(snapshot) == repo / hub_cache.FAST_DIR / commit
    assert hub_cache.fast_dir_for(tmp_path / "imported" / "local" / "m") == tmp_path / "imported/local/m/.hflocal-fast"
    assert cache_dir_for(snapshot) == hub_cache.fast_dir_for(snapshot)  # the converter uses the same layout
    assert hub_cache.lock_dir(paths.cache, repo) == paths.cache / ".locks" / repo.name
    assert not hub_cache.is_snapshot(tmp_path)
