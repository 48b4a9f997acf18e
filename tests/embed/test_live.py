"""Embedding models end to end, as a user meets them: a real ``hflocal serve`` and the local hub
serving a tiny sentence-transformers encoder (fp32 and q8) and a tiny chat model. ``hflocal search
--kind``, the settings page's kind filter (headless Chromium), ``hflocal pull``/``ls``/``files``, the
official ``openai`` client's ``embeddings.create`` (floats and base64) checked against numpy, a chat
and an embedding model loaded at the same time, and the 400s of both kinds through the client.

One agent and one hub for the module (the tests run in order: search, install, use)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.embed.support import EMBED_ID, embed_repo_files
from tests.fakes.encoder_reference import sentence_vector, token_states
from tests.fakes.tiny_encoder import TinyEncoder, build_encoder_repo
from tests.fakes.tiny_model import build_tiny_repo
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import TINY, TINY_REPLY, repo_files, variant_key, wait_until

pytestmark = pytest.mark.timeout(240)

FP32, Q8, CHAT = variant_key(EMBED_ID, "fp32"), variant_key(EMBED_ID, "q8"), variant_key(TINY, "q4")
TEXTS = ["The capital of France is Paris.", "Hello world! How are you today?", "Python and Rust"]


@dataclass
class Live:
    agent: AgentProcess
    hub: HubServer
    enc: TinyEncoder

    def cli(self, *args: str) -> str:
        done = cli(*args, home=self.agent.home, timeout=180)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.agent.http_url}/v1", api_key="unused", max_retries=0, timeout=120,
                      http_client=httpx.Client(trust_env=False, timeout=120))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("embed-live")
    enc = build_encoder_repo(root / "encoder", pooling=("mean",), quants=("fp32", "q8"))
    chat = build_tiny_repo(root / "chat", ("q4",), reply=TINY_REPLY)
    repos = HubRepos(root / "hub")
    repos.add_repo(EMBED_ID, embed_repo_files(enc), pipeline_tag="sentence-similarity",
                   library_name="sentence-transformers", tags=["sentence-transformers", "onnx"], downloads=40)
    repos.add_repo(TINY, repo_files(chat.path), downloads=50)
    hub = HubServer(repos.root).start()
    home = root / "home"
    home.mkdir()
    (home / "settings.toml").write_text("[models]\nmax_loaded = 2\n")
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the CLI processes this module starts ask the same hub
    agent = start_agent(home, env=env)
    try:
        yield Live(agent, hub, enc)
    finally:
        agent.stop()
        hub.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reference(enc: TinyEncoder, texts: list[str]) -> np.ndarray:
    return np.stack([sentence_vector(token_states(enc.shape, enc.weights, enc.encode(t)), enc.pooling, normalize=True)
                     for t in texts])


def test_search_by_kind_on_the_command_line(live: Live) -> None:
    embed = live.cli("search", "--kind", "embed", "tiny")
    assert EMBED_ID in embed and TINY not in embed
    assert embed.splitlines()[0].split() == ["MODEL", "KIND", "DOWNLOADS", "LIKES"]
    assert embed.splitlines()[1].split()[:2] == [EMBED_ID, "embed"]
    chat = live.cli("search", "tiny")
    assert TINY in chat and EMBED_ID not in chat
    found = json.loads(live.cli("search", "--kind", "embed", "tiny", "--json"))
    assert found["kind"] == "embed" and [(m["id"], m["kind"]) for m in found["models"]] == [(EMBED_ID, "embed")]
    assert live.cli("search", "--kind", "embed").startswith("Suggested embedding models")
    bad = cli("search", "--kind", "rerank", home=live.agent.home)
    assert bad.returncode == 2 and "invalid choice: 'rerank'" in bad.stderr


def test_the_settings_page_finds_and_installs_an_embedding_model(live: Live, artifacts_dir: Path) -> None:
    chromium = os.environ.get("HFLOCAL_TEST_CHROMIUM", "/usr/bin/chromium")
    if shutil.which(chromium) is None and not Path(chromium).exists():
        pytest.skip(f"no Chromium at {chromium}: install the 'chromium' package (scripts/apt-packages.txt)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    from tests.web.conftest import CHROMIUM_ARGS

    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{live.agent.http_url}/?token={live.agent.info.token}")
            expect(page.locator("#live")).to_have_attribute("data-state", "on")
            page.locator("#search-kind").select_option("embed")
            expect(page.locator("#search-label")).to_have_text("Search the Hugging Face Hub for ONNX embedding models")
            expect(page.locator("#search-note")).to_have_text("Suggested models:")
            page.locator("#search-q").fill("tiny")
            page.locator("#search-go").click()
            result = page.locator(f'button.result[data-model="{EMBED_ID}"]')
            expect(result).to_contain_text("embedding")
            expect(page.locator(f'button.result[data-model="{TINY}"]')).to_have_count(0)
            page.screenshot(path=str(artifacts_dir / "embed-search.png"), full_page=True)
            page.locator("#search-kind").select_option("chat")
            expect(page.locator(f'button.result[data-model="{TINY}"]')).to_be_visible()
            expect(result).to_have_count(0)
            page.locator("#search-kind").select_option("embed")
            result.click()
            expect(page.locator("#quant-options label.option")).to_have_count(2)
            page.locator("#quant-fp32").check()
            page.locator("#download-go").click()
            installed = page.locator(f'li.model[data-key="{FP32}"]')
            expect(installed).to_contain_text("embedding model", timeout=60_000)
            expect(page.locator("#snippet")).to_contain_text(f'client.embeddings.create(model="{FP32}"')
            snippet = page.locator("#snippet").inner_text()
            assert "chat.completions" not in snippet  # no chat model is installed yet
            ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120,
                                 check=False, env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
            assert (ran.returncode, ran.stdout.strip()) == (0, str(live.enc.shape.hidden_size)), ran.stderr
            page.screenshot(path=str(artifacts_dir / "embed-installed.png"), full_page=True)
        finally:
            browser.close()


def test_pull_ls_and_files_show_the_kind(live: Live) -> None:
    assert live.cli("pull", EMBED_ID, "--quant", "fp32").startswith(f"installed {FP32}")
    assert live.cli("pull", EMBED_ID, "--quant", "q8").startswith(f"installed {Q8}")
    assert live.cli("pull", TINY, "--quant", "q4").startswith(f"installed {CHAT}")
    rows = {line.split()[0]: line.split()[1] for line in live.cli("ls").splitlines()[1:]}
    assert rows == {FP32: "embed", Q8: "embed", CHAT: "chat"}
    assert {m["key"]: m["kind"] for m in json.loads(live.cli("ls", "--json"))["models"]} == rows
    assert "(embedding model)" in live.cli("files", EMBED_ID).splitlines()[0]
    models = live.openai().models.list()
    assert {m.id: m.model_extra["kind"] for m in models.data} == rows


def test_an_imported_onnx_folder_of_an_embedding_model_embeds(live: Live, tmp_path: Path) -> None:
    folder = build_encoder_repo(tmp_path / "my-encoder", pooling=("cls",), seed=5).path
    key = variant_key("local/my-encoder", "fp32")
    out = live.cli("import", str(folder), "--name", "local/my-encoder")
    assert key in out
    assert {m["key"]: m["kind"] for m in json.loads(live.cli("ls", "--json"))["models"]}[key] == "embed"
    answer = live.openai().embeddings.create(model=key, input="Hi", encoding_format="float")
    assert len(answer.data[0].embedding) == live.enc.shape.hidden_size
    live.cli("rm", key)


def test_the_openai_client_gets_floats_and_base64(live: Live) -> None:
    client = live.openai()
    want = reference(live.enc, TEXTS)
    floats = client.embeddings.create(model=FP32, input=TEXTS, encoding_format="float")
    assert floats.model == FP32 and [d.index for d in floats.data] == [0, 1, 2]
    np.testing.assert_allclose(np.array([d.embedding for d in floats.data]), want, rtol=1e-4, atol=2e-5)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(len(live.enc.encode(t)) for t in TEXTS)
    # The client asks for base64 itself when no format is named, and decodes it.
    default = client.embeddings.create(model=FP32, input=TEXTS)
    np.testing.assert_array_equal(np.array([d.embedding for d in default.data], np.float32),
                                  np.array([d.embedding for d in floats.data], np.float32))
    raw = httpx.post(f"{live.agent.http_url}/v1/embeddings", json={"model": FP32, "input": "Hi", "encoding_format": "base64"},
                     timeout=60, trust_env=False).json()
    assert len(base64.b64decode(raw["data"][0]["embedding"])) == 4 * live.enc.shape.hidden_size
    q8 = client.embeddings.create(model=Q8, input=TEXTS, encoding_format="float")
    cosine = (np.array([d.embedding for d in q8.data]) * want).sum(axis=1)
    assert cosine.min() > 0.98 and not np.allclose([d.embedding for d in q8.data], want, atol=1e-6)
    ids = client.embeddings.create(model=FP32, input=[live.enc.encode(t) for t in TEXTS], encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in ids.data], want, rtol=1e-4, atol=2e-5)


def test_chat_and_embeddings_from_one_agent_with_both_loaded(live: Live) -> None:
    client = live.openai()
    answer = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == TINY_REPLY
    client.embeddings.create(model=FP32, input="Hi")
    health = httpx.get(f"{live.agent.http_url}/health", timeout=10, trust_env=False).json()
    assert set(health["loaded"]) == {CHAT, FP32}
    again = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}])
    assert again.choices[0].message.content == TINY_REPLY
    assert set(httpx.get(f"{live.agent.http_url}/health", timeout=10, trust_env=False).json()["loaded"]) == {CHAT, FP32}
    log = live.agent.output()
    assert "Traceback" not in log


def test_the_wrong_kind_through_the_client(live: Live) -> None:
    from openai import BadRequestError

    client = live.openai()
    with pytest.raises(BadRequestError) as err:
        client.embeddings.create(model=CHAT, input="Hi")
    assert err.value.code == "wrong_model_kind" and "is a chat model" in err.value.message
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=FP32, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.code == "wrong_model_kind" and "is an embedding model" in err.value.message
    with pytest.raises(BadRequestError) as err:
        client.embeddings.create(model="", input="Hi")  # two embedding variants installed
    assert err.value.code == "model_required" and re.search(r"name one in 'model'", err.value.message)
    with pytest.raises(BadRequestError) as err:
        client.embeddings.create(model=FP32, input="Hi", dimensions=8)
    assert err.value.param == "dimensions"
    wait_until(lambda: live.agent.proc.poll() is None, 1, "the agent to be alive")
