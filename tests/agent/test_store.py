"""The store: manifest round trips, atomic writes, corrupt manifests, reconcile, delete with shared files."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from agent.errors import NotFoundError
from agent.paths import Paths
from agent.store import AmbiguousNameError, Store, VariantEntry, new_entry
from agent.variants import InvalidNameError
from tests.agent.conftest import make_cache_repo, onnx_repo_files

COMMIT = "a" * 40
MODEL = "onnx-community/Tiny-Instruct"


def q4_key(model: str = MODEL) -> str:
    return f"huggingface-local/{model}::q4::auto"


def installed_store(paths: Paths, quants: dict[str, int] | None = None) -> tuple[Store, Path]:
    """A store whose cache holds one repo (by hand) and whose manifest is rebuilt from it."""
    files = onnx_repo_files(quants or {"q4": 3000, "fp32": 2000}, external={"q4": [5000]})
    del files["README.md"]  # hflocal only fetches what a variant needs
    snapshot = make_cache_repo(paths.cache, MODEL, COMMIT, files)
    return Store(paths), snapshot


def test_empty_store_writes_a_private_manifest(paths: Paths) -> None:
    store = Store(paths)
    assert store.list() == [] and store.active is None and store.warnings == []
    data = json.loads(paths.manifest.read_text())
    assert data == {"version": 1, "active": None, "variants": {}}
    assert stat.S_IMODE(paths.manifest.stat().st_mode) == 0o600
    assert [p.name for p in paths.home.iterdir() if p.name.startswith(".manifest")] == []  # no temp files left


def test_put_update_active_survive_a_restart(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    folder = paths.imported / "me" / "mine"
    (folder / "onnx").mkdir(parents=True)
    (folder / "onnx" / "model_q4.onnx").write_bytes(b"x" * 10)
    entry = new_entry("me/mine", "q4", "cpu", path=str(folder), files=["onnx/model_q4.onnx"], size=10,
                      source="import", status="ready", downloaded_at="2025-01-01T00:00:00Z")
    store.put(entry)
    store.set_active(entry.key)
    assert store.update(entry.key, size=11).size == 11
    again = Store(paths)
    assert again.get(entry.key) == VariantEntry(**{**msgspec_fields(entry), "size": 11})
    assert again.active == entry.key
    installed = again.installed()
    assert installed[0].active and installed[0].source == "import" and installed[0].device == "cpu"
    assert again.resolve("me/mine").key == entry.key
    assert again.resolve("huggingface-local/me/mine::q4::cpu").key == entry.key
    assert again.resolve("me/mine::q4").key == entry.key  # no device part: whichever is installed
    with pytest.raises(NotFoundError):
        again.resolve("me/mine::q4::cuda")
    with pytest.raises(NotFoundError):
        again.resolve("me/mine::q8")
    with pytest.raises(NotFoundError):
        again.resolve("me/other")
    with pytest.raises(NotFoundError):
        again.set_active("huggingface-local/me/other::q4::cpu")


def test_resolve_one_match_else_the_active_else_refuse(paths: Paths) -> None:
    """The one policy for names (docs/protocol.md "Model names"): a partial name matching one variant
    means it whatever its status, several mean the active one, else a refusal listing them all."""
    store, _ = installed_store(paths)  # q4 and fp32 of MODEL, device auto
    fp32 = f"huggingface-local/{MODEL}::fp32::auto"
    q4_cpu = new_entry(MODEL, "q4", "cpu", path=store.require(q4_key()).path, files=[], status="downloading")
    store.put(q4_cpu)
    with pytest.raises(AmbiguousNameError) as bare:
        store.resolve(MODEL)
    assert bare.value.code == "bad_request" and bare.value.keys == sorted([fp32, q4_key(), q4_cpu.key])
    assert str(bare.value) == f"'{MODEL}' has several variants, name one: " + ", ".join(sorted(bare.value.keys))
    with pytest.raises(AmbiguousNameError) as quant:
        store.resolve(f"{MODEL}::q4")  # no device part: any device, so the auto and the cpu one
    assert quant.value.keys == sorted([q4_key(), q4_cpu.key])
    assert store.resolve(f"{MODEL}::fp32").key == fp32
    assert store.resolve(f"{MODEL}::q4::cpu") is store.require(q4_cpu.key)  # not ready: still what it names
    with pytest.raises(NotFoundError, match="is not installed"):
        store.resolve("someone/not-here")
    with pytest.raises(InvalidNameError):
        store.resolve("../etc::q4")

    store.set_active(fp32)
    assert store.resolve(MODEL).key == fp32
    with pytest.raises(AmbiguousNameError):
        store.resolve(f"{MODEL}::q4")  # the active one is not among these
    store.set_active(q4_cpu.key)
    assert store.resolve(f"{MODEL}::q4").key == q4_cpu.key == store.resolve(MODEL).key
    store.remove(q4_cpu.key)
    with pytest.raises(AmbiguousNameError):
        store.resolve(MODEL)  # the active one went with it
    assert store.resolve(f"{MODEL}::q4").key == q4_key()


def msgspec_fields(entry: VariantEntry) -> dict:
    return {f: getattr(entry, f) for f in entry.__struct_fields__}


def test_put_refuses_a_key_that_does_not_match(paths: Paths) -> None:
    store = Store(paths)
    entry = new_entry("me/mine", "q4", "cpu", path=str(paths.imported / "me" / "mine"), files=[])
    import msgspec

    with pytest.raises(ValueError):
        store.put(msgspec.structs.replace(entry, key="huggingface-local/me/mine::q8::cpu"))
    with pytest.raises(InvalidNameError):
        new_entry("../etc", "q4", "cpu", path="/", files=[])


def test_missing_manifest_is_rebuilt_from_the_cache(paths: Paths) -> None:
    store, snapshot = installed_store(paths)
    keys = [e.key for e in store.list()]
    assert keys == [f"huggingface-local/{MODEL}::fp32::auto", q4_key()]
    q4 = store.require(q4_key())
    assert q4.status == "ready" and q4.commit == COMMIT and q4.revision == "main"
    assert q4.files[:2] == ["onnx/model_q4.onnx", "onnx/model_q4.onnx_data"] and "config.json" in q4.files
    assert Path(q4.path) == snapshot.resolve()
    assert q4.size == sum((snapshot / f).stat().st_size for f in q4.files)
    assert "rebuilt 2 variant(s)" in store.warnings[0]


@pytest.mark.parametrize(
    "garbage",
    [b"{not json", b'{"version": 1, "variants": {"x": {"key": 3}}}', b'{"version": 99, "variants": {}}',
     b'{"version": 1, "active": "huggingface-local/a/b::q4::auto", "variants": {}}'],
)
def test_corrupt_manifest_is_moved_aside_and_rebuilt(paths: Paths, garbage: bytes) -> None:
    installed_store(paths)
    paths.manifest.write_bytes(garbage)
    store = Store(paths)
    aside = list(paths.home.glob("manifest.corrupt-*.json"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert len(store.warnings) == 1 and aside[0].name in store.warnings[0]
    assert store.require(q4_key()).status == "ready"
    assert json.loads(paths.manifest.read_text())["version"] == 1
    assert Store(paths).warnings == []  # the rebuilt manifest is good


def test_entry_reaching_outside_the_store_is_refused(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    entry = new_entry("me/mine", "q4", "cpu", path=str(outside), files=["config.json"], status="ready")
    store.put(entry)
    reopened = Store(paths)
    assert reopened.require(entry.key).status == "error"
    assert reopened.require(entry.key).error == "path outside the store"
    assert reopened.delete(entry.key) == 0
    assert (outside / "config.json").exists()  # never deleted


def test_reconcile_marks_missing_files_and_recovers(paths: Paths) -> None:
    store, snapshot = installed_store(paths)
    data = snapshot / "onnx" / "model_q4.onnx_data"
    blob = Path(os.path.realpath(data))
    kept = blob.read_bytes()
    blob.unlink()
    store = Store(paths)
    q4 = store.require(q4_key())
    assert q4.status == "error" and q4.error == "files missing: onnx/model_q4.onnx_data"
    assert store.require(f"huggingface-local/{MODEL}::fp32::auto").status == "ready"
    blob.write_bytes(kept)
    assert Store(paths).require(q4_key()).status == "ready"


def test_downloading_entries_stay_and_are_reported_interrupted(paths: Paths) -> None:
    store = Store(paths)
    entry = new_entry(MODEL, "q4", "auto", path=str(paths.cache / "models--x--y" / "snapshots" / COMMIT),
                      files=["onnx/model_q4.onnx"], commit=COMMIT)
    store.put(entry)
    reopened = Store(paths)
    assert [e.key for e in reopened.interrupted()] == [entry.key]
    assert reopened.require(entry.key).status == "downloading"


def test_delete_keeps_files_shared_with_another_variant(paths: Paths) -> None:
    store, snapshot = installed_store(paths)
    store.set_active(q4_key())
    q4 = store.require(q4_key())
    blobs = {f: Path(os.path.realpath(snapshot / f)) for f in q4.files}
    only_q4 = ["onnx/model_q4.onnx", "onnx/model_q4.onnx_data"]
    freed = store.delete(q4_key())
    assert freed == 3000 + 5000
    for f, b in blobs.items():
        assert b.exists() == (f not in only_q4), f
    assert store.active is None and store.get(q4_key()) is None
    fp32 = Store(paths).require(f"huggingface-local/{MODEL}::fp32::auto")
    assert fp32.status == "ready" and not fp32.missing_files()
    # deleting the last variant removes the whole repo folder
    repo = paths.cache / ("models--" + MODEL.replace("/", "--"))
    freed = store.delete(fp32.key)
    assert fp32.size <= freed <= fp32.size + 100  # + refs/main
    assert not repo.exists()
    assert paths.cache.exists()


def test_delete_leaves_files_it_does_not_know(paths: Paths) -> None:
    store, snapshot = installed_store(paths)
    (snapshot / "README.md").write_text("another tool put me here")
    for key in [e.key for e in store.list()]:
        store.delete(key)
    assert (snapshot / "README.md").exists()
    assert [p.name for p in snapshot.rglob("*")] == ["README.md"]


def test_delete_counts_partial_blobs_and_keeps_foreign_links(paths: Paths) -> None:
    store, snapshot = installed_store(paths)
    repo = snapshot.parent.parent
    (repo / "blobs" / ("f" * 64 + ".incomplete")).write_bytes(b"p" * 100)
    # a snapshot of another commit (not in the store) links the same config blob: it must survive
    other = make_cache_repo(paths.cache, MODEL, "b" * 40, {"config.json": (snapshot / "config.json").read_bytes()})
    for key in [e.key for e in store.list()]:
        store.delete(key)
    assert (other / "config.json").read_bytes().startswith(b"{")
    assert not (repo / "blobs" / ("f" * 64 + ".incomplete")).exists()
    assert not snapshot.exists()


def test_delete_imported_keeps_shared_config(paths: Paths) -> None:
    folder = paths.imported / "me" / "mine"
    for rel, data in onnx_repo_files({"q4": 100, "fp32": 200}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    store = Store(paths)
    keys = [e.key for e in store.list()]
    assert keys == ["huggingface-local/me/mine::fp32::auto", "huggingface-local/me/mine::q4::auto"]
    assert all(e.source == "import" for e in store.list())
    assert store.delete(keys[1]) == 100
    assert (folder / "config.json").exists() and not (folder / "onnx" / "model_q4.onnx").exists()
    assert store.delete(keys[0]) == sum(len(d) for d in onnx_repo_files({"fp32": 200}).values())
    assert not (folder / "config.json").exists() and not folder.exists() and paths.imported.exists()


def test_concurrent_updates_are_serialised(paths: Paths) -> None:
    store = Store(paths)
    folder = paths.imported / "me" / "mine"
    entries = [new_entry("me/mine", q, "cpu", path=str(folder), files=[]) for q in ("q4", "q8", "fp16", "fp32")]

    def writer(entry: VariantEntry) -> None:
        for i in range(20):
            store.put(entry) if i == 0 else store.update(entry.key, size=i)

    threads = [threading.Thread(target=writer, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads(paths.manifest.read_text())
    assert sorted(v["size"] for v in data["variants"].values()) == [19, 19, 19, 19]
