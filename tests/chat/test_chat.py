"""``hflocal chat`` against a running agent with a tiny model whose answer is known: through a pipe
(as scripts use it) and in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chat.tmux import Tmux
from tests.fakes.tiny_model import build_tiny_repo
from tests.support.agentproc import AgentProcess, cli, start_agent

REPLY = "Hello world! How are you today?"
REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "local/Tiny-Chat"
KEY = f"huggingface-local/{MODEL}::q4::auto"
LONG_QUESTION = "Once upon a time there was a small model that could count to ten."


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("tiny") / "Tiny-Chat", ("q4",), reply=REPLY).path


@pytest.fixture
def agent(agents: list[AgentProcess], hermetic_home: Path, tiny_folder: Path) -> AgentProcess:
    """An agent with the tiny model installed but not active."""
    started = start_agent(hermetic_home)
    agents.append(started)
    result = cli("import", str(tiny_folder), home=hermetic_home)
    assert result.returncode == 0, result.stderr
    return started


@pytest.fixture
def active(agent: AgentProcess) -> AgentProcess:
    result = cli("use", KEY, home=agent.home)
    assert result.returncode == 0, result.stderr
    return agent


def chat(home: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "chat", *args], input=stdin, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HFLOCAL_HOME": str(home)}, cwd=REPO_ROOT, check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hflocal: "), result.stderr
    return lines[0]


def test_piped_questions_get_one_answer_each(active: AgentProcess) -> None:
    result = chat(active.home, "What is the capital of France?\n\nAnd of Germany?\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{REPLY}\n{REPLY}\n"
    assert result.stderr == ""


def test_exit_stops_reading(active: AgentProcess) -> None:
    result = chat(active.home, "First?\n/exit\nSecond?\n")
    assert (result.returncode, result.stdout) == (0, f"{REPLY}\n")


def test_the_conversation_is_kept_until_cleared(active: AgentProcess) -> None:
    """Every question carries the conversation so far: the tiny model's 256-token context overflows
    after a few turns, which the chat reports (one line) and survives; ``/clear`` starts afresh."""
    questions = "".join(f"{LONG_QUESTION}\n" for _ in range(12))
    result = chat(active.home, questions)
    assert result.returncode == 1
    answers = result.stdout.splitlines()
    assert 2 <= len(answers) < 12 and set(answers) == {REPLY}
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 12 - len(answers)
    assert all(e.startswith("hflocal: This model's maximum context length is 256 tokens") for e in errors)

    cleared = chat(active.home, "".join(f"{LONG_QUESTION}\n/clear\n" for _ in range(12)))
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.splitlines() == [REPLY, "(conversation cleared)"] * 12


def test_reset_forgets_and_unknown_commands_never_reach_the_model(active: AgentProcess) -> None:
    """``/reset`` clears like ``/clear`` (the context would overflow without it); any other ``/word``
    is answered locally: no answer is streamed for it and the next question still gets one."""
    reset = chat(active.home, "".join(f"{LONG_QUESTION}\n/reset\n" for _ in range(12)))
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.splitlines() == [REPLY, "(conversation cleared)"] * 12

    unknown = chat(active.home, "/frobnicate now\nHi\n/help\n")
    assert unknown.returncode == 0, unknown.stderr
    assert unknown.stderr == "hflocal: unknown command /frobnicate; try /help\n"
    lines = unknown.stdout.splitlines()
    assert lines[0] == REPLY and len(lines) == 2 and "/reset" in lines[1] and "/help" in lines[1]


def test_json_lines(active: AgentProcess) -> None:
    """``--json``: one object per answer on stdout, one error object per failure on stderr."""
    result = chat(active.home, "Hi\n/nope\nAgain?\n", "--json")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert answers == [{"model": KEY, "question": q, "answer": REPLY, "completed": True} for q in ("Hi", "Again?")]
    assert json.loads(result.stderr) == {"error": {"code": "unknown_command",
                                                   "message": "unknown command /nope; try /help"}}


def test_json_errors(agent: AgentProcess) -> None:
    no_model = chat(agent.home, "Hi\n", "--json")
    assert (no_model.returncode, no_model.stdout) == (1, "")
    assert "no model is active" in json.loads(no_model.stderr)["error"]["message"]
    agent.stop()
    gone = chat(agent.home, "Hi\n", "--json")
    assert (gone.returncode, gone.stdout) == (1, "")
    assert json.loads(gone.stderr)["error"]["code"] == "agent_not_running"


def test_a_named_model_needs_no_active_one(agent: AgentProcess) -> None:
    for name in (KEY, MODEL):
        result = chat(agent.home, "Hi\n", name, "--max-tokens", "50", "--temperature", "0")
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{REPLY}\n", "")


def test_no_active_model_says_hflocal_use(agent: AgentProcess) -> None:
    line = one_line_error(chat(agent.home, "Hi\n"))
    assert "no model is active" in line and "hflocal use" in line


def test_unknown_model(agent: AgentProcess) -> None:
    line = one_line_error(chat(agent.home, "Hi\n", "someone/not-here"))
    assert "'someone/not-here' is not installed" in line and "hflocal ls" in line


def test_no_agent_running(hermetic_home: Path) -> None:
    line = one_line_error(chat(hermetic_home, "Hi\n"))
    assert "no hflocal agent is running" in line and "hflocal serve" in line


def test_the_agent_going_away(active: AgentProcess) -> None:
    """agent.json still names a worker, but it is gone (killed): one line, exit 1."""
    info = (active.home / "agent.json").read_text()
    active.kill()
    (active.home / "agent.json").write_text(info)
    result = chat(active.home, "Hi\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_in_a_terminal(active: AgentProcess) -> None:
    term = Tmux([sys.executable, "-m", "cli.main", "chat"], {"HFLOCAL_HOME": str(active.home)}, REPO_ROOT)
    try:
        term.wait_for(f"chatting with {KEY}", 30)
        term.wait_for(">>> ", 30)
        term.type("What is the capital of France?")
        term.wait_for(REPLY, 60)
        term.wait_for(">>> ", 30, count=2)
        term.keys("C-c")  # at the prompt: a hint, not the end
        term.wait_for("Ctrl-D quits", 30, count=2)
        term.type("/clear")
        term.wait_for("(conversation cleared)", 30)
        term.type("Again?")
        term.wait_for(REPLY, 60, count=2)
        term.keys("C-d")
        screen = term.wait_for("EXITED rc=", 30)
        assert "EXITED rc=0" in screen and "Traceback" not in screen
    finally:
        term.close()
