"""A model's kind (chat or embed): how it is decided, searched for on the (local) Hub, selected,
downloaded, remembered by the store and rebuilt from the cache; and how the pool uses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import hub as hubmod
from agent.downloads import Downloads
from agent.model_kinds import normalize_kind, repo_kind
from agent.paths import Paths
from agent.pool import ModelKindError, UnknownModelError
from agent.store import Store
from tests.agent.conftest import make_cache_repo
from tests.embed.support import EMBED_ID, ST_FILES, embed_repo_files
from tests.fakes.tiny_encoder import build_encoder_repo
from tests.http.support import DictCatalog, variant_for
from tests.hubserver import HubRepos, HubServer

CHAT_FILES = ["config.json", "tokenizer.json", "onnx/model_q4.onnx"]


@pytest.mark.parametrize(("files", "tag", "config", "kind"), [
    (CHAT_FILES, "feature-extraction", None, "embed"),
    (CHAT_FILES, "sentence-similarity", None, "embed"),
    (ST_FILES, "text-generation", None, "chat"),  # the Hub's word wins
    (ST_FILES, None, None, "embed"),
    (["config.json", "1_Pooling/config.json", "onnx/model.onnx"], None, None, "embed"),
    (CHAT_FILES, None, {"architectures": ["BertModel"]}, "embed"),
    (CHAT_FILES, None, {"architectures": ["XLMRobertaModel"]}, "embed"),
    (CHAT_FILES, None, {"architectures": ["LlamaForCausalLM"]}, "chat"),
    (CHAT_FILES, None, {"architectures": ["Qwen2VLForConditionalGeneration"]}, "chat"),
    (CHAT_FILES, None, {"model_type": "llama"}, "chat"),
    (CHAT_FILES, "image-classification", None, "chat"),
])
def test_the_kind_of_a_repo(files: list[str], tag: str | None, config: dict[str, object] | None, kind: str) -> None:
    assert repo_kind(files, pipeline_tag=tag, config=config) == kind


def test_kind_names() -> None:
    assert [normalize_kind(k) for k in ("chat", "EMBED", "embeddings", " embedding ")] == ["chat", "embed", "embed", "embed"]
    with pytest.raises(ValueError, match="invalid kind 'rerank': use one of chat, embed"):
        normalize_kind("rerank")


def test_a_variant_takes_the_sentence_transformers_files() -> None:
    names = [*ST_FILES, "2_Dense/config.json", "2_Dense/model.safetensors", "README.md", "vocab.txt",
             "onnx/model_quantized.onnx", "onnx/model_O4.onnx"]
    assert hubmod.select_files(names, "q8") == [
        "onnx/model_quantized.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "modules.json",
        "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
        "2_Dense/config.json"]
    assert hubmod.offered_quantizations(names) == ["q8", "fp32"]


def test_search_by_kind_on_the_hub(hub_repos: HubRepos, hub: HubServer, hf_env: Path) -> None:
    hub_repos.add_repo("org/mini-embed", {"onnx/model.onnx": b"x"}, pipeline_tag="feature-extraction", downloads=30)
    hub_repos.add_repo("org/mini-similar", {"onnx/model.onnx": b"x"}, pipeline_tag="sentence-similarity",
                       library_name="sentence-transformers", tags=["onnx", "sentence-transformers"], downloads=70)
    hub_repos.add_repo("org/mini-chat", {"onnx/model.onnx": b"x"}, downloads=50)
    hub_repos.add_repo("org/mini-embed-no-onnx", {"model.safetensors": b"x"}, pipeline_tag="feature-extraction",
                       tags=["safetensors"], downloads=90)
    embed = hubmod.search("mini", kind="embed")
    assert [(m.id, m.kind) for m in embed] == [("org/mini-similar", "embed"), ("org/mini-embed", "embed")]
    assert [(m.id, m.kind) for m in hubmod.search("mini")] == [("org/mini-chat", "chat")]
    assert [m.id for m in hubmod.search("mini", limit=1, kind="embed")] == ["org/mini-similar"]
    hub_repos.add_repo(hubmod.CURATED_EMBED[0], {"onnx/model.onnx": b"x"}, pipeline_tag="feature-extraction",
                       downloads=321)
    curated = hubmod.search("", kind="embed")
    assert [m.id for m in curated] == list(hubmod.CURATED_EMBED)
    assert all(m.curated and m.kind == "embed" for m in curated) and curated[0].downloads == 321


def test_the_listing_and_a_download_record_the_kind(
        hub_repos: HubRepos, hf_env: Path, make_downloads: Callable[..., tuple[Store, Downloads]],
        tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "enc", quants=("fp32", "q8"))
    hub_repos.add_repo(EMBED_ID, embed_repo_files(enc), pipeline_tag="sentence-similarity",
                       library_name="sentence-transformers")
    files = hubmod.model_files(EMBED_ID)
    assert files.kind == "embed" and [o.quantization for o in files.options] == ["q8", "fp32"]
    assert "1_Pooling/config.json" in files.options[0].files and "modules.json" in files.options[0].files
    store, downloads = make_downloads()
    job, _ = downloads.start(EMBED_ID, "q8", "auto", "main")
    assert job.wait(60) and job.state == "finished", job.error
    [entry] = store.list()
    assert (entry.kind, entry.status) == ("embed", "ready")
    assert [(m.key, m.kind) for m in store.installed()] == [(entry.key, "embed")]
    assert json.loads(store.paths.manifest.read_text())["variants"][entry.key]["kind"] == "embed"
    assert Store(store.paths).get(entry.key).kind == "embed"  # type: ignore[union-attr]


def test_a_rebuilt_manifest_finds_the_kind_from_the_files(paths: Paths, tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "enc", layout="transformers.js")
    files = {rel: (enc.path / rel).read_bytes() for rel in enc.files}
    make_cache_repo(paths.cache, EMBED_ID, "b" * 40, files)
    make_cache_repo(paths.cache, "org/chat", "c" * 40, {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
                                                        "tokenizer.json": b"{}", "onnx/model.onnx": b"x"})
    store = Store(paths)
    assert {(e.model_id, e.kind) for e in store.list()} == {(EMBED_ID, "embed"), ("org/chat", "chat")}
    old = json.loads(paths.manifest.read_text())
    for entry in old["variants"].values():  # a manifest written before kinds existed
        del entry["kind"]
    paths.manifest.write_text(json.dumps(old))
    assert {e.kind for e in Store(paths).list()} == {"chat"}


def test_the_pool_resolves_by_kind(tmp_path: Path) -> None:
    from agent.pool import ModelPool
    from agent.settings import ModelSettings

    chat = variant_for("org/chat", tmp_path / "chat")
    one = variant_for("org/embed-one", tmp_path / "e1", kind="embed")
    two = variant_for("org/embed-two", tmp_path / "e2", kind="embed")

    def pool(variants: list, active: str | None) -> ModelPool:  # type: ignore[type-arg]
        return ModelPool(DictCatalog(variants, active), lambda *a, **k: None, ModelSettings(),  # type: ignore[arg-type]
                         lambda e: None, active=active)

    p = pool([chat, one], chat.key)
    assert p.resolve(None, "embed") == one  # the only embedding model
    assert p.resolve(None, "chat") == chat and p.resolve(None) == chat
    with pytest.raises(ModelKindError, match="org/chat::fp32::cpu is a chat model; this request needs an embedding"):
        p.resolve(chat.key, "embed")
    with pytest.raises(ModelKindError, match="is an embedding model; this request needs a chat model") as err:
        p.resolve("org/embed-one", "chat")
    assert err.value.code == "wrong_model_kind"
    assert p.resolve("org/embed-one") == one  # no kind asked: any
    p = pool([chat, one, two], two.key)
    assert p.resolve(None, "embed") == two  # the active one, when it embeds
    with pytest.raises(ModelKindError, match="The active model .*embed-two.* is an embedding model, not a chat model"):
        p.resolve(None, "chat")
    p = pool([chat, one, two], chat.key)
    with pytest.raises(ModelKindError, match="Several installed models are embedding models: name one") as err:
        p.resolve(None, "embed")
    assert err.value.code == "model_required"
    with pytest.raises(UnknownModelError, match="none installed is an embedding model"):
        pool([chat], chat.key).resolve(None, "embed")
