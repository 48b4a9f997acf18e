"""``hflocal import`` end to end: the CLI, a running worker, tiny GGUFs and ONNX folders written here.

Imported models are named ``local/<name>`` (the GGUF's file name without its quantization suffix, or
the folder's name) unless ``--name`` says otherwise; their keys are
``huggingface-local/local/<name>::<quant>::auto``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

from ipc.client import Client, RemoteError
from ipc.messages import ImportModel, Status
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.fakes.tiny_model import build_tiny_repo, random_weights, tiny_shape, train_tokenizer
from tests.imports.support import chat_answer, write_scripted_gguf
from tests.support.agentproc import AgentProcess, cli, start_agent

REPLY = "Paris is lovely."
OTHER_REPLY = "Hello world!"
REPO_ROOT = Path(__file__).resolve().parents[2]


def key(name: str, quant: str) -> str:
    return f"huggingface-local/local/{name}::{quant}::auto"


@pytest.fixture
def agent(agents: list[AgentProcess], hermetic_home: Path) -> AgentProcess:
    started = start_agent(hermetic_home)
    agents.append(started)
    return started


def hflocal(agent: AgentProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli(*args, home=agent.home, timeout=timeout)


def installed(agent: AgentProcess) -> dict[str, dict[str, object]]:
    result = hflocal(agent, "ls", "--json")
    assert result.returncode == 0, result.stderr
    return {m["key"]: m for m in json.loads(result.stdout)["models"]}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hflocal: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def run_with_terminal_stderr(agent: AgentProcess, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``hflocal ARGS`` with stderr on a pseudo-terminal (as in a shell), so progress bars draw."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal has a size
    env = {**os.environ, "HFLOCAL_HOME": str(agent.home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], stdout=subprocess.PIPE, stderr=slave, env=env, cwd=REPO_ROOT
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout), out, b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- GGUF


def test_gguf_import_installs_q4_and_q8_that_answer(agent: AgentProcess, tmp_path: Path) -> None:
    gguf = write_scripted_gguf(tmp_path / "Tiny-Chat.Q8_0.gguf", REPLY)
    status, out, err = run_with_terminal_stderr(agent, "import", str(gguf), "--quant", "q4", "--quant", "q8")
    assert status == 0, err
    keys = [key("Tiny-Chat", "q4"), key("Tiny-Chat", "q8")]
    assert out.splitlines() == [f"installed {k}" for k in keys]
    assert "convert q4" in err and "convert q8" in err and "100%" in err  # the progress bars
    models = installed(agent)
    assert sorted(models) == sorted(keys)
    for k in keys:
        assert models[k]["status"] == "ready" and models[k]["source"] == "import"
        assert chat_answer(agent.http_url, "What is the capital of France?", model=k) == REPLY
    used = hflocal(agent, "use", keys[0])
    assert used.returncode == 0, used.stderr
    assert chat_answer(agent.http_url, "Anything?") == REPLY  # the active model, no name given
    assert not list((agent.home / "imported" / "local").glob(".*")), "no staging folder is left behind"


def test_gguf_import_with_json_output_and_a_chosen_name(agent: AgentProcess, tmp_path: Path) -> None:
    gguf = write_scripted_gguf(tmp_path / "whatever.gguf", REPLY, matrix_type=QT.Q4_1)
    result = hflocal(agent, "import", str(gguf), "--name", "me/My-Model", "--quant", "fp32", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["keys"] == ["huggingface-local/me/My-Model::fp32::auto"]
    assert result.stderr == ""
    assert chat_answer(agent.http_url, "Hi", model="me/My-Model") == REPLY


def test_import_without_quant_gives_q4(agent: AgentProcess, tmp_path: Path) -> None:
    gguf = write_scripted_gguf(tmp_path / "Default-Quant-Q8_0.gguf", REPLY)
    result = hflocal(agent, "import", str(gguf))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["installed", key("Default-Quant", "q4")]


def test_reimport_replaces_the_loaded_active_model(agent: AgentProcess, tmp_path: Path) -> None:
    first = write_scripted_gguf(tmp_path / "first.gguf", REPLY)
    second = write_scripted_gguf(tmp_path / "second.gguf", OTHER_REPLY, seed=3)
    name = "local/Swapped"
    assert hflocal(agent, "import", str(first), "--name", name).returncode == 0
    assert hflocal(agent, "use", name).returncode == 0
    assert chat_answer(agent.http_url, "Question?") == REPLY  # loaded and active

    result = hflocal(agent, "import", str(second), "--name", name)
    assert result.returncode == 0, result.stderr
    # The old model was unloaded before its files were replaced; the new one is active and answers.
    assert chat_answer(agent.http_url, "Question?") == OTHER_REPLY
    with Client(agent.home, timeout=10) as client:
        status = client.call(Status())
    assert status.active == key("Swapped", "q4")
    assert list(installed(agent)) == [key("Swapped", "q4")]


def test_reimport_keeps_the_other_quantizations(agent: AgentProcess, tmp_path: Path) -> None:
    gguf = write_scripted_gguf(tmp_path / "Keep.gguf", REPLY)
    assert hflocal(agent, "import", str(gguf), "--quant", "q8").returncode == 0
    assert hflocal(agent, "import", str(gguf), "--quant", "q4").returncode == 0
    assert sorted(installed(agent)) == sorted([key("Keep", "q4"), key("Keep", "q8")])
    assert chat_answer(agent.http_url, "Hi", model=key("Keep", "q8")) == REPLY


# --------------------------------------------------------------------------- ONNX folders


def test_onnx_folder_import_copies_what_it_offers(agent: AgentProcess, tmp_path: Path) -> None:
    folder = build_tiny_repo(tmp_path / "Folder-Model", ("fp32", "q4"), reply=REPLY).path
    result = hflocal(agent, "import", str(folder))
    assert result.returncode == 0, result.stderr
    keys = {key("Folder-Model", "q4"), key("Folder-Model", "fp32")}
    assert set(result.stdout.split()) - {"installed"} == keys
    shutil.rmtree(folder)  # the import does not depend on the user's folder
    for k in keys:
        assert chat_answer(agent.http_url, "Hello?", model=k) == REPLY


def test_onnx_folder_without_the_quantization_asked_for(agent: AgentProcess, tmp_path: Path) -> None:
    folder = build_tiny_repo(tmp_path / "Only-Fp32", ("fp32",)).path
    line = one_line_error(hflocal(agent, "import", str(folder), "--quant", "q8"))
    assert "does not contain q8" in line and "it has fp32" in line
    assert installed(agent) == {}


# --------------------------------------------------------------------------- errors


def test_nonexistent_path(agent: AgentProcess, tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    assert "does not exist" in one_line_error(hflocal(agent, "import", str(missing)))
    # The protocol says the same to clients that skip the CLI's own check.
    with Client(agent.home, timeout=10) as client:
        with pytest.raises(RemoteError) as err:
            client.call(ImportModel(path=str(missing)))
        assert err.value.code == "bad_request" and "does not exist" in err.value.message
        with pytest.raises(RemoteError) as err:
            client.call(ImportModel(path="relative/model.gguf"))
        assert err.value.code == "bad_request" and "absolute path" in err.value.message


def test_a_file_that_is_not_gguf(agent: AgentProcess, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("these are not weights\n")
    assert "is not a GGUF file" in one_line_error(hflocal(agent, "import", str(text)))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 20)
    assert "not a readable GGUF file" in one_line_error(hflocal(agent, "import", str(broken)))
    assert installed(agent) == {}


def test_unsupported_gguf_architecture(agent: AgentProcess, tmp_path: Path) -> None:
    tokenizer = train_tokenizer()
    shape = tiny_shape(tokenizer.get_vocab_size())
    path = tmp_path / "phi.gguf"
    write_tiny_gguf(path, shape, random_weights(shape), tokenizer, architecture="phi3")
    line = one_line_error(hflocal(agent, "import", str(path)))
    assert "architecture 'phi3' is not supported" in line and "llama" in line
    assert installed(agent) == {}


def test_failure_inside_the_job_leaves_nothing_behind(agent: AgentProcess, tmp_path: Path) -> None:
    tokenizer = train_tokenizer()
    shape = tiny_shape(tokenizer.get_vocab_size())
    path = tmp_path / "odd-tokenizer.gguf"
    write_tiny_gguf(path, shape, random_weights(shape), tokenizer, pre="no-such-pre-tokenizer")
    line = one_line_error(hflocal(agent, "import", str(path)))
    assert line.startswith("hflocal: import failed:") and "no-such-pre-tokenizer" in line
    assert installed(agent) == {}
    assert list((agent.home / "imported").rglob("*")) in ([], [agent.home / "imported" / "local"])


def test_leftovers_of_an_interrupted_import_are_removed_at_start(
    agents: list[AgentProcess], hermetic_home: Path
) -> None:
    staging = hermetic_home / "imported" / "local" / ".Half.importing-0123456789ab"
    (staging / "onnx").mkdir(parents=True)
    (staging / "onnx" / "model_q4.onnx").write_bytes(b"half written")
    agents.append(start_agent(hermetic_home))
    assert not staging.exists()
    assert (hermetic_home / "imported" / "local").is_dir()


def test_a_folder_that_is_no_model(agent: AgentProcess, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    line = one_line_error(hflocal(agent, "import", str(folder)))
    assert "neither onnx/model*.onnx" in line


def test_checkpoint_without_the_convert_extra_says_what_to_install(
    agents: list[AgentProcess], hermetic_home: Path, tmp_path: Path
) -> None:
    """The worker runs with torch made unimportable (``sys.modules["torch"] = None``, Python's own way
    of marking a module absent), as in an install without the extra."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["torch"] = None\n')
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH", "")) if p)
    agent = start_agent(hermetic_home, env={"PYTHONPATH": path})
    agents.append(agent)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llama"}')
    (checkpoint / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    line = one_line_error(hflocal(agent, "import", str(checkpoint)))
    assert "needs the convert extra" in line
    assert f"-m pip install -c {REPO_ROOT / 'constraints.txt'} -e '{REPO_ROOT}[convert]'" in line
